import AsyncHTTPClient
import CorralApp
import Foundation
import Gateway
import Hummingbird
import HummingbirdTesting
import Logging
import NIOCore
import NIOHTTP1
import Runtime
import Testing

/// Bad input gets an OpenAI-shaped error with the right status; nothing is spawned.
@Suite(.serialized) struct ErrorShapeTests {
    func error(_ reply: Reply) -> [String: Any]? { reply.json?["error"] as? [String: Any] }

    @Test func badRequestsAreOpenAIShaped() async throws {
        // Two models, so there is no default model and a request must name one.
        guard let f = try Fixture.make(models: ["alpha", "beta"]) else { return }
        try await f.run { port in
            let cases: [(String, Int, String?)] = [
                ("{not json", 400, nil),
                ("[1,2]", 400, nil),
                ("", 400, nil),
                (#"{"messages":[]}"#, 400, "model"),
                (#"{"model":42,"messages":[]}"#, 400, "model"),
                (#"{"model":"alpha"}"#, 400, "messages"),
                (#"{"model":"alpha","messages":[],"stream":"yes"}"#, 400, "stream"),
                (#"{"model":"alpha","messages":[],"max_tokens":-5}"#, 400, "max_tokens"),
                (#"{"model":"alpha","messages":[],"max_tokens":"many"}"#, 400, "max_tokens"),
                (#"{"model":"nope","messages":[]}"#, 404, "model"),
            ]
            for (body, status, param) in cases {
                let reply = try await send(port, "/v1/chat/completions", raw: body)
                #expect(reply.status == status, "\(body)")
                let e = error(reply)
                #expect(e?["message"] is String, "\(body)")
                #expect(e?["type"] is String, "\(body)")
                if let param { #expect(e?["param"] as? String == param, "\(body)") }
            }
            let notFound = try await send(port, "/v1/chat/completions", raw: #"{"model":"nope","messages":[]}"#)
            #expect(error(notFound)?["code"] as? String == "model_not_found")
            #expect(notFound.headers.first(name: "x-should-retry") == "false")
            #expect(await f.scheduler.spawnCount == 0)
        }
    }

    @Test func oversizedBodiesGet413() async throws {
        guard let f = try Fixture.make(models: ["alpha"]) else { return }
        try await f.run { port in
            let big = #"{"model":"alpha","messages":[{"role":"user","content":""# + String(repeating: "x", count: 40 << 20) + #""}]}"#
            let reply = try await send(port, "/v1/chat/completions", raw: big)
            #expect(reply.status == 413)
            #expect(error(reply)?["code"] as? String == "request_too_large")
        }
    }

    @Test func unknownRoutesAndModelsEndpoints() async throws {
        guard let f = try Fixture.make(models: ["alpha"]) else { return }
        try await f.run { port in
            let missing = try await send(port, "/v1/nothing", method: .GET)
            #expect(missing.status == 404)
            #expect(error(missing) != nil)
            let list = try await send(port, "/v1/models", method: .GET)
            #expect((list.json?["data"] as? [[String: Any]])?.map { $0["id"] as? String } == ["alpha"])
            #expect(try await send(port, "/v1/models/ALPHA:latest", method: .GET).json?["id"] as? String == "alpha")
            #expect(try await send(port, "/v1/models/org/name:tag", method: .GET).status == 404)
            // The only model is the default one: a GET without ?model= goes to it.
            #expect(try await send(port, "/props", method: .GET).status == 200)
            #expect(try await send(port, "/props?model=alpha", method: .GET).status == 200)
            #expect(try await send(port, "/health", method: .GET).json?["status"] as? String == "ok")
        }
    }

    @Test func nativeAndEmbeddingRoutesRouteByModel() async throws {
        guard let f = try Fixture.make(models: ["alpha", "embedder"], embedding: ["embedder"]) else { return }
        try await f.run { port in
            let tokens = try await send(port, "/tokenize", json: ["model": "alpha", "content": "hello world"])
            #expect(tokens.status == 200)
            #expect((tokens.json?["tokens"] as? [Int])?.isEmpty == false)
            let completion = try await send(port, "/v1/completions", json: ["model": "alpha", "prompt": "the", "max_tokens": 3])
            #expect(completion.status == 200)
            #expect((completion.json?["usage"] as? [String: Any])?["completion_tokens"] as? Int == 3)
            let embedding = try await send(port, "/v1/embeddings", json: ["model": "embedder", "input": ["a", "b"]])
            #expect(embedding.status == 200)
            #expect((embedding.json?["data"] as? [Any])?.count == 2)
        }
    }
}

/// A fake upstream proves there is no buffering: it sends event 1, then waits until the test has
/// received event 1 through Corral before sending event 2. A buffering proxy deadlocks here.
@Suite struct NoBufferingTests {
    @Test(.timeLimit(.minutes(1))) func eventOneArrivesBeforeEventTwoIsSent() async throws {
        let (gate, open) = AsyncStream.makeStream(of: Void.self)
        let upstream = Router()
        upstream.post("/v1/chat/completions") { _, _ in
            Response(status: .ok, headers: [.contentType: "text/event-stream"], body: ResponseBody { writer in
                try await writer.write(ByteBuffer(string: "data: {\"choices\":[{\"delta\":{\"content\":\"one\"}}]}\n\n"))
                for await _ in gate { break }
                try await writer.write(ByteBuffer(string: "data: {\"choices\":[{\"delta\":{\"content\":\"two\"}}]}\n\ndata: [DONE]\n\n"))
                try await writer.finish(nil)
            })
        }
        let fake = Application(router: upstream, configuration: .init(address: .hostname("127.0.0.1", port: 0)))
        try await fake.test(.live) { fakeClient in
            var config = CorralConfig()
            config.upstreams = [.init(name: "fake", baseURL: "http://127.0.0.1:\(fakeClient.port!)", models: ["remote"])]
            let limits = Scheduler.Limits(from: config.scheduler, hostTotalMiB: 1024)
            let scheduler = Scheduler(catalog: ModelCatalog.build(from: config), limits: limits, tools: LlamaTools(),
                                      client: sharedClient, logger: Logger(label: "test"))
            let deps = GatewayDependencies(config: config, scheduler: scheduler, client: sharedClient, logger: Logger(label: "test"))
            let corral = Application(router: buildRouter(deps), configuration: .init(address: .hostname("127.0.0.1", port: 0)))
            try await corral.test(.live) { client in
                let (status, response) = try await openStream(client.port!, ["model": "remote", "messages": [], "stream": true])
                #expect(status == 200)
                var reader = EventReader(iterator: response.body.makeAsyncIterator())
                let first = try await reader.next()
                #expect(first?.contains("one") == true)
                open.yield()
                let second = try await reader.next()
                #expect(second?.contains("two") == true)
                while try await reader.next() != nil {}
            }
        }
    }
}
