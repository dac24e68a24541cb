import AsyncHTTPClient
import NIOCore
import NIOHTTP1
import NIOPosix

/// HTTP/1.1 to the llama-servers Corral started itself, and to cluster peers at an IP address:
/// plain keep-alive connections, kept per event loop and address.
///
/// A general client does work on every request that these never need: URL parsing, redirect
/// and TLS handling, tracing spans, a pool shared across event loops behind a lock. Requests run
/// on their connection's event loop (see ``EventLoopExecutor``), so this client takes and returns
/// connections on that same loop without locking. Remote upstreams keep using AsyncHTTPClient.
///
/// Errors are AsyncHTTPClient's, so the relay classifies them one way for both clients:
/// `.readTimeout` when the server sends nothing for `readTimeout` (checked once a second, or four
/// times per timeout when it is shorter), `.remoteConnectionClosed` when the connection ends
/// before the answer does.
///
/// An answer with a `content-length` of at most 8 MiB (every non-streamed answer) is gathered on
/// the event loop and handed over whole; other answers (event streams) are handed over at their
/// head and their body streams, without backpressure: llama-server produces tokens far slower
/// than a client reads them, and a client that stops reading is cut off by its own idle timeout.
public final class LocalUpstreamClient: Sendable {
    private let pools: [ObjectIdentifier: IdlePool]
    private let group: any EventLoopGroup
    /// Idle connections are closed before llama-server's own keep-alive timeout (5 s) would.
    static let idleTimeout = TimeAmount.seconds(3)
    /// The largest answer with a known length that is gathered before being handed over.
    public static let gatherLimit = 8 << 20

    public init(group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton, readTimeout: Duration = .seconds(600)) {
        self.group = group
        var pools: [ObjectIdentifier: IdlePool] = [:]
        for loop in group.makeIterator() { pools[ObjectIdentifier(loop)] = IdlePool(loop: loop, readTimeout: TimeAmount(readTimeout)) }
        self.pools = pools
    }

    /// Sends one request to `host:port` (an IP address: a llama-server on loopback by default, or
    /// a cluster peer) and returns the answer's head (and, for a gathered answer, its whole body).
    /// A kept-alive connection that turns out closed is replaced once.
    public func execute(
        host: String = "127.0.0.1", port: Int, method: HTTPMethod, path: String, headers: HTTPHeaders, body: ByteBuffer?
    ) async throws -> HTTPClientResponse {
        let endpoint = UpstreamEndpoint(host: host, port: port)
        let loop = MultiThreadedEventLoopGroup.currentEventLoop.flatMap { pools[ObjectIdentifier($0)] != nil ? $0 : nil } ?? group.any()
        let pool = pools[ObjectIdentifier(loop)]!
        var headers = headers
        headers.replaceOrAdd(name: "host", value: host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)")
        headers.replaceOrAdd(name: "content-length", value: String(body?.readableBytes ?? 0))
        let head = HTTPRequestHead(version: .http1_1, method: method, uri: path, headers: headers)
        let exchange = Exchange(promise: loop.makePromise())
        let start: @Sendable () -> Void = {
            pool.send(head, body: body, endpoint: endpoint, exchange: exchange)
        }
        if loop.inEventLoop { start() } else { loop.execute(start) }
        return try await withTaskCancellationHandler {
            try await exchange.promise.futureResult.get()
        } onCancel: {
            loop.execute { exchange.cancel() }
        }
    }
}

/// One request's answer as it arrives; touched only on its event loop.
final class Exchange: @unchecked Sendable {
    let promise: EventLoopPromise<HTTPClientResponse>
    var channel: (any Channel)?
    var cancelled = false
    /// Set once the answer has ended (or failed): its connection may already serve another.
    var ended = false
    /// Set once the head has been handed over with a streaming body.
    var stream: AsyncThrowingStream<ByteBuffer, any Error>.Continuation?

    init(promise: EventLoopPromise<HTTPClientResponse>) { self.promise = promise }

    func cancel() {
        guard !ended else { return }
        cancelled = true
        promise.fail(CancellationError())
        channel?.close(promise: nil)
    }
}

/// Where a connection goes: an IP address (never a name to resolve) and a port.
struct UpstreamEndpoint: Hashable, Sendable {
    let host: String
    let port: Int
}

