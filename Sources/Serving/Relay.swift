import Access
import AsyncHTTPClient
import Foundation
import GGUF
import HTTPTypes
import Hummingbird
import Logging
import NIOCore
import NIOHTTP1
import Runtime
import Serving
import Synchronization
import Usage

/// Releases a lease exactly once: when the response body finishes, or when the response is
/// dropped without its body ever being written (client gone before the head was sent). Holds the
/// request's token reservation too, so a dropped response still reconciles it (charging the
/// prompt bound) instead of leaving the team's in-flight count and budget held forever.
final class LeaseHolder: Sendable {
    let lease: Lease
    let scheduler: Scheduler
    let access: AccessControl?
    let reservation: Reservation?
    let promptBound: Int
    private let released = Mutex(false)
    private let reconciled = Mutex(false)

    init(_ lease: Lease, _ scheduler: Scheduler, access: AccessControl? = nil, reservation: Reservation? = nil, promptBound: Int = 0) {
        self.lease = lease
        self.scheduler = scheduler
        self.access = access
        self.reservation = reservation
        self.promptBound = promptBound
    }

    func release() async {
        guard take(released) else { return }
        await scheduler.release(lease)
    }

    /// Replaces the reservation by what the request used (once; later calls do nothing).
    func reconcile(actualTokens: Int?) {
        guard let reservation, take(reconciled) else { return }
        access?.reconcile(reservation, actualTokens: actualTokens)
    }

    /// Gives up the reservation without reconciling it: the request goes on under another
    /// holder (served here after a peer failed or declined, or by a fresh instance), which
    /// reconciles it once.
    func handOverReservation() {
        _ = take(reconciled)
    }

    /// True for the one caller that gets to act.
    private func take(_ flag: borrowing Mutex<Bool>) -> Bool {
        flag.withLock { done in
            defer { done = true }
            return !done
        }
    }

    deinit {
        if let reservation, take(reconciled) { access?.reconcile(reservation, actualTokens: promptBound) }
        if take(released) {
            let (scheduler, lease) = (scheduler, lease)
            Task { await scheduler.release(lease) }
        }
    }
}

/// A request sent to an instance, holding its lease until ``Relay/finish`` releases it.
struct UpstreamExchange: Sendable {
    let requestID: String
    let route: String
    let lease: Lease
    let holder: LeaseHolder
    let started: ContinuousClock.Instant
    let response: HTTPClientResponse
    let caller: Caller
    /// Tokens held against the caller's limits until ``Relay/finish`` reconciles them.
    let reservation: Reservation?
    /// The prompt part of the reservation (what an abandoned stream is charged besides its events).
    let promptBound: Int
    /// When the request was handed to the upstream client.
    let sentAt: ContinuousClock.Instant

    /// The length of an answer the local client gathered whole before handing it over (a
    /// `content-length` up to ``LocalUpstreamClient/gatherLimit``); nil for one that streams.
    var gatheredLength: Int? {
        guard let length = response.headers.first(name: "content-length").flatMap(Int.init), length <= LocalUpstreamClient.gatherLimit else { return nil }
        return length
    }
}

/// Why reading an upstream answer failed, as the ledger and both APIs report it.
struct UpstreamFailure: Sendable {
    let status: Int
    /// The ledger's error kind and the OpenAI error code.
    let kind: String
    let message: String

    var openAIError: OpenAIError {
        OpenAIError(HTTPResponse.Status(code: status), message, type: "server_error", code: kind, retryAfter: 1)
    }
}

/// Which API's shape errors take once an answer is under way: an upstream's error body and a
/// failure in the middle of a stream. (Refusals before that are thrown and shaped by
/// `ErrorShapeMiddleware`.)
public enum ErrorShape: Sendable {
    /// Passed through as the upstream wrote it; a failure mid-stream is an OpenAI error event.
    case openAI
    /// Anthropic's `{"type":"error","error":{…}}`; mid-stream an `event: error`.
    case anthropic
}

/// Sends a request to the instance serving its model and streams the answer back without
/// buffering, observing time to first byte and the final usage on the way.
public struct Relay: Sendable {
    let scheduler: Scheduler
    /// For remote upstreams.
    let client: HTTPClient
    /// For the llama-servers Corral runs.
    let local: LocalUpstreamClient
    let recorder: RequestRecorder?
    let logger: Logger
    /// Limits and permissions (nil: no accounts at all, as in most tests).
    let access: AccessControl?
    /// This node's cluster (nil on a single node): requests for a model a peer has loaded with a
    /// free slot go there instead of loading it here.
    let cluster: ClusterNode?
    /// The usage ledger's bound: while it is full, requests are refused before anything else.
    let ledger: (any UsageBackpressure)?

    public init(
        scheduler: Scheduler, client: HTTPClient, local: LocalUpstreamClient, recorder: RequestRecorder?, logger: Logger, access: AccessControl? = nil,
        cluster: ClusterNode? = nil, ledger: (any UsageBackpressure)? = nil
    ) {
        self.cluster = cluster
        self.ledger = ledger
        self.scheduler = scheduler
        self.client = client
        self.local = local
        self.recorder = recorder
        self.logger = logger
        self.access = access
    }

