import Foundation
import Jobs
import NIOCore
import Runtime
import Store
import Synchronization

/// Where a run's model answered: the llama-server arguments of its instance, and the machine.
public struct EvalEnvironment: Sendable, Codable, Equatable {
    public var arguments: [String]
    public var hardware: HardwareInfo

    public init(arguments: [String], hardware: HardwareInfo) {
        self.arguments = arguments
        self.hardware = hardware
    }
}

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
    /// The items, when they are not kept apart in the store (see `itemsDocument`).
    public var items: [JobJSON]
    /// The store document (kind `eval-items`) holding the items, so that the job record, saved
    /// at every checkpoint, stays small.
    public var itemsDocument: String?
    public var itemCount: Int
    /// How many times each item is asked (Corral's `repetitions`; the seed, when given, grows by
    /// one per repetition).
    public var repetitions: Int = 1
    /// Items × repetitions: what a run asks in all.
    public var unitCount: Int { itemCount * max(1, repetitions) }
    public var template: [EvalTemplateMessage]
    /// A prompt sequence (Corral's `input_messages` of type `sequence`): user turns sent one
    /// after another, each after the model's answer to the previous one.
    public var turns: [String] = []
    public var sampling: EvalSampling
    public var criteria: [Grader]
    /// Items asked at once (Corral's `concurrency` on the run request).
    public var concurrency: Int
    /// The `data_source` as the request gave it (echoed by the run object).
    public var dataSource: JobJSON
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
    /// The first item not done yet.
    public var next = 0
    /// Items after `next` that are done (they finish out of order when several run at once).
    public var done: Set<Int> = []
    public var passed = 0
    public var failed = 0
    public var errored = 0
    public var criteria: [Criterion] = []
    /// Usage by model: the model under evaluation and any judges.
    public var usage: [String: Usage] = [:]
    /// Per item, how many of its repetitions passed (kept when an item is asked more than once).
    public var itemPasses: [Int: Int] = [:]
    /// The instance that answered and the machine, read once the first item is answered.
    public var environment: EvalEnvironment?

    /// Counts an item's outcome and moves `next` past every item done.
    mutating func record(_ outcome: EvalRunJob.ItemOutcome, index: Int) {
        switch outcome.status {
        case "pass": passed += 1
        case "fail": failed += 1
        default: errored += 1
        }
        for (k, verdict) in outcome.passed.enumerated() where k < criteria.count {
            if verdict { criteria[k].passed += 1 } else { criteria[k].failed += 1 }
        }
        for (model, usage, requests) in outcome.usage { add(usage?.any as? [String: Any], model: model, requests: requests) }
        if outcome.status == "pass" { itemPasses[outcome.item, default: 0] += 1 }
        done.insert(index)
        while done.remove(next) != nil { next += 1 }
    }

    mutating func add(_ usage: [String: Any]?, model: String, requests: Int = 1) {
        guard let usage else { return }
        var u = self.usage[model] ?? Usage()
        u.invocations += requests
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
    /// the status and the answer's body. With `onChunk`, a streamed answer's bytes go to it as
    /// they arrive and the body returned is empty (an error answer is returned whole).
    public typealias Complete = @Sendable (_ model: String, _ body: Data, _ team: String?, _ keyPrefix: String?,
                                           _ onChunk: (@Sendable (ByteBuffer) -> Void)?) async throws -> (status: Int, body: Data)

    let complete: Complete
    let store: (any WorkStore)?
    /// Where a model answered: its instance's llama-server arguments and this machine.
    let environment: @Sendable (_ model: String) async -> EvalEnvironment?
    /// Prompts and answer tokens for whoever watches a run live.
    public let console: EvalConsole

    public init(store: (any WorkStore)?, console: EvalConsole = EvalConsole(), complete: @escaping Complete,
                environment: @escaping @Sendable (String) async -> EvalEnvironment? = { _ in nil }) {
        self.store = store
        self.console = console
        self.complete = complete
        self.environment = environment
    }

    public var policy: JobPolicy { JobPolicy(maxConcurrent: 2, pausable: true, restart: .resume, keepFinished: 1000) }

    public func model(of spec: EvalRunSpec) -> String? { spec.model }

    public func run(_ spec: EvalRunSpec, context: JobContext) async throws -> EvalRunState {
        var spec = spec
        if let document = spec.itemsDocument, let store {
            guard let data = try await store.document(kind: "eval-items", id: document) else { throw JobError("items_missing", "the run's items are gone from the store") }
            spec.items = try JobCoding.decoder.decode([JobJSON].self, from: data)
        }
        var state = EvalRunState(criteria: spec.criteria.map { .init(name: $0.name) })
        if let checkpoint = context.resumeFrom {
            // A checkpoint that cannot be read must not restart the counts from zero.
            do { state = try checkpoint.decode(EvalRunState.self) } catch { throw JobError("checkpoint", "the run's checkpoint cannot be read: \(error)") }
        }
        let units = spec.items.count * max(1, spec.repetitions)
        try await context.progress(Double(state.next), of: Double(units), unit: "items")
        // Items (each as often as `repetitions` says: unit u is item u / repetitions) are asked `concurrency` at a time; the checkpoint keeps the first item not done
        // and those after it that are, so a restart asks each remaining item once.
        var remaining = (state.next..<units).filter { !state.done.contains($0) }.makeIterator()
        let run = context.id
        let itemsSpec = spec
        // Output items are written in batches, and the checkpoint after them, at most every
        // quarter second (and at the end): a restart asks again the few items done since, and
        // their output items are replaced, not doubled.
        var lastCheckpoint = ContinuousClock.now
        var unwritten: [EvalOutputRow] = []
        do {
            // `concurrency` bounds the requests to the model: a unit's grading, storing and
            // bookkeeping run while the next unit is already being asked. Units being graded
            // (judges asked) count too, up to `concurrency` more, so a slow judge holds the run
            // back instead of piling requests into its queue.
            let limit = max(1, spec.concurrency)
            var (asking, grading) = (0, 0)
            try await withThrowingTaskGroup(of: Step.self) { group in
                func topUp() {
                    while asking < limit, asking + grading < 2 * limit, let unit = remaining.next() {
                        asking += 1
                        group.addTask { .asked(unit, try await self.ask(unit, spec: itemsSpec, run: run)) }
                    }
                }
                topUp()
                while let step = try await group.next() {
                    switch step {
                    case .asked(let unit, let asked):
                        (asking, grading) = (asking - 1, grading + 1)
                        group.addTask { .graded(unit, try await self.grade(asked, unit: unit, run: run)) }
                        try await context.pausePoint()
                        topUp()
                    case .graded(let index, let outcome):
                        grading -= 1
                        topUp()
                        if let row = outcome.row { unwritten.append(EvalOutputRow(id: row.id, index: index, status: outcome.status, body: row.body)) }
                        state.record(outcome, index: index)
                        if state.environment == nil, let model = spec.model { state.environment = await environment(model) }
                        try await context.event("item", outcome.summary)
                        if ContinuousClock.now - lastCheckpoint >= .milliseconds(250) {
                            try await store?.putEvalOutputItems(unwritten, run: run)
                            unwritten = []
                            try await context.checkpoint(state)
                            lastCheckpoint = .now
                        }
                        try await context.progress(Double(state.next + state.done.count), of: Double(units), unit: "items")
                    }
                }
            }
        } catch {
            // Cancelled or failed: keep the items already graded (the write must not inherit
            // the cancellation, which the database would refuse). If they cannot be written,
            // that is the job's failure.
            let rows = unwritten
            if let store {
                do { try await Task { try await store.putEvalOutputItems(rows, run: run) }.value } catch let write {
                    throw JobError("persistence", "graded items could not be saved: \(write)")
                }
            }
            throw error
        }
        try await store?.putEvalOutputItems(unwritten, run: run)
        try await context.checkpoint(state)
        return state
    }

    /// A unit of a run moving through its task group: answered, then graded.
    enum Step: Sendable {
        case asked(Int, Asked)
        case graded(Int, ItemOutcome)
    }

    /// What one item came to: its status, each criterion's verdict, and the usage of each model asked.
    struct ItemOutcome: Sendable {
        /// The item asked (a unit's item when items are repeated).
        var item: Int
        var status: String
        var passed: [Bool]
        var usage: [(model: String, usage: JobJSON?, requests: Int)]
        /// The item as the live console shows it: prompt, answer, grades.
        var summary: JobJSON = .null
        /// The output item to store (its id and JSON).
        var row: (id: String, body: Data)?
    }

    /// One unit's answer, between asking and grading: built by the task that asked, then read
    /// only by the task that grades (hence unchecked).
    struct Asked: @unchecked Sendable {
        var index: Int
        var repetition: Int
        var item: [String: Any]
        var output: Output
        /// The run's spec with this repetition's seed.
        var spec: EvalRunSpec
    }

    /// Asks the model about one unit (or takes the sample its item came with).
    func ask(_ unit: Int, spec: EvalRunSpec, run: String) async throws -> Asked {
        let repetitions = max(1, spec.repetitions)
        let (index, repetition) = (unit / repetitions, unit % repetitions)
        var spec = spec
        if let seed = spec.sampling.seed { spec.sampling.seed = seed + repetition }
        let entry = spec.items[index].any as? [String: Any] ?? [:]
        let item = entry["item"] as? [String: Any] ?? [:]
        let output = try await sample(for: item, given: entry["sample"], spec: spec, live: (run, index, repetition))
        return Asked(index: index, repetition: repetition, item: item, output: output, spec: spec)
    }

    /// Grades an answer with every criterion (judges asked through the serving path) and builds
    /// its output item and console summary.
    func grade(_ asked: Asked, unit: Int, run: String) async throws -> ItemOutcome {
        let (index, repetition, item, spec) = (asked.index, asked.repetition, asked.item, asked.spec)
        var output = asked.output
        var outcome = ItemOutcome(item: index, status: "", passed: [], usage: [])
        if let model = spec.model { outcome.usage.append((model, output.usage.flatMap(JobJSON.init), output.requests)) }
        var results: [[String: Any]] = []
        var allPassed = output.error == nil
        for grader in spec.criteria {
            var passed = false
            var score = 0.0
            if output.error == nil {
                let context: [String: Any] = ["item": item, "sample": output.sample]
                do {
                    if grader.type.isJudged {
                        let judged = try await judge(grader, context, spec: spec)
                        (score, passed) = judged.grade
                        outcome.usage.append((grader.model ?? "", judged.usage.flatMap(JobJSON.init), 1))
                    } else {
                        (score, passed) = try grader.grade(context)
                    }
                } catch let error as GraderError {
                    output.error = ("grader_error", error.message)
                    allPassed = false
                }
            }
            outcome.passed.append(passed)
            allPassed = allPassed && passed
            results.append(["name": grader.name, "type": grader.type.rawValue, "passed": passed, "score": score])
        }
        outcome.status = output.error != nil ? "error" : allPassed ? "pass" : "fail"
        outcome.row = try outputItem(unit: unit, index: index, repetition: repetition, item: item, output: output, results: results, status: outcome.status, spec: spec, run: run)
        var summary: [String: Any] = [
            "index": index, "repetition": repetition, "status": outcome.status, "input": output.input, "results": results,
            "output": EvalTemplate.text(output.graded["output_text"]?.any ?? ""),
        ]
        if let error = output.error { summary["error"] = ["code": error.code, "message": error.message] }
        if let ms = output.totalMs { summary["total_ms"] = ms }
        if let ms = output.firstTokenMs { summary["ttft_ms"] = ms }
        outcome.summary = JobJSON(summary) ?? .null
        return outcome
    }

    /// Asks a `label_model` or `score_model` criterion's judge (through the serving path, under
    /// the run's key) and grades its answer; a failed request is a grader error.
    func judge(_ grader: Grader, _ context: [String: Any], spec: EvalRunSpec) async throws -> (grade: (Double, Bool), usage: [String: Any]?) {
        let request = try grader.judgeRequest(context)
        let answer: (status: Int, body: Data)
        do {
            answer = try await complete(grader.model ?? "", try JSONSerialization.data(withJSONObject: request), spec.team, spec.keyPrefix, nil)
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
        /// The sample the criteria grade: `EvalSample`'s fields, or the object a `jsonl` item came with.
        var graded: JobJSON
        /// `graded` as the graders' Foundation context holds it.
        var sample: Any { graded.any }
        var input: [[String: String]] = []
        var finishReason = ""
        var usage: [String: Any]?
        /// Requests made for it (one per turn of a prompt sequence).
        var requests = 0
        /// Time to the answer, to its first token (of the first turn), and llama-server's prompt
        /// and generation speed for it.
        var totalMs: Double?
        var firstTokenMs: Double?
        var promptPerSecond: Double?
        var generationPerSecond: Double?
        var error: (code: String, message: String)?
    }

    /// The sample a `jsonl` item came with, when it is an object; else an empty one.
    static func givenSample(_ given: Any?) -> JobJSON {
        guard let given, let sample = JobJSON(given), case .object = sample else { return .object([:]) }
        return sample
    }

    /// The model's answer to one item, streamed (so the first token is timed and the console
    /// can show the tokens as they come); `live` names the run, item and repetition for it.
    func sample(for item: [String: Any], given: Any?, spec: EvalRunSpec, live: (run: String, index: Int, repetition: Int)) async throws -> Output {
        guard let model = spec.model else { return Output(graded: Self.givenSample(given)) }
        var output = Output(graded: .object([:]))
        var turns: [String] = []
        do {
            output.input = try spec.template.map { ["role": $0.role, "content": try EvalTemplate.render($0.content, ["item": item])] }
            turns = try spec.turns.map { try EvalTemplate.render($0, ["item": item]) }
        } catch {
            output.error = ("template_error", (error as? GraderError)?.message ?? "\(error)")
            return output
        }
        // A prompt sequence sends each user turn after the model's answer to the one before; the
        // sample is the last answer, and every answer is in `sample.turns`.
        var conversation = output.input
        var answers: [String] = []
        var usage: [String: Int] = [:]
        var totalMs = 0.0
        let console = self.console
        for (turnIndex, turn) in (turns.isEmpty ? [nil] : turns.map(Optional.some)).enumerated() {
            if let turn { conversation.append(["role": "user", "content": turn]) }
            var body: [String: Any] = ["model": model, "messages": conversation, "stream": true, "stream_options": ["include_usage": true]]
            if let t = spec.sampling.temperature { body["temperature"] = t }
            if let p = spec.sampling.topP { body["top_p"] = p }
            if let m = spec.sampling.maxCompletionTokens { body["max_tokens"] = m }
            if let s = spec.sampling.seed { body["seed"] = s }
            console.publish(live.run, "prompt", EvalConsole.Prompt(index: live.index, repetition: live.repetition, turn: turnIndex, input: conversation))
            let streamed = Mutex(StreamedAnswer())
            let answer: (status: Int, body: Data)
            let asked = ContinuousClock.now
            do {
                answer = try await complete(model, try JSONSerialization.data(withJSONObject: body), spec.team, spec.keyPrefix) { chunk in
                    let deltas = streamed.withLock { $0.feed(chunk, live: console.isWatched(live.run)) }
                    for delta in deltas where console.isWatched(live.run) {
                        console.publish(live.run, "token", EvalConsole.Token(index: live.index, repetition: live.repetition, turn: turnIndex, text: delta))
                    }
                }
                totalMs += 1000 * seconds(ContinuousClock.now - asked)
            } catch is CancellationError {
                throw CancellationError()
            } catch {
                output.error = ("request_failed", "\(error)")
                return output
            }
            let got = streamed.withLock { answer in
                answer.finish()
                return answer
            }
            guard answer.status == 200 else {
                let object = (try? JSONSerialization.jsonObject(with: answer.body)) as? [String: Any]
                let message = ((object?["error"] as? [String: Any])?["message"] as? String) ?? String(decoding: answer.body.prefix(300), as: UTF8.self)
                output.error = ("model_error", "the model answered \(answer.status): \(message)")
                return output
            }
            if let failure = got.error {
                output.error = ("model_error", "the answer broke off: \(failure)")
                return output
            }
            if turnIndex == 0, let first = got.firstToken { output.firstTokenMs = 1000 * seconds(first - asked) }
            answers.append(got.text)
            output.requests += 1
            conversation.append(["role": "assistant", "content": got.text])
            output.finishReason = got.finishReason
            for key in ["prompt_tokens", "completion_tokens", "total_tokens"] { usage[key, default: 0] += got.usage?[key]?.intValue ?? 0 }
            output.promptPerSecond = got.timings?["prompt_per_second"]?.doubleValue
            output.generationPerSecond = got.timings?["predicted_per_second"]?.doubleValue
        }
        output.graded = EvalSample(answers: answers).json
        output.usage = usage
        output.totalMs = totalMs
        if !turns.isEmpty { output.input = Array(conversation.dropLast()) }
        return output
    }

    /// An output item in the shape of the SDK's `OutputItemListResponse`.
    func outputItem(
        unit: Int, index: Int, repetition: Int, item: [String: Any], output: Output, results: [[String: Any]], status: String, spec: EvalRunSpec, run: String
    ) throws -> (id: String, body: Data) {
        let id = "outputitem-\(run.dropFirst(EvalRunJob.idPrefix.count + 1))-\(unit)"
        let usage = output.usage ?? [:]
        var sample: [String: Any] = [
            "input": output.input, "output": output.error == nil ? [["role": "assistant", "content": output.graded["output_text"]?.any ?? ""]] : [],
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
        // Corral's extension: how fast this item was answered.
        if let ms = output.totalMs {
            sample["timings"] = ["total_ms": ms, "time_to_first_token_ms": output.firstTokenMs.map { $0 as Any } ?? NSNull(),
                                 "prompt_tokens_per_second": output.promptPerSecond.map { $0 as Any } ?? NSNull(),
                                 "generation_tokens_per_second": output.generationPerSecond.map { $0 as Any } ?? NSNull()] as [String: Any]
        }
        if spec.model == nil { sample["output"] = [["role": "assistant", "content": EvalTemplate.text(output.graded["output_text"]?.any ?? "")]] }
        if let turns = output.graded["turns"] { sample["turns"] = turns.any }
        let object: [String: Any] = [
            "id": id, "object": "eval.run.output_item", "created_at": Int(Date().timeIntervalSince1970), "eval_id": spec.evalID, "run_id": run,
            "datasource_item_id": index, "datasource_item": item, "status": status, "results": results, "sample": sample,
            "repetition": repetition,
        ]
        return (id, try JSONSerialization.data(withJSONObject: object))
    }
}

/// The `sample` a criterion grades, from a model's answers: `output_text` (the last answer),
/// `turns` (every answer of a prompt sequence) and `output_json` (the last answer parsed, when it
/// is JSON). Evaluation runs and tuning's quality probes grade the same sample.
public struct EvalSample: Sendable, Codable, Equatable {
    public var outputText: String
    public var turns: [String]?
    public var outputJSON: JobJSON?

    enum CodingKeys: String, CodingKey {
        case outputText = "output_text", turns, outputJSON = "output_json"
    }

    public init(answers: [String]) {
        outputText = answers.last ?? ""
        turns = answers.count > 1 ? answers : nil
        outputJSON = try? JSONDecoder().decode(JobJSON.self, from: Data(outputText.utf8))
    }

    /// The sample as a JSON value (the graders read it through ``JobJSON/any``).
    public var json: JobJSON { (try? JobJSON(encoding: self)) ?? .object(["output_text": .string(outputText)]) }
}
