import Access
import AsyncHTTPClient
import Foundation
import HTTPTypes
import HummingbirdCore
import NIOCore
import NIOHTTP1
import NIOHTTPTypes
import Runtime
import Serving
import Synchronization
import Telemetry

/// The fast lane: OpenAI chat, completion and embedding requests for a local model, streamed or
/// not, answered by a channel handler in front of Hummingbird.
///
/// Such a request is most of a gateway's traffic and its overhead is what clients feel. Through
/// the router it crosses NIO's async bridge twice, gets a request context, a middleware chain and
/// a response writer, and settles in a second task; the first request of a new connection also
/// waits for Hummingbird's connection task to start. Here the handler collects the body on the
/// event loop, makes every check the router would (host guard, key, body, profile, fields) with
/// the same functions, and runs one task on the connection's loop for what must wait (admission,
/// the scheduler, the upstream answer). A whole answer goes out in one write; an event stream
/// goes through the router's own call into the response pump, ``Relay/passBody(_:status:isSSE:hideUsage:errorShape:write:end:)``.
///
/// Anything else — browsers (an `Origin`), remote models, chunked or oversized bodies,
/// `Connection: close`, and every request that a check refuses — is handed to Hummingbird
/// untouched, so errors and rarer features have one implementation. Set `CORRAL_FAST_LANE=0`
/// to send everything through the router.
struct FastLane: Sendable {
    let routes: OpenAIRoutes
    let access: AccessControl?
    /// This node's cluster: a request a peer relays with the cluster secret is served for the
    /// caller that peer admitted (as ``AuthMiddleware`` does).
    var cluster: ClusterNode? = nil
    /// Hosts a loopback-only listener accepts besides local names; nil: no host guard.
    let allowedHosts: Set<String>?
    let maxBodyBytes: Int
    let executors: EventLoopExecutors

    /// The routes the lane serves, and whether each asks upstream for usage on streams.
    static let paths: [String: Bool] = ["/v1/chat/completions": true, "/v1/completions": true, "/v1/embeddings": false]

    /// Off when `CORRAL_FAST_LANE` is `0`, `false` or `off`.
    static var isEnabled: Bool {
        let value = ProcessInfo.processInfo.environment["CORRAL_FAST_LANE"]?.lowercased()
        return !["0", "false", "off"].contains(value ?? "")
    }

    var relay: Relay { routes.relay }

    /// The route a request head may take the lane on, or nil when it belongs to the router.
    func route(for head: HTTPRequest) -> String? {
        guard head.method == .post, let path = head.path, Self.paths[path] != nil,
              // The lane answers local models only: with none configured, it would only parse
              // each body to hand the request on.
              routes.scheduler.currentCatalog.localModelCount > 0
        else { return nil }
        let fields = head.headerFields
        guard fields[.origin] == nil, fields[.expect] == nil, fields[.transferEncoding] == nil,
              let length = fields[.contentLength].flatMap(Int.init), length <= maxBodyBytes
        else { return nil }
        if let connection = fields[.connection], connection.lowercased().contains("close") { return nil }
        if let allowedHosts, let authority = head.authority {
            let host = HostGuardMiddleware.hostName(authority)
            guard HostGuardMiddleware.isLocal(host) || allowedHosts.contains(host) else { return nil }
        }
        return path
    }

    /// A request the lane will answer: checked and ready to send.
    struct Ticket: Sendable {
        let path: String
        let headers: HTTPFields
        let caller: Caller
        let post: Relay.CheckedPost
        /// The model, looked up once: the lane's checks and the relay use the same spec.
        let model: RequestedModel
    }

    /// Makes the router's checks; nil when the router should answer (including every refusal).
    func ticket(path: String, head: HTTPRequest, body buffer: ByteBuffer) -> Ticket? {
        guard let body = try? JSON.object(Data(buffer.readableBytesView)),
              let (outgoing, checked) = try? routes.prepare(path: path, buffer: buffer, body: body),
              let post = try? Relay.check(buffer: outgoing, body: checked, injectUsage: Self.paths[path] ?? false),
              case let model = relay.resolve(post.modelName), let spec = model.spec, case .local = spec.backend,
              // A request that would hear of a load in progress (a stream, or one that asks with
              // X-Corral-Progress) is the router's while its model is not ready.
              !Relay.hearsOfLoads(streaming: post.streaming, head.headerFields) || routes.scheduler.isReady(spec.id)
        else { return nil }
        // Authenticated once the lane is sure to take the request: one for a remote model goes
        // to the router, which authenticates it itself.
        var caller = Caller.anonymous
        if let cluster, let from = head.headerFields[Self.hopField] {
            guard cluster.trusts(head.headerFields[Self.secretField]) else { return nil }
            caller = Caller(teamID: head.headerFields[Self.teamField], keyPrefix: head.headerFields[Self.keyField], admittedBy: from)
        } else if let access {
            let key = AccessControl.presentedKey(authorization: head.headerFields[.authorization], apiKey: head.headerFields[Self.apiKeyField])
            guard let known = try? access.authenticate(key) else { return nil }
            caller = known
        }
        return Ticket(path: path, headers: head.headerFields, caller: caller, post: post, model: model)
    }