    /// Headers that belong to one hop and are not forwarded. `accept-encoding` is dropped so an
    /// upstream answers uncompressed: Corral reads events and usage as they pass.
    static let hopByHop: [String] = [
        "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
        "transfer-encoding", "upgrade", "host", "authorization", "x-api-key", "content-length", "accept-encoding",
    ]

    /// Reads and parses a JSON body, mapping size and syntax problems to OpenAI errors.
    public static func readJSON(_ request: Request, context: GatewayRequestContext) async throws -> (ByteBuffer, [String: Any]) {
        let buffer: ByteBuffer
        do {
            buffer = try await request.body.collect(upTo: context.maxUploadSize)
        } catch {
            throw OpenAIError(.contentTooLarge, "request body exceeds \(context.maxUploadSize) bytes", code: "request_too_large")
        }
        let object = try JSON.object(Data(buffer.readableBytesView))
        return (buffer, object)
    }

    /// A body that names no model, with the default model named in it (the bytes are rewritten
    /// only then); unchanged when it names one or when there is no default.
    static func withDefaultModel(_ buffer: ByteBuffer, _ body: [String: Any], catalog: ModelCatalog) -> (ByteBuffer, [String: Any]) {
        guard body["model"] == nil || body["model"] is NSNull, let name = catalog.defaultModel else { return (buffer, body) }
        var named = body
        named["model"] = name
        return (ByteBuffer(bytes: JSON.data(named)), named)
    }

    /// A JSON POST whose common fields have been checked, ready to send.
    struct CheckedPost {
        let modelName: String
        let streaming: Bool
        /// The bytes to send upstream (the client's, with `include_usage` added when needed).
        let outgoing: ByteBuffer
        /// Whether to hide the usage chunk the client did not ask for.
        let hideUsage: Bool
        let tokens: TokenEstimate
    }

    /// Checks a JSON POST's `model`, `stream` and token-limit fields and, for OpenAI streaming
    /// routes (`injectUsage`), asks upstream for the usage chunk.
    static func check(buffer: ByteBuffer, body: [String: Any], injectUsage: Bool) throws(OpenAIError) -> CheckedPost {
        guard let model = body["model"] else { throw OpenAIError.badRequest("missing required field 'model' (there is no default model)", param: "model") }
        guard let modelName = model as? String, !modelName.isEmpty else {
            throw OpenAIError.badRequest("'model' must be a non-empty string", param: "model")
        }
        if let s = body["stream"], !(s is NSNull), !isJSONBool(s) {
            throw OpenAIError.badRequest("'stream' must be a boolean", param: "stream")
        }
        for key in ["max_tokens", "max_completion_tokens", "n_predict"] {
            if let v = body[key], !(v is NSNull) {
                guard let n = v as? NSNumber, !isJSONBool(n), n.doubleValue == n.doubleValue.rounded(), n.doubleValue >= -1 else {
                    throw OpenAIError.badRequest("'\(key)' must be an integer, -1 or more", param: key)
                }
            }
        }
        let streaming = (body["stream"] as? Bool) == true
        var outgoing = buffer
        var hideUsage = false
        if injectUsage && streaming {
            let options = body["stream_options"] as? [String: Any] ?? [:]
            if (options["include_usage"] as? Bool) != true {
                if body["stream_options"] == nil, let spliced = Self.askingForUsage(buffer) {
                    outgoing = spliced
                } else {
                    var modified = body
                    var o = options
                    o["include_usage"] = true
                    modified["stream_options"] = o
                    outgoing = ByteBuffer(bytes: JSON.data(modified))
                }
                hideUsage = true
            }
        }
        return CheckedPost(modelName: modelName, streaming: streaming, outgoing: outgoing, hideUsage: hideUsage, tokens: TokenEstimate(body))
    }

    /// Forwards a JSON POST for the model named in its body.
    /// - Parameter injectUsage: for OpenAI streaming routes, ask upstream for the usage chunk.
    public func forwardJSON(
        route: String, upstreamPath: String, buffer: ByteBuffer, body: [String: Any],
        injectUsage: Bool, errorShape: ErrorShape = .openAI, request: Request, context: GatewayRequestContext
    ) async throws -> Response {
        let post = try Self.check(buffer: buffer, body: body, injectUsage: injectUsage)
        if Self.hearsOfLoads(streaming: post.streaming, request.headers), let spec = pendingLoad(post.modelName) {
            return try await forwardWaitingForLoad(
                post, model: spec.id, route: route, upstreamPath: upstreamPath, style: Self.progressStyle(streaming: post.streaming, spec: spec, route: route),
                errorShape: errorShape, request: request, context: context)
        }
        let exchange = try await open(
            route: route, method: .POST, upstreamPath: upstreamPath, modelName: post.modelName, body: post.outgoing, headers: request.headers,
            caller: context.caller, tokens: post.tokens)
        return try await relayResponse(exchange, hideUsage: post.hideUsage, errorShape: errorShape)
    }

