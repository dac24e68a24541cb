import Foundation
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif
import GGUF
import Runtime
import Testing

/// A generated model in the real llama-server: health, chat, embeddings, clean stop.
@Suite struct LlamaServerSmokeTests {
    static var isCI: Bool { ProcessInfo.processInfo.environment["CI"] == "true" }

    func get(_ url: String, body: String? = nil) async -> (Int, String) {
        var request = URLRequest(url: URL(string: url)!)
        request.timeoutInterval = 5
        if let body {
            request.httpMethod = "POST"
            request.httpBody = Data(body.utf8)
            request.setValue("application/json", forHTTPHeaderField: "content-type")
        }
        guard let (data, response) = try? await URLSession.shared.data(for: request) else { return (0, "") }
        return ((response as? HTTPURLResponse)?.statusCode ?? 0, String(decoding: data, as: UTF8.self))
    }

    @Test(arguments: [(false, TestModelShape.WeightType.f32), (false, .f16), (false, .q8_0), (true, .f32)])
    func generatedModelServesChatAndEmbeddings(embedding: Bool, type: TestModelShape.WeightType) async throws {
        let tools = LlamaTools.discover()
        guard let server = tools.server else {
            #expect(!Self.isCI, "llama-server missing under CI")
            return
        }
        let dir = NSTemporaryDirectory() + "corral-smoke-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        var shape = TestModelShape()
        shape.embedding = embedding
        shape.weightType = type
        try TestModel.write(shape: shape, to: dir + "/m.gguf")

        let port = Int.random(in: 20000..<60000)
        var args = ["-m", dir + "/m.gguf", "--host", "127.0.0.1", "--port", String(port), "-c", "1024", "--no-webui"]
        if embedding { args += ["--embeddings", "--pooling", "mean"] }
        let child = try ChildProcess(executable: server.path, arguments: args)
        var healthy = false
        for _ in 0..<500 {
            if await get("http://127.0.0.1:\(port)/health").0 == 200 { healthy = true; break }
            try await Task.sleep(for: .milliseconds(20))
        }
        #expect(healthy)
        if embedding {
            let (status, body) = await get("http://127.0.0.1:\(port)/v1/embeddings", body: #"{"input":"hello world"}"#)
            #expect(status == 200)
            let json = try JSONSerialization.jsonObject(with: Data(body.utf8)) as? [String: Any]
            let vector = ((json?["data"] as? [[String: Any]])?.first?["embedding"] as? [Double]) ?? []
            #expect(vector.count == shape.embeddingLength)
        } else {
            let (status, body) = await get(
                "http://127.0.0.1:\(port)/v1/chat/completions",
                body: #"{"messages":[{"role":"user","content":"hi there"}],"max_tokens":8}"#)
            #expect(status == 200, "\(body)")
            let json = try JSONSerialization.jsonObject(with: Data(body.utf8)) as? [String: Any]
            let content = (((json?["choices"] as? [[String: Any]])?.first?["message"]) as? [String: Any])?["content"] as? String
            #expect((content ?? "").count > 0)
            let usage = json?["usage"] as? [String: Any]
            #expect(usage?["completion_tokens"] as? Int == 8)
        }
        let termination = await child.stop(grace: .seconds(5))
        #expect(termination == .signaled(SIGTERM) || termination == .exited(0))
        #expect(kill(child.pid, 0) != 0, "process \(child.pid) still exists")
    }
}
