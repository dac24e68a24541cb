import Access
import AsyncHTTPClient
import Foundation
import GGUF
import HTTPTypes
import Logging
import NIOCore
import NIOHTTP1
import NIOPosix
import Runtime
import Synchronization
import Usage

/// Releases a lease exactly once: when the response body finishes, or when the response is
/// dropped without its body ever being written (client gone before the head was sent). Holds the
/// request's token reservation too, so a dropped response still reconciles it (charging the
/// prompt bound) instead of leaving the team's in-flight count and budget held forever.
public final class LeaseHolder: Sendable {
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

    public func release() async {
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
public struct UpstreamExchange: Sendable {
    public let requestID: String
    public let route: String
    public let lease: Lease
    let holder: LeaseHolder
    public let started: ContinuousClock.Instant
    public let response: HTTPClientResponse
    public let caller: Caller
    /// Tokens held against the caller's limits until ``Relay/finish`` reconciles them.
    public let reservation: Reservation?
    /// The prompt part of the reservation (what an abandoned stream is charged besides its events).
    let promptBound: Int
    /// When the request was handed to the upstream client.
    let sentAt: ContinuousClock.Instant

    /// The length of an answer the local client gathered whole before handing it over (a
    /// `content-length` up to ``LocalUpstreamClient/gatherLimit``); nil for one that streams.
    public var gatheredLength: Int? {
        guard let length = response.headers.first(name: "content-length").flatMap(Int.init), length <= LocalUpstreamClient.gatherLimit else { return nil }
        return length
    }
}

/// The model a request names, looked up once in one catalog snapshot: the name as the client
/// wrote it (its ledger row's model on a refusal) and what it stands for (nil: not in the catalog).
public struct RequestedModel: Sendable {
    public let name: String
    public let spec: ModelSpec?

    public init(name: String, spec: ModelSpec?) {
        self.name = name
        self.spec = spec
    }
}

/// Sends a request to the instance serving its model and streams the answer back without
/// buffering, observing time to first byte and the final usage on the way.
public struct Relay: Sendable {
    public let scheduler: Scheduler
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
    public static let hopByHop: [String] = [
        "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
        "transfer-encoding", "upgrade", "host", "authorization", "x-api-key", "content-length", "accept-encoding",
    ]

    /// A JSON POST whose common fields the HTTP layer has checked, ready to send.
    public struct CheckedPost: Sendable {
        public let modelName: String
        public let streaming: Bool
        /// The bytes to send upstream (the client's, with `include_usage` added when needed).
        public let outgoing: ByteBuffer
        /// Whether to hide the usage chunk the client did not ask for.
        public let hideUsage: Bool
        public let tokens: TokenEstimate

        public init(modelName: String, streaming: Bool, outgoing: ByteBuffer, hideUsage: Bool, tokens: TokenEstimate) {
            self.modelName = modelName
            self.streaming = streaming
            self.outgoing = outgoing
            self.hideUsage = hideUsage
            self.tokens = tokens
        }
    }

    /// `body` (a JSON object without `stream_options`) with `"stream_options":{"include_usage":true}`
    /// inserted as its first member: the client's bytes are kept as they are instead of being
    /// parsed and written again. Nil when the text does not start with a non-empty object.
    public static func askingForUsage(_ body: ByteBuffer) -> ByteBuffer? {
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

    /// The model `name` stands for in the current catalog, looked up once for the whole request.
    public func resolve(_ name: String) -> RequestedModel {
        RequestedModel(name: name, spec: scheduler.currentCatalog.resolve(name))
    }

    /// ``open(route:method:upstreamPath:model:body:headers:caller:tokens:keepAlive:load:contentType:priority:)``
    /// for a model known by name only.
    public func open(
        route: String, method: HTTPMethod, upstreamPath: String, modelName: String, body: ByteBuffer?, headers: HTTPFields,
        caller: Caller, tokens: TokenEstimate, keepAlive: Duration? = nil, load: LoadOptions? = nil, contentType: String = "application/json",
        priority: RequestPriority = .interactive
    ) async throws(ServingError) -> UpstreamExchange {
        try await open(
            route: route, method: method, upstreamPath: upstreamPath, model: resolve(modelName), body: body, headers: headers, caller: caller,
            tokens: tokens, keepAlive: keepAlive, load: load, contentType: contentType, priority: priority)
    }

    /// Leases an instance for `model` and sends it the request; the caller reads the answer
    /// and must end with ``finish(_:status:errorKind:firstByte:usage:disconnected:streamedEvents:)``.
    /// Failures before an answer arrives are recorded here and thrown.
    public func open(
        route: String, method: HTTPMethod, upstreamPath: String, model: RequestedModel, body: ByteBuffer?, headers: HTTPFields,
        caller: Caller, tokens: TokenEstimate, keepAlive: Duration? = nil, load: LoadOptions? = nil, contentType: String = "application/json",
        priority: RequestPriority = .interactive
    ) async throws(ServingError) -> UpstreamExchange {
        let (modelName, spec) = (model.name, model.spec)
        if let ledger, !ledger.hasRoom {
            // Every admitted request writes a row; past the bound, refuse rather than grow
            // memory or drop a row. Counted in /metrics, not in the ledger (it is full).
            ledger.noteRefused()
            throw ServingError(status: 503, code: .ledgerFull, "the usage ledger is behind on its writes; retry shortly", retryAfter: 1)
        }
        let started = ContinuousClock.now
        let requestID = RequestIDs.next()
        func refused(_ error: ServingError) -> ServingError {
            recordRefusal(requestID: requestID, route: route, model: modelName, status: error.status, kind: error.kind, caller: caller, started: started)
            return error
        }
        // A request relayed here by a peer: served only if the model is loaded here, or if it
        // was placed here to be loaded (a cold load); otherwise declined before anything is done,
        // and the sending node serves it itself.
        let placedHere = caller.admittedBy != nil && headers[HTTPField.Name(ClusterNode.placeHeader)!] != nil
        if caller.admittedBy != nil {
            try await declineUnlessServable(modelName, spec: spec, placedHere: placedHere)
        }
        var reservation: Reservation?
        var promptBound = 0
        if let access {
            guard let spec else {
                throw refused(.modelNotFound(modelName))
            }
            let context = spec.contextSize ?? spec.facts?.contextLength ?? 4096
            do {
                let templateBytes = TokenEstimate.literalBytes(ofTemplate: spec.facts?.chatTemplate)
                let needed = tokens.reservation(context: context, templateBytes: templateBytes)
                promptBound = tokens.reservation(context: 0, templateBytes: templateBytes)
                reservation = try await access.admit(caller, model: [spec.id, modelName] + spec.aliases, tokens: needed, requestID: requestID, route: route)
            } catch {
                throw refused(ServingError(error))
            }
        }
        var lease: Lease
        // A peer chosen to load a model no node has loaded (the request tells it so).
        var coldPeer = false
        do {
            let affinity = Self.affinity(spec, body: body, headers: headers, clustered: cluster != nil, loadedHere: scheduler.isReady)
            if let peer = await peerLease(spec, caller: caller, headers: headers, upstreamPath: upstreamPath, affinity: affinity) {
                lease = peer.lease
                coldPeer = peer.cold
            } else {
                lease = try await acquire(modelName, keepAlive: keepAlive, load: load, caller: caller, priority: priority, affinity: affinity)
            }
        } catch {
            if placedHere {
                // A cold load placed here that cannot be had (no room, a failed load): decline,
                // and the sending node loads it itself.
                throw Self.declined("model '\(modelName)' could not be loaded on this node: \(error)", code: .cannotLoadHere)
            }
            if let reservation { access?.reconcile(reservation, actualTokens: 0) }
            throw refused(ServingError(error))
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
                    throw PeerDeclined(reason: answer.flatMap(Self.errorMessage) ?? "declined")
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
                    throw refused(ServingError(error))
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
                    throw refused(ServingError(error))
                }
            } catch {
                await holder.release()
                holder.reconcile(actualTokens: 0)
                let failure: ServingError
                if Self.isReadTimeout(error) {
                    failure = await bodyFailure(error, lease: lease)
                } else {
                    let crashed = await scheduler.instance(for: lease.modelID) == nil
                    logger.warning("upstream request failed", metadata: ["model": "\(lease.modelID)", "error": "\(error)"])
                    failure = ServingError(
                        status: 502, code: .upstreamError,
                        crashed ? "model '\(lease.modelID)' stopped while handling the request" : "upstream request failed: \(error)",
                        retryAfter: 1, kind: "upstream_unreachable")
                }
                var r = leaseRecord(requestID: requestID, route: route, lease: lease, status: failure.status, errorKind: failure.kind, started: started)
                r.team = caller.teamID
                r.keyPrefix = caller.keyPrefix
                r.relayedFrom = caller.admittedBy
                record(r)
                throw failure
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
    public static let sessionHeader = HTTPField.Name("x-session-id")!

    /// What routes a request among `spec`'s replicas: the leading blocks of the prompt the
    /// body carries (`system`, `messages` and `prompt`, as serialized) and its session (the
    /// `x-session-id` header, else OpenAI's `user`). Also picks among the cluster peers that have
    /// the model loaded (`clustered`), when it is not loaded here. Nil for a model with one
    /// instance that is loaded here, so other requests pay nothing for it.
    static func affinity(_ spec: ModelSpec?, body: ByteBuffer?, headers: HTTPFields, clustered: Bool,
                         loadedHere: (String) -> Bool) -> PromptAffinity? {
        guard let spec, let body else { return nil }
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
    static func errorMessage(_ body: ByteBuffer) -> String? {
        struct ErrorBody: Decodable {
            struct Inner: Decodable { var message: String? }
            var error: Inner?
        }
        return (try? JSONDecoder().decode(ErrorBody.self, from: Data(body.readableBytesView)))?.error?.message
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
    /// depend on the scheduler answering). `errorKind` is a code (``ServingError/kind``,
    /// ``upstreamErrorKind(_:)``), never a sentence.
    public func finish(
        _ exchange: UpstreamExchange, status: Int, errorKind: String? = nil, firstByte: ContinuousClock.Instant? = nil,
        usage: AnswerUsage = AnswerUsage(), disconnected: Bool = false, streamedEvents: Int? = nil
    ) async {
        settle(exchange, status: status, errorKind: errorKind, firstByte: firstByte, usage: usage, disconnected: disconnected, streamedEvents: streamedEvents)
        await exchange.holder.release()
    }

    /// Reconciles the reservation with the real usage and records the request.
    func settle(
        _ exchange: UpstreamExchange, status: Int, errorKind: String? = nil, firstByte: ContinuousClock.Instant? = nil,
        usage: AnswerUsage = AnswerUsage(), disconnected: Bool = false, streamedEvents: Int? = nil
    ) {
        var r = leaseRecord(
            requestID: exchange.requestID, route: exchange.route, lease: exchange.lease, status: status, errorKind: errorKind,
            started: exchange.started, firstByte: firstByte, usage: usage, disconnected: disconnected)
        r.team = exchange.caller.teamID
        r.keyPrefix = exchange.caller.keyPrefix
        r.relayedFrom = exchange.caller.admittedBy
        r.gatewayOverheadMs = max(0, ms(exchange.sentAt - exchange.started) - r.queueMs - r.loadMs)
        r.timePerOutputTokenMs = usage.timePerOutputTokenMs
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

    /// The client's response status and headers for an upstream answer: the upstream's minus
    /// hop-by-hop fields, no buffering for event streams, the request ID and rate-limit headers.
    public static func responseHead(_ exchange: UpstreamExchange) -> (HTTPResponse.Status, HTTPFields, isSSE: Bool) {
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
    public func recordRefusal(
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

    /// A lease on a peer when this node would have to load `spec` and a live peer has it
    /// loaded with a free slot; or, when no node has it loaded or loading, on the peer the cold
    /// placement picks for its free memory (`cold`: the request tells the peer to load it). Only
    /// OpenAI-shaped paths that every Corral serves as they are (`/v1/…`), only local models,
    /// never a request that was relayed already.
    func peerLease(_ spec: ModelSpec?, caller: Caller, headers: HTTPFields, upstreamPath: String, affinity: PromptAffinity? = nil) async
        -> (lease: Lease, cold: Bool)?
    {
        guard let cluster, caller.admittedBy == nil, headers[HTTPField.Name(ClusterNode.hopHeader)!] == nil, upstreamPath.hasPrefix("/v1/"),
            let spec, spec.path != nil, await scheduler.instance(for: spec.id) == nil
        else { return nil }
        if let peer = cluster.peer(for: spec.id, affinity: affinity) {
            return (Lease.onPeer(peer.name, url: peer.url, model: spec.id), false)
        }
        guard case .peer(let name, _) = await cluster.coldPlacement(for: spec), let peer = cluster.livePeer(named: name) else { return nil }
        return (Lease.onPeer(peer.name, url: peer.url, model: spec.id), true)
    }

    /// Declines a request a peer relayed here (see `open`) unless this node can serve it: the
    /// model is in this node's catalog, and loaded here or placed here to be loaded (`placedHere`).
    func declineUnlessServable(_ modelName: String, spec: ModelSpec?, placedHere: Bool) async throws(ServingError) {
        guard let spec else {
            throw Self.declined("model '\(modelName)' is not in this node's catalog", code: .notInCatalogHere)
        }
        if !placedHere, await scheduler.instance(for: spec.id) == nil {
            // Relayed here because this node had the model loaded a heartbeat ago; it has not
            // now. Decline rather than load: the sending node serves it itself.
            throw Self.declined("model '\(spec.id)' is not loaded on this node", code: .notLoadedHere)
        }
    }

    /// The refusal of a relayed request that the sending node serves itself instead.
    static func declined(_ message: String, code: ServingError.Code) -> ServingError {
        var declined = ServingError(status: 503, code: code, message, retryAfter: 1)
        declined.headers = [ClusterNode.declinedHeader: "1"]
        return declined
    }

    /// Classifies a failure while reading an upstream answer: the instance died (502), or it went
    /// silent past the read timeout (504), in which case it is stopped.
    public func bodyFailure(_ error: any Error, lease: Lease) async -> ServingError {
        if Self.isReadTimeout(error) {
            await scheduler.reportUnresponsive(lease, reason: "no bytes within the read timeout")
            return ServingError(
                status: 504, code: .upstreamTimeout,
                "model '\(lease.modelID)' stopped answering (nothing within the read timeout); its llama-server was stopped and the next request starts a new one",
                retryAfter: 1)
        }
        return ServingError(status: 502, code: .upstreamCrashed, "model '\(lease.modelID)' stopped while answering", retryAfter: 1)
    }

    /// The ledger's error kind for an upstream answer (`upstream_400` …), nil for success.
    public static func upstreamErrorKind(_ status: HTTPResponse.Status) -> String? {
        status.code >= 400 ? "upstream_\(status.code)" : nil
    }

    /// The upstream sent nothing within the client's read timeout (`scheduler.readTimeout`).
    static func isReadTimeout(_ error: any Error) -> Bool {
        (error as? HTTPClientError) == .readTimeout
    }

    /// The record of a request that held a lease, with llama-server's usage and timings when known.
    func leaseRecord(
        requestID: String, route: String, lease: Lease, status: Int, errorKind: String? = nil, started: ContinuousClock.Instant,
        firstByte: ContinuousClock.Instant? = nil, usage: AnswerUsage = AnswerUsage(), disconnected: Bool = false
    ) -> RequestRecord {
        var r = RequestRecord(
            requestID: requestID, route: route, model: lease.modelID, status: status, errorKind: errorKind,
            queueMs: ms(lease.queueDuration), loadMs: ms(lease.loadDuration),
            timeToFirstByteMs: firstByte.map { ms($0 - started) }, totalMs: ms(ContinuousClock.now - started),
            promptTokens: usage.promptTokens, cachedTokens: usage.cachedTokens, completionTokens: usage.completionTokens,
            promptTokensPerSecond: usage.promptTokensPerSecond, generationTokensPerSecond: usage.generationTokensPerSecond,
            clientDisconnected: disconnected)
        r.node = lease.peer
        r.replica = lease.replica
        return r
    }
}

/// A duration in milliseconds, as the ledger records them.
public func ms(_ d: Duration) -> Double {
    Double(d.components.seconds) * 1000 + Double(d.components.attoseconds) / 1e15
}