/// The connections of one event loop, idle ones by address; touched only on that loop.
///
/// One repeating check per loop (while it has connections) enforces the read timeout of answers
/// in progress and closes connections idle too long, instead of a timer per request.
final class IdlePool: @unchecked Sendable {
    let loop: any EventLoop
    let readTimeout: TimeAmount
    private var idle: [UpstreamEndpoint: [UpstreamHandler]] = [:]
    private var live: [ObjectIdentifier: UpstreamHandler] = [:]
    private var sweeper: RepeatedTask?

    init(loop: any EventLoop, readTimeout: TimeAmount) {
        self.loop = loop
        self.readTimeout = readTimeout
    }

    func send(_ head: HTTPRequestHead, body: ByteBuffer?, endpoint: UpstreamEndpoint, exchange: Exchange) {
        guard !exchange.cancelled else { return }
        while let handler = idle[endpoint]?.popLast() {
            guard handler.isActive else { continue }
            handler.start(head, body: body, exchange: exchange) { [self] in
                // The server had closed it (llama-server's keep-alive timeout, or an earlier
                // request's client went away): the request got no answer, so once more on a
                // fresh connection.
                connect(head, body: body, endpoint: endpoint, exchange: exchange)
            }
            return
        }
        connect(head, body: body, endpoint: endpoint, exchange: exchange)
    }

    private func connect(_ head: HTTPRequestHead, body: ByteBuffer?, endpoint: UpstreamEndpoint, exchange: Exchange) {
        guard !exchange.cancelled else { return }
        // An address, not a host name: NIO resolves any name, "127.0.0.1" included, with
        // getaddrinfo on a dispatch queue (A and AAAA), which cost every new connection two
        // thread crossings and 0.4-0.7 ms. llama-server closes the connection after each
        // stream, so every streamed request paid it.
        let address: SocketAddress
        do { address = try SocketAddress(ipAddress: endpoint.host, port: endpoint.port) } catch {
            exchange.ended = true
            exchange.promise.fail(error)
            return
        }
        let handler = UpstreamHandler(endpoint: endpoint, pool: self)
        live[ObjectIdentifier(handler)] = handler
        if sweeper == nil {
            let interval = min(TimeAmount.seconds(1), .nanoseconds(readTimeout.nanoseconds / 4))
            sweeper = loop.scheduleRepeatedTask(initialDelay: interval, delay: interval) { [weak self] _ in self?.sweep() }
        }
        ClientBootstrap(group: loop)
            .channelOption(.tcpOption(.tcp_nodelay), value: 1)
            .connectTimeout(.seconds(5))
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHTTPClientHandlers()
                    try channel.pipeline.syncOperations.addHandler(handler)
                }
            }
            .connect(to: address)
            .whenComplete { [self] result in
                switch result {
                case .success:
                    handler.start(head, body: body, exchange: exchange, retry: nil)
                case .failure(let error):
                    forget(handler)
                    exchange.ended = true
                    exchange.promise.fail(error)
                }
            }
    }

    /// Keeps a connection whose answer has ended.
    func put(_ handler: UpstreamHandler) {
        idle[handler.endpoint, default: []].append(handler)
    }

    /// Drops a connection that has closed.
    func forget(_ handler: UpstreamHandler) {
        live[ObjectIdentifier(handler)] = nil
        idle[handler.endpoint]?.removeAll { $0 === handler }
        if live.isEmpty {
            sweeper?.cancel()
            sweeper = nil
        }
    }

    private func sweep() {
        let now = NIODeadline.now()
        for handler in live.values { handler.check(now: now, readTimeout: readTimeout, idleTimeout: LocalUpstreamClient.idleTimeout) }
    }
}

