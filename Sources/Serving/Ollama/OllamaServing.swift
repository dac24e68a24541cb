import Access
import Foundation
import GGUF
import Jobs
import Library
import Runtime
import Store

/// Ollama's API below the HTTP layer: listing and showing models, aliases and deletion, chat and
/// generate (``generate(_:shape:headers:caller:)``), embeddings, load and unload. Takes request
/// bodies as JSON values and answers with Encodable values; fails with ``OllamaFailure``.
public struct OllamaServing: Sendable {
    public let relay: Relay
    public let scheduler: Scheduler
    public let digests: FileDigests
    /// Where runtime aliases are kept (a cluster's shared store on a cluster node).
    public let store: (any LibraryStateStore)?
    /// Whether `/api/delete` may delete model files (`ollama.allowDelete`).
    public let allowFileDeletion: Bool
    public let access: AccessControl?
    public let profiles: SamplingProfiles

    public init(
        relay: Relay, scheduler: Scheduler, digests: FileDigests, store: (any LibraryStateStore)?, allowFileDeletion: Bool,
        access: AccessControl?, profiles: SamplingProfiles
    ) {
        self.relay = relay
        self.scheduler = scheduler
        self.digests = digests
        self.store = store
        self.allowFileDeletion = allowFileDeletion
        self.access = access
        self.profiles = profiles
    }

    // MARK: Names

    func resolve(_ name: String) throws(OllamaFailure) -> ModelSpec {
        guard let spec = scheduler.currentCatalog.resolve(name) else { throw .modelNotFound(name) }
        return spec
    }

    /// `resolve` for requests that would use the model: an unknown name gets its ledger row.
    func resolve(_ name: String, route: String, caller: Caller) throws(OllamaFailure) -> ModelSpec {
        do {
            return try resolve(name)
        } catch {
            relay.recordRefusal(route: route, model: name, status: error.status, kind: ServingError.Code.modelNotFound.rawValue, caller: caller)
            throw error
        }
    }

    /// Refuses a team key a model its team may not use.
    func checkAccess(_ caller: Caller, to spec: ModelSpec, as name: String) throws(OllamaFailure) {
        guard access?.allows(caller, model: [spec.id, name] + spec.aliases) ?? true else { throw .notAllowed(name) }
    }

    /// The model's digest: from its source, else computed in the background (empty until done).
    func digest(_ spec: ModelSpec) async -> String {
        if let known = spec.knownDigest { return known }
        guard let path = spec.path else { return "" }
        return await digests.digest(path: path) ?? ""
    }

    // MARK: Listing

    /// `/api/tags`: every model the caller may use, under each listed name and runtime alias.
    public func tags(for caller: Caller) async -> OllamaModelList<OllamaModelEntry> {
        let catalog = await scheduler.catalog
        let runtimeAliases = await scheduler.runtimeAliases
        var entries: [OllamaModelEntry] = []
        for spec in catalog.models where access?.allows(caller, model: [spec.id] + spec.aliases) ?? true {
            let digest = await digest(spec)
            var names = [spec.id] + spec.listedAliases
            names += runtimeAliases.sorted(by: { $0.key < $1.key }).filter { $0.value == spec.id }.map(\.key)
            for name in names { entries.append(OllamaModelEntry(spec, name: name, digest: digest)) }
        }
        return OllamaModelList(models: entries)
    }

    /// `/api/ps`: one entry per loaded model (its first loaded instance), as Ollama has one
    /// runner per model.
    public func running() async -> OllamaModelList<OllamaRunningModel> {
        var out: [OllamaRunningModel] = []
        var listed: Set<String> = []
        for info in await scheduler.instances() where info.state == "loaded" && listed.insert(info.model).inserted {
            guard let spec = await scheduler.catalog.resolve(info.model) else { continue }
            let total = info.allocatedMiB.values.reduce(0, +)
            let vram = info.allocatedMiB.filter { !$0.key.hasPrefix("CPU") && !$0.key.hasPrefix("Host") }.values.reduce(0, +)
            let expires = info.expiresInSeconds.map { Date().addingTimeInterval($0) } ?? Date(timeIntervalSince1970: 253_402_300_799)  // no expiry: 9999-12-31
            let tagged = OllamaValues.taggedName(info.model)
            out.append(OllamaRunningModel(
                name: tagged, model: tagged, size: total > 0 ? UInt64(total * 1_048_576) : spec.fileSize ?? 0, sizeVRAM: UInt64(vram * 1_048_576),
                digest: await digest(spec), details: OllamaModelDetails(spec), expiresAt: OllamaValues.timestamp(expires),
                contextLength: info.contextSize ?? spec.contextSize ?? spec.facts?.contextLength ?? 0))
        }
        return OllamaModelList(models: out)
    }