    static let apiKeyField = HTTPField.Name("x-api-key")!
    static let hopField = HTTPField.Name(ClusterNode.hopHeader)!
    static let secretField = HTTPField.Name(ClusterNode.secretHeader)!
    static let teamField = HTTPField.Name(ClusterNode.teamHeader)!
    static let keyField = HTTPField.Name(ClusterNode.keyHeader)!

    /// One answer to write: head, and the whole body or its chunks as they come.
    enum Output: Sendable {
        /// A whole answer, written and flushed at once.
        case whole(HTTPResponse, ByteBuffer)
        case head(HTTPResponse)
        case body(ByteBuffer)
        case end
    }

    /// Sends the request upstream and hands each part of the answer to `write` (on the
    /// connection's loop); settles the request (ledger, usage, slot) after the answer is out.
    /// Reads the answer with the router's own calls (``Relay/readWhole(_:keepingUpTo:)``, the
    /// response pump); only the writing differs.
    func answer(_ ticket: Ticket, write: @escaping @Sendable (Output) async -> Bool) async {
        let relay = self.relay
        let exchange: UpstreamExchange
        do {
            exchange = try await relay.open(
                route: ticket.path, method: .POST, upstreamPath: ticket.path, model: ticket.model, body: ticket.post.outgoing,
                headers: ticket.headers, caller: ticket.caller, tokens: ticket.post.tokens)
        } catch {
            await Self.writeError(OpenAIError(error), write)
            return
        }
        let (status, headers, isSSE) = Relay.responseHead(exchange)
        if !isSSE, exchange.gatheredLength != nil {
            do {
                let answer = try await relay.readWhole(exchange)
                _ = await write(.whole(HTTPResponse(status: status, headerFields: headers), answer.body))
                await relay.settleAnswer(exchange, status: Int(status.code), answer: answer)
            } catch {
                await Self.writeError(OpenAIError(error), write)
            }
            return
        }
        // An event stream, or a long answer (many embeddings): passed on chunk by chunk, each
        // flushed as it comes. A client already gone fails the first chunk's write.
        _ = await write(.head(HTTPResponse(status: status, headerFields: headers)))
        let ended = await relay.passBody(
            exchange, status: status, isSSE: isSSE, hideUsage: ticket.post.hideUsage,
            write: { await write(.body($0)) }, end: { _ = await write(.end) })
        // The handler must see the end of the lane's answer even when the client left mid-way.
        if !ended { _ = await write(.end) }
    }

    private static func writeError(_ error: OpenAIError, _ write: @Sendable (Output) async -> Bool) async {
        _ = await write(.whole(HTTPResponse(status: error.status, headerFields: error.headerFields), ByteBuffer(string: error.jsonBody)))
    }
}

