import Files
import Foundation
import Jobs
import NIOCore
import Serving
import Synchronization
import Testing

@testable import Lab

/// A ``ModelClient`` without a server: answers from a table, or the error it is told to give,
/// and keeps every request it was sent.
final class FakeModelClient: ModelClient {
    /// What to answer a request (its last message's text, or a prompt): an answer or an error.
    let answer: @Sendable (_ lastMessage: String) -> Result<String, ModelClientError>
    let asked = Mutex<[ModelRequest]>([])
    let usage = ModelUsage(promptTokens: 5, completionTokens: 2, totalTokens: 7, cachedTokens: 1)

    init(answer: @escaping @Sendable (String) -> Result<String, ModelClientError>) { self.answer = answer }

    /// Answers from a table keyed by a word of the question ("" when none matches).
    convenience init(_ table: [String: String], failing: [String: ModelClientError] = [:]) {
        self.init { question in
            if let failure = failing.first(where: { question.contains($0.key) }) { return .failure(failure.value) }
            return .success(table.first { question.contains($0.key) }?.value ?? "")
        }
    }

    var requests: [ModelRequest] { asked.withLock { $0 } }

    func respond(_ request: ModelRequest) throws(ModelClientError) -> String {
        asked.withLock { $0.append(request) }
        let last: String = switch request.input {
        case .messages(let messages): messages.last?.content ?? ""
        case .prompt(let prompt): prompt
        }
        return try answer(last).get()
    }

    func complete(_ request: ModelRequest) async throws(ModelClientError) -> ModelResponse {
        ModelResponse(text: try respond(request), finishReason: "stop", usage: usage)
    }

    func stream(_ request: ModelRequest, onChunk: @escaping @Sendable (ModelChunk) -> Void) async throws(ModelClientError) -> ModelResponse {
        let text = try respond(request)
        var response = ModelResponse()
        let half = text.index(text.startIndex, offsetBy: text.count / 2)
        for chunk in [ModelChunk(text: String(text[..<half])), ModelChunk(text: String(text[half...]), finishReason: "stop"),
                      ModelChunk(usage: usage, timings: ModelTimings(promptPerSecond: 100, predictedPerSecond: 20))] {
            onChunk(chunk)
            response.add(chunk)
        }
        return response
    }

    func applyTemplate(model: String, messages: [ModelMessage], origin: ModelCallOrigin) async throws(ModelClientError) -> String {
        let text = messages.map { "<\($0.role)>\($0.content)" }.joined()
        return try answer(text).map { _ in text }.get()
    }

    func tokenize(model: String, text: String, addSpecial: Bool, origin: ModelCallOrigin) async throws(ModelClientError) -> [Int] {
        try answer(text).map { _ in text.split(separator: " ").indices.map { $0 } }.get()
    }
}

/// Evaluation's ask-and-grade and tuning's quality probes against a fake model: what is asked,
/// how answers are graded, and that a failed request is an error rather than a wrong answer.
@Suite struct ModelClientTests {
    let items = [json(["item": ["q": "France", "a": "Paris"]]), json(["item": ["q": "Japan", "a": "Tokyo"]]), json(["item": ["q": "Peru", "a": "Lima"]])]
    let template = [EvalTemplateMessage(role: "user", content: "Capital of {{item.q}}?")]
    let origin = ModelCallOrigin(teamID: "team-1", keyPrefix: "ck-abc", priority: .background, route: "/v1/evals")

    func cityCheck() throws -> Grader {
        try Grader(["type": "string_check", "name": "city", "input": "{{sample.output_text}}", "reference": "{{item.a}}", "operation": "ilike"], index: 0)
    }

    func asking(_ client: any ModelClient, turns: [String] = []) -> EvalAsking {
        EvalAsking(client: client, model: "chat", template: template, turns: turns, sampling: ["temperature": 0.2, "top_k": 20], maxTokens: 16, seed: 7, origin: origin)
    }