/// The last handler of an upstream connection: sends a request, hands its answer to the waiting
/// ``Exchange``, and returns the connection to its pool when the answer has ended.
final class UpstreamHandler: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = HTTPClientResponsePart
    typealias OutboundOut = HTTPClientRequestPart

    let endpoint: UpstreamEndpoint
    private weak var pool: IdlePool?
    private var context: ChannelHandlerContext?
    private var exchange: Exchange?
    private var responseHead: HTTPResponseHead?
    private var gathered: ByteBuffer?
    private var sawBytes = false
    private var retry: (() -> Void)?
    private var lastRead = NIODeadline.now()
    /// When the connection went back to the pool (nil while it serves a request).
    private var idleSince: NIODeadline?

    init(endpoint: UpstreamEndpoint, pool: IdlePool) {
        self.endpoint = endpoint
        self.pool = pool
    }

    var isActive: Bool { context?.channel.isActive ?? false }

    func handlerAdded(context: ChannelHandlerContext) { self.context = context }
    func handlerRemoved(context: ChannelHandlerContext) { self.context = nil }

    /// Writes the request; `retry` (for a reused connection) runs instead of failing when the
    /// connection turns out closed before any answer.
    func start(_ head: HTTPRequestHead, body: ByteBuffer?, exchange: Exchange, retry: (() -> Void)?) {
        guard let context else {
            if let retry { retry() } else { exchange.promise.fail(HTTPClientError.remoteConnectionClosed) }
            return
        }
        guard !exchange.cancelled else {  // cancelled while connecting
            context.close(promise: nil)
            return
        }
        self.exchange = exchange
        self.retry = retry
        responseHead = nil
        gathered = nil
        sawBytes = false
        idleSince = nil
        exchange.channel = context.channel
        lastRead = .now()
        context.write(wrapOutboundOut(.head(head)), promise: nil)
        if let body, body.readableBytes > 0 { context.write(wrapOutboundOut(.body(.byteBuffer(body))), promise: nil) }
        context.writeAndFlush(wrapOutboundOut(.end(nil)), promise: nil)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        lastRead = .now()
        sawBytes = true
        guard let exchange else { return }
        switch unwrapInboundIn(data) {
        case .head(let head):
            responseHead = head
            let length = head.headers.first(name: "content-length").flatMap(Int.init)
            if let length, length <= LocalUpstreamClient.gatherLimit {
                gathered = context.channel.allocator.buffer(capacity: length)
            } else {
                let (stream, continuation) = AsyncThrowingStream.makeStream(of: ByteBuffer.self)
                exchange.stream = continuation
                let channel = context.channel
                continuation.onTermination = { termination in
                    // The reader went away before the end: the connection cannot be reused.
                    if case .cancelled = termination { channel.close(promise: nil) }
                }
                exchange.promise.succeed(HTTPClientResponse(version: head.version, status: head.status, headers: head.headers, body: .stream(stream)))
            }
        case .body(let part):
            if gathered != nil {
                var part = part
                gathered!.writeBuffer(&part)
            } else {
                exchange.stream?.yield(part)
            }
        case .end:
            let head = responseHead!
            if let body = gathered {
                exchange.promise.succeed(HTTPClientResponse(version: head.version, status: head.status, headers: head.headers, body: .bytes(body)))
            } else {
                exchange.stream?.finish()
            }
            exchange.ended = true
            self.exchange = nil
            retry = nil
            if head.isKeepAlive && !exchange.cancelled, let pool {
                idleSince = .now()
                pool.put(self)
            } else {
                context.close(promise: nil)
            }
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        fail(HTTPClientError.remoteConnectionClosed)
        pool?.forget(self)
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        // The decoder reports an answer cut off by the server closing as a parse error.
        fail(error is HTTPParserError ? HTTPClientError.remoteConnectionClosed : error)
        context.close(promise: nil)
    }

    /// The pool's periodic check: an answer silent for `readTimeout` fails, a connection idle for
    /// `idleTimeout` closes.
    func check(now: NIODeadline, readTimeout: TimeAmount, idleTimeout: TimeAmount) {
        if exchange != nil, now - lastRead >= readTimeout {
            fail(HTTPClientError.readTimeout, allowRetry: false)
            context?.close(promise: nil)
        } else if let idleSince, now - idleSince >= idleTimeout {
            self.idleSince = nil
            context?.close(promise: nil)
        }
    }

    private func fail(_ error: any Error, allowRetry: Bool = true) {
        guard let exchange else { return }
        let retry = self.retry
        self.exchange = nil
        self.retry = nil
        if allowRetry, !sawBytes, let retry {
            // The retry starts the same exchange on another connection.
            retry()
        } else if let stream = exchange.stream {
            exchange.ended = true
            stream.finish(throwing: error)
        } else {
            exchange.ended = true
            exchange.promise.fail(error)
        }
    }
}
