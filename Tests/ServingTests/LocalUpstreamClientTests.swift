import AsyncHTTPClient
import Foundation
import NIOCore
import NIOHTTP1
import NIOPosix
import Serving
import Synchronization
import Testing


/// The faults of `LocalUpstreamClient` that a real llama-server cannot produce on demand: a
/// kept-alive connection closed just as it is reused, an answer cut off, an upstream gone silent.
/// (Crashes and hangs of a real llama-server are covered by the streaming and fault suites.)
@Suite(.serialized) struct LocalUpstreamClientTests {
    /// What the fake server does with one request, by connection and request number.
    enum Reply: Sendable {
        case ok(String)
        case chunked([String])
        case closeWithoutAnswer
        case cutOff
        case silent
    }

    /// A raw HTTP/1.1 server on loopback that follows `script` (connection index, request index
    /// on that connection, both from 0) and counts the connections it accepted.
    final class FakeUpstream: Sendable {
        let channel: any Channel
        private let accepted = Counter()
        var port: Int { channel.localAddress!.port! }
        var connections: Int { accepted.value.withLock { $0 } }

        final class Counter: Sendable { let value = Mutex(0) }

        init(_ script: @escaping @Sendable (Int, Int) -> Reply) async throws {
            let accepted = self.accepted
            channel = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
                .childChannelInitializer { child in
                    let index = accepted.value.withLock { n in
                        defer { n += 1 }
                        return n
                    }
                    return child.pipeline.addHandler(ScriptedConnection(connection: index, script: script))
                }
                .bind(host: "127.0.0.1", port: 0).get()
        }

        func close() async { try? await channel.close() }
    }

    final class ScriptedConnection: ChannelInboundHandler, @unchecked Sendable {
        typealias InboundIn = ByteBuffer
        typealias OutboundOut = ByteBuffer
        let connection: Int
        let script: @Sendable (Int, Int) -> Reply
        var pending = ""
        var requests = 0

        init(connection: Int, script: @escaping @Sendable (Int, Int) -> Reply) {
            self.connection = connection
            self.script = script
        }

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            pending += String(buffer: unwrapInboundIn(data))
            while let end = pending.range(of: "\r\n\r\n") {
                pending.removeSubrange(..<end.upperBound)
                let reply = script(connection, requests)
                requests += 1
                func send(_ text: String) { context.writeAndFlush(wrapOutboundOut(ByteBuffer(string: text)), promise: nil) }
                switch reply {
                case .ok(let body): send("HTTP/1.1 200 OK\r\ncontent-length: \(body.utf8.count)\r\n\r\n\(body)")
                case .chunked(let parts):
                    send("HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
                    for part in parts { send(String(part.utf8.count, radix: 16) + "\r\n\(part)\r\n") }
                    send("0\r\n\r\n")
                case .closeWithoutAnswer: context.close(promise: nil)
                case .cutOff:
                    send("HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n")
                    context.close(promise: nil)
                case .silent: break
                }
            }
        }
    }

    func get(_ client: LocalUpstreamClient, _ port: Int) async throws -> (HTTPResponseStatus, String) {
        let response = try await client.execute(port: port, method: .GET, path: "/x", headers: [:], body: nil)
        let body = try await response.body.collect(upTo: 1 << 20)
        return (response.status, String(buffer: body))
    }

    @Test func reusesConnectionsAndReplacesOneClosedUnderIt() async throws {
        // Connection 0 answers once, then closes when asked again (as a server does when its
        // keep-alive timeout fires just as the request arrives); connection 1 answers.
        let upstream = try await FakeUpstream { connection, request in
            connection == 0 && request == 1 ? .closeWithoutAnswer : .ok("c\(connection)r\(request)")
        }
        let client = LocalUpstreamClient(readTimeout: .seconds(5))
        #expect(try await get(client, upstream.port) == (.ok, "c0r0"))
        #expect(try await get(client, upstream.port) == (.ok, "c1r0"))
        #expect(try await get(client, upstream.port) == (.ok, "c1r1"))
        #expect(upstream.connections == 2)
        await upstream.close()
    }

    @Test func streamsChunkedAnswers() async throws {
        let upstream = try await FakeUpstream { _, _ in .chunked(["data: 1\n\n", "data: 2\n\n"]) }
        let client = LocalUpstreamClient(readTimeout: .seconds(5))
        for _ in 0..<2 {
            let response = try await client.execute(port: upstream.port, method: .POST, path: "/s", headers: [:], body: ByteBuffer(string: "{}"))
            var parts: [String] = []
            for try await part in response.body { parts.append(String(buffer: part)) }
            #expect(parts.joined() == "data: 1\n\ndata: 2\n\n")
        }
        #expect(upstream.connections == 1)
        await upstream.close()
    }

    @Test func anAnswerCutOffIsAnError() async throws {
        let upstream = try await FakeUpstream { _, _ in .cutOff }
        let client = LocalUpstreamClient(readTimeout: .seconds(5))
        let response = try await client.execute(port: upstream.port, method: .GET, path: "/x", headers: [:], body: nil)
        await #expect(throws: HTTPClientError.remoteConnectionClosed) {
            for try await _ in response.body {}
        }
        await upstream.close()
    }

    @Test func cancellingAWaitingRequestClosesItsConnection() async throws {
        // The first request is never answered; the second (on a new connection) is.
        let upstream = try await FakeUpstream { connection, _ in connection == 0 ? .silent : .ok("second") }
        let client = LocalUpstreamClient(readTimeout: .seconds(30))
        let waiting = Task { try await get(client, upstream.port) }
        try await Task.sleep(for: .milliseconds(100))
        waiting.cancel()
        await #expect(throws: CancellationError.self) { try await waiting.value }
        #expect(try await get(client, upstream.port) == (.ok, "second"))
        #expect(upstream.connections == 2)
        await upstream.close()
    }

    @Test func silenceIsAReadTimeoutAndRefusedConnectionsFail() async throws {
        let upstream = try await FakeUpstream { _, _ in .silent }
        let client = LocalUpstreamClient(readTimeout: .milliseconds(200))
        await #expect(throws: HTTPClientError.readTimeout) { try await get(client, upstream.port) }
        let port = upstream.port
        await upstream.close()
        await #expect(throws: (any Error).self) { try await get(client, port) }
    }
}