    /// `/api/show`: the model's details, template, parameters and GGUF metadata.
    public func show(_ body: OllamaBody, caller: Caller) throws(OllamaFailure) -> OllamaShowAnswer {
        let name = try OllamaRequests.modelName(body)
        let spec = try resolve(name)
        guard access?.allows(caller, model: [spec.id, name] + spec.aliases) ?? true else { throw .notAllowed(name) }
        var info: [String: JobJSON] = [:]
        var template = spec.facts?.chatTemplate ?? "{{ .Prompt }}"
        if let path = spec.path, let file = try? GGUFFile.read(path: path, options: GGUFReadOptions(keepArraysUpTo: 0, readTensors: false)) {
            for (key, value) in file.metadata { info[key] = Self.jsonValue(value) }
        }
        let capabilities = spec.facts?.capabilities ?? (spec.path == nil ? [.completion] : [])
        if capabilities.contains(.insert) {
            // Clients (Continue) detect fill-in-the-middle support by `.Suffix` in the template;
            // llama-server's /infill inserts the model's real FIM tokens.
            template = "{{- if .Suffix }}<|fim_prefix|>{{ .Prompt }}<|fim_suffix|>{{ .Suffix }}<|fim_middle|>{{- else }}" + template + "{{- end }}"
        }
        var parameters: [String] = []
        if let ctx = spec.contextSize ?? spec.facts?.contextLength { parameters.append("num_ctx".padding(toLength: 31, withPad: " ", startingAt: 0) + String(ctx)) }
        return OllamaShowAnswer(
            modelfile: "# Served by Corral\nFROM \(OllamaValues.taggedName(spec.id))\n", parameters: parameters.joined(separator: "\n"),
            template: template, details: OllamaModelDetails(spec), modelInfo: info, capabilities: capabilities.names,
            modifiedAt: OllamaValues.modifiedAt(spec), license: spec.facts?.license)
    }

    /// GGUF metadata as JSON; arrays not kept by the reader become null (as Ollama's non-verbose show).
    static func jsonValue(_ value: GGUFValue) -> JobJSON {
        switch value {
        case .array(let a): return a.values.map { JobJSON.array($0.map(jsonValue)) } ?? .null
        default:
            if let s = value.string { return .string(s) }
            if let b = value.bool { return .bool(b) }
            if let i = value.int { return .number(Double(i)) }
            if let d = value.double { return d.isFinite ? .number(d) : .null }
            return .null
        }
    }

    // MARK: Copy and delete

    /// `/api/copy`: a runtime alias, kept in the store so that it outlives restarts.
    public func copy(_ body: OllamaBody) async throws(OllamaFailure) {
        guard let source = body["source"]?.stringValue, !source.isEmpty, let destination = body["destination"]?.stringValue, !destination.isEmpty else {
            throw .badRequest("source and destination are required")
        }
        let target: String
        do {
            target = try await scheduler.addRuntimeAlias(destination, for: source)
        } catch {
            if case .unknownModel = error { throw .modelNotFound(source) }
            throw OllamaFailure(status: 409, error.description)
        }
        do { try await store?.saveModelAlias(ModelCatalog.normalize(destination), target: target) } catch {
            // Not kept means not made: the alias would vanish at the next start (or on other nodes).
            _ = await scheduler.removeRuntimeAlias(destination)
            throw OllamaFailure(status: 500, "the alias could not be saved: \(error)")
        }
    }

