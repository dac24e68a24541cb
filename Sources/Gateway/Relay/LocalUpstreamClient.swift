import AsyncHTTPClient
import NIOCore
import NIOHTTP1
import NIOPosix

/// HTTP/1.1 to the llama-servers Corral started itself: plain keep-alive connections on
/// loopback, kept per event loop and port.
///
/// A general client does work on every request that these never need: URL parsing, redirect
/// and TLS handling, tracing spans, a pool shared across event loops behind a lock. Requests run
/// on their connection's event loop (see ``EventLoopExecutor``), so this client takes and returns
/// connections on that same loop without locking. Remote upstreams keep using AsyncHTTPClient.
///
/// Errors are AsyncHTTPClient's, so the relay classifies them one way for both clients:
/// `.readTimeout` when the server sends nothing for `readTimeout`, `.remoteConnectionClosed` when
/// the connection ends before the answer does.
///
/// An answer with a `content-length` of at most 8 MiB (every non-streamed answer) is gathered on
/// the event loop and handed over whole; other answers (event streams) are handed over at their
/// head and their body streams, without backpressure: llama-server produces tokens far slower
/// than a client reads them, and a client that stops reading is cut off by its own idle timeout.
public final class LocalUpstreamClient: Sendable {
    private let pools: [ObjectIdentifier: IdlePool]
    private let group: any EventLoopGroup
    let readTimeout: TimeAmount
    /// Idle connections are closed before llama-server's own keep-alive timeout (5 s) would.
    static let idleTimeout = TimeAmount.seconds(3)
    /// The largest answer with a known length that is gathered before being handed over.
    static let gatherLimit = 8 << 20

    public init(group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton, readTimeout: Duration = .seconds(600)) {
        self.group = group
        self.readTimeout = TimeAmount(readTimeout)
        var pools: [ObjectIdentifier: IdlePool] = [:]
        for loop in group.makeIterator() { pools[ObjectIdentifier(loop)] = IdlePool(loop: loop) }
        self.pools = pools
    }

    /// Sends one request to `127.0.0.1:port` and returns the answer's head (and, for a gathered
    /// answer, its whole body). A kept-alive connection that turns out closed is replaced once.
    public func execute(
        port: Int, method: HTTPMethod, path: String, headers: HTTPHeaders, body: ByteBuffer?
    ) async throws -> HTTPClientResponse {
        let loop = MultiThreadedEventLoopGroup.currentEventLoop.flatMap { pools[ObjectIdentifier($0)] != nil ? $0 : nil } ?? group.any()
        let pool = pools[ObjectIdentifier(loop)]!
        var headers = headers
        headers.replaceOrAdd(name: "host", value: "127.0.0.1:\(port)")
        headers.replaceOrAdd(name: "content-length", value: String(body?.readableBytes ?? 0))
        let head = HTTPRequestHead(version: .http1_1, method: method, uri: path, headers: headers)
        let exchange = Exchange(promise: loop.makePromise())
        let readTimeout = self.readTimeout
        let start: @Sendable () -> Void = {
            pool.send(head, body: body, port: port, exchange: exchange, readTimeout: readTimeout)
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
    /// Set once the head has been handed over with a streaming body.
    var stream: AsyncThrowingStream<ByteBuffer, any Error>.Continuation?

    init(promise: EventLoopPromise<HTTPClientResponse>) { self.promise = promise }

    func cancel() {
        cancelled = true
        promise.fail(CancellationError())
        channel?.close(promise: nil)
    }
}

/// The idle connections of one event loop, by port; touched only on that loop.
final class IdlePool: @unchecked Sendable {
    let loop: any EventLoop
    private var idle: [Int: [(channel: any Channel, handler: UpstreamHandler)]] = [:]

    init(loop: any EventLoop) { self.loop = loop }

    func send(_ head: HTTPRequestHead, body: ByteBuffer?, port: Int, exchange: Exchange, readTimeout: TimeAmount) {
        guard !exchange.cancelled else { return }
        while let (channel, handler) = idle[port]?.popLast() {
            guard channel.isActive else { continue }
            handler.start(head, body: body, exchange: exchange, readTimeout: readTimeout) { [self] in
                // The server had closed it (llama-server's keep-alive timeout, or an earlier
                // request's client went away): the request got no answer, so once more on a
                // fresh connection.
                connect(head, body: body, port: port, exchange: exchange, readTimeout: readTimeout)
            }
            return
        }
        connect(head, body: body, port: port, exchange: exchange, readTimeout: readTimeout)
    }

    private func connect(_ head: HTTPRequestHead, body: ByteBuffer?, port: Int, exchange: Exchange, readTimeout: TimeAmount) {
        guard !exchange.cancelled else { return }
        let handler = UpstreamHandler(port: port, pool: self)
        ClientBootstrap(group: loop)
            .channelOption(.tcpOption(.tcp_nodelay), value: 1)
            .connectTimeout(.seconds(5))
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHTTPClientHandlers()
                    try channel.pipeline.syncOperations.addHandler(handler)
                }
            }
            .connect(host: "127.0.0.1", port: port)
            .whenComplete { result in
                switch result {
                case .success:
                    handler.start(head, body: body, exchange: exchange, readTimeout: readTimeout, retry: nil)
                case .failure(let error):
                    exchange.promise.fail(error)
                }
            }
    }

