import Crypto
import Foundation
import NIOCore
import NIOPosix
import Synchronization

/// llama.cpp's RPC protocol has no authentication: whoever reaches a `ggml-rpc-server` can
/// allocate its memory and run graphs on it. Corral therefore never exposes one. The worker's
/// `ggml-rpc-server` listens on loopback, and a ``RPCGate`` on the node's cluster address lets a
/// connection through only after it answers a challenge with the cluster secret; the node that
/// loads a split model runs an ``RPCTunnel`` on loopback for its llama-server, which answers the
/// challenge and then carries the bytes unchanged.
///
/// The handshake: the gate sends 32 random bytes; the member answers with
/// HMAC-SHA256(key: SHA-256(secret), "corral-rpc-v1" + those bytes) within 5 seconds. Anything
/// else closes the connection before a byte reaches the RPC server. The secret never crosses the
/// wire and an answer cannot be replayed. The traffic after it is not encrypted (see
/// docs/clusters.md: keep the cluster on a private network).
public enum RPCHandshake {
    /// Bytes in the challenge and in its answer.
    public static let size = 32
    /// How long a connection may take to answer the challenge.
    public static let timeout = TimeAmount.seconds(5)

    /// The answer to `challenge` for `secret`.
    public static func answer(secret: String, challenge: [UInt8]) -> [UInt8] {
        let key = SymmetricKey(data: SHA256.hash(data: Data(secret.utf8)))
        let mac = HMAC<SHA256>.authenticationCode(for: Data("corral-rpc-v1".utf8) + Data(challenge), using: key)
        return Array(mac)
    }

    /// Whether `answer` is the right one (constant time).
    public static func verify(secret: String, challenge: [UInt8], answer: [UInt8]) -> Bool {
        let expected = Self.answer(secret: secret, challenge: challenge)
        guard answer.count == expected.count else { return false }
        var diff: UInt8 = 0
        for (a, b) in zip(answer, expected) { diff |= a ^ b }
        return diff == 0
    }
}

/// A listening socket that lets cluster members through to a loopback `ggml-rpc-server`
/// (see ``RPCHandshake``) and refuses everyone else.
public final class RPCGate: Sendable {
    /// The address it listens on.
    public let host: String
    public let port: Int
    private let channel: any Channel
    private let counts = Mutex((accepted: 0, refused: 0))

    /// Connections let through and refused since it started.
    public var accepted: Int { counts.withLock { $0.accepted } }
    public var refused: Int { counts.withLock { $0.refused } }

    private init(host: String, port: Int, channel: any Channel) {
        self.host = host
        self.port = port
        self.channel = channel
    }

    /// Listens on `host:port` and forwards admitted connections to `backendPort` on loopback.
    /// `onRefused` hears about each refused connection (its remote address).
    public static func start(host: String, port: Int, backendPort: Int, secret: String,
                             onRefused: @escaping @Sendable (String) -> Void = { _ in }) async throws -> RPCGate {
        let box = CountsBox()
        let bootstrap = ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(
                        GateHandler(secret: secret, backendPort: backendPort, admitted: { box.admitted() }, refused: { remote in
                            box.refused()
                            onRefused(remote)
                        }))
                }
            }
        let channel = try await bootstrap.bind(host: host, port: port).get()
        let gate = RPCGate(host: host, port: channel.localAddress?.port ?? port, channel: channel)
        box.gate.withLock { $0 = gate }
        return gate
    }

    /// A free loopback port for the RPC server behind a gate.
    public static func freeBackendPort() -> Int? { freeLoopbackPort() }

    /// Stops listening (connections already through stay until either end closes them).
    public func close() async {
        try? await channel.close()
    }

    fileprivate func count(admitted: Bool) {
        counts.withLock { if admitted { $0.accepted += 1 } else { $0.refused += 1 } }
    }

    /// The gate is made after the bootstrap that reports to it; this holds it meanwhile.
    private final class CountsBox: Sendable {
        let gate = Mutex<RPCGate?>(nil)
        func admitted() { gate.withLock { $0 }?.count(admitted: true) }
        func refused() { gate.withLock { $0 }?.count(admitted: false) }
    }
}