    /// `/api/delete`: a runtime alias, or (when allowed) the GGUF files of a model found in a
    /// plain source folder.
    public func delete(_ body: OllamaBody) async throws(OllamaFailure) {
        let name = try OllamaRequests.modelName(body)
        if await scheduler.removeRuntimeAlias(name) {
            do { try await store?.deleteModelAlias(ModelCatalog.normalize(name)) } catch {
                throw OllamaFailure(status: 500, "the alias is gone until the next start, but could not be deleted from the store: \(error)")
            }
            return
        }
        let spec = try resolve(name)
        guard spec.id == ModelCatalog.normalize(name) else {
            throw OllamaFailure(status: 403, "'\(name)' is an alias defined in routes.json; remove it there")
        }
        guard allowFileDeletion else {
            throw OllamaFailure(status: 403, "deleting model files is disabled; set \"ollama\": {\"allowDelete\": true} in routes.json to allow it")
        }
        guard let path = spec.path, let directory = spec.sourceDirectory, spec.source == directory, Self.isInside(path, directory: directory) else {
            throw OllamaFailure(status: 403, "only GGUF files found in a configured source folder can be deleted; '\(name)' is \(spec.source == "config" ? "listed in routes.json" : "in \(spec.source)")")
        }
        do { try await scheduler.unload(spec.id) } catch {}
        for part in SplitFiles.parts(of: path) {
            do { try FileManager.default.removeItem(atPath: part) } catch {
                throw OllamaFailure(status: 500, "could not delete \(URL(fileURLWithPath: part).lastPathComponent): \(error.localizedDescription)")
            }
        }
        await scheduler.removeModel(spec.id)
    }

    /// Whether `path` (symlinks resolved) lies inside `directory`.
    public static func isInside(_ path: String, directory: String) -> Bool {
        let file = URL(fileURLWithPath: path).resolvingSymlinksInPath().standardizedFileURL.path
        let dir = URL(fileURLWithPath: directory).resolvingSymlinksInPath().standardizedFileURL.path
        return file.hasPrefix(dir.hasSuffix("/") ? dir : dir + "/")
    }
}

/// `{"models": […]}`: the answer of `/api/tags` and `/api/ps`.
public struct OllamaModelList<Entry: Encodable & Sendable>: Encodable, Sendable {
    public var models: [Entry]
}

/// A model in `/api/tags`.
public struct OllamaModelEntry: Encodable, Sendable, Equatable {
    public var name: String
    public var model: String
    public var modifiedAt: String
    public var size: UInt64
    public var digest: String
    public var details: OllamaModelDetails

    init(_ spec: ModelSpec, name: String, digest: String) {
        let tagged = OllamaValues.taggedName(name)
        self.name = tagged
        model = tagged
        modifiedAt = OllamaValues.modifiedAt(spec)
        size = spec.fileSize ?? 0
        self.digest = digest
        details = OllamaModelDetails(spec)
    }

    enum CodingKeys: String, CodingKey { case name, model, modifiedAt = "modified_at", size, digest, details }
}

/// A loaded model in `/api/ps`.
public struct OllamaRunningModel: Encodable, Sendable, Equatable {
    public var name: String
    public var model: String
    public var size: UInt64
    public var sizeVRAM: UInt64
    public var digest: String
    public var details: OllamaModelDetails
    public var expiresAt: String
    public var contextLength: Int

    enum CodingKeys: String, CodingKey {
        case name, model, size, sizeVRAM = "size_vram", digest, details, expiresAt = "expires_at", contextLength = "context_length"
    }
}

/// The answer of `/api/show`.
public struct OllamaShowAnswer: Encodable, Sendable, Equatable {
    public var modelfile: String
    public var parameters: String
    public var template: String
    public var details: OllamaModelDetails
    /// The GGUF metadata (arrays as null).
    public var modelInfo: [String: JobJSON]
    public var capabilities: [String]
    public var modifiedAt: String
    public var license: String?

    enum CodingKeys: String, CodingKey {
        case modelfile, parameters, template, details, modelInfo = "model_info", capabilities, modifiedAt = "modified_at", license
    }
}
