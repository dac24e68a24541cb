import Foundation
import GGUF
import Jobs
import Runtime

/// A quantization: the source model and file, the type, and the model the result becomes (an
/// Ollama model in the downloads folder, with its parent recorded).
public struct QuantizeSpec: Sendable, Codable, Equatable {
    /// The source's catalog id (or `sha256:HEX` for an uploaded blob): the new model's parent.
    public var source: String
    public var sourcePath: String
    /// The source file's type (`F32`, `Q4_1`, …).
    public var sourceType: String
    public var type: QuantType
    /// The new model's Ollama name.
    public var name: String
    public var allowRequantize: Bool
    /// An Ollama model of the downloads folder whose other layers (system, template,
    /// parameters, adapters) the new model keeps.
    public var from: String?
    /// Layers given with `/api/create`, replacing the kept ones.
    public var system: String?
    public var template: String?
    /// Ollama's `parameters` and `messages`, as JSON.
    public var parameters: Data?
    public var messages: Data?
    public var warnings: [String] = []

    /// Checks a quantization of `source` (its file and facts) and names the result; throws when
    /// it cannot be done: no local GGUF, or a quantized source without `allowRequantize`.
    public static func plan(source: ModelSpec, type: QuantType, name: String?, allowRequantize: Bool) throws(AcquisitionError) -> QuantizeSpec {
        guard let path = source.path, let facts = source.facts else { throw .invalid("'\(source.id)' is not a local GGUF model: only those can be quantized") }
        return try plan(source: source.id, path: path, facts: facts, type: type, name: name, allowRequantize: allowRequantize)
    }

    public static func plan(source: String, path: String, facts: ModelFacts, type: QuantType, name: String?, allowRequantize: Bool) throws(AcquisitionError) -> QuantizeSpec {
        var warnings: [String] = []
        if !QuantType.isUnquantized(fileType: facts.fileType) {
            guard allowRequantize else {
                throw .invalid("'\(source)' is \(facts.quantization): quantizing an already quantized model loses quality. Quantize from F32, F16 or BF16, or allow requantizing (allowRequantize)")
            }
            warnings.append("requantizing from \(facts.quantization): the result is worse than the same type made from F32, F16 or BF16")
        }
        let name = name ?? defaultName(source: source, type: type)
        let reference = try ModelReference(name)
        guard case .ollama = reference else { throw .badName(name, "a quantized model gets an Ollama name, MODEL[:TAG]") }
        return QuantizeSpec(source: source, sourcePath: path, sourceType: facts.quantization, type: type, name: reference.description,
                            allowRequantize: allowRequantize, warnings: warnings)
    }

    /// `SOURCE:TYPE` in lower case, from the source's last path part without its tag
    /// (`hf.co/org/Repo:Q8_0` to `q4_k_m` is `repo:q4_k_m`).
    public static func defaultName(source: String, type: QuantType) -> String {
        var base = String(source.split(separator: "/").last ?? Substring(source))
        if let colon = base.firstIndex(of: ":") { base = String(base[..<colon]) }
        base = String(base.lowercased().map { $0.isASCII && ($0.isLetter || $0.isNumber || "._-".contains($0)) ? $0 : "-" })
        return (base.isEmpty ? "model" : base) + ":" + type.name.lowercased()
    }
}

/// What a quantization made.
public struct QuantizeResult: Sendable, Codable, Equatable {
    /// The new model's name, as served.
    public var name: String
    public var parent: String
    public var type: QuantType
    public var sourceType: String
    public var bytes: Int64
    public var sourceBytes: Int64
    public var sha256: String
    public var seconds: Double
    /// Tensors whose shape did not suit the type and got llama.cpp's fallback type.
    public var fallbackTensors: Int
    public var warnings: [String]
}

/// Quantizes a model with `llama-quantize` as a job (progress in tensors, Ollama's
/// `quantizing … model to …` lines as `create` events), stores the file as a blob of the
/// downloads folder under its SHA-256 and writes an Ollama manifest that names its parent. A
/// restart quantizes again from the start (the tool is deterministic).
public struct QuantizeJob: JobKind {
    public static let name = "quantize"
    public static let idPrefix = "quant"

