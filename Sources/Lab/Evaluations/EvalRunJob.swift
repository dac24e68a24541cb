import Foundation
import Jobs
import Store

/// One message of a run's `input_messages` template.
public struct EvalTemplateMessage: Sendable, Codable, Equatable {
    public var role: String
    public var content: String
}

/// The sampling a run asks of its model (`sampling_params`).
public struct EvalSampling: Sendable, Codable, Equatable {
    public var temperature: Double?
    public var topP: Double?
    public var maxCompletionTokens: Int?
    public var seed: Int?
}

/// What a run was asked: its evaluation's criteria, the items (each `{"item": …, "sample": …}`),
/// and, for a `completions` source, the model, template and sampling that make each sample.
public struct EvalRunSpec: Sendable, Codable {
    public var evalID: String
    public var name: String
    public var team: String?
    /// The key that started the run: its requests are admitted and recorded under it.
    public var keyPrefix: String?
    /// Nil for a `jsonl` source: its items carry their samples and are only graded.
    public var model: String?
    public var items: [JSONValue]
    public var template: [EvalTemplateMessage]
    public var sampling: EvalSampling
    public var criteria: [Grader]
    /// The `data_source` as the request gave it (echoed by the run object).
    public var dataSource: JSONValue
    public var metadata: [String: String]
}

/// Where a run stands: the next item, and the counts so far (its checkpoint and its result).
public struct EvalRunState: Sendable, Codable, Equatable {
    public struct Criterion: Sendable, Codable, Equatable {
        public var name: String
        public var passed = 0
        public var failed = 0
    }
    public struct Usage: Sendable, Codable, Equatable {
        public var invocations = 0
        public var promptTokens = 0
        public var completionTokens = 0
        public var cachedTokens = 0
    }
    public var next = 0
    public var passed = 0
    public var failed = 0
    public var errored = 0
    public var criteria: [Criterion] = []
    /// Usage by model: the model under evaluation and any judges.
    public var usage: [String: Usage] = [:]

    mutating func add(_ usage: [String: Any]?, model: String) {
        guard let usage else { return }
        var u = self.usage[model] ?? Usage()
        u.invocations += 1
        u.promptTokens += usage["prompt_tokens"] as? Int ?? 0
        u.completionTokens += usage["completion_tokens"] as? Int ?? 0
        u.cachedTokens += (usage["prompt_tokens_details"] as? [String: Any])?["cached_tokens"] as? Int ?? 0
        self.usage[model] = u
    }
}

/// An evaluation run as a job: for each item, render the template, ask the model through the
/// serving path (same scheduler, keys, limits and ledger as any client; route `/v1/evals`),
/// grade the sample with every criterion and store the output item. A restart resumes at the
/// next item; pause and cancel act between items.
public struct EvalRunJob: JobKind {
    public static let name = "eval_run"
    public static let idPrefix = "evalrun"

    /// Sends one chat completion (a JSON body) for `model` on behalf of a team's key; returns
    /// the status and the answer's body.
    public typealias Complete = @Sendable (_ model: String, _ body: Data, _ team: String?, _ keyPrefix: String?) async throws -> (status: Int, body: Data)

    let complete: Complete
    let store: Store?

    public init(store: Store?, complete: @escaping Complete) {
        self.store = store
        self.complete = complete
    }

    public var policy: JobPolicy { JobPolicy(maxConcurrent: 2, pausable: true, restart: .resume, keepFinished: 1000) }

    public func model(of spec: EvalRunSpec) -> String? { spec.model }

    public func run(_ spec: EvalRunSpec, context: JobContext) async throws -> EvalRunState {
        var state = (try? context.resumeFrom?.decode(EvalRunState.self)) ?? EvalRunState(criteria: spec.criteria.map { .init(name: $0.name) })
        try await context.progress(Double(state.next), of: Double(spec.items.count), unit: "items")
        for index in state.next..<spec.items.count {
            try await context.pausePoint()
            let entry = spec.items[index].any as? [String: Any] ?? [:]
            let item = entry["item"] as? [String: Any] ?? [:]
            var output = try await sample(for: item, given: entry["sample"], spec: spec)
            var results: [[String: Any]] = []
            var allPassed = output.error == nil
            for (k, grader) in spec.criteria.enumerated() {
                var passed = false
                var score = 0.0
                if output.error == nil {
                    let context: [String: Any] = ["item": item, "sample": output.sample]
                    do {
                        if grader.type.isJudged {
                            let judged = try await judge(grader, context, spec: spec)
                            (score, passed) = judged.grade
                            state.add(judged.usage, model: grader.model ?? "")
                        } else {
                            (score, passed) = try grader.grade(context)
                        }
                    } catch let error as GraderError {
                        output.error = ("grader_error", error.message)
                        allPassed = false
                    }
                }
                if passed { state.criteria[k].passed += 1 } else { state.criteria[k].failed += 1 }
                allPassed = allPassed && passed
                results.append(["name": grader.name, "type": grader.type.rawValue, "passed": passed, "score": score])
            }
            let status = output.error != nil ? "error" : allPassed ? "pass" : "fail"
            switch status {
            case "pass": state.passed += 1
            case "fail": state.failed += 1
            default: state.errored += 1
            }
            if let model = spec.model { state.add(output.usage, model: model) }
            try await save(index: index, item: item, output: output, results: results, status: status, spec: spec, run: context.id)
            state.next = index + 1
            try await context.checkpoint(state)
            try await context.progress(Double(state.next), of: Double(spec.items.count), unit: "items")
        }
        return state
    }