/// Takes the requests ``FastLane`` serves out of the HTTP/1 pipeline, after Hummingbird's
/// connection state handler (idle timeout and graceful shutdown see them) and before its
/// request handling. Requests on one connection are answered in order: while the lane answers,
/// later requests wait here; while the router has requests outstanding, new ones go to it too.
final class FastLaneHandler: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPRequestPart
    typealias InboundOut = HTTPRequestPart
    typealias OutboundIn = HTTPResponsePart
    typealias OutboundOut = HTTPResponsePart

    private enum State {
        case idle
        /// A request for the lane whose body is arriving.
        case collecting(HTTPRequest, path: String, body: ByteBuffer)
        /// A request passed to the router, up to its end.
        case passing
        /// The lane is answering a request.
        case answering
    }

    private let lane: FastLane
    private var state = State.idle
    /// Requests given to the router whose responses have not ended.
    private var routerOutstanding = 0
    /// Parts that arrived while the lane was answering.
    private var waiting: [HTTPRequestPart] = []
    private var readPending = false
    private var removed = false

    init(lane: FastLane) {
        self.lane = lane
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        removed = true
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        receive(unwrapInboundIn(data), context: context)
    }

    private func receive(_ part: HTTPRequestPart, context: ChannelHandlerContext) {
        if case .answering = state {
            waiting.append(part)
            return
        }
        switch (part, state) {
        case (.head(let head), .idle):
            if routerOutstanding == 0, let path = lane.route(for: head) {
                state = .collecting(head, path: path, body: context.channel.allocator.buffer(capacity: 0))
            } else {
                pass(part, context: context)
            }
        case (.body(let chunk), .collecting(let head, let path, var body)):
            state = .idle  // keep `body` uniquely referenced while appending
            body.writeImmutableBuffer(chunk)
            if body.readableBytes > lane.maxBodyBytes {  // longer than its content-length said
                replay(head, body, end: false, context: context)
            } else {
                state = .collecting(head, path: path, body: body)
            }
        case (.end, .collecting(let head, let path, let body)):
            guard let ticket = lane.ticket(path: path, head: head, body: body) else {
                replay(head, body, end: true, context: context)
                return
            }
            start(ticket, context: context)
        case (.end, .passing):
            state = .idle
            context.fireChannelRead(wrapInboundOut(part))
        default:
            pass(part, context: context)
        }
    }

    /// Hands a part to the router; a head opens a request the router now owes a response to.
    private func pass(_ part: HTTPRequestPart, context: ChannelHandlerContext) {
        if case .head = part {
            routerOutstanding += 1
            state = .passing
        }
        context.fireChannelRead(wrapInboundOut(part))
    }

    /// Gives a request the lane had started collecting to the router instead.
    private func replay(_ head: HTTPRequest, _ body: ByteBuffer, end: Bool, context: ChannelHandlerContext) {
        pass(.head(head), context: context)
        if body.readableBytes > 0 { context.fireChannelRead(wrapInboundOut(.body(body))) }
        if end {
            state = .idle
            context.fireChannelRead(wrapInboundOut(.end(nil)))
        }
    }

    private func start(_ ticket: FastLane.Ticket, context: ChannelHandlerContext) {
        state = .answering
        lane.routes.metrics.fastLaneRequests.add(1, ordering: .relaxed)
        let loop = context.eventLoop
        let bound = NIOLoopBound((self, context), eventLoop: loop)
        let write: @Sendable (FastLane.Output) async -> Bool = { output in
            if loop.inEventLoop { return bound.value.0.emit(output, context: bound.value.1) }
            return (try? await loop.submit { bound.value.0.emit(output, context: bound.value.1) }.get()) ?? false
        }
        let lane = self.lane
        let executor: (any TaskExecutor)? = lane.executors.executor(for: loop)
        Task(executorPreference: executor ?? globalConcurrentExecutor) {
            await lane.answer(ticket, write: write)
        }
    }

    /// Writes one part of the lane's answer; false when the client is gone.
    private func emit(_ output: FastLane.Output, context: ChannelHandlerContext) -> Bool {
        let open = !removed && context.channel.isActive
        func head(_ response: HTTPResponse) {
            var response = response
            response.headerFields[.server] = "corral"
            response.headerFields[.date] = HTTPDate.now()
            context.write(wrapOutboundOut(.head(response)), promise: nil)
        }
        switch output {
        case .whole(let response, let body):
            if open {
                head(response)
                context.write(wrapOutboundOut(.body(body)), promise: nil)
                context.writeAndFlush(wrapOutboundOut(.end(nil)), promise: nil)
            }
            answered(context: context)
        case .head(let response):
            if open { head(response) }
        case .body(let buffer):
            if open { context.writeAndFlush(wrapOutboundOut(.body(buffer)), promise: nil) }
        case .end:
            if open { context.writeAndFlush(wrapOutboundOut(.end(nil)), promise: nil) }
            answered(context: context)
        }
        return open
    }

    /// The lane's answer is out: requests that waited are handled in order.
    private func answered(context: ChannelHandlerContext) {
        state = .idle
        guard !removed else { return }
        let parts = waiting
        waiting = []
        for (i, part) in parts.enumerated() {
            receive(part, context: context)
            if case .answering = state {
                waiting.append(contentsOf: parts[(i + 1)...])
                break
            }
        }
        if !parts.isEmpty { context.fireChannelReadComplete() }
        if readPending, !isAnswering {
            readPending = false
            context.read()
        }
    }

    private var isAnswering: Bool {
        if case .answering = state { return true }
        return false
    }

    /// Reads stop while the lane answers, so a client that pipelines cannot queue without bound.
    func read(context: ChannelHandlerContext) {
        if isAnswering {
            readPending = true
        } else {
            context.read()
        }
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        if case .end = unwrapOutboundIn(data) { routerOutstanding = max(0, routerOutstanding - 1) }
        context.write(data, promise: promise)
    }
}

/// The `Date` header's text, formatted once a second.
enum HTTPDate {
    private static let cache = Mutex<(second: Int, text: String)>((-1, ""))
    private static let days = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"]
    private static let months = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]

    static func now() -> String {
        var seconds = time(nil)
        return cache.withLock { c in
            if c.second == seconds { return c.text }
            var t = tm()
            gmtime_r(&seconds, &t)
            func two(_ n: Int32) -> String { n < 10 ? "0\(n)" : "\(n)" }
            c.text = "\(days[Int(t.tm_wday)]), \(two(t.tm_mday)) \(months[Int(t.tm_mon)]) \(t.tm_year + 1900) \(two(t.tm_hour)):\(two(t.tm_min)):\(two(t.tm_sec)) GMT"
            c.second = seconds
            return c.text
        }
    }
}