    /// `body` (a JSON object without `stream_options`) with `"stream_options":{"include_usage":true}`
    /// inserted as its first member: the client's bytes are kept as they are instead of being
    /// parsed and written again. Nil when the text does not start with a non-empty object.
    static func askingForUsage(_ body: ByteBuffer) -> ByteBuffer? {
        let bytes = body.readableBytesView
        guard let open = bytes.firstIndex(where: { !JSONMembers.isSpace($0) }), bytes[open] == UInt8(ascii: "{"),
              let next = bytes[(open + 1)...].firstIndex(where: { !JSONMembers.isSpace($0) }), bytes[next] != UInt8(ascii: "}")
        else { return nil }
        var out = ByteBuffer()
        out.reserveCapacity(body.readableBytes + 40)
        out.writeBytes(bytes[..<(open + 1)])
        out.writeString(#""stream_options":{"include_usage":true},"#)
        out.writeBytes(bytes[(open + 1)...])
        return out
    }

    /// Forwards any request for `modelName` to its instance.
    public func forward(
        route: String, method: HTTPMethod, upstreamPath: String, modelName: String, body: ByteBuffer?,
        hideUsage: Bool, errorShape: ErrorShape = .openAI, contentType: String = "application/json", request: Request, context: GatewayRequestContext
    ) async throws -> Response {
        let exchange = try await open(
            route: route, method: method, upstreamPath: upstreamPath, modelName: modelName, body: body, headers: request.headers,
            caller: context.caller, tokens: TokenEstimate(prompt: 0, output: 0), contentType: contentType)
        return try await relayResponse(exchange, hideUsage: hideUsage, errorShape: errorShape)
    }

    /// Leases an instance for `modelName` and sends it the request; the caller reads the answer
    /// and must end with ``finish(_:status:errorKind:firstByte:usage:timings:disconnected:)``.
    /// Failures before an answer arrives are recorded here and thrown as OpenAI errors.
    func open(
        route: String, method: HTTPMethod, upstreamPath: String, modelName: String, body: ByteBuffer?, headers: HTTPFields,
        caller: Caller, tokens: TokenEstimate, keepAlive: Duration? = nil, load: LoadOptions? = nil, contentType: String = "application/json",
        priority: RequestPriority = .interactive
    ) async throws(OpenAIError) -> UpstreamExchange {
        if let ledger, !ledger.hasRoom {
            // Every admitted request writes a row; past the bound, refuse rather than grow
            // memory or drop a row. Counted in /metrics, not in the ledger (it is full).
            ledger.noteRefused()
            throw OpenAIError(.serviceUnavailable, "the usage ledger is behind on its writes; retry shortly", type: "server_error", code: "ledger_full", retryAfter: 1)
        }
        let started = ContinuousClock.now
        let requestID = RequestIDs.next()
        func refused(_ error: OpenAIError, kind: String) -> OpenAIError {
            recordRefusal(requestID: requestID, route: route, model: modelName, status: Int(error.status.code), kind: kind, caller: caller, started: started)
            return error
        }
        // A request relayed here by a peer: served only if the model is loaded here, or if it
        // was placed here to be loaded (a cold load); otherwise declined before anything is done,
        // and the sending node serves it itself.
        let placedHere = caller.admittedBy != nil && headers[HTTPField.Name(ClusterNode.placeHeader)!] != nil
        if caller.admittedBy != nil {
            try await declineUnlessServable(modelName, placedHere: placedHere)
        }
        var reservation: Reservation?
        var promptBound = 0
        if let access {
            guard let spec = scheduler.currentCatalog.resolve(modelName) else {
                throw refused(.modelNotFound(modelName), kind: "model_not_found")
            }
            let context = spec.contextSize ?? spec.facts?.contextLength ?? 4096
            do {
                let templateBytes = TokenEstimate.literalBytes(ofTemplate: spec.facts?.chatTemplate)
                let needed = tokens.reservation(context: context, templateBytes: templateBytes)
                promptBound = tokens.reservation(context: 0, templateBytes: templateBytes)
                reservation = try await access.admit(caller, model: [spec.id, modelName] + spec.aliases, tokens: needed, requestID: requestID, route: route)
            } catch {
                throw refused(OpenAIError(error), kind: error.kind)
            }
        }
        var lease: Lease
        // A peer chosen to load a model no node has loaded (the request tells it so).
        var coldPeer = false
        do {
            let affinity = Self.affinity(modelName, body: body, headers: headers, catalog: scheduler.currentCatalog,
                                         clustered: cluster != nil, loadedHere: scheduler.isReady)
            if let peer = await peerLease(modelName, caller: caller, headers: headers, upstreamPath: upstreamPath, affinity: affinity) {
                lease = peer.lease
                coldPeer = peer.cold
            } else {
                lease = try await acquire(modelName, keepAlive: keepAlive, load: load, caller: caller, priority: priority, affinity: affinity)
            }
        } catch {
            if placedHere {
                // A cold load placed here that cannot be had (no room, a failed load): decline,
                // and the sending node loads it itself.
                throw Self.declined("model '\(modelName)' could not be loaded on this node: \(error)", code: "cannot_load_here")
            }
            if let reservation { access?.reconcile(reservation, actualTokens: 0) }
            throw refused(OpenAIError(error), kind: error.kind)
        }
        var retried = false
        while true {
            let holder = LeaseHolder(lease, scheduler, access: access, reservation: reservation, promptBound: promptBound)
            var upstreamHeaders = HTTPHeaders()
            for field in headers where !Self.hopByHop.contains(field.name.canonicalName) {
                upstreamHeaders.add(name: field.name.rawName, value: field.value)
            }
            if let key = lease.apiKey { upstreamHeaders.add(name: "authorization", value: "Bearer \(key)") }
            if lease.peer != nil, let cluster {
                // One hop: the peer serves it itself, for the caller admitted here.
                upstreamHeaders.replaceOrAdd(name: ClusterNode.hopHeader, value: cluster.name)
                upstreamHeaders.replaceOrAdd(name: ClusterNode.secretHeader, value: cluster.secretValue)
                if let team = caller.teamID { upstreamHeaders.replaceOrAdd(name: ClusterNode.teamHeader, value: team) }
                if let key = caller.keyPrefix { upstreamHeaders.replaceOrAdd(name: ClusterNode.keyHeader, value: key) }
                if coldPeer {
                    upstreamHeaders.replaceOrAdd(name: ClusterNode.placeHeader, value: "1")
                    // This node tells its client of the load (or not) itself; the peer answers plainly.
                    upstreamHeaders.remove(name: Self.progressHeader.rawName)
                } else {
                    upstreamHeaders.remove(name: ClusterNode.placeHeader)
                }
                cluster.noteRelayed()
            }
            if body != nil { upstreamHeaders.replaceOrAdd(name: "content-type", value: contentType) }

            let sentAt = ContinuousClock.now
            do {
                let response: HTTPClientResponse
                if let peer = lease.peer.flatMap({ _ in Self.ipEndpoint(lease.baseURL) }) {
                    // A cluster peer at an IP address: the same lean client as for llama-servers.
                    response = try await local.execute(host: peer.host, port: peer.port, method: method, path: upstreamPath, headers: upstreamHeaders, body: body)
                } else if !lease.isRemote, let port = lease.localPort {
                    // Silence is bounded by the client's read timeout (scheduler.readTimeout); a
                    // kept-alive connection found closed is replaced inside the client.
                    response = try await local.execute(port: port, method: method, path: upstreamPath, headers: upstreamHeaders, body: body)
                } else {
                    var upstream = HTTPClientRequest(url: lease.baseURL + upstreamPath)
                    upstream.method = method
                    upstream.headers = upstreamHeaders
                    if let body { upstream.body = .bytes(body) }
                    // This deadline only caps a request's whole life. AHC's own logging (debug and
                    // trace only) is left off: failures are logged below.
                    response = try await client.execute(upstream, timeout: .hours(24))
                }
                if lease.peer != nil, response.headers.first(name: ClusterNode.declinedHeader) != nil {
                    // The peer no longer has the model loaded (this node's view of it was a
                    // heartbeat old), or could not load it cold: it declined before doing
                    // anything; serve here.
                    let answer = try? await response.body.collect(upTo: 1 << 16)
                    throw PeerDeclined(reason: answer.flatMap { Self.errorMessage(Data($0.readableBytesView)) } ?? "declined")
                }
                return UpstreamExchange(
                    requestID: requestID, route: route, lease: lease, holder: holder, started: started, response: response, caller: caller,
                    reservation: reservation, promptBound: promptBound, sentAt: sentAt)
            } catch where !retried && lease.peer != nil {
                // The peer failed before answering (it died or is leaving): nothing reached the
                // client, so take it out of routing and serve the request here, once.
                retried = true
                coldPeer = false
                holder.handOverReservation()
                if let declined = error as? PeerDeclined {
                    // Alive and answering: it stays in routing.
                    logger.notice("a peer declined the request; serving here", metadata: ["peer": "\(lease.peer ?? "")", "reason": "\(declined.reason)"])
                } else {
                    logger.warning("a peer failed before answering; serving here", metadata: ["peer": "\(lease.peer ?? "")", "error": "\(error)"])
                    cluster?.markUnreachable(lease.peer ?? "")
                }
                do {
                    lease = try await acquire(modelName, keepAlive: keepAlive, load: load, caller: caller, priority: priority)
                } catch {
                    if let reservation { access?.reconcile(reservation, actualTokens: 0) }
                    throw refused(OpenAIError(error), kind: error.kind)
                }
            } catch where !retried && !lease.isRemote && Self.isRefused(error) {
                // The instance died before the request reached it and its exit is not noticed
                // yet (a crash a moment ago): nothing was sent, so stop it and go to a fresh one.
                retried = true
                await holder.release()
                holder.handOverReservation()
                await scheduler.reportUnresponsive(lease, reason: "its port refused a connection")
                do {
                    lease = try await acquire(modelName, keepAlive: keepAlive, load: load, caller: caller, priority: priority)
                } catch {
                    if let reservation { access?.reconcile(reservation, actualTokens: 0) }
                    throw refused(OpenAIError(error), kind: error.kind)
                }
            } catch {
                await holder.release()
                holder.reconcile(actualTokens: 0)
                func recordFailure(status: Int, kind: String) {
                    var r = leaseRecord(requestID: requestID, route: route, lease: lease, status: status, errorKind: kind, started: started)
                    r.team = caller.teamID
                    r.keyPrefix = caller.keyPrefix
                    r.relayedFrom = caller.admittedBy
                    record(r)
                }
                if Self.isReadTimeout(error) {
                    let failure = await bodyFailure(error, lease: lease)
                    recordFailure(status: failure.status, kind: failure.kind)
                    throw failure.openAIError
                }
                let crashed = await scheduler.instance(for: lease.modelID) == nil
                logger.warning("upstream request failed", metadata: ["model": "\(lease.modelID)", "error": "\(error)"])
                recordFailure(status: 502, kind: "upstream_unreachable")
                throw OpenAIError(.badGateway, crashed ? "model '\(lease.modelID)' stopped while handling the request" : "upstream request failed: \(error)",
                                  type: "server_error", code: "upstream_error", retryAfter: 1)
            }
        }
    }

    /// The IP address and port of a plain-HTTP base URL, when its host is an address (a name
    /// would need resolving: such peers go through AsyncHTTPClient).
    static func ipEndpoint(_ baseURL: String) -> (host: String, port: Int)? {
        guard let url = URLComponents(string: baseURL), url.scheme == "http", var host = url.host else { return nil }
        if host.hasPrefix("[") && host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
        guard (try? SocketAddress(ipAddress: host, port: 0)) != nil else { return nil }
        return (host, url.port ?? 80)
    }

    /// The header a client may name its conversation with, for routing among a model's replicas.
    static let sessionHeader = HTTPField.Name("x-session-id")!

    /// What routes a request among `modelName`'s replicas: the leading blocks of the prompt the
    /// body carries (`system`, `messages` and `prompt`, as serialized) and its session (the
    /// `x-session-id` header, else OpenAI's `user`). Also picks among the cluster peers that have
    /// the model loaded (`clustered`), when it is not loaded here. Nil for a model with one
    /// instance that is loaded here, so other requests pay nothing for it.
    static func affinity(_ modelName: String, body: ByteBuffer?, headers: HTTPFields, catalog: ModelCatalog, clustered: Bool,
                         loadedHere: (String) -> Bool) -> PromptAffinity? {
        guard let spec = catalog.resolve(modelName), let body else { return nil }
        // Among replicas; else among the peers, which a request is relayed to only when the model is not loaded here.
        guard (spec.replicas.max > 1 && spec.replicas.routing == .prefixAffinity) || (clustered && !loadedHere(spec.id)) else { return nil }
        return body.withUnsafeReadableBytes { bytes -> PromptAffinity? in
            guard let ranges = JSONMembers.valueRanges(["system", "messages", "prompt", "user"], of: bytes) else { return nil }
            var session = headers[sessionHeader]
            if session == nil, let user = ranges["user"], user.count > 2, bytes[user.lowerBound] == UInt8(ascii: "\"") {
                session = String(decoding: UnsafeRawBufferPointer(rebasing: bytes[user]), as: UTF8.self)
            }
            let parts = ["system", "messages", "prompt"].compactMap { ranges[$0] }
            if parts.count == 1 { return PromptAffinity(prompt: UnsafeRawBufferPointer(rebasing: bytes[parts[0]]), session: session) }
            var prompt: [UInt8] = []
            for part in parts { prompt.append(contentsOf: UnsafeRawBufferPointer(rebasing: bytes[part]).prefix(PromptAffinity.blockBytes * PromptAffinity.maxBlocks)) }
            return prompt.withUnsafeBytes { PromptAffinity(prompt: $0, session: session) }
        }
    }

    /// A peer declined a relayed request before doing anything with it.
    struct PeerDeclined: Error {
        /// Its error message (the model is not loaded there, not in its catalog, or could not be loaded).
        var reason: String
    }

    /// The `error.message` of an OpenAI-shaped error body.
    static func errorMessage(_ body: Data) -> String? {
        ((try? JSONSerialization.jsonObject(with: body)) as? [String: Any]).flatMap { ($0["error"] as? [String: Any])?["message"] as? String }
    }

    /// A local instance's port refused the connection: the request was not sent.
    static func isRefused(_ error: any Error) -> Bool {
        (error as? IOError)?.errnoCode == ECONNREFUSED
    }

    /// A lease on `modelName`'s instance or, when it cannot be loaded or its queue is full, on the
    /// first of its `fallbacks` that can answer and that the caller may use. The lease names the
    /// model that answers (its ledger row and the answer's `model` say so). The first model's
    /// error is thrown when no fallback can answer either.
    func acquire(_ modelName: String, keepAlive: Duration?, load: LoadOptions?, caller: Caller,
                 priority: RequestPriority = .interactive, affinity: PromptAffinity? = nil) async throws(SchedulerError) -> Lease {
        do {
            return try await scheduler.acquire(modelName, keepAlive: keepAlive, load: load, priority: priority, affinity: affinity)
        } catch where error.allowsFallback {
            let fallbacks = scheduler.currentCatalog.resolve(modelName)?.fallbacks ?? []
            for name in fallbacks {
                guard let spec = scheduler.currentCatalog.resolve(name), access?.allows(caller, model: [spec.id, name] + spec.aliases) ?? true else { continue }
                do {
                    let lease = try await scheduler.acquire(name, keepAlive: keepAlive, load: load, priority: priority)
                    logger.info("served by a fallback", metadata: ["model": "\(modelName)", "fallback": "\(lease.modelID)", "reason": "\(error)"])
                    return lease
                } catch let next where next.allowsFallback || next == .unknownModel(name) {
                    continue
                }
            }
            throw error
        }
    }

    /// Records the request, then releases the exchange's slot (recording first: a row must not
    /// depend on the scheduler answering).
    func finish(
        _ exchange: UpstreamExchange, status: Int, errorKind: String? = nil, firstByte: ContinuousClock.Instant? = nil,
        usage: [String: Any]? = nil, timings: [String: Any]? = nil, disconnected: Bool = false, streamedEvents: Int? = nil
    ) async {
        settle(exchange, status: status, errorKind: errorKind, firstByte: firstByte, usage: usage, timings: timings, disconnected: disconnected,
               streamedEvents: streamedEvents)
        await exchange.holder.release()
    }

    /// Reconciles the reservation with the real usage and records the request.
    func settle(
        _ exchange: UpstreamExchange, status: Int, errorKind: String? = nil, firstByte: ContinuousClock.Instant? = nil,
        usage: [String: Any]? = nil, timings: [String: Any]? = nil, disconnected: Bool = false, streamedEvents: Int? = nil
    ) {
        var r = leaseRecord(
            requestID: exchange.requestID, route: exchange.route, lease: exchange.lease, status: status, errorKind: errorKind,
            started: exchange.started, firstByte: firstByte, usage: usage, timings: timings, disconnected: disconnected)
        r.team = exchange.caller.teamID
        r.keyPrefix = exchange.caller.keyPrefix
        r.relayedFrom = exchange.caller.admittedBy
        r.gatewayOverheadMs = max(0, ms(exchange.sentAt - exchange.started) - r.queueMs - r.loadMs)
        r.timePerOutputTokenMs = timings?["predicted_per_token_ms"] as? Double
        if let reservation = exchange.reservation {
            // Known usage wins; a stream cut short is charged its prompt bound plus one token per
            // event it delivered; an error answer costs nothing; otherwise the reservation stands.
            var actual: Int? = nil
            if let p = r.promptTokens { actual = p + (r.completionTokens ?? 0) }
            else if let n = streamedEvents, n > 0, disconnected || status >= 500 { actual = min(reservation.tokens, exchange.promptBound + n) }
            else if status >= 400 { actual = 0 }
            exchange.holder.reconcile(actualTokens: actual)
        }
        record(r)
    }

    /// The OpenAI-route response: the upstream's status, headers and body, streamed through.
    func relayResponse(_ exchange: UpstreamExchange, hideUsage: Bool, errorShape: ErrorShape = .openAI) async throws -> Response {
        let (status, head, isSSE) = Self.responseHead(exchange)
        var headers = head

        // Small complete bodies (non-streamed answers, embeddings, tokenize) are read whole and
        // sent in one write: fewer event-loop hops than streaming chunk by chunk, and the lease
        // is released as soon as upstream is done.
        if !isSSE, let length = exchange.gatheredLength {
            let (collected, firstByte) = try await collectWhole(exchange, length: length)
            // Releasing the slot and accounting happen off the response path: the client does not
            // wait for the scheduler hop or for its body to be parsed for usage. They run on the
            // connection's event loop once the response has been written, which costs less than
            // waking a thread of the global pool for them.
            let relay = self
            Task(executorPreference: EventLoopExecutor.current ?? globalConcurrentExecutor) {
                await relay.settleAnswer(exchange, status: status, body: collected, firstByte: firstByte)
            }
            if errorShape == .anthropic && status.code >= 400 {
                let error = AnthropicError.reshaping(status: status.code, body: collected)
                let body = ByteBuffer(string: error.body)
                headers[.contentType] = "application/json"
                headers[.contentLength] = String(body.readableBytes)
                return Response(status: status, headers: headers, body: .init(byteBuffer: body))
            }
            return Response(status: status, headers: headers, body: .init(byteBuffer: collected))
        }
        let relay = self
        return Response(
            status: status, headers: headers,
            body: ResponseBody { writer in
                await relay.passBody(
                    exchange, status: status, isSSE: isSSE, hideUsage: hideUsage, errorShape: errorShape,
                    write: { chunk in
                        do { try await writer.write(chunk) } catch { return false }
                        return true
                    },
                    end: { try? await writer.finish(nil) })
            })
    }

    /// Passes an answer's body on as it arrives (an event stream through the usage filter, which
    /// hides the usage chunk the client did not ask for and reads usage and timings), ends the
    /// response, then settles the request and releases its slot. A failure mid-stream becomes an
    /// error event. `write` returns false once the client is gone (which stops reading upstream,
    /// and so cancels it); `end` is called only while the client is still there. Returns whether
    /// it was called.
    @discardableResult
    func passBody(
        _ exchange: UpstreamExchange, status: HTTPResponse.Status, isSSE: Bool, hideUsage: Bool, errorShape: ErrorShape = .openAI,
        write: (ByteBuffer) async -> Bool, end: () async -> Void
    ) async -> Bool {
        var filter = SSEUsageFilter(hideUsageChunk: hideUsage && isSSE)
        var collected = ByteBuffer()  // non-streamed bodies, for their usage (capped)
        var firstByte: ContinuousClock.Instant?
        var disconnected = false
        var failure: UpstreamFailure?
        do {
            for try await chunk in exchange.response.body {
                if firstByte == nil { firstByte = .now }
                var out = chunk
                if isSSE {
                    out = filter.feed(chunk)
                } else if collected.readableBytes < 4 << 20 {
                    collected.writeImmutableBuffer(chunk)
                }
                if out.readableBytes > 0, !(await write(out)) {
                    disconnected = true
                    break
                }
            }
        } catch {
            failure = await bodyFailure(error, lease: exchange.lease)
        }
        if !disconnected {
            if isSSE {
                let rest = filter.finish()
                if rest.readableBytes > 0 { _ = await write(rest) }
                if let failure {
                    let event = switch errorShape {
                    case .openAI: "data: " + failure.openAIError.jsonBody + "\n\n"
                    case .anthropic: AnthropicError(failure.openAIError).event
                    }
                    _ = await write(ByteBuffer(string: event))
                }
            }
            await end()
        }
        guard isSSE else {
            await settleAnswer(exchange, status: status, body: collected, firstByte: firstByte, failure: failure, disconnected: disconnected)
            return !disconnected
        }
        settle(
            exchange, status: failure?.status ?? Int(status.code), errorKind: failure?.kind ?? Self.upstreamErrorKind(status),
            firstByte: firstByte, usage: filter.usage, timings: filter.timings, disconnected: disconnected, streamedEvents: filter.events)
        await exchange.holder.release()
        return !disconnected
    }

    /// Reads an answer the local client gathered whole (see ``UpstreamExchange/gatheredLength``).
    /// On a failure the request is settled and its slot released, and the error to send is thrown.
    func collectWhole(_ exchange: UpstreamExchange, length: Int) async throws(OpenAIError) -> (ByteBuffer, firstByte: ContinuousClock.Instant) {
        do {
            return (try await exchange.response.body.collect(upTo: length), .now)
        } catch {
            let failure = await bodyFailure(error, lease: exchange.lease)
            settle(exchange, status: failure.status, errorKind: failure.kind)
            await exchange.holder.release()
            throw failure.openAIError
        }
    }

    /// Settles an answer that is not an event stream, with the usage and timings its body holds
    /// (`body` may be the first 4 MiB of a long one), then releases its slot.
    func settleAnswer(
        _ exchange: UpstreamExchange, status: HTTPResponse.Status, body: ByteBuffer, firstByte: ContinuousClock.Instant?,
        failure: UpstreamFailure? = nil, disconnected: Bool = false
    ) async {
        let object = body.withUnsafeReadableBytes { JSONMembers.members(["usage", "timings"], of: $0) }
        settle(
            exchange, status: failure?.status ?? Int(status.code), errorKind: failure?.kind ?? Self.upstreamErrorKind(status),
            firstByte: firstByte, usage: object?["usage"] as? [String: Any], timings: object?["timings"] as? [String: Any],
            disconnected: disconnected)
        await exchange.holder.release()
    }

    /// The client's response status and headers for an upstream answer: the upstream's minus
    /// hop-by-hop fields, no buffering for event streams, the request ID and rate-limit headers.
    static func responseHead(_ exchange: UpstreamExchange) -> (HTTPResponse.Status, HTTPFields, isSSE: Bool) {
        let response = exchange.response
        var headers = HTTPFields()
        for (name, value) in response.headers where !Self.hopByHop.contains(name.lowercased()) {
            if let fieldName = HTTPField.Name(name) { headers.append(HTTPField(name: fieldName, value: value)) }
        }
        let isSSE = response.headers.first(name: "content-type")?.lowercased().hasPrefix("text/event-stream") == true
        if isSSE {
            headers[HTTPField.Name("X-Accel-Buffering")!] = "no"
            headers[.cacheControl] = "no-cache"
        } else if let length = response.headers.first(name: "content-length") {
            headers[.contentLength] = length
        }
        headers[HTTPField.Name("x-request-id")!] = exchange.requestID
        for (name, value) in exchange.reservation?.headers ?? [:] {
            if let field = HTTPField.Name(name) { headers[field] = value }
        }
        let status = HTTPResponse.Status(code: Int(response.status.code), reasonPhrase: response.status.reasonPhrase)
        return (status, headers, isSSE)
    }

    func record(_ r: RequestRecord) { recorder?(r) }

    /// Records a request refused before it reached an instance (unknown model, limits, load
    /// failures), so the ledger has a row for every request that named a model.
    func recordRefusal(
        requestID: String = RequestIDs.next(), route: String, model: String, status: Int, kind: String, caller: Caller,
        started: ContinuousClock.Instant = .now
    ) {
        var r = RequestRecord(
            requestID: requestID, route: route, model: model, status: status, errorKind: kind,
            queueMs: ms(ContinuousClock.now - started), loadMs: 0, timeToFirstByteMs: nil,
            totalMs: ms(ContinuousClock.now - started), clientDisconnected: false)
        r.team = caller.teamID
        r.keyPrefix = caller.keyPrefix
        r.relayedFrom = caller.admittedBy
        record(r)
    }

    /// A lease on a peer when this node would have to load `modelName` and a live peer has it
    /// loaded with a free slot; or, when no node has it loaded or loading, on the peer the cold
    /// placement picks for its free memory (`cold`: the request tells the peer to load it). Only
    /// OpenAI-shaped paths that every Corral serves as they are (`/v1/…`), only local models,
    /// never a request that was relayed already.
    func peerLease(_ modelName: String, caller: Caller, headers: HTTPFields, upstreamPath: String, affinity: PromptAffinity? = nil) async
        -> (lease: Lease, cold: Bool)?
    {
        guard let cluster, caller.admittedBy == nil, headers[HTTPField.Name(ClusterNode.hopHeader)!] == nil, upstreamPath.hasPrefix("/v1/"),
            let spec = scheduler.currentCatalog.resolve(modelName), spec.path != nil, await scheduler.instance(for: spec.id) == nil
        else { return nil }
        if let peer = cluster.peer(for: spec.id, affinity: affinity) {
            return (Lease.onPeer(peer.name, url: peer.url, model: spec.id), false)
        }
        guard case .peer(let name, _) = await cluster.coldPlacement(for: spec), let peer = cluster.livePeer(named: name) else { return nil }
        return (Lease.onPeer(peer.name, url: peer.url, model: spec.id), true)
    }

    /// Declines a request a peer relayed here (see `open`) unless this node can serve it: the
    /// model is in this node's catalog, and loaded here or placed here to be loaded (`placedHere`).
    func declineUnlessServable(_ modelName: String, placedHere: Bool) async throws(OpenAIError) {
        guard let spec = scheduler.currentCatalog.resolve(modelName) else {
            throw Self.declined("model '\(modelName)' is not in this node's catalog", code: "not_in_catalog_here")
        }
        if !placedHere, await scheduler.instance(for: spec.id) == nil {
            // Relayed here because this node had the model loaded a heartbeat ago; it has not
            // now. Decline rather than load: the sending node serves it itself.
            throw Self.declined("model '\(spec.id)' is not loaded on this node", code: "not_loaded_here")
        }
    }

    /// The refusal of a relayed request that the sending node serves itself instead.
    static func declined(_ message: String, code: String) -> OpenAIError {
        var declined = OpenAIError(.serviceUnavailable, message, type: "server_error", code: code, retryAfter: 1)
        declined.extraHeaders = [ClusterNode.declinedHeader: "1"]
        return declined
    }

    /// Reads a whole (non-streamed) answer; a failure while reading is recorded, the exchange
    /// finished, and thrown as the OpenAI error. On success the caller still finishes it.
    func collect(_ exchange: UpstreamExchange) async throws -> ByteBuffer {
        var answer = ByteBuffer()
        do {
            for try await chunk in exchange.response.body { answer.writeImmutableBuffer(chunk) }
        } catch {
            let failure = await bodyFailure(error, lease: exchange.lease)
            await finish(exchange, status: failure.status, errorKind: failure.kind)
            throw failure.openAIError
        }
        return answer
    }

    /// Classifies a failure while reading an upstream answer: the instance died (502), or it went
    /// silent past the read timeout (504), in which case it is stopped.
    func bodyFailure(_ error: any Error, lease: Lease) async -> UpstreamFailure {
        if Self.isReadTimeout(error) {
            await scheduler.reportUnresponsive(lease, reason: "no bytes within the read timeout")
            return UpstreamFailure(
                status: 504, kind: "upstream_timeout",
                message: "model '\(lease.modelID)' stopped answering (nothing within the read timeout); its llama-server was stopped and the next request starts a new one")
        }
        return UpstreamFailure(status: 502, kind: "upstream_crashed", message: "model '\(lease.modelID)' stopped while answering")
    }

    /// The ledger's error kind for an upstream answer (`upstream_400` …), nil for success.
    static func upstreamErrorKind(_ status: HTTPResponse.Status) -> String? {
        status.code >= 400 ? "upstream_\(status.code)" : nil
    }

    /// The upstream sent nothing within the client's read timeout (`scheduler.readTimeout`).
    static func isReadTimeout(_ error: any Error) -> Bool {
        (error as? HTTPClientError) == .readTimeout
    }

    /// The record of a request that held a lease, with llama-server's usage and timings when known.
    func leaseRecord(
        requestID: String, route: String, lease: Lease, status: Int, errorKind: String? = nil, started: ContinuousClock.Instant,
        firstByte: ContinuousClock.Instant? = nil, usage: [String: Any]? = nil, timings: [String: Any]? = nil, disconnected: Bool = false
    ) -> RequestRecord {
        var r = RequestRecord(
            requestID: requestID, route: route, model: lease.modelID, status: status, errorKind: errorKind,
            queueMs: ms(lease.queueDuration), loadMs: ms(lease.loadDuration),
            timeToFirstByteMs: firstByte.map { ms($0 - started) }, totalMs: ms(ContinuousClock.now - started),
            promptTokens: usage.flatMap(Self.promptTokens),
            cachedTokens: (usage?["prompt_tokens_details"] as? [String: Any])?["cached_tokens"] as? Int ?? usage?["cache_read_input_tokens"] as? Int
                ?? timings?["cache_n"] as? Int,
            completionTokens: usage?["completion_tokens"] as? Int ?? usage?["output_tokens"] as? Int,
            promptTokensPerSecond: timings?["prompt_per_second"] as? Double,
            generationTokensPerSecond: timings?["predicted_per_second"] as? Double,
            clientDisconnected: disconnected)
        r.node = lease.peer
        r.replica = lease.replica
        return r
    }
}

extension Relay {
    /// The prompt tokens of an OpenAI `usage` (`prompt_tokens`, cached ones included) or an
    /// Anthropic one (`input_tokens` plus `cache_read_input_tokens`, which it counts apart).
    static func promptTokens(_ usage: [String: Any]) -> Int? {
        if let openAI = usage["prompt_tokens"] as? Int { return openAI }
        guard let input = usage["input_tokens"] as? Int else { return nil }
        return input + (usage["cache_read_input_tokens"] as? Int ?? 0) + (usage["cache_creation_input_tokens"] as? Int ?? 0)
    }
}

func ms(_ d: Duration) -> Double {
    Double(d.components.seconds) * 1000 + Double(d.components.attoseconds) / 1e15
}