    /// Asks a `label_model` or `score_model` criterion's judge (through the serving path, under
    /// the run's key) and grades its answer; a failed request is a grader error.
    func judge(_ grader: Grader, _ context: [String: Any], spec: EvalRunSpec) async throws -> (grade: (Double, Bool), usage: [String: Any]?) {
        let request = try grader.judgeRequest(context)
        let answer: (status: Int, body: Data)
        do {
            answer = try await complete(grader.model ?? "", try JSONSerialization.data(withJSONObject: request), spec.team, spec.keyPrefix)
        } catch is CancellationError {
            throw CancellationError()
        } catch {
            throw GraderError("the judge '\(grader.model ?? "")' could not be asked: \(error)")
        }
        let object = (try? JSONSerialization.jsonObject(with: answer.body)) as? [String: Any]
        guard answer.status == 200, let choice = (object?["choices"] as? [[String: Any]])?.first else {
            throw GraderError("the judge '\(grader.model ?? "")' answered \(answer.status)")
        }
        let text = (choice["message"] as? [String: Any])?["content"] as? String ?? ""
        return (grader.judged(text), object?["usage"] as? [String: Any])
    }

    /// What the model made of one item (or the sample the item came with).
    struct Output {
        var sample: [String: Any]
        var input: [[String: String]] = []
        var finishReason = ""
        var usage: [String: Any]?
        var error: (code: String, message: String)?
    }

    func sample(for item: [String: Any], given: Any?, spec: EvalRunSpec) async throws -> Output {
        guard let model = spec.model else { return Output(sample: given as? [String: Any] ?? [:]) }
        var output = Output(sample: [:])
        do {
            output.input = try spec.template.map { ["role": $0.role, "content": try EvalTemplate.render($0.content, ["item": item])] }
        } catch {
            output.error = ("template_error", (error as? GraderError)?.message ?? "\(error)")
            return output
        }
        var body: [String: Any] = ["model": model, "messages": output.input, "stream": false]
        if let t = spec.sampling.temperature { body["temperature"] = t }
        if let p = spec.sampling.topP { body["top_p"] = p }
        if let m = spec.sampling.maxCompletionTokens { body["max_tokens"] = m }
        if let s = spec.sampling.seed { body["seed"] = s }
        let answer: (status: Int, body: Data)
        do {
            answer = try await complete(model, try JSONSerialization.data(withJSONObject: body), spec.team, spec.keyPrefix)
        } catch is CancellationError {
            throw CancellationError()
        } catch {
            output.error = ("request_failed", "\(error)")
            return output
        }
        let object = (try? JSONSerialization.jsonObject(with: answer.body)) as? [String: Any]
        guard answer.status == 200, let choice = (object?["choices"] as? [[String: Any]])?.first else {
            let message = ((object?["error"] as? [String: Any])?["message"] as? String) ?? String(decoding: answer.body.prefix(300), as: UTF8.self)
            output.error = ("model_error", "the model answered \(answer.status): \(message)")
            return output
        }
        let text = (choice["message"] as? [String: Any])?["content"] as? String ?? ""
        output.sample = ["output_text": text]
        if let json = try? JSONSerialization.jsonObject(with: Data(text.utf8), options: [.fragmentsAllowed]) { output.sample["output_json"] = json }
        output.finishReason = choice["finish_reason"] as? String ?? ""
        output.usage = object?["usage"] as? [String: Any]
        return output
    }

    /// Stores an output item in the shape of the SDK's `OutputItemListResponse`.
    func save(index: Int, item: [String: Any], output: Output, results: [[String: Any]], status: String, spec: EvalRunSpec, run: String) async throws {
        guard let store else { return }
        let id = "outputitem-\(run.dropFirst(EvalRunJob.idPrefix.count + 1))-\(index)"
        let usage = output.usage ?? [:]
        var sample: [String: Any] = [
            "input": output.input, "output": output.error == nil ? [["role": "assistant", "content": output.sample["output_text"] ?? ""]] : [],
            "model": spec.model ?? "", "finish_reason": output.finishReason,
            "usage": [
                "prompt_tokens": usage["prompt_tokens"] as? Int ?? 0, "completion_tokens": usage["completion_tokens"] as? Int ?? 0,
                "total_tokens": usage["total_tokens"] as? Int ?? 0,
                "cached_tokens": (usage["prompt_tokens_details"] as? [String: Any])?["cached_tokens"] as? Int ?? 0,
            ],
            "temperature": spec.sampling.temperature ?? 1, "top_p": spec.sampling.topP ?? 1, "seed": spec.sampling.seed ?? 0,
            "max_completion_tokens": spec.sampling.maxCompletionTokens ?? 0,
            "error": ["code": output.error?.code ?? "", "message": output.error?.message ?? ""],
        ]
        if spec.model == nil { sample["output"] = [["role": "assistant", "content": EvalTemplate.text(output.sample["output_text"] ?? "")]] }
        let object: [String: Any] = [
            "id": id, "object": "eval.run.output_item", "created_at": Int(Date().timeIntervalSince1970), "eval_id": spec.evalID, "run_id": run,
            "datasource_item_id": index, "datasource_item": item, "status": status, "results": results, "sample": sample,
        ]
        try await store.putEvalOutputItem(id: id, run: run, index: index, status: status, body: try JSONSerialization.data(withJSONObject: object))
    }
}

extension JSONValue {
    /// The value as Foundation's JSON objects.
    public var any: Any {
        switch self {
        case .null: NSNull()
        case .bool(let b): b
        case .number(let n): n == n.rounded() && abs(n) < 1e15 ? Int(n) as Any : n
        case .string(let s): s
        case .array(let a): a.map(\.any)
        case .object(let o): o.mapValues(\.any)
        }
    }
}
