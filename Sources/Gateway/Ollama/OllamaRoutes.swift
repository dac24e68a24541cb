import Access
import Acquisition
import Foundation
import GGUF
import HTTPTypes
import Hummingbird
import Jobs
import Library
import NIOCore
import Runtime
import Serving
import Store

/// Ollama's API on the same scheduler: the routes, their bodies as JSON values, and answers
/// encoded from `OllamaServing`'s values (listing and showing models, chat and generate as NDJSON
/// streams, embeddings, aliases, load and unload); pulls and creates follow their jobs.
struct OllamaRoutes: Sendable {
    let relay: Relay
    let scheduler: Scheduler
    let digests: FileDigests
    /// Where runtime aliases are kept (a cluster's shared store on a cluster node).
    let store: (any LibraryStateStore)?
    let allowFileDeletion: Bool
    let access: AccessControl?
    let profiles: SamplingProfiles
    let downloads: Downloads
    /// `/api/blobs` and `/api/create` write to the downloads folder; the catalog is rebuilt after.
    let creator: ModelCreator
    let refreshCatalog: CatalogRefresh

    /// The Ollama version Corral answers with: new enough for every client that checks.
    static let compatibleVersion = "0.12.6"

    func register(on router: Router<GatewayRequestContext>) {
        let ollama = OllamaServing(
            relay: relay, scheduler: scheduler, digests: digests, store: store, allowFileDeletion: allowFileDeletion, access: access, profiles: profiles)
        router.get("/") { _, _ in Self.text("Ollama is running") }
        router.head("/") { _, _ in Self.text("") }
        router.get("/api/version") { _, _ in jsonResponse(["version": Self.compatibleVersion]) }
        router.get("/api/tags") { _, context in try Wire.response(await ollama.tags(for: context.caller)) }
        router.head("/api/tags") { _, _ in Response(status: .ok) }
        router.post("/api/show") { request, context in
            let body = try await Self.body(request, context)
            return try await Self.answer { () throws(OllamaFailure) in try ollama.show(body, caller: context.caller) }
        }
        router.get("/api/ps") { _, _ in try Wire.response(await ollama.running()) }
        for (path, shape) in [("/api/chat", OllamaResponseBuilder.Shape.chat), ("/api/generate", .generate)] {
            router.post(RouterPath(path)) { request, context in
                let body = try await Self.body(request, context)
                let answer: OllamaAnswer
                do throws(OllamaFailure) { answer = try await ollama.generate(body, shape: shape, headers: request.headers, caller: context.caller) } catch { throw OllamaError(error) }
                switch answer {
                case .whole(let object): return try Wire.response(object)
                case .stream(let stream): return Self.ndjson(stream)
                }
            }
        }
        for (path, legacy) in [("/api/embed", false), ("/api/embeddings", true)] {
            router.post(RouterPath(path)) { request, context in
                let body = try await Self.body(request, context)
                return try await Self.answer { () async throws(OllamaFailure) in
                    try await ollama.embed(body, legacy: legacy, headers: request.headers, caller: context.caller)
                }
            }
        }
        router.post("/api/copy") { request, context in
            try Self.requireOpenMode(context.caller, "copying models")
            let body = try await Self.body(request, context)
            do throws(OllamaFailure) { try await ollama.copy(body) } catch { throw OllamaError(error) }
            return Response(status: .ok)
        }
        router.delete("/api/delete") { request, context in
            try Self.requireOpenMode(context.caller, "deleting models")
            let body = try await Self.body(request, context)
            do throws(OllamaFailure) { try await ollama.delete(body) } catch { throw OllamaError(error) }
            return Response(status: .ok)
        }
        router.post("/api/pull") { request, context in
            try Self.requireOpenMode(context.caller, "pulling models")
            return try await pull(try await Self.body(request, context))
        }
        router.post("/api/push") { _, _ -> Response in
            throw OllamaError(.notImplemented, "pushing models is not supported: Corral serves local GGUF files and configured upstreams")
        }
        router.head("/api/blobs/{digest}") { _, context in
            Response(status: creator.hasBlob(try context.parameters.require("digest")) ? .ok : .notFound)
        }
        router.post("/api/blobs/{digest}") { request, context in
            try Self.requireOpenMode(context.caller, "uploading model files")
            do { try await creator.storeBlob(try context.parameters.require("digest"), body: request.body) } catch let error as AcquisitionError {
                throw OllamaError(.badRequest, error.description)
            }
            return Response(status: .created)
        }
        router.post("/api/create") { request, context in
            try Self.requireOpenMode(context.caller, "creating models")
            return try await create(try await Self.body(request, context))
        }
    }