    /// Keeps a connection whose answer has ended, closing it if it stays idle too long.
    func put(_ channel: any Channel, _ handler: UpstreamHandler) {
        idle[handler.port, default: []].append((channel, handler))
        let generation = handler.generation
        loop.scheduleTask(in: LocalUpstreamClient.idleTimeout) { [self] in
            guard handler.generation == generation, let i = idle[handler.port]?.firstIndex(where: { $0.handler === handler }) else { return }
            idle[handler.port]!.remove(at: i)
            channel.close(promise: nil)
        }
    }
}

/// The last handler of an upstream connection: sends a request, hands its answer to the waiting
/// ``Exchange``, and returns the connection to its pool when the answer has ended.
final class UpstreamHandler: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = HTTPClientResponsePart
    typealias OutboundOut = HTTPClientRequestPart

    let port: Int
    unowned let pool: IdlePool
    /// Bumped for every request, so an old idle timer cannot close a reused connection.
    private(set) var generation = 0
    private var context: ChannelHandlerContext?
    private var exchange: Exchange?
    private var responseHead: HTTPResponseHead?
    private var gathered: ByteBuffer?
    private var sawBytes = false
    private var retry: (() -> Void)?
    private var lastRead = NIODeadline.now()
    private var timeout: Scheduled<Void>?

    init(port: Int, pool: IdlePool) {
        self.port = port
        self.pool = pool
    }

    func handlerAdded(context: ChannelHandlerContext) { self.context = context }
    func handlerRemoved(context: ChannelHandlerContext) { self.context = nil }

    /// Writes the request; `retry` (for a reused connection) runs instead of failing when the
    /// connection turns out closed before any answer.
    func start(_ head: HTTPRequestHead, body: ByteBuffer?, exchange: Exchange, readTimeout: TimeAmount, retry: (() -> Void)?) {
        guard let context else {
            if let retry { retry() } else { exchange.promise.fail(HTTPClientError.remoteConnectionClosed) }
            return
        }
        generation += 1
        self.exchange = exchange
        self.retry = retry
        responseHead = nil
        gathered = nil
        sawBytes = false
        exchange.channel = context.channel
        lastRead = .now()
        armTimeout(readTimeout, on: context.eventLoop)
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
            endExchange()
            if head.isKeepAlive && !exchange.cancelled {
                pool.put(context.channel, self)
            } else {
                context.close(promise: nil)
            }
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        fail(HTTPClientError.remoteConnectionClosed, allowRetry: true)
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        // The decoder reports an answer cut off by the server closing as a parse error.
        fail(error is HTTPParserError ? HTTPClientError.remoteConnectionClosed : error, allowRetry: true)
        context.close(promise: nil)
    }

    private func fail(_ error: any Error, allowRetry: Bool) {
        guard let exchange else { return }
        let retry = self.retry
        endExchange()
        if allowRetry, !sawBytes, let retry {
            retry()
        } else if let stream = exchange.stream {
            stream.finish(throwing: error)
        } else {
            exchange.promise.fail(error)
        }
    }

    private func endExchange() {
        exchange = nil
        retry = nil
        timeout?.cancel()
        timeout = nil
    }

    /// Fails the exchange when nothing has been read for `readTimeout` (checked against the last
    /// read, so a steady stream costs one timer per timeout period, not one per chunk).
    private func armTimeout(_ readTimeout: TimeAmount, on loop: any EventLoop) {
        let generation = self.generation
        timeout = loop.scheduleTask(deadline: lastRead + readTimeout) { [weak self] in
            guard let self, self.generation == generation, self.exchange != nil else { return }
            if NIODeadline.now() - self.lastRead >= readTimeout {
                self.fail(HTTPClientError.readTimeout, allowRetry: false)
                self.context?.close(promise: nil)
            } else {
                self.armTimeout(readTimeout, on: loop)
            }
        }
    }
}