    /// Asks and grades each item as an evaluation run does: their statuses and the answers.
    func run(_ client: FakeModelClient, criteria: [Grader], judges: (any ModelClient)? = nil) async throws -> [(EvalAnswer, EvalGrade)] {
        var graded: [(EvalAnswer, EvalGrade)] = []
        for entry in items {
            let item = entry["item"]!
            var answer = try await asking(client).ask(item)
            let grade = try await EvalGrading(criteria: criteria, judges: judges ?? client, origin: origin).grade(item, &answer)
            graded.append((answer, grade))
        }
        return graded
    }

    @Test func correctAnswersPassAndWrongOnesFail() async throws {
        let client = FakeModelClient(["France": "It is Paris.", "Japan": "Kyoto", "Peru": "lima"])
        let graded = try await run(client, criteria: [try cityCheck()])
        #expect(graded.map(\.1.status) == ["pass", "fail", "pass"])
        #expect(graded.map { $0.1.results.map(\.passed) } == [[true], [false], [true]])
        #expect(graded[0].0.graded["output_text"] == .string("It is Paris.") && graded[0].0.error == nil)
        // Each item's answer: the usage of the request, the speeds, the first token timed.
        #expect(graded[0].0.usage == ModelUsage(promptTokens: 5, completionTokens: 2, totalTokens: 7) && graded[0].0.requests == 1)
        #expect(graded[0].0.generationPerSecond == 20 && graded[0].0.firstTokenMs != nil && graded[0].0.finishReason == "stop")
    }

    @Test func theRequestCarriesTheTemplateSamplingAndCaller() async throws {
        let client = FakeModelClient(["France": "Paris"])
        _ = try await asking(client).ask(items[0]["item"]!)
        let request = try #require(client.requests.first)
        #expect(request.input == .messages([ModelMessage(role: "user", content: "Capital of France?")]))
        #expect(request.model == "chat" && request.stream && request.maxTokens == 16 && request.seed == 7)
        #expect(request.sampling == ["temperature": 0.2, "top_k": 20] && request.origin == origin)
        // On the wire: the same fields llama-server has always been sent (`top_k` an integer).
        let body = try JSONDecoder().decode(JobJSON.self, from: try request.body())
        #expect(body["top_k"] == .number(20) && body["stream_options"]?["include_usage"] == .bool(true) && body["max_tokens"] == .number(16))
        let text = String(decoding: try request.body(), as: UTF8.self)
        #expect(text.contains(#""top_k":20,"#) || text.hasSuffix(#""top_k":20}"#))
    }

    @Test func aFailedRequestIsAnErrorNotAWrongAnswer() async throws {
        let client = FakeModelClient(["France": "Paris", "Peru": "Lima"], failing: ["Japan": ModelClientError(.requestFailed, "connection refused")])
        let graded = try await run(client, criteria: [try cityCheck()])
        #expect(graded.map(\.1.status) == ["pass", "error", "pass"])
        #expect(graded[1].0.error == EvalItemError("request_failed", "connection refused"))
        #expect(graded[1].1.results.map(\.passed) == [false])
    }