    // MARK: Bodies and answers

    /// Changing the shared model library is not for team keys: an alias would carry a model past
    /// a team's allowed list, and deleting files affects everyone.
    static func requireOpenMode(_ caller: Caller, _ what: String) throws(OllamaError) {
        guard caller.teamID == nil else { throw OllamaError(.forbidden, "\(what) changes the shared model library and is not available to team keys") }
    }

    static func text(_ s: String) -> Response {
        Response(status: .ok, headers: [.contentType: "text/plain; charset=utf-8"], body: .init(byteBuffer: ByteBuffer(string: s)))
    }

    /// Reads the JSON object body, with Ollama-shaped errors.
    static func body(_ request: Request, _ context: GatewayRequestContext) async throws -> OllamaBody {
        do {
            return try await Wire.decode(OllamaBody.self, request, context: context)
        } catch let error as OpenAIError {
            throw OllamaError(error)
        }
    }

    /// `make`'s value as a JSON response; its failure in Ollama's shape.
    static func answer<Value: Encodable>(_ make: () async throws(OllamaFailure) -> Value) async throws -> Response {
        let value: Value
        do { value = try await make() } catch { throw OllamaError(error) }
        return try Wire.response(value)
    }

    static let ndjsonHeaders: HTTPFields = [.contentType: "application/x-ndjson", .cacheControl: "no-cache", HTTPField.Name("X-Accel-Buffering")!: "no"]

    /// An NDJSON stream written as `stream` produces it.
    static func ndjson(_ stream: OllamaStream) -> Response {
        Response(status: .ok, headers: ndjsonHeaders, body: ResponseBody { writer in
            await stream.send(
                write: { chunk in
                    do { try await writer.write(chunk) } catch { return false }
                    return true
                },
                end: { try? await writer.finish(nil) })
        })
    }

    /// One `{"status": …}` object, or NDJSON lines of them.
    static func statuses(_ lines: [String], stream: Bool) -> Response {
        guard stream else { return jsonResponse(["status": lines.last ?? "success"]) }
        let text = lines.map { JSON.encode(["status": $0]) + "\n" }.joined()
        return Response(status: .ok, headers: ndjsonHeaders, body: .init(byteBuffer: ByteBuffer(string: text)))
    }

    /// Whether `path` (symlinks resolved) lies inside `directory`.
    static func isInside(_ path: String, directory: String) -> Bool { OllamaServing.isInside(path, directory: directory) }

    // MARK: Pull and create

    /// Ollama's pull: a model already in the catalog is reported at once; anything else becomes
    /// a download job (joined when the same model is already being pulled), followed as Ollama's
    /// NDJSON progress lines (`pulling manifest`, `pulling DIGEST` with totals, `verifying sha256
    /// digest`, `writing manifest`, `success`; an `{"error": …}` line on failure).
    func pull(_ body: OllamaBody) async throws -> Response {
        let name: String
        let stream: Bool
        do {
            name = try OllamaRequests.modelName(body)
            stream = try OllamaRequests.wantsStream(body)
        } catch {
            throw OllamaError(error)
        }
        if await scheduler.catalog.resolve(name) != nil { return Self.statuses(["success"], stream: stream) }
        let job: JobRecord
        do { job = try await downloads.start(name, insecure: body["insecure"]?.boolValue ?? false).job } catch let error as AcquisitionError {
            throw OllamaError(.badRequest, error.description)
        }
        let engine = downloads.engine
        guard stream else {
            let done = try await engine.finished(job.id)
            if done.state == .succeeded { return jsonResponse(["status": "success"]) }
            throw Self.pullError(done)
        }
        return Self.follow(job, events: try await engine.events(job.id), engine: engine, eventType: "pull") { done in
            guard let done, done.state != .succeeded else { return nil }
            return Self.pullError(done).message
        }
    }

