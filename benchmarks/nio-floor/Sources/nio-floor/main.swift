import NIOCore
import NIOHTTP1
import NIOPosix

// usage: nio-floor LISTEN_PORT UPSTREAM_PORT
// Each client connection gets one kept-alive upstream connection; a request is read whole,
// forwarded with its headers, and the answer is written back as it arrives. No auth, no JSON,
// no accounting: only what every HTTP gateway on NIO must do.

let args = CommandLine.arguments
let listenPort = Int(args[1])!
let upstreamPort = Int(args[2])!
let group = MultiThreadedEventLoopGroup(numberOfThreads: System.coreCount)

final class UpstreamHandler: ChannelInboundHandler {
    typealias InboundIn = HTTPClientResponsePart
    let downstream: ChannelHandlerContext
    let onClose: () -> Void
    init(downstream: ChannelHandlerContext, onClose: @escaping () -> Void) { self.downstream = downstream; self.onClose = onClose }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let head):
            if !head.isKeepAlive { onClose() }  // do not send the next request on a closing connection
            var h = head.headers
            h.remove(name: "connection")
            downstream.write(NIOAny(HTTPServerResponsePart.head(HTTPResponseHead(version: .http1_1, status: head.status, headers: h))), promise: nil)
        case .body(let b):
            downstream.write(NIOAny(HTTPServerResponsePart.body(.byteBuffer(b))), promise: nil)
        case .end:
            downstream.writeAndFlush(NIOAny(HTTPServerResponsePart.end(nil)), promise: nil)
        }
    }

    // llama-server closes a kept-alive connection after 100 requests; the next request opens another.
    func channelInactive(context: ChannelHandlerContext) { onClose() }
}

final class ProxyHandler: ChannelInboundHandler {
    typealias InboundIn = HTTPServerRequestPart
    var head: HTTPRequestHead?
    var body = ByteBuffer()
    var upstream: (any Channel)?

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let h): head = h; body.clear()
        case .body(var b): body.writeBuffer(&b)
        case .end: send(context)
        }
    }

    func send(_ context: ChannelHandlerContext) {
        var h = head!
        h.headers.replaceOrAdd(name: "content-length", value: String(body.readableBytes))
        h.headers.replaceOrAdd(name: "host", value: "127.0.0.1:\(upstreamPort)")
        let parts: [HTTPClientRequestPart] = [.head(h), .body(.byteBuffer(body)), .end(nil)]
        if let upstream {
            for p in parts.dropLast() { upstream.write(p, promise: nil) }
            upstream.writeAndFlush(parts.last!, promise: nil)
            return
        }
        let loopBound = NIOLoopBound(context, eventLoop: context.eventLoop)
        ClientBootstrap(group: context.eventLoop)
            .channelOption(.socketOption(.tcp_nodelay), value: 1)
            .channelInitializer { ch in
                ch.eventLoop.makeCompletedFuture {
                    try ch.pipeline.syncOperations.addHTTPClientHandlers()
                    try ch.pipeline.syncOperations.addHandler(UpstreamHandler(downstream: loopBound.value, onClose: { self.upstream = nil }))
                }
            }
            .connect(to: try! SocketAddress(ipAddress: "127.0.0.1", port: upstreamPort))  // no resolver hop
            .whenComplete { result in
                let context = loopBound.value
                switch result {
                case .success(let ch):
                    self.upstream = ch
                    for p in parts.dropLast() { ch.write(p, promise: nil) }
                    ch.writeAndFlush(parts.last!, promise: nil)
                case .failure: context.close(promise: nil)
                }
            }
    }

    func channelInactive(context: ChannelHandlerContext) { upstream?.close(promise: nil) }
}

let server = try ServerBootstrap(group: group)
    .serverChannelOption(.backlog, value: 256)
    .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
    .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
    .childChannelInitializer { ch in
        ch.eventLoop.makeCompletedFuture {
            try ch.pipeline.syncOperations.configureHTTPServerPipeline()
            try ch.pipeline.syncOperations.addHandler(ProxyHandler())
        }
    }
    .bind(host: "127.0.0.1", port: listenPort).wait()
try server.closeFuture.wait()
