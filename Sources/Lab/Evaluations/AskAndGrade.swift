import Foundation
import Jobs
import Serving

/// How one evaluation item is asked of a model: the template (and any prompt sequence), the
/// sampling, and on whose behalf. Evaluation runs and tuning's quality probes ask the same way.
public struct EvalAsking: Sendable {
    public var client: any ModelClient
    public var model: String
    public var template: [EvalTemplateMessage]
    /// A prompt sequence: user turns sent one after another, each after the answer to the one before.
    public var turns: [String]
    /// Sampling fields by their API names (`temperature`, `top_p`, `top_k`, …).
    public var sampling: [String: Double]
    public var maxTokens: Int?
    public var seed: Int?
    public var origin: ModelCallOrigin

    public init(client: any ModelClient, model: String, template: [EvalTemplateMessage], turns: [String] = [], sampling: [String: Double] = [:],
                maxTokens: Int? = nil, seed: Int? = nil, origin: ModelCallOrigin) {
        (self.client, self.model, self.template, self.turns, self.sampling) = (client, model, template, turns, sampling)
        (self.maxTokens, self.seed, self.origin) = (maxTokens, seed, origin)
    }
}

/// Why an item has no grade: its code (`request_failed`, `model_error`, `template_error`,
/// `grader_error`) and what happened.
public struct EvalItemError: Error, Sendable, Codable, Equatable, CustomStringConvertible {
    public var code: String
    public var message: String

    public init(_ code: String, _ message: String) { (self.code, self.message) = (code, message) }
    public var description: String { message }
}

/// What a model made of one item (or the sample a `jsonl` item came with).
public struct EvalAnswer: Sendable {
    /// The sample the criteria grade (``EvalSample``'s fields, or the object the item came with).
    public var graded: JobJSON
    public var input: [ModelMessage] = []
    public var finishReason = ""
    /// Prompt, completion and total tokens over every turn.
    public var usage: ModelUsage?
    /// Requests made (one per turn).
    public var requests = 0
    /// Time to the answer, to its first token (of the first turn), and llama-server's speeds.
    public var totalMs: Double?
    public var firstTokenMs: Double?
    public var promptPerSecond: Double?
    public var generationPerSecond: Double?
    public var error: EvalItemError?

    public init(graded: JobJSON) { self.graded = graded }

    /// The answer's text (`output_text`), as a template writes it.
    public var outputText: String { EvalTemplate.text(graded["output_text"] ?? .string("")) }
}

/// Someone watching the asking live: each turn's prompt, and the answer's text as it arrives.
public struct EvalWatch: Sendable {
    public var isWatched: @Sendable () -> Bool
    public var prompt: @Sendable (_ turn: Int, _ conversation: [ModelMessage]) -> Void
    public var token: @Sendable (_ turn: Int, _ text: String) -> Void

    public init(isWatched: @escaping @Sendable () -> Bool, prompt: @escaping @Sendable (Int, [ModelMessage]) -> Void,
                token: @escaping @Sendable (Int, String) -> Void) {
        (self.isWatched, self.prompt, self.token) = (isWatched, prompt, token)
    }
}

extension EvalAsking {
    /// Asks the model about `item` (streamed, so the first token is timed). A failed request, an
    /// error answer or a template that cannot be rendered is the answer's `error`, never a wrong
    /// answer; only cancellation is thrown.
    public func ask(_ item: JobJSON, watch: EvalWatch? = nil) async throws(CancellationError) -> EvalAnswer {
        var answer = EvalAnswer(graded: .object([:]))
        let context = JobJSON.object(["item": item])
        var turns: [String] = []
        do {
            answer.input = try template.map { ModelMessage(role: $0.role, content: try EvalTemplate.render($0.content, context)) }
            turns = try self.turns.map { try EvalTemplate.render($0, context) }
        } catch {
            answer.error = EvalItemError("template_error", (error as? GraderError)?.message ?? "\(error)")
            return answer
        }
        // A prompt sequence sends each user turn after the model's answer to the one before; the
        // sample is the last answer, and every answer is in `sample.turns`.
        var conversation = answer.input
        var answers: [String] = []
        var usage = ModelUsage()
        var totalMs = 0.0
        for (turnIndex, turn) in (turns.isEmpty ? [nil] : turns.map(Optional.some)).enumerated() {
            if let turn { conversation.append(ModelMessage(role: "user", content: turn)) }
            watch?.prompt(turnIndex, conversation)
            let request = ModelRequest(model: model, input: .messages(conversation), sampling: sampling, maxTokens: maxTokens, seed: seed, stream: true, origin: origin)
            let asked = ContinuousClock.now
            let got: ModelResponse
            do throws(ModelClientError) {
                got = try await client.stream(request) { chunk in
                    if let watch, !chunk.text.isEmpty, watch.isWatched() { watch.token(turnIndex, chunk.text) }
                }
                totalMs += 1000 * seconds(ContinuousClock.now - asked)
            } catch {
                if Task.isCancelled { throw CancellationError() }
                answer.error = switch error.kind {
                case .requestFailed: EvalItemError("request_failed", error.message)
                case .answeredError, .interrupted, .unreadable: EvalItemError("model_error", error.description)
                }
                return answer
            }
            if turnIndex == 0, let first = got.firstToken { answer.firstTokenMs = 1000 * seconds(first - asked) }
            answers.append(got.text)
            answer.requests += 1
            conversation.append(ModelMessage(role: "assistant", content: got.text))
            answer.finishReason = got.finishReason
            usage.promptTokens += got.usage?.promptTokens ?? 0
            usage.completionTokens += got.usage?.completionTokens ?? 0
            usage.totalTokens += got.usage?.totalTokens ?? 0
            answer.promptPerSecond = got.timings?.promptPerSecond
            answer.generationPerSecond = got.timings?.predictedPerSecond
        }
        answer.graded = EvalSample(answers: answers).json
        answer.usage = usage
        answer.totalMs = totalMs
        if !turns.isEmpty { answer.input = Array(conversation.dropLast()) }
        return answer
    }
}