    let tool: String?
    let creator: ModelCreator
    /// Makes the catalog see the new model (a rescan).
    let registered: @Sendable () async throws -> Void

    public init(tools: LlamaTools, creator: ModelCreator, registered: @escaping @Sendable () async throws -> Void) {
        self.tool = tools.quantize?.path
        self.creator = creator
        self.registered = registered
    }

    public var policy: JobPolicy { JobPolicy(maxConcurrent: 1, restart: .resume, keepFinished: 200, cancelGrace: .seconds(5)) }

    public func model(of spec: QuantizeSpec) -> String? { spec.source }

    /// One line of Ollama's `/api/create` stream.
    public struct Line: Sendable, Codable, Equatable {
        public var status: String
        public var digest: String?
        public var total: Int?
        public var completed: Int?
    }

    public func run(_ spec: QuantizeSpec, context: JobContext) async throws -> QuantizeResult {
        guard let tool else { throw JobError("no_llama_quantize", "llama-quantize not found (run `make llama`)") }
        guard FileManager.default.fileExists(atPath: spec.sourcePath) else { throw JobError("source_missing", "the file of '\(spec.source)' is gone") }
        for warning in spec.warnings { try await context.event("create", Line(status: "warning: " + warning)) }
        let status = "quantizing \(spec.sourceType) model to \(spec.type.name)"
        try await context.event("create", Line(status: status))
        do { try FileManager.default.createDirectory(atPath: creator.directory + "/blobs", withIntermediateDirectories: true) } catch {
            throw JobError("storage", "cannot create \(creator.directory)/blobs: \(error.localizedDescription)")
        }
        let output = creator.directory + "/blobs/quantize-\(UUID().uuidString).gguf"
        defer { unlink(output) }
        let outcome: Quantizer.Outcome
        do {
            outcome = try await Quantizer.run(tool: tool, source: spec.sourcePath, output: output, type: spec.type, allowRequantize: spec.allowRequantize) { done, total in
                try await context.progress(Double(done), of: Double(total), unit: "tensors")
                try await context.event("create", Line(status: status, digest: "0", total: total, completed: done))
            }
        } catch let failure as QuantizeFailure {
            throw JobError("quantize_failed", failure.description)
        }
        guard let hex = await Task.detached(operation: { FileDigests.sha256(path: output) }).value else {
            throw JobError("storage", "cannot read the quantized model back")
        }
        let blob = creator.blobPath(hex)
        if !FileManager.default.fileExists(atPath: blob) {
            guard rename(output, blob) == 0 else { throw JobError("storage", "cannot store the quantized model: \(String(cString: strerror(errno)))") }
        }
        var request = ModelCreator.Request(name: spec.name)
        request.modelBlob = (hex, blob)
        request.parent = spec.source
        request.fromManifest = spec.from.flatMap(creator.manifest(of:))
        request.system = spec.system
        request.template = spec.template
        do {
            request.parameters = try spec.parameters.map { try JSONSerialization.jsonObject(with: $0) as? [String: Any] ?? [:] }
            request.messages = try spec.messages.map { try JSONSerialization.jsonObject(with: $0) as? [[String: Any]] ?? [] }
        } catch {
            throw JobError("bad_request", "the parameters or messages are not JSON: \(error)")
        }
        let created: (name: String, lines: [String])
        do { created = try creator.create(request) } catch {
            throw JobError("create_failed", "\(error)")
        }
        for line in created.lines where line != "success" { try await context.event("create", Line(status: line)) }
        do { try await registered() } catch {
            throw JobError("registration_failed", "the quantized model was written but the catalog could not be rebuilt: \(error)")
        }
        let sourceBytes = ((try? FileManager.default.attributesOfItem(atPath: spec.sourcePath))?[.size] as? NSNumber)?.int64Value ?? 0
        return QuantizeResult(name: created.name, parent: spec.source, type: spec.type, sourceType: spec.sourceType, bytes: outcome.bytes,
                              sourceBytes: sourceBytes, sha256: hex, seconds: outcome.seconds, fallbackTensors: outcome.fallbackTensors,
                              warnings: spec.warnings)
    }
}