    /// A job's events of `eventType` as NDJSON lines, then `success` or the error `failure`
    /// finds in the finished job.
    static func follow(
        _ job: JobRecord, events: AsyncStream<JobEvent>, engine: JobEngine, eventType: String, success: Bool = false,
        failure: @escaping @Sendable (JobRecord?) -> String?
    ) -> Response {
        Response(status: .ok, headers: ndjsonHeaders, body: ResponseBody { writer in
            for await event in events where event.type == eventType {
                guard let line = try? JobCoding.encoder.encode(event.data) else { continue }
                try await writer.write(ByteBuffer(bytes: Array(line) + [UInt8(ascii: "\n")]))
            }
            // The log ended with the job: a failure is the stream's last line.
            let done = try? await engine.get(job.id)
            if let message = failure(done) {
                try await writer.write(OllamaError(.internalServerError, message).line)
            } else if success {
                try await writer.write(ByteBuffer(string: JSON.encode(["status": "success"]) + "\n"))
            }
            try await writer.finish(nil)
        })
    }

    /// Ollama's create: a model from an uploaded GGUF blob (`files`) or derived from a model
    /// Corral has (`from`), with its own `system`, `template`, `parameters` and `messages`.
    func create(_ body: OllamaBody) async throws -> Response {
        guard let name = (body["model"] ?? body["name"])?.stringValue, !name.isEmpty else { throw OllamaError.badRequest("model is required") }
        var request = ModelCreator.Request(name: name)
        request.system = body["system"]?.stringValue
        request.template = body["template"]?.stringValue
        request.parameters = body["parameters"]?.objectValue?.mapValues(\.any)
        request.messages = body["messages"]?.arrayValue.flatMap { list in list.allSatisfy { $0.objectValue != nil } ? list.map { $0.objectValue!.mapValues(\.any) } : nil }
        var quantize: QuantType?
        if let raw = body["quantize"], raw != .null {
            guard let type = raw.stringValue.flatMap({ QuantType($0) }) else {
                throw OllamaError.badRequest("quantize must be one of \(QuantType.all.map { $0.name.lowercased() }.joined(separator: ", "))")
            }
            guard body["adapters"] == nil else { throw OllamaError.badRequest("quantize a model first, then create one with adapters from it") }
            quantize = type
        }
        if let adapters = body["adapters"] {
            guard let adapters = Self.blobNames(adapters) else { throw OllamaError.badRequest("adapters maps file names to blob digests") }
            request.adapters = try adapters.sorted { $0.key < $1.key }.map { name, digest throws(OllamaError) in
                guard let hex = ModelCreator.hex(of: digest), creator.hasBlob(digest) else {
                    throw OllamaError.badRequest("blob \(digest) (\(name)) is not here: upload it first with POST /api/blobs/\(digest)")
                }
                return (hex, creator.blobPath(hex))
            }
        }
        if let files = body["files"] {
            guard let gguf = Self.blobNames(files)?.first(where: { $0.key.lowercased().hasSuffix(".gguf") }) else {
                throw OllamaError.badRequest("files maps file names to blob digests and needs a .gguf file")
            }
            guard let hex = ModelCreator.hex(of: gguf.value), creator.hasBlob(gguf.value) else {
                throw OllamaError.badRequest("blob \(gguf.value) is not here: upload it first with POST /api/blobs/\(gguf.value)")
            }
            request.modelBlob = (hex, creator.blobPath(hex))
        }
        let from = body["from"]?.stringValue
        if let from, request.modelBlob == nil {
            if let manifest = creator.manifest(of: from) {
                request.fromManifest = manifest
            } else {
                guard let spec = await scheduler.catalog.resolve(from), let path = spec.path else { throw OllamaError(OllamaFailure.modelNotFound(from)) }
                do { request.modelBlob = try creator.adopt(path, hex: try await digest(of: path, known: spec.knownDigest)) } catch let error as AcquisitionError {
                    throw OllamaError(.internalServerError, error.description)
                }
                request.parameters = request.parameters ?? spec.ollamaParameters?.mapValues(\.any)
                request.system = request.system ?? spec.systemPrompt
            }
        }
        let stream: Bool
        do { stream = try OllamaRequests.wantsStream(body) } catch { throw OllamaError(error) }
        if let quantize {
            return try await createQuantized(request, type: quantize, from: from, allowRequantize: body["allowRequantize"]?.boolValue ?? false, stream: stream)
        }
        let created: (name: String, lines: [String])
        do { created = try creator.create(request) } catch let error as AcquisitionError {
            throw OllamaError(.badRequest, error.description)
        }
        try await refreshCatalog()
        return stream ? Self.statuses(created.lines, stream: true) : Self.statuses(["success"], stream: false)
    }

