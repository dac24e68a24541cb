import Foundation
import Hummingbird
import HummingbirdTesting
import Jobs
import Lab
import NIOCore
import Serving
import Synchronization
import Testing

/// Tuning's quality probe grades answers as an evaluation run does, and a request that fails is
/// an error of the probe, not a wrong answer. The server is a fake: a llama-server cannot be made
/// to answer 500 to the second of two requests on demand.
@Suite struct QualityProbeTests {
    func quality() throws -> TuningSession.Quality {
        var quality = TuningSession.Quality()
        quality.items = try JSONDecoder().decode([JobJSON].self, from: Data(#"[{"item": {"q": "France", "a": "Paris"}}, {"item": {"q": "Japan", "a": "Tokyo"}}, {"item": {"q": "Peru", "a": "Lima"}}]"#.utf8))
        quality.template = try JSONDecoder().decode([EvalTemplateMessage].self, from: Data(#"[{"role": "user", "content": "Capital of {{item.q}}?"}]"#.utf8))
        let city = try JSONDecoder().decode(JobJSON.self, from: Data(#"{"type": "string_check", "name": "city", "input": "{{sample.output_text}}", "reference": "{{item.a}}", "operation": "ilike"}"#.utf8))
        quality.criteria = [try Grader(city, index: 0)]
        quality.maxTokens = 8
        return quality
    }

    /// The request bodies the fake server received.
    final class Asked: Sendable {
        let bodies = Mutex<[Data]>([])
    }

    /// Answers each question with `answers[question]`, or with 500 for the questions in `failing`.
    func server(answers: [String: String], failing: Set<String> = [], asked: Asked? = nil) -> Application<RouterResponder<BasicRequestContext>> {
        let router = Router()
        router.post("/v1/chat/completions") { request, _ in
            let body = try await request.body.collect(upTo: 1 << 20)
            let object = try JSONSerialization.jsonObject(with: Data(body.readableBytesView)) as? [String: Any] ?? [:]
            asked?.bodies.withLock { $0.append(Data(body.readableBytesView)) }
            let prompt = ((object["messages"] as? [[String: Any]])?.first?["content"] as? String) ?? ""
            let country = answers.keys.first { prompt.contains($0) } ?? ""
            if failing.contains(country) { return Response(status: .internalServerError, body: .init(byteBuffer: ByteBuffer(string: "slot crashed"))) }
            let answer = ["choices": [["message": ["role": "assistant", "content": answers[country] ?? ""]]]]
            return Response(status: .ok, body: .init(byteBuffer: ByteBuffer(bytes: try JSONSerialization.data(withJSONObject: answer))))
        }
        return Application(router: router, configuration: .init(address: .hostname("127.0.0.1", port: 0)))
    }

    @Test func answersAreGradedWithTheRunsCriteriaAndTheTrialsSampling() async throws {
        let asked = Asked()
        let app = server(answers: ["France": "It is Paris.", "Japan": "Kyoto", "Peru": "lima"], asked: asked)
        try await app.test(.live) { client in
            let (passed, total) = try await TuningJob.passRate(try quality(), model: "chat", client: LlamaServerModelClient(baseURL: "http://127.0.0.1:\(client.port!)", client: sharedClient),
                                                               sampling: ["temperature": 0.5, "top_k": 20])
            #expect(passed == 2 && total == 3)
        }
        let body = try #require(asked.bodies.withLock { $0.first })
        let first = try #require(try JSONSerialization.jsonObject(with: body) as? [String: Any])
        #expect(first["temperature"] as? Double == 0.5 && first["top_k"] as? Int == 20 && first["max_tokens"] as? Int == 8)
    }

    @Test func aFailedRequestFailsTheProbeInsteadOfCountingAsWrong() async throws {
        let app = server(answers: ["France": "Paris", "Japan": "Tokyo", "Peru": "Lima"], failing: ["Japan"])
        try await app.test(.live) { client in
            do {
                _ = try await TuningJob.passRate(try quality(), model: "chat", client: LlamaServerModelClient(baseURL: "http://127.0.0.1:\(client.port!)", client: sharedClient), sampling: nil)
                Issue.record("a 500 was counted as an answer")
            } catch {
                let why = "\(error)"
                #expect(why.contains("quality item 1") && why.contains("500") && why.contains("slot crashed"), "\(why)")
            }
        }
    }

    @Test func anUnreachableServerFailsTheProbe() async throws {
        await #expect(throws: QualityProbeFailure.self) {
            _ = try await TuningJob.passRate(try quality(), model: "chat", client: LlamaServerModelClient(baseURL: "http://127.0.0.1:9", client: sharedClient), sampling: nil)
        }
    }
}