/// One criterion's verdict on an item.
public struct EvalCriterionResult: Sendable, Codable, Equatable {
    public var name: String
    public var type: String
    public var passed: Bool
    public var score: Double
}

/// An item's grade: each criterion's verdict, the item's status, and what the judges used.
public struct EvalGrade: Sendable {
    public var results: [EvalCriterionResult] = []
    /// `pass`, `fail` or `error`.
    public var status = ""
    public var judgeUsage: [(model: String, usage: ModelUsage?)] = []
}

/// Grades answers with an evaluation's criteria, asking the judges of `label_model` and
/// `score_model` criteria through `judges`.
public struct EvalGrading: Sendable {
    public var criteria: [Grader]
    /// Asks judges; nil where no judge can be asked (a judged criterion is then an error).
    public var judges: (any ModelClient)?
    public var origin: ModelCallOrigin

    public init(criteria: [Grader], judges: (any ModelClient)?, origin: ModelCallOrigin) {
        (self.criteria, self.judges, self.origin) = (criteria, judges, origin)
    }

    /// Grades `answer` to `item` with every criterion. A criterion that cannot grade (or a judge
    /// that cannot be asked) sets the answer's error: the item is an error, not a failure.
    public func grade(_ item: JobJSON, _ answer: inout EvalAnswer) async throws(CancellationError) -> EvalGrade {
        var grade = EvalGrade()
        var allPassed = answer.error == nil
        for grader in criteria {
            var (score, passed) = (0.0, false)
            if answer.error == nil {
                let context = JobJSON.object(["item": item, "sample": answer.graded])
                do throws(GraderError) {
                    if grader.type.isJudged {
                        let judged = try await judge(grader, context)
                        (score, passed) = judged.grade
                        grade.judgeUsage.append((grader.model ?? "", judged.usage))
                    } else {
                        (score, passed) = try grader.grade(context)
                    }
                } catch {
                    if Task.isCancelled { throw CancellationError() }
                    answer.error = EvalItemError("grader_error", error.message)
                    allPassed = false
                }
            }
            allPassed = allPassed && passed
            grade.results.append(EvalCriterionResult(name: grader.name, type: grader.type.rawValue, passed: passed, score: score))
        }
        grade.status = answer.error != nil ? "error" : allPassed ? "pass" : "fail"
        return grade
    }

    /// Asks a `label_model` or `score_model` criterion's judge and grades its answer; a failed
    /// request is a grader error.
    func judge(_ grader: Grader, _ context: JobJSON) async throws(GraderError) -> (grade: (Double, Bool), usage: ModelUsage?) {
        let judge = grader.model ?? ""
        guard let judges else { throw GraderError("the judge '\(judge)' cannot be asked here") }
        let request = try grader.judgeRequest(context, origin: origin)
        do throws(ModelClientError) {
            let answer = try await judges.complete(request)
            return (grader.judged(answer.text), answer.usage)
        } catch {
            switch error.kind {
            case .requestFailed: throw GraderError("the judge '\(judge)' could not be asked: \(error.message)")
            case .answeredError, .interrupted, .unreadable: throw GraderError("the judge '\(judge)' answered \(error.status ?? 200)")
            }
        }
    }
}
