import Foundation
import NIOCore
import NIOHTTP1
import Runtime
import Testing

@testable import Gateway
@testable import Runtime

/// Bad input on the Ollama routes gets Ollama's `{"error":"…"}` with the right status and spawns nothing.
@Suite(.serialized) struct OllamaErrorShapeTests {
    @Test func badRequestsAreOllamaShaped() async throws {
        guard let f = try Fixture.make(models: ["alpha"]) else { return }
        try await f.run { port in
            let cases: [(String, String, Int)] = [
                ("/api/chat", "{not json", 400),
                ("/api/chat", "[1]", 400),
                ("/api/chat", #"{"messages":[]}"#, 400),
                ("/api/chat", #"{"model":"alpha","messages":"hi"}"#, 400),
                ("/api/chat", #"{"model":"alpha","messages":[{"role":"user","content":"x"}],"keep_alive":"300"}"#, 400),
                ("/api/chat", #"{"model":"alpha","messages":[{"role":"user","content":"x"}],"options":{"temperature":"hot"}}"#, 400),
                ("/api/chat", #"{"model":"alpha","messages":[{"role":"user","content":"x"}],"stream":"no"}"#, 400),
                ("/api/chat", #"{"model":"alpha","messages":[{"content":"x"}]}"#, 400),
                ("/api/generate", #"{"model":"alpha","prompt":["x"]}"#, 400),
                ("/api/generate", #"{"model":"../../etc/passwd","prompt":"x"}"#, 404),
                ("/api/generate", #"{"model":"a; rm -rf /","prompt":"x"}"#, 404),
                ("/api/embed", #"{"model":"alpha","input":[1,2]}"#, 400),
                ("/api/embed", #"{"model":"alpha","input":"x","dimensions":-3}"#, 400),
                ("/api/show", #"{"model":"nope"}"#, 404),
                ("/api/copy", #"{"source":"nope","destination":"x"}"#, 404),
                ("/api/copy", #"{"source":"alpha"}"#, 400),
                ("/api/pull", #"{"model":"../../etc/passwd"}"#, 400),
                ("/api/create", #"{"model":"x","files":{"a.gguf":"sha256:nothex"}}"#, 400),
                ("/api/push", #"{"model":"alpha"}"#, 501),
                ("/api/nothing", "{}", 404),
            ]
            for (path, body, status) in cases {
                let reply = try await send(port, path, raw: body)
                #expect(reply.status == status, "\(path) \(body)")
                #expect(reply.json?["error"] is String, "\(path) \(body): \(reply.body)")
            }
            let missing = try await send(port, "/api/delete", method: .DELETE, raw: #"{"model":"nope"}"#)
            #expect(missing.status == 404)
            #expect(missing.json?["error"] as? String == "model 'nope' not found")
            #expect(await f.scheduler.spawnCount == 0)
        }
    }
}