    @Test func anErrorAnswerIsAModelErrorWithItsStatusAndMessage() async throws {
        let failure = ModelClientError.answered(status: 500, body: Array(#"{"error": {"message": "slot crashed"}}"#.utf8))
        let client = FakeModelClient(["France": "Paris"], failing: ["Japan": failure, "Peru": ModelClientError(.interrupted, "upstream_crashed")])
        let graded = try await run(client, criteria: [try cityCheck()])
        #expect(graded.map(\.1.status) == ["pass", "error", "error"])
        #expect(graded[1].0.error == EvalItemError("model_error", "the model answered 500: slot crashed"))
        #expect(graded[2].0.error == EvalItemError("model_error", "the answer broke off: upstream_crashed"))
    }

    @Test func aJudgeGradesWithItsLabelsAndItsUsageIsCounted() async throws {
        let label = try Grader([
            "type": "label_model", "name": "tone", "model": "judge", "labels": ["good", "bad"], "passing_labels": ["good"],
            "input": [["role": "user", "content": "Is '{{sample.output_text}}' the capital of {{item.q}}?"]],
        ], index: 0)
        let model = FakeModelClient(["France": "Paris", "Japan": "Kyoto", "Peru": "Lima"])
        let judge = FakeModelClient { question in
            // The judge's last message is the instruction to answer in form; its question is before it.
            .success(#"{"label": "good"}"#)
        }
        let graded = try await run(model, criteria: [label], judges: judge)
        #expect(graded.map(\.1.status) == ["pass", "pass", "pass"])
        #expect(graded[0].1.judgeUsage.first?.model == "judge" && graded[0].1.judgeUsage.first?.usage?.cachedTokens == 1)
        let request = try #require(judge.requests.first)
        guard case .messages(let messages) = request.input else { Issue.record("a judge is sent messages"); return }
        #expect(messages.first?.content == "Is 'Paris' the capital of France?" && messages.last?.role == "system")
        #expect(request.model == "judge" && !request.stream && request.origin == origin && request.responseFormat?["type"] == .string("json_schema"))

        // A judge that cannot be asked makes the item an error (grader_error), not a failure.
        let down = FakeModelClient { _ in .failure(ModelClientError(.requestFailed, "model 'judge' is not loaded")) }
        let failed = try await run(model, criteria: [label], judges: down)
        #expect(failed.map(\.1.status) == ["error", "error", "error"])
        #expect(failed[0].0.error == EvalItemError("grader_error", "the judge 'judge' could not be asked: model 'judge' is not loaded"))
    }

    @Test func aPromptSequenceAsksEachTurnAfterTheAnswerBefore() async throws {
        let client = FakeModelClient(["France": "Paris", "sure": "Yes, Paris."])
        let answer = try await asking(client, turns: ["Capital of {{item.q}}?", "Are you sure?"]).ask(items[0]["item"]!)
        #expect(client.requests.count == 2 && answer.requests == 2)
        #expect(answer.graded["turns"] == .array([.string("Paris"), .string("Yes, Paris.")]) && answer.outputText == "Yes, Paris.")
        guard case .messages(let second) = client.requests[1].input else { Issue.record("messages"); return }
        #expect(second.map(\.role) == ["user", "user", "assistant", "user"] && second[2].content == "Paris")
        #expect(answer.usage?.totalTokens == 14)
    }

    @Test func aTemplateNamingAMissingFieldIsATemplateErrorWithNoRequest() async throws {
        let client = FakeModelClient(["France": "Paris"])
        let asking = EvalAsking(client: client, model: "chat", template: [EvalTemplateMessage(role: "user", content: "{{item.missing}}")], origin: origin)
        let answer = try await asking.ask(items[0]["item"]!)
        #expect(answer.error?.code == "template_error" && client.requests.isEmpty)
    }

    @Test func tuningsQualityProbeIsTheEvaluationGrader() async throws {
        var quality = TuningSession.Quality()
        (quality.items, quality.template, quality.criteria, quality.maxTokens, quality.seed) = (items, template, [try cityCheck()], 8, 3)
        let client = FakeModelClient(["France": "It is Paris.", "Japan": "Kyoto", "Peru": "lima"])
        let (passed, total) = try await TuningJob.passRate(quality, model: "chat", client: client, sampling: ["top_k": 40])
        #expect(passed == 2 && total == 3)
        #expect(client.requests.allSatisfy { $0.maxTokens == 8 && $0.seed == 3 && $0.sampling == ["top_k": 40] })

        // A failed request fails the probe (and so the trial) instead of counting as wrong.
        let failing = FakeModelClient(["France": "Paris", "Peru": "Lima"], failing: ["Japan": ModelClientError.answered(status: 500, body: Array("slot crashed".utf8))])
        do {
            _ = try await TuningJob.passRate(quality, model: "chat", client: failing, sampling: nil)
            Issue.record("a 500 was counted as an answer")
        } catch let failure as QualityProbeFailure {
            #expect(failure.description.contains("quality item 1") && failure.description.contains("500") && failure.description.contains("slot crashed"))
        }
    }

    @Test func fineTuningRendersAndCountsThroughTheClientUnderTheJobsKey() async throws {
        let client = FakeModelClient { _ in .success("") }
        let base = FineTuneBaseModel(model: "base", keyPrefix: "ck-ft", client: client)
        #expect(try await base.render([TrainingMessage(role: "user", content: "hi")]) == "<user>hi")
        #expect(try await base.countTokens("one two three") == 3)
        let down = FakeModelClient { _ in .failure(ModelClientError.answered(status: 503, body: Array(#"{"error": {"message": "loading"}}"#.utf8))) }
        do {
            _ = try await FineTuneBaseModel(model: "base", keyPrefix: nil, client: down).countTokens("x")
            Issue.record("a failed /tokenize counted tokens")
        } catch let error as JobError {
            #expect(error.code == "base_model_failed" && error.message == "/tokenize answered 503: loading")
        }
    }

    @Test func aBenchmarkTimesTheStreamAndCountsFailedRequests() async throws {
        let client = FakeModelClient { question in
            question.hasPrefix("Request 1:") ? .failure(.answered(status: 503, body: Array("busy".utf8))) : .success("one two")
        }
        let runner = LoadRunner(BenchmarkParameters(requests: 3, concurrency: 1, promptWords: 4, maxTokens: 8, sampling: ["top_k": 10]))
        let result = await runner.run(model: "chat", client: client, origin: BenchmarkJob.origin)
        #expect(result.requests == 3 && result.errors == 1 && result.firstError == "status 503")
        #expect(result.completionTokens == 4 && result.promptTokens == 10 && result.timeToFirstTokenMs.p50 != nil && result.generationTokensPerSecond.p50 == 20)
        #expect(client.requests.allSatisfy { $0.stream && $0.cachePrompt == false && $0.maxTokens == 8 && $0.origin == BenchmarkJob.origin })
    }
}

/// Reading llama-server's answers: a stream's events (text, usage, timings, an error event) and a whole body.
@Suite struct ModelAnswerReaderTests {
    @Test func aStreamAddsUpToItsAnswerAndAnErrorEventFailsIt() throws {
        let chunks = Mutex<[ModelChunk]>([])
        var stream = ModelStreamReader { chunk in chunks.withLock { $0.append(chunk) } }
        stream.feed(ByteBuffer(string: #"data: {"choices":[{"delta":{"role":"assistant","content":null}}]}"# + "\n\n" + #"data: {"choices":[{"delta":{"content":"Pa"}}]}"# + "\n\ndata: {\"choi"))
        stream.feed(ByteBuffer(string: #"ces":[{"delta":{"content":"ris"},"finish_reason":"stop"}]}"# + "\n\n"))
        stream.feed(ByteBuffer(string: #"data: {"choices":[],"usage":{"prompt_tokens":9,"completion_tokens":2,"total_tokens":11},"timings":{"predicted_per_second":31.5}}"# + "\n\ndata: [DONE]\n\n"))
        let answer = try stream.finish()
        #expect(answer.text == "Paris" && answer.finishReason == "stop" && answer.firstToken != nil)
        #expect(answer.usage == ModelUsage(promptTokens: 9, completionTokens: 2, totalTokens: 11) && answer.timings?.predictedPerSecond == 31.5)
        #expect(chunks.withLock { $0.map(\.text) } == ["", "Pa", "ris", ""])

        var broken = ModelStreamReader { _ in }
        broken.feed(ByteBuffer(string: #"data: {"choices":[{"delta":{"content":"Pa"}}]}"# + "\n\n" + #"data: {"error":{"message":"model 'chat' stopped while answering","code":"upstream_crashed"}}"# + "\n\n"))
        #expect(throws: ModelClientError(.interrupted, "model 'chat' stopped while answering")) { try broken.finish() }
    }

    @Test func aWholeAnswerAndAnErrorBodyAreRead() {
        let whole = ModelAnswerReader.whole(Array(#"{"choices":[{"message":{"content":"{\"label\": \"good\"}"},"finish_reason":"stop"}],"usage":{"prompt_tokens":3,"prompt_tokens_details":{"cached_tokens":2}}}"#.utf8))
        #expect(whole?.text == #"{"label": "good"}"# && whole?.usage?.cachedTokens == 2 && whole?.usage?.promptTokens == 3)
        #expect(ModelAnswerReader.whole(Array(#"{"error":"x"}"#.utf8)) == nil)
        let error = ModelClientError.answered(status: 400, body: Array("not json".utf8))
        #expect(error.description == "the model answered 400: not json")
    }
}
