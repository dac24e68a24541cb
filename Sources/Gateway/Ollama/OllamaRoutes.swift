import Acquisition
import AsyncHTTPClient
import Foundation
import GGUF
import HTTPTypes
import Hummingbird
import Jobs
import Library
import NIOCore
import NIOHTTP1
import Runtime
import Serving
import Store
import Access

/// Ollama's API on the same scheduler: listing and showing models, chat and generate (NDJSON
/// streams with Ollama's nanosecond metrics), embeddings, aliases, load and unload.
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
        router.get("/") { _, _ in Self.text("Ollama is running") }
        router.head("/") { _, _ in Self.text("") }
        router.get("/api/version") { _, _ in jsonResponse(["version": Self.compatibleVersion]) }
        router.get("/api/tags") { _, context in jsonResponse(["models": await tags(for: context.caller)]) }
        router.head("/api/tags") { _, _ in Response(status: .ok) }
        router.post("/api/show") { request, context in try await show(try await Self.body(request, context), caller: context.caller) }
        router.get("/api/ps") { _, _ in jsonResponse(["models": await runningModels()]) }
        router.post("/api/chat") { request, context in
            let body = try await Self.body(request, context)
            return try await generate(body, shape: .chat, request: request, caller: context.caller)
        }
        router.post("/api/generate") { request, context in
            let body = try await Self.body(request, context)
            return try await generate(body, shape: .generate, request: request, caller: context.caller)
        }
        router.post("/api/embed") { request, context in
            try await embed(try await Self.body(request, context), request: request, caller: context.caller, legacy: false)
        }
        router.post("/api/embeddings") { request, context in
            try await embed(try await Self.body(request, context), request: request, caller: context.caller, legacy: true)
        }
        router.post("/api/copy") { request, context in
            try Self.requireOpenMode(context.caller, "copying models")
            return try await copy(try await Self.body(request, context))
        }
        router.delete("/api/delete") { request, context in
            try Self.requireOpenMode(context.caller, "deleting models")
            return try await delete(try await Self.body(request, context))
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

    // MARK: Bodies and names

    /// Changing the shared model library is not for team keys: an alias would carry a model past
    /// a team's allowed list, and deleting files affects everyone.
    static func requireOpenMode(_ caller: Caller, _ what: String) throws(OllamaError) {
        guard caller.teamID == nil else { throw OllamaError(.forbidden, "\(what) changes the shared model library and is not available to team keys") }
    }

    static func text(_ s: String) -> Response {
        Response(status: .ok, headers: [.contentType: "text/plain; charset=utf-8"], body: .init(byteBuffer: ByteBuffer(string: s)))
    }

    /// Reads the JSON object body, with Ollama-shaped errors.
    static func body(_ request: Request, _ context: GatewayRequestContext) async throws -> [String: Any] {
        do {
            return try await Relay.readJSON(request, context: context).1
        } catch let error as OpenAIError {
            throw OllamaError(error.status, error.message)
        }
    }

    /// The `model` (or legacy `name`) field.
    static func modelName(_ body: [String: Any]) throws(OllamaError) -> String {
        let value = body["model"] ?? body["name"]
        guard let name = value as? String, !name.trimmingCharacters(in: .whitespaces).isEmpty else {
            throw .badRequest("model is required")
        }
        return name
    }

    func resolve(_ name: String) async throws(OllamaError) -> ModelSpec {
        guard let spec = scheduler.currentCatalog.resolve(name) else { throw .modelNotFound(name) }
        return spec
    }

    /// `resolve` for requests that would use the model: an unknown name gets its ledger row.
    func resolve(_ name: String, route: String, caller: Caller) async throws(OllamaError) -> ModelSpec {
        do {
            return try await resolve(name)
        } catch {
            relay.recordRefusal(route: route, model: name, status: Int(error.status.code), kind: ServingError.Code.modelNotFound.rawValue, caller: caller)
            throw error
        }
    }

    /// The model's digest: from its source, else computed in the background (empty until done).
    func digest(_ spec: ModelSpec) async -> String {
        if let known = spec.knownDigest { return known }
        guard let path = spec.path else { return "" }
        return await digests.digest(path: path) ?? ""
    }

    // MARK: Listing

    func tags(for caller: Caller) async -> [[String: Any]] {
        let catalog = await scheduler.catalog
        let runtimeAliases = await scheduler.runtimeAliases
        var entries: [[String: Any]] = []
        for spec in catalog.models where access?.allows(caller, model: [spec.id] + spec.aliases) ?? true {
            entries.append(await tagEntry(spec, name: spec.id))
            for alias in spec.listedAliases { entries.append(await tagEntry(spec, name: alias)) }
            for (alias, target) in runtimeAliases.sorted(by: { $0.key < $1.key }) where target == spec.id {
                entries.append(await tagEntry(spec, name: alias))
            }
        }
        return entries
    }

    func tagEntry(_ spec: ModelSpec, name: String) async -> [String: Any] {
        let tagged = OllamaValues.taggedName(name)
        return [
            "name": tagged, "model": tagged, "modified_at": OllamaValues.modifiedAt(spec), "size": spec.fileSize ?? 0,
            "digest": await digest(spec), "details": OllamaValues.details(spec),
        ]
    }

    func runningModels() async -> [[String: Any]] {
        var out: [[String: Any]] = []
        var listed: Set<String> = []
        // One entry per model (its first loaded instance), as Ollama has one runner per model.
        for info in await scheduler.instances() where info.state == "loaded" && listed.insert(info.model).inserted {
            guard let spec = await scheduler.catalog.resolve(info.model) else { continue }
            let total = info.allocatedMiB.values.reduce(0, +)
            let vram = info.allocatedMiB.filter { !$0.key.hasPrefix("CPU") && !$0.key.hasPrefix("Host") }.values.reduce(0, +)
            let size = total > 0 ? UInt64(total * 1_048_576) : spec.fileSize ?? 0
            let expires = info.expiresInSeconds.map { Date().addingTimeInterval($0) } ?? Date(timeIntervalSince1970: 253_402_300_799)  // no expiry: 9999-12-31
            let tagged = OllamaValues.taggedName(info.model)
            out.append([
                "name": tagged, "model": tagged, "size": size, "size_vram": UInt64(vram * 1_048_576), "digest": await digest(spec),
                "details": OllamaValues.details(spec), "expires_at": OllamaValues.timestamp(expires),
                "context_length": info.contextSize ?? spec.contextSize ?? spec.facts?.contextLength ?? 0,
            ])
        }
        return out
    }

    func show(_ body: [String: Any], caller: Caller) async throws -> Response {
        let name = try Self.modelName(body)
        let spec = try await resolve(name)
        guard access?.allows(caller, model: [spec.id, name] + spec.aliases) ?? true else {
            throw OllamaError(.forbidden, "your team may not use model '\(name)'")
        }
        var info: [String: Any] = [:]
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
        var response: [String: Any] = [
            "modelfile": "# Served by Corral\nFROM \(OllamaValues.taggedName(spec.id))\n",
            "parameters": parameters.joined(separator: "\n"),
            "template": template, "details": OllamaValues.details(spec), "model_info": info,
            "capabilities": capabilities.names, "modified_at": OllamaValues.modifiedAt(spec),
        ]
        if let license = spec.facts?.license { response["license"] = license }
        return jsonResponse(response)
    }

    /// GGUF metadata as JSON; arrays not kept by the reader become null (as Ollama's non-verbose show).
    static func jsonValue(_ value: GGUFValue) -> Any {
        switch value {
        case .array(let a): return a.values.map { $0.map(jsonValue) } ?? NSNull()
        default:
            if let s = value.string { return s }
            if let b = value.bool { return b }
            if let i = value.int { return i }
            if let d = value.double { return d.isFinite ? d : NSNull() }
            return NSNull()
        }
    }

    // MARK: Generation

    func generate(_ body: [String: Any], shape: OllamaResponseBuilder.Shape, request: Request, caller: Caller) async throws -> Response {
        let (name, profile) = profiles.split(try Self.modelName(body))
        let spec = try await resolve(name, route: shape == .chat ? "/api/chat" : "/api/generate", caller: caller)
        let arrival = ContinuousClock.now
        let stream = try OllamaRequests.wantsStream(body)
        // An empty prompt (or no messages) loads the model; with keep_alive 0 it unloads it.
        let isEmpty: Bool
        switch shape {
        case .chat:
            if let m = body["messages"], !(m is NSNull), !(m is [Any]) { throw OllamaError.badRequest("messages must be a list") }
            isEmpty = (body["messages"] as? [Any] ?? []).isEmpty
        case .generate:
            let prompt = try OllamaRequests.optionalString(body, "prompt") ?? ""
            let suffix = try OllamaRequests.optionalString(body, "suffix") ?? ""
            isEmpty = prompt.isEmpty && suffix.isEmpty && (body["images"] as? [Any] ?? []).isEmpty
        }
        if isEmpty {
            guard access?.allows(caller, model: [spec.id, name] + spec.aliases) ?? true else {
                throw OllamaError(.forbidden, "your team may not use model '\(name)'")
            }
            return try await loadOrUnload(body, spec: spec, name: name, shape: shape, arrival: arrival)
        }
        var plan = shape == .chat ? try OllamaRequests.chat(body, model: spec.id) : try OllamaRequests.generate(body, model: spec.id)
        if let p = body["profile"] { plan.body["profile"] = p }
        do { try profiles.apply(to: &plan.body, named: profile, modelDefault: spec.profile) } catch { throw OllamaError(OpenAIError(error)) }
        OllamaModelDefaults.apply(spec, to: &plan.body)
        let route = shape == .chat ? "/api/chat" : "/api/generate"
        let relay = self.relay
        let (upstreamPath, upstreamBody, tokens, keepAlive, loadOptions) = (plan.path, ByteBuffer(bytes: JSON.data(plan.body)), TokenEstimate(plan.body), plan.keepAlive, plan.load)
        // Resolved above: the relay uses the same spec.
        let model = RequestedModel(name: spec.id, spec: spec)
        let open = { @Sendable [headers = request.headers] () async throws(ServingError) -> UpstreamExchange in
            try await relay.open(
                route: route, method: .POST, upstreamPath: upstreamPath, model: model, body: upstreamBody,
                headers: headers, caller: caller, tokens: tokens, keepAlive: keepAlive, load: loadOptions)
        }
        let exchange: UpstreamExchange
        if stream, relay.pendingLoad(model) != nil {
            // The model must load first: answered as usual if it is there within the grace,
            // else the stream opens now and stays alive while it loads.
            let opening = Relay.opening(open)
            switch await opening.wait(upTo: Relay.progressGrace) {
            case .success(let opened)?: exchange = opened
            case .failure(let error)?: throw OllamaError(error)
            case nil: return streamWaitingForLoad(opening, name: name, shape: shape, kind: plan.kind, arrival: arrival)
            }
        } else {
            do {
                exchange = try await open()
            } catch {
                throw OllamaError(error)
            }
        }
        let status = Int(exchange.response.status.code)
        guard status == 200 else {
            // llama-server refused (bad parameters, prompt too long …): its message, Ollama's shape.
            let message = await settleRefusal(exchange, status: status)
            throw OllamaError(HTTPResponse.Status(code: status), message ?? "model '\(name)' answered \(status)")
        }
        let load = exchange.lease.queueDuration + exchange.lease.loadDuration
        if !stream {
            var builder = OllamaResponseBuilder(shape: shape, kind: plan.kind, model: name)
            let whole: WholeAnswer
            do { whole = try await relay.readWhole(exchange) } catch {
                throw OllamaError(HTTPResponse.Status(code: error.status), error.message)
            }
            var events = SSEEvents()
            for payload in events.feed(whole.body) + events.finish() { _ = builder.feed(payload) }
            if let message = builder.upstreamError {
                await relay.finish(exchange, status: 500, errorKind: ServingError.Code.upstreamError.rawValue, firstByte: whole.firstByte)
                throw OllamaError(.internalServerError, message)
            }
            let answer = builder.final(whole: true, total: .now - arrival, load: load)
            await relay.finish(exchange, status: 200, firstByte: whole.firstByte, usage: AnswerUsage(usage: builder.usage, timings: builder.timings))
            return jsonResponse(answer)
        }
        return Response(status: .ok, headers: Self.ndjsonHeaders, body: ResponseBody { [kind = plan.kind] writer in
            await Self.relayStream(exchange, relay: relay, name: name, shape: shape, kind: kind, arrival: arrival, load: load, writer: &writer)
        })
    }

    static let ndjsonHeaders: HTTPFields = [.contentType: "application/x-ndjson", .cacheControl: "no-cache", HTTPField.Name("X-Accel-Buffering")!: "no"]

    /// A streaming generation whose model must load first: the NDJSON stream opens at once and
    /// carries an empty partial answer every second (what any Ollama client appends as nothing)
    /// until the instance answers, then the answer; a failure is the stream's error line.
    func streamWaitingForLoad(
        _ opening: Outcome<Result<UpstreamExchange, ServingError>>, name: String, shape: OllamaResponseBuilder.Shape,
        kind: UpstreamPlan.Kind, arrival: ContinuousClock.Instant
    ) -> Response {
        let relay = self.relay
        return Response(status: .ok, headers: Self.ndjsonHeaders, body: ResponseBody { writer in
            var outcome = await opening.wait(upTo: .zero)
            while outcome == nil {
                var alive: [String: Any] = ["model": name, "created_at": OllamaValues.timestamp(), "done": false]
                if shape == .chat { alive["message"] = ["role": "assistant", "content": ""] } else { alive["response"] = "" }
                do { try await writer.write(ByteBuffer(string: JSON.encode(alive) + "\n")) } catch {
                    await relay.abandon(opening)
                    return
                }
                outcome = await opening.wait(upTo: Relay.heartbeatInterval)
            }
            switch outcome! {
            case .failure(let error):
                _ = try? await writer.write(ByteBuffer(string: OllamaError(error).line))
                try? await writer.finish(nil)
            case .success(let exchange):
                let status = Int(exchange.response.status.code)
                guard status == 200 else {
                    let message = await settleRefusal(exchange, status: status)
                    _ = try? await writer.write(ByteBuffer(string: OllamaError(.internalServerError, message ?? "model '\(name)' answered \(status)").line))
                    try? await writer.finish(nil)
                    return
                }
                let load = exchange.lease.queueDuration + exchange.lease.loadDuration
                await Self.relayStream(exchange, relay: relay, name: name, shape: shape, kind: kind, arrival: arrival, load: load, writer: &writer)
            }
        })
    }

    /// Translates llama-server's event stream into Ollama's NDJSON as it arrives (through the
    /// response pump), ends the response, then settles the request.
    static func relayStream(
        _ exchange: UpstreamExchange, relay: Relay, name: String, shape: OllamaResponseBuilder.Shape, kind: UpstreamPlan.Kind,
        arrival: ContinuousClock.Instant, load: Duration, writer: inout any ResponseBodyWriter
    ) async {
        var reader = OllamaStreamReader(builder: OllamaResponseBuilder(shape: shape, kind: kind, model: name), arrival: arrival, load: load)
        await relay.pump(
            exchange, status: 200, reader: &reader,
            write: { chunk in
                do { try await writer.write(chunk) } catch { return false }
                return true
            },
            end: { try? await writer.finish(nil) })
    }

    /// Reads an upstream's error answer whole and settles it; the message it carries, if any.
    func settleRefusal(_ exchange: UpstreamExchange, status: Int) async -> String? {
        guard let answer = try? await relay.readWhole(exchange, keepingUpTo: 1 << 20) else { return nil }
        await relay.finish(exchange, status: status, errorKind: Relay.upstreamErrorKind(HTTPResponse.Status(code: status)))
        return Self.upstreamMessage(answer.body)
    }

    /// The message in an upstream error body (`{"error":{"message":…}}` or `{"error":"…"}`).
    static func upstreamMessage(_ bytes: ByteBuffer) -> String? {
        guard let object = try? JSONSerialization.jsonObject(with: Data(bytes.readableBytesView)) as? [String: Any] else { return nil }
        if let e = object["error"] as? [String: Any] { return e["message"] as? String }
        return object["error"] as? String
    }

    /// Empty prompt: load the model (`done_reason: load`), or unload it with `keep_alive: 0`.
    func loadOrUnload(_ body: [String: Any], spec: ModelSpec, name: String, shape: OllamaResponseBuilder.Shape, arrival: ContinuousClock.Instant) async throws -> Response {
        let keepAlive = try OllamaValues.keepAlive(body["keep_alive"])
        var reason = "load"
        do {
            if keepAlive == .zero {
                try await scheduler.unload(spec.id)
                reason = "unload"
            } else {
                let lease = try await scheduler.acquire(spec.id, keepAlive: keepAlive, load: try OllamaRequests.options(body["options"]).load)
                await scheduler.release(lease)
            }
        } catch let error as SchedulerError {
            throw OllamaError(OpenAIError(error))
        }
        var answer: [String: Any] = ["model": name, "created_at": OllamaValues.timestamp(), "done": true, "done_reason": reason]
        if shape == .chat { answer["message"] = ["role": "assistant", "content": ""] } else { answer["response"] = "" }
        if reason == "load" { answer["total_duration"] = OllamaValues.nanoseconds(.now - arrival); answer["load_duration"] = OllamaValues.nanoseconds(.now - arrival) }
        return jsonResponse(answer)
    }

    // MARK: Embeddings

    func embed(_ body: [String: Any], request: Request, caller: Caller, legacy: Bool) async throws -> Response {
        let name = try Self.modelName(body)
        // A model whose instance cannot embed answers through its companion in embedding mode.
        let spec = try await resolve(name, route: legacy ? "/api/embeddings" : "/api/embed", caller: caller).forEmbeddings
        let arrival = ContinuousClock.now
        var inputs: [String]
        if legacy {
            inputs = [try OllamaRequests.optionalString(body, "prompt") ?? ""]
        } else {
            switch body["input"] {
            case let s as String: inputs = [s]
            case let list as [Any]:
                guard list.allSatisfy({ $0 is String }) else { throw OllamaError.badRequest("input must be a string or a list of strings") }
                inputs = list as! [String]
            case nil, is NSNull: inputs = []
            default: throw OllamaError.badRequest("input must be a string or a list of strings")
            }
        }
        var dimensions: Int?
        if let d = body["dimensions"], !(d is NSNull) {
            guard let n = d as? NSNumber, !isJSONBool(n), let i = Int(exactly: n.doubleValue), i > 0 else {
                throw OllamaError.badRequest("dimensions must be a positive integer")
            }
            dimensions = i
        }
        if let t = body["truncate"], !(t is NSNull), !isJSONBool(t) { throw OllamaError.badRequest("truncate must be a boolean") }
        let truncate = (body["truncate"] as? Bool) ?? true
        let keepAlive = try OllamaValues.keepAlive(body["keep_alive"])
        _ = try OllamaRequests.options(body["options"])
        if inputs.isEmpty {
            guard access?.allows(caller, model: [spec.id, name] + spec.aliases) ?? true else {
                throw OllamaError(.forbidden, "your team may not use model '\(name)'")
            }
            // Like an empty prompt: load the model and answer with no vectors.
            _ = try await loadOrUnload(body, spec: spec, name: name, shape: .generate, arrival: arrival)
            return jsonResponse(["model": name, "embeddings": [[Double]]()])
        }
        var upstreamInput: Any = inputs
        var result = try await embedUpstream(spec: spec, input: upstreamInput, keepAlive: keepAlive, request: request, caller: caller)
        if case .tooLong(let limit, let message) = result {
            guard truncate else { throw OllamaError(.badRequest, "the input length exceeds the context length: \(message)") }
            upstreamInput = try await truncatedTokens(spec: spec, inputs: inputs, limit: limit, request: request)
            result = try await embedUpstream(spec: spec, input: upstreamInput, keepAlive: keepAlive, request: request, caller: caller)
        }
        guard case .vectors(var vectors, let promptTokens, let load) = result else {
            throw OllamaError(.badRequest, "the input length exceeds the context length")
        }
        if legacy { return jsonResponse(["embedding": vectors.first ?? []]) }
        vectors = vectors.map { v in Self.normalized(dimensions.map { Array(v.prefix($0)) } ?? v) }
        return jsonResponse([
            "model": name, "embeddings": vectors, "total_duration": OllamaValues.nanoseconds(.now - arrival),
            "load_duration": OllamaValues.nanoseconds(load), "prompt_eval_count": promptTokens,
        ])
    }

    enum EmbedResult {
        case vectors([[Double]], promptTokens: Int, load: Duration)
        /// The input does not fit in one batch; `limit` tokens would.
        case tooLong(limit: Int, message: String)
    }

    func embedUpstream(spec: ModelSpec, input: Any, keepAlive: Duration?, request: Request, caller: Caller) async throws -> EmbedResult {
        let exchange: UpstreamExchange
        do {
            exchange = try await relay.open(
                route: "/api/embed", method: .POST, upstreamPath: "/v1/embeddings", modelName: spec.id,
                body: ByteBuffer(bytes: JSON.data(["model": spec.id, "input": input, "encoding_format": "float"])), headers: request.headers,
                caller: caller, tokens: TokenEstimate(["input": input]), keepAlive: keepAlive)
        } catch {
            throw OllamaError(error)
        }
        let status = Int(exchange.response.status.code)
        let bytes: ByteBuffer
        do {
            bytes = try await relay.readWhole(exchange, keepingUpTo: 256 << 20).body
        } catch {
            throw OllamaError(HTTPResponse.Status(code: error.status), error.message)
        }
        let object = try? JSONSerialization.jsonObject(with: Data(bytes.readableBytesView)) as? [String: Any]
        guard status == 200, let data = object?["data"] as? [[String: Any]] else {
            await relay.finish(exchange, status: status, errorKind: Relay.upstreamErrorKind(HTTPResponse.Status(code: status)) ?? ServingError.Code.upstreamError.rawValue)
            let message = Self.upstreamMessage(bytes) ?? "embedding failed with status \(status)"
            if message.contains("too large") || message.contains("exceeds") {
                // "… (current batch size: 512)": the most tokens one input may have.
                let limit = message.range(of: "batch size: ").flatMap { Int(message[$0.upperBound...].prefix { $0.isNumber }) } ?? 512
                return .tooLong(limit: limit, message: message)
            }
            throw OllamaError(HTTPResponse.Status(code: status == 200 ? 502 : status), message)
        }
        let usage = object?["usage"] as? [String: Any]
        await relay.finish(exchange, status: 200, usage: AnswerUsage(usage: usage, timings: nil))
        let sorted = data.sorted { ($0["index"] as? Int ?? 0) < ($1["index"] as? Int ?? 0) }
        let vectors = sorted.map { ($0["embedding"] as? [Any] ?? []).compactMap { ($0 as? NSNumber)?.doubleValue } }
        return .vectors(vectors, promptTokens: usage?["prompt_tokens"] as? Int ?? 0, load: exchange.lease.queueDuration + exchange.lease.loadDuration)
    }

    /// Each input as at most `limit` tokens (Ollama's `truncate: true`), via the model's tokenizer.
    func truncatedTokens(spec: ModelSpec, inputs: [String], limit: Int, request: Request) async throws -> [[Int]] {
        var out: [[Int]] = []
        for text in inputs {
            let exchange: UpstreamExchange
            do {
                exchange = try await relay.open(
                    route: "/api/embed", method: .POST, upstreamPath: "/tokenize", modelName: spec.id,
                    body: ByteBuffer(bytes: JSON.data(["content": text, "add_special": true])), headers: request.headers,
                    caller: .anonymous, tokens: TokenEstimate(prompt: 0, output: 0))
            } catch {
                throw OllamaError(error)
            }
            let bytes = try? await relay.readWhole(exchange, keepingUpTo: 64 << 20).body
            if bytes != nil { await relay.finish(exchange, status: Int(exchange.response.status.code)) }
            guard let bytes, let object = try? JSONSerialization.jsonObject(with: Data(bytes.readableBytesView)) as? [String: Any],
                let tokens = object["tokens"] as? [Int]
            else { throw OllamaError(.badGateway, "could not tokenize the input to truncate it") }
            out.append(Array(tokens.prefix(max(1, limit))))
        }
        return out
    }

    static func normalized(_ v: [Double]) -> [Double] {
        let norm = v.reduce(0) { $0 + $1 * $1 }.squareRoot()
        return norm > 0 ? v.map { $0 / norm } : v
    }

    // MARK: Copy, delete, pull

    func copy(_ body: [String: Any]) async throws -> Response {
        guard let source = body["source"] as? String, !source.isEmpty, let destination = body["destination"] as? String, !destination.isEmpty else {
            throw OllamaError.badRequest("source and destination are required")
        }
        let target: String
        do {
            target = try await scheduler.addRuntimeAlias(destination, for: source)
        } catch {
            if case .unknownModel = error { throw OllamaError.modelNotFound(source) }
            throw OllamaError(.conflict, error.description)
        }
        do { try await store?.saveModelAlias(ModelCatalog.normalize(destination), target: target) } catch {
            // Not kept means not made: the alias would vanish at the next start (or on other nodes).
            _ = await scheduler.removeRuntimeAlias(destination)
            throw OllamaError(.internalServerError, "the alias could not be saved: \(error)")
        }
        return Response(status: .ok)
    }

    func delete(_ body: [String: Any]) async throws -> Response {
        let name = try Self.modelName(body)
        if await scheduler.removeRuntimeAlias(name) {
            do { try await store?.deleteModelAlias(ModelCatalog.normalize(name)) } catch {
                throw OllamaError(.internalServerError, "the alias is gone until the next start, but could not be deleted from the store: \(error)")
            }
            return Response(status: .ok)
        }
        let spec = try await resolve(name)
        guard spec.id == ModelCatalog.normalize(name) else {
            throw OllamaError(.forbidden, "'\(name)' is an alias defined in routes.json; remove it there")
        }
        guard allowFileDeletion else {
            throw OllamaError(.forbidden, "deleting model files is disabled; set \"ollama\": {\"allowDelete\": true} in routes.json to allow it")
        }
        guard let path = spec.path, let directory = spec.sourceDirectory, spec.source == directory,
            Self.isInside(path, directory: directory)
        else {
            throw OllamaError(.forbidden, "only GGUF files found in a configured source folder can be deleted; '\(name)' is \(spec.source == "config" ? "listed in routes.json" : "in \(spec.source)")")
        }
        do { try await scheduler.unload(spec.id) } catch {}
        for part in SplitFiles.parts(of: path) {
            do { try FileManager.default.removeItem(atPath: part) } catch {
                throw OllamaError(.internalServerError, "could not delete \(URL(fileURLWithPath: part).lastPathComponent): \(error.localizedDescription)")
            }
        }
        await scheduler.removeModel(spec.id)
        return Response(status: .ok)
    }

    /// Whether `path` (symlinks resolved) lies inside `directory`.
    static func isInside(_ path: String, directory: String) -> Bool {
        let file = URL(fileURLWithPath: path).resolvingSymlinksInPath().standardizedFileURL.path
        let dir = URL(fileURLWithPath: directory).resolvingSymlinksInPath().standardizedFileURL.path
        return file.hasPrefix(dir.hasSuffix("/") ? dir : dir + "/")
    }

    /// Ollama's pull: a model already in the catalog is reported at once; anything else becomes
    /// a download job (joined when the same model is already being pulled), followed as Ollama's
    /// NDJSON progress lines (`pulling manifest`, `pulling DIGEST` with totals, `verifying sha256
    /// digest`, `writing manifest`, `success`; an `{"error": …}` line on failure).
    func pull(_ body: [String: Any]) async throws -> Response {
        let name = try Self.modelName(body)
        let stream = try OllamaRequests.wantsStream(body)
        if await scheduler.catalog.resolve(name) != nil {
            if stream {
                return Response(status: .ok, headers: Self.ndjsonHeaders, body: .init(byteBuffer: ByteBuffer(string: JSON.encode(["status": "success"]) + "\n")))
            }
            return jsonResponse(["status": "success"])
        }
        let insecure = body["insecure"] as? Bool ?? false
        let job: JobRecord
        do { job = try await downloads.start(name, insecure: insecure).job } catch let error as AcquisitionError {
            throw OllamaError(.badRequest, error.description)
        }
        let engine = downloads.engine
        guard stream else {
            let done = try await engine.finished(job.id)
            if done.state == .succeeded { return jsonResponse(["status": "success"]) }
            throw Self.pullError(done)
        }
        let events = try await engine.events(job.id)
        return Response(status: .ok, headers: Self.ndjsonHeaders, body: ResponseBody { writer in
            for await event in events where event.type == "pull" {
                guard let line = try? JobCoding.encoder.encode(event.data) else { continue }
                try await writer.write(ByteBuffer(bytes: Array(line) + [UInt8(ascii: "\n")]))
            }
            // The log ended with the job: a failure is the stream's last line.
            if let done = try? await engine.get(job.id), done.state != .succeeded {
                try await writer.write(ByteBuffer(string: Self.pullError(done).line))
            }
            try await writer.finish(nil)
        })
    }

    /// Ollama's create: a model from an uploaded GGUF blob (`files`) or derived from a model
    /// Corral has (`from`), with its own `system`, `template`, `parameters` and `messages`.
    func create(_ body: [String: Any]) async throws -> Response {
        guard let name = (body["model"] ?? body["name"]) as? String, !name.isEmpty else { throw OllamaError.badRequest("model is required") }
        var request = ModelCreator.Request(name: name)
        request.system = body["system"] as? String
        request.template = body["template"] as? String
        request.parameters = body["parameters"] as? [String: Any]
        request.messages = body["messages"] as? [[String: Any]]
        var quantize: QuantType?
        if let raw = body["quantize"], !(raw is NSNull) {
            guard let name = raw as? String, let type = QuantType(name) else {
                throw OllamaError.badRequest("quantize must be one of \(QuantType.all.map { $0.name.lowercased() }.joined(separator: ", "))")
            }
            guard body["adapters"] == nil else { throw OllamaError.badRequest("quantize a model first, then create one with adapters from it") }
            quantize = type
        }
        if let adapters = body["adapters"] {
            guard let adapters = adapters as? [String: String] else { throw OllamaError.badRequest("adapters maps file names to blob digests") }
            request.adapters = try adapters.sorted { $0.key < $1.key }.map { name, digest throws(OllamaError) in
                guard let hex = ModelCreator.hex(of: digest), creator.hasBlob(digest) else {
                    throw OllamaError.badRequest("blob \(digest) (\(name)) is not here: upload it first with POST /api/blobs/\(digest)")
                }
                return (hex, creator.blobPath(hex))
            }
        }
        if let files = body["files"] {
            guard let files = files as? [String: String], let gguf = files.first(where: { $0.key.lowercased().hasSuffix(".gguf") }) else {
                throw OllamaError.badRequest("files maps file names to blob digests and needs a .gguf file")
            }
            guard let hex = ModelCreator.hex(of: gguf.value), creator.hasBlob(gguf.value) else {
                throw OllamaError.badRequest("blob \(gguf.value) is not here: upload it first with POST /api/blobs/\(gguf.value)")
            }
            request.modelBlob = (hex, creator.blobPath(hex))
        }
        if let from = body["from"] as? String, request.modelBlob == nil {
            if let manifest = creator.manifest(of: from) {
                request.fromManifest = manifest
            } else {
                guard let spec = await scheduler.catalog.resolve(from), let path = spec.path else { throw OllamaError.modelNotFound(from) }
                do { request.modelBlob = try creator.adopt(path, hex: try await digest(of: path, known: spec.knownDigest)) } catch let error as AcquisitionError {
                    throw OllamaError(.internalServerError, error.description)
                }
                request.parameters = request.parameters ?? spec.ollamaParameters?.mapValues(\.any)
                request.system = request.system ?? spec.systemPrompt
            }
        }
        if let quantize { return try await createQuantized(request, type: quantize, from: body["from"] as? String, body: body) }
        let created: (name: String, lines: [String])
        do { created = try creator.create(request) } catch let error as AcquisitionError {
            throw OllamaError(.badRequest, error.description)
        }
        try await refreshCatalog()
        if try OllamaRequests.wantsStream(body) {
            let lines = created.lines.map { JSON.encode(["status": $0]) + "\n" }.joined()
            return Response(status: .ok, headers: Self.ndjsonHeaders, body: .init(byteBuffer: ByteBuffer(string: lines)))
        }
        return jsonResponse(["status": "success"])
    }

    /// `/api/create` with `quantize`: the GGUF of `request` (an uploaded blob, or the model in
    /// `from`) quantized as a job, followed as Ollama's `quantizing … model to …` lines with
    /// tensor counts; the new model keeps the other layers and names its parent.
    func createQuantized(_ request: ModelCreator.Request, type: QuantType, from: String?, body: [String: Any]) async throws -> Response {
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
            spec = try QuantizeSpec.plan(source: source.name, path: source.path, facts: facts, type: type, name: request.name,
                                         allowRequantize: body["allowRequantize"] as? Bool ?? false)
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
        guard try OllamaRequests.wantsStream(body) else {
            let done = try await engine.finished(job.id)
            if done.state == .succeeded { return jsonResponse(["status": "success"]) }
            throw OllamaError(done.error?.code == "quantize_failed" ? .badRequest : .internalServerError, done.error?.message ?? "the quantization was \(done.state.rawValue)")
        }
        let events = try await engine.events(job.id)
        return Response(status: .ok, headers: Self.ndjsonHeaders, body: ResponseBody { writer in
            for await event in events where event.type == "create" {
                guard let line = try? JobCoding.encoder.encode(event.data) else { continue }
                try await writer.write(ByteBuffer(bytes: Array(line) + [UInt8(ascii: "\n")]))
            }
            let done = try? await engine.get(job.id)
            if done?.state == .succeeded {
                try await writer.write(ByteBuffer(string: JSON.encode(["status": "success"]) + "\n"))
            } else {
                let message = done?.error?.message ?? "the quantization was \(done?.state.rawValue ?? "lost")"
                try await writer.write(ByteBuffer(string: JSON.encode(["error": message]) + "\n"))
            }
            try await writer.finish(nil)
        })
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

/// llama-server's event stream as Ollama's NDJSON, for the response pump: each complete event
/// becomes the chunks a streaming Ollama client reads; at the end the tool calls and the final
/// chunk with Ollama's counts, or the failure as one more error line (the status stays 200).
struct OllamaStreamReader: AnswerReader {
    var builder: OllamaResponseBuilder
    let arrival: ContinuousClock.Instant
    let load: Duration
    private var events = SSEEvents()
    private var delivered = 0

    init(builder: OllamaResponseBuilder, arrival: ContinuousClock.Instant, load: Duration) {
        self.builder = builder
        self.arrival = arrival
        self.load = load
    }

    mutating func feed(_ chunk: ByteBuffer) -> ByteBuffer {
        var out = ByteBuffer()
        for payload in events.feed(chunk) {
            let objects = builder.feed(payload)
            delivered += objects.count
            Self.append(objects, to: &out)
        }
        return out
    }

    mutating func finish(failure: ServingError?) -> ByteBuffer {
        var out = ByteBuffer()
        for payload in events.finish() { Self.append(builder.feed(payload), to: &out) }
        if let message = failure?.message ?? builder.upstreamError {
            out.writeString(OllamaError(.internalServerError, message).line)
        } else {
            var tail: [[String: Any]] = []
            if let calls = builder.toolCallChunk() { tail.append(calls) }
            tail.append(builder.final(whole: false, total: .now - arrival, load: load))
            Self.append(tail, to: &out)
        }
        return out
    }

    var reported: AnswerUsage { AnswerUsage(usage: builder.usage, timings: builder.timings) }
    var deliveredEvents: Int? { delivered }
    var reportedErrorKind: String? { builder.upstreamError.map { _ in ServingError.Code.upstreamError.rawValue } }

    private static func append(_ objects: [[String: Any]], to out: inout ByteBuffer) {
        for object in objects { out.writeString(JSON.encode(object) + "\n") }
    }
}