    /// A JSON object of file names to blob digests.
    static func blobNames(_ value: JobJSON) -> [String: String]? {
        guard let object = value.objectValue else { return nil }
        let names = object.compactMapValues(\.stringValue)
        return names.count == object.count ? names : nil
    }

    /// `/api/create` with `quantize`: the GGUF of `request` (an uploaded blob, or the model in
    /// `from`) quantized as a job, followed as Ollama's `quantizing … model to …` lines with
    /// tensor counts; the new model keeps the other layers and names its parent.
    func createQuantized(_ request: ModelCreator.Request, type: QuantType, from: String?, allowRequantize: Bool, stream: Bool) async throws -> Response {
        let source: (name: String, path: String)
        if let blob = request.modelBlob {
            source = (from ?? "sha256:" + blob.hex, blob.path)
        } else if let layers = request.fromManifest?["layers"] as? [[String: Any]],
            let digest = layers.first(where: { $0["mediaType"] as? String == "application/vnd.ollama.image.model" })?["digest"] as? String,
            let hex = ModelCreator.hex(of: digest)
        {
            source = (from ?? "sha256:" + hex, creator.blobPath(hex))
        } else {
            throw OllamaError.badRequest("give the model's GGUF in `files` or a model to derive from in `from`")
        }
        let facts: ModelFacts
        do { facts = try ModelFacts.read(path: source.path) } catch { throw OllamaError.badRequest("the model to quantize is not a readable GGUF file: \(error)") }
        var spec: QuantizeSpec
        do {
            spec = try QuantizeSpec.plan(source: source.name, path: source.path, facts: facts, type: type, name: request.name, allowRequantize: allowRequantize)
        } catch {
            throw OllamaError(.badRequest, error.description)
        }
        spec.from = request.fromManifest == nil ? nil : from
        spec.system = request.system
        spec.template = request.template
        do {
            spec.parameters = try request.parameters.map { try JSONSerialization.data(withJSONObject: $0, options: [.sortedKeys]) }
            spec.messages = try request.messages.map { try JSONSerialization.data(withJSONObject: $0, options: [.sortedKeys]) }
        } catch {
            throw OllamaError.badRequest("parameters and messages must be JSON")
        }
        do { try await QuantizeRoutes.checkName(spec, scheduler: scheduler, downloads: creator.directory) } catch let error as OpenAIError {
            throw OllamaError(.conflict, error.message)
        }
        let engine = downloads.engine
        let job = try await engine.submit(QuantizeJob.self, spec)
        guard stream else {
            let done = try await engine.finished(job.id)
            if done.state == .succeeded { return jsonResponse(["status": "success"]) }
            throw OllamaError(done.error?.code == "quantize_failed" ? .badRequest : .internalServerError, done.error?.message ?? "the quantization was \(done.state.rawValue)")
        }
        return Self.follow(job, events: try await engine.events(job.id), engine: engine, eventType: "create", success: true) { done in
            done?.state == .succeeded ? nil : done?.error?.message ?? "the quantization was \(done?.state.rawValue ?? "lost")"
        }
    }

    /// A model file's SHA-256: the source's, the digest cache's, or read now (and remembered).
    func digest(of path: String, known: String?) async throws -> String {
        if let known, ModelCreator.hex(of: "sha256:" + known) != nil { return known }
        if let cached = await digests.digest(path: path) { return cached }
        guard let computed = FileDigests.sha256(path: path) else { throw OllamaError(.internalServerError, "cannot read \((path as NSString).lastPathComponent)") }
        await digests.remember(path: path, digest: computed)
        return computed
    }

    /// A failed, cancelled or interrupted pull in Ollama's error shape.
    static func pullError(_ job: JobRecord) -> OllamaError {
        let message = job.error?.message ?? "the download was \(job.state.rawValue)"
        switch job.error?.code {
        case "not_found": return OllamaError(.notFound, message)
        case "bad_name", "insecure": return OllamaError(.badRequest, message)
        case "insufficient_space": return OllamaError(.init(code: 507, reasonPhrase: "Insufficient Storage"), message)
        case "upstream", "digest_mismatch": return OllamaError(.badGateway, message)
        default: return OllamaError(.internalServerError, message)
        }
    }
}