/// The gate's side of one connection: challenge, check, then connect to the RPC server on
/// loopback and join the two.
private final class GateHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    let secret: String
    let backendPort: Int
    let admitted: @Sendable () -> Void
    let refused: @Sendable (String) -> Void
    let challenge: [UInt8] = (0..<RPCHandshake.size).map { _ in UInt8.random(in: 0...255) }
    var received: [UInt8] = []
    var done = false
    var timeout: Scheduled<Void>?

    init(secret: String, backendPort: Int, admitted: @escaping @Sendable () -> Void, refused: @escaping @Sendable (String) -> Void) {
        self.secret = secret
        self.backendPort = backendPort
        self.admitted = admitted
        self.refused = refused
    }

    func channelActive(context: ChannelHandlerContext) {
        context.writeAndFlush(wrapOutboundOut(context.channel.allocator.buffer(bytes: challenge)), promise: nil)
        let channel = context.channel
        let refused = refused
        let remote = "\(channel.remoteAddress?.description ?? "?")"
        let bound = NIOLoopBound(self, eventLoop: context.eventLoop)
        timeout = context.eventLoop.scheduleTask(in: RPCHandshake.timeout) {
            guard !bound.value.done else { return }
            bound.value.done = true
            refused(remote)
            channel.close(promise: nil)
        }
        context.fireChannelActive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !done else { return }
        var buffer = unwrapInboundIn(data)
        received += buffer.readBytes(length: buffer.readableBytes) ?? []
        guard received.count >= RPCHandshake.size else { return }
        done = true
        timeout?.cancel()
        let answer = Array(received.prefix(RPCHandshake.size))
        let rest = Array(received.dropFirst(RPCHandshake.size))
        guard RPCHandshake.verify(secret: secret, challenge: challenge, answer: answer) else {
            refused("\(context.channel.remoteAddress?.description ?? "?")")
            context.close(promise: nil)
            return
        }
        admitted()
        let inbound = context.channel
        inbound.setOption(.autoRead, value: false).whenComplete { _ in }
        let loop = context.eventLoop
        let bound = NIOLoopBound((self, context), eventLoop: loop)
        // ggml-rpc-server accepts one client at a time with a short backlog: a connection may wait
        // (SYN retries) while llama-server's previous one is served. Give it time.
        ClientBootstrap(group: loop)
            .channelOption(.socketOption(.tcp_nodelay), value: 1)
            .connectTimeout(.seconds(120))
            .connect(host: "127.0.0.1", port: backendPort)
            .whenComplete { result in
                let (handler, context) = bound.value
                switch result {
                case .failure:
                    inbound.close(promise: nil)
                case .success(let backend):
                    let (a, b) = GlueHandler.matchedPair()
                    do {
                        try backend.pipeline.syncOperations.addHandler(a)
                        context.pipeline.syncOperations.removeHandler(handler, promise: nil)
                        try inbound.pipeline.syncOperations.addHandler(b)
                    } catch {
                        backend.close(promise: nil)
                        inbound.close(promise: nil)
                        return
                    }
                    if !rest.isEmpty { backend.writeAndFlush(backend.allocator.buffer(bytes: rest), promise: nil) }
                    inbound.setOption(.autoRead, value: true).whenComplete { _ in }
                }
            }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        context.close(promise: nil)
    }
}

/// A loopback listener for one llama-server's `--rpc` entry: each connection llama-server makes
/// to it is carried to a worker's ``RPCGate`` after answering the gate's challenge. When the
/// worker end closes a connection first (the worker died, or its gate refused), `onLost` is
/// called: the model's instance cannot go on without that worker.
public final class RPCTunnel: Sendable {
    /// The loopback port llama-server connects to (`--rpc 127.0.0.1:PORT`).
    public let port: Int
    /// The worker's gate, `host:port`.
    public let remote: String
    private let listener: any Channel
    private let open: ConnectionSet

    private init(port: Int, remote: String, listener: any Channel, open: ConnectionSet) {
        self.port = port
        self.remote = remote
        self.listener = listener
        self.open = open
    }

    /// Starts a tunnel to the gate at `host:port`.
    public static func start(toHost host: String, port: Int, secret: String, onLost: @escaping @Sendable (String) -> Void) async throws -> RPCTunnel {
        let open = ConnectionSet()
        let remote = "\(host):\(port)"
        let bootstrap = ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
            .childChannelOption(.autoRead, value: false)
            .childChannelInitializer { local in
                open.insert(local)
                let loop = local.eventLoop
                return ClientBootstrap(group: loop)
                    .channelOption(.socketOption(.tcp_nodelay), value: 1)
                    .connectTimeout(.seconds(5))
                    .channelInitializer { worker in
                        worker.eventLoop.makeCompletedFuture {
                            try worker.pipeline.syncOperations.addHandler(
                                TunnelHandshakeHandler(secret: secret, local: local, onLost: { onLost("the connection to the worker at \(remote) closed") }))
                        }
                    }
                    .connect(host: host, port: port)
                    .flatMapErrorThrowing { error in
                        onLost("the worker at \(remote) cannot be reached (\(error))")
                        throw error
                    }
                    .map { worker in open.insert(worker) }
            }
        let listener = try await bootstrap.bind(host: "127.0.0.1", port: 0).get()
        guard let bound = listener.localAddress?.port else { throw ChannelError.unknownLocalAddress }
        return RPCTunnel(port: bound, remote: remote, listener: listener, open: open)
    }

    /// Stops listening and closes every connection through it.
    public func close() async {
        try? await listener.close()
        for channel in open.channels.withLock({ Array($0.values) }) { try? await channel.close() }
    }
}

/// The connections a tunnel carries, so closing it closes them.
private final class ConnectionSet: Sendable {
    let channels = Mutex<[ObjectIdentifier: any Channel]>([:])
    func insert(_ channel: any Channel) {
        let id = ObjectIdentifier(channel)
        channels.withLock { $0[id] = channel }
        channel.closeFuture.whenComplete { [self] _ in channels.withLock { _ = $0.removeValue(forKey: id) } }
    }
}

/// The member's side of the handshake on a connection to a gate; then joins it to the local
/// connection llama-server made.
private final class TunnelHandshakeHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    let secret: String
    let local: any Channel
    let onLost: @Sendable () -> Void
    var received: [UInt8] = []
    var joined = false

    init(secret: String, local: any Channel, onLost: @escaping @Sendable () -> Void) {
        self.secret = secret
        self.local = local
        self.onLost = onLost
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !joined else { return }
        var buffer = unwrapInboundIn(data)
        received += buffer.readBytes(length: buffer.readableBytes) ?? []
        guard received.count >= RPCHandshake.size else { return }
        joined = true
        let challenge = Array(received.prefix(RPCHandshake.size))
        context.writeAndFlush(wrapOutboundOut(context.channel.allocator.buffer(bytes: RPCHandshake.answer(secret: secret, challenge: challenge))), promise: nil)
        let (a, b) = GlueHandler.matchedPair()
        a.onFirstToClose = onLost
        do {
            context.pipeline.syncOperations.removeHandler(self, promise: nil)
            try context.pipeline.syncOperations.addHandler(a)
            try local.pipeline.syncOperations.addHandler(b)
        } catch {
            context.close(promise: nil)
            local.close(promise: nil)
            return
        }
        local.setOption(.autoRead, value: true).whenComplete { _ in }
    }

    func channelInactive(context: ChannelHandlerContext) {
        // Closed before the handshake: refused, or the worker is gone.
        if !joined {
            onLost()
            local.close(promise: nil)
        }
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        context.close(promise: nil)
    }
}

/// Joins two channels on one event loop: what one reads the other writes, with backpressure
/// (a side reads only while the other can write), and a close of either closes both.
final class GlueHandler: ChannelDuplexHandler {
    typealias InboundIn = NIOAny
    typealias OutboundIn = NIOAny
    typealias OutboundOut = NIOAny

    private var partner: GlueHandler?
    private var context: ChannelHandlerContext?
    private var pendingRead = false
    /// Called when this side closes while its partner is still open.
    var onFirstToClose: (@Sendable () -> Void)?

    static func matchedPair() -> (GlueHandler, GlueHandler) {
        let a = GlueHandler()
        let b = GlueHandler()
        a.partner = b
        b.partner = a
        return (a, b)
    }

    func handlerAdded(context: ChannelHandlerContext) { self.context = context }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.context = nil
        partner = nil
    }

    private func partnerWrite(_ data: NIOAny) { context?.write(data, promise: nil) }
    private func partnerFlush() { context?.flush() }
    private func partnerClose() { context?.close(promise: nil) }
    private var partnerWritable: Bool { context?.channel.isWritable ?? false }
    private var isOpen: Bool { context?.channel.isActive ?? false }

    private func partnerBecameWritable() {
        if pendingRead {
            pendingRead = false
            context?.read()
        }
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) { partner?.partnerWrite(data) }

    func channelReadComplete(context: ChannelHandlerContext) { partner?.partnerFlush() }

    func channelInactive(context: ChannelHandlerContext) {
        if let partner, partner.isOpen { onFirstToClose?() }
        partner?.partnerClose()
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) { context.close(promise: nil) }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if context.channel.isWritable { partner?.partnerBecameWritable() }
    }

    func read(context: ChannelHandlerContext) {
        if partner?.partnerWritable ?? false { context.read() } else { pendingRead = true }
    }
}
