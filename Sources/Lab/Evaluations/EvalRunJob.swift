import Foundation
import Jobs
import NIOCore
import Runtime
import Serving
import Store

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
        for (model, usage, requests) in outcome.usage { add(usage, model: model, requests: requests) }
        if outcome.status == "pass" { itemPasses[outcome.item, default: 0] += 1 }
        done.insert(index)
        while done.remove(next) != nil { next += 1 }
    }

    mutating func add(_ usage: ModelUsage?, model: String, requests: Int = 1) {
        guard let usage else { return }
        var u = self.usage[model] ?? Usage()
        u.invocations += requests
        u.promptTokens += usage.promptTokens
        u.completionTokens += usage.completionTokens
        u.cachedTokens += usage.cachedTokens
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

    /// Asks the models under evaluation and the judges (through the serving path, under the run's key).
    let client: any ModelClient
    let store: (any WorkStore)?
    /// Where a model answered: its instance's llama-server arguments and this machine.
    let environment: @Sendable (_ model: String) async -> EvalEnvironment?
    /// Prompts and answer tokens for whoever watches a run live.
    public let console: EvalConsole

    /// The route the ledger records a run's requests under.
    public static let route = "/v1/evals"

    public init(store: (any WorkStore)?, console: EvalConsole = EvalConsole(), client: any ModelClient,
                environment: @escaping @Sendable (String) async -> EvalEnvironment? = { _ in nil }) {
        self.store = store
        self.console = console
        self.client = client
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
        var usage: [(model: String, usage: ModelUsage?, requests: Int)]
        /// The item as the live console shows it: prompt, answer, grades.
        var summary: JobJSON = .null
        /// The output item to store (its id and JSON).
        var row: (id: String, body: Data)?
    }

    /// One unit's answer, between asking and grading.
    struct Asked: Sendable {
        var index: Int
        var repetition: Int
        var item: JobJSON
        var answer: EvalAnswer
        /// The run's spec with this repetition's seed.
        var spec: EvalRunSpec
    }

    /// The origin of a run's requests: its key, behind client requests, recorded as `/v1/evals`.
    static func origin(_ spec: EvalRunSpec) -> ModelCallOrigin {
        ModelCallOrigin(teamID: spec.team, keyPrefix: spec.keyPrefix, priority: .background, route: route)
    }

    /// How a run's model is asked (its template, prompt sequence and sampling).
    static func asking(_ spec: EvalRunSpec, model: String, client: any ModelClient) -> EvalAsking {
        var sampling: [String: Double] = [:]
        if let t = spec.sampling.temperature { sampling["temperature"] = t }
        if let p = spec.sampling.topP { sampling["top_p"] = p }
        return EvalAsking(client: client, model: model, template: spec.template, turns: spec.turns, sampling: sampling,
                          maxTokens: spec.sampling.maxCompletionTokens, seed: spec.sampling.seed, origin: origin(spec))
    }

    /// Asks the model about one unit (or takes the sample its item came with).
    func ask(_ unit: Int, spec: EvalRunSpec, run: String) async throws -> Asked {
        let repetitions = max(1, spec.repetitions)
        let (index, repetition) = (unit / repetitions, unit % repetitions)
        var spec = spec
        if let seed = spec.sampling.seed { spec.sampling.seed = seed + repetition }
        let entry = spec.items[index]
        var item = JobJSON.object([:])
        if case .object? = entry["item"] { item = entry["item"]! }
        guard let model = spec.model else {
            return Asked(index: index, repetition: repetition, item: item, answer: EvalAnswer(graded: Self.givenSample(entry["sample"])), spec: spec)
        }
        let console = self.console
        let watch = EvalWatch(
            isWatched: { console.isWatched(run) },
            prompt: { turn, conversation in
                console.publish(run, "prompt", EvalConsole.Prompt(index: index, repetition: repetition, turn: turn,
                                                                  input: conversation.map { ["role": $0.role, "content": $0.content] }))
            },
            token: { turn, text in console.publish(run, "token", EvalConsole.Token(index: index, repetition: repetition, turn: turn, text: text)) })
        let answer = try await Self.asking(spec, model: model, client: client).ask(item, watch: watch)
        return Asked(index: index, repetition: repetition, item: item, answer: answer, spec: spec)
    }

    /// Grades an answer with every criterion (judges asked through the serving path) and builds
    /// its output item and console summary.
    func grade(_ asked: Asked, unit: Int, run: String) async throws -> ItemOutcome {
        let (index, repetition, item, spec) = (asked.index, asked.repetition, asked.item, asked.spec)
        var answer = asked.answer
        var outcome = ItemOutcome(item: index, status: "", passed: [], usage: [])
        if let model = spec.model { outcome.usage.append((model, answer.usage, answer.requests)) }
        let grade = try await EvalGrading(criteria: spec.criteria, judges: client, origin: Self.origin(spec)).grade(item, &answer)
        outcome.usage += grade.judgeUsage.map { ($0.model, $0.usage, 1) }
        outcome.passed = grade.results.map(\.passed)
        outcome.status = grade.status
        outcome.row = try outputItem(unit: unit, index: index, repetition: repetition, item: item, answer: answer, results: grade.results,
                                     status: outcome.status, spec: spec, run: run)
        let summary = EvalItemSummary(
            index: index, repetition: repetition, status: outcome.status, input: answer.input, results: grade.results, output: answer.outputText,
            error: answer.error, totalMs: answer.totalMs, firstTokenMs: answer.firstTokenMs)
        outcome.summary = try JobJSON(encoding: summary)
        return outcome
    }

    /// The sample a `jsonl` item came with, when it is an object; else an empty one.
    static func givenSample(_ given: JobJSON?) -> JobJSON {
        guard let given, case .object = given else { return .object([:]) }
        return given
    }

    /// An output item in the shape of the SDK's `OutputItemListResponse`.
    func outputItem(
        unit: Int, index: Int, repetition: Int, item: JobJSON, answer: EvalAnswer, results: [EvalCriterionResult], status: String, spec: EvalRunSpec, run: String
    ) throws -> (id: String, body: Data) {
        let id = "outputitem-\(run.dropFirst(EvalRunJob.idPrefix.count + 1))-\(unit)"
        let usage = answer.usage ?? ModelUsage()
        let text = answer.outputText
        var sample = EvalOutputItem.Sample(
            input: answer.input, output: answer.error == nil || spec.model == nil ? [ModelMessage(role: "assistant", content: text)] : [],
            model: spec.model ?? "", finishReason: answer.finishReason,
            usage: .init(promptTokens: usage.promptTokens, completionTokens: usage.completionTokens, totalTokens: usage.totalTokens, cachedTokens: usage.cachedTokens),
            temperature: spec.sampling.temperature ?? 1, topP: spec.sampling.topP ?? 1, seed: spec.sampling.seed ?? 0,
            maxCompletionTokens: spec.sampling.maxCompletionTokens ?? 0, error: answer.error ?? EvalItemError("", ""))
        // Corral's extension: how fast this item was answered.
        if let ms = answer.totalMs {
            sample.timings = .init(totalMs: ms, timeToFirstTokenMs: answer.firstTokenMs, promptTokensPerSecond: answer.promptPerSecond,
                                   generationTokensPerSecond: answer.generationPerSecond)
        }
        sample.turns = answer.graded["turns"]
        let object = EvalOutputItem(
            id: id, createdAt: Int(Date().timeIntervalSince1970), evalID: spec.evalID, runID: run, datasourceItemID: index, datasourceItem: item,
            status: status, results: results, sample: sample, repetition: repetition)
        return (id, try JSONEncoder().encode(object))
    }
}

/// An item as the live console and the run's `item` events show it.
struct EvalItemSummary: Encodable {
    var index: Int
    var repetition: Int
    var status: String
    var input: [ModelMessage]
    var results: [EvalCriterionResult]
    var output: String
    var error: EvalItemError?
    var totalMs: Double?
    var firstTokenMs: Double?

    enum CodingKeys: String, CodingKey {
        case index, repetition, status, input, results, output, error, totalMs = "total_ms", firstTokenMs = "ttft_ms"
    }
}

/// An output item as the Evals API stores and lists it (`eval.run.output_item`).
struct EvalOutputItem: Encodable {
    struct Usage: Encodable {
        var promptTokens: Int
        var completionTokens: Int
        var totalTokens: Int
        var cachedTokens: Int
        enum CodingKeys: String, CodingKey {
            case promptTokens = "prompt_tokens", completionTokens = "completion_tokens", totalTokens = "total_tokens", cachedTokens = "cached_tokens"
        }
    }
    /// Corral's extension: how fast the item was answered (null where unknown).
    struct Timings: Encodable {
        var totalMs: Double
        var timeToFirstTokenMs: Double?
        var promptTokensPerSecond: Double?
        var generationTokensPerSecond: Double?
        enum CodingKeys: String, CodingKey {
            case totalMs = "total_ms", timeToFirstTokenMs = "time_to_first_token_ms", promptTokensPerSecond = "prompt_tokens_per_second"
            case generationTokensPerSecond = "generation_tokens_per_second"
        }
        func encode(to encoder: any Encoder) throws {
            var c = encoder.container(keyedBy: CodingKeys.self)
            try c.encode(totalMs, forKey: .totalMs)
            try c.encode(timeToFirstTokenMs, forKey: .timeToFirstTokenMs)
            try c.encode(promptTokensPerSecond, forKey: .promptTokensPerSecond)
            try c.encode(generationTokensPerSecond, forKey: .generationTokensPerSecond)
        }
    }
    struct Sample: Encodable {
        var input: [ModelMessage]
        var output: [ModelMessage]
        var model: String
        var finishReason: String
        var usage: Usage
        var temperature: Double
        var topP: Double
        var seed: Int
        var maxCompletionTokens: Int
        var error: EvalItemError
        var timings: Timings?
        var turns: JobJSON?
        enum CodingKeys: String, CodingKey {
            case input, output, model, finishReason = "finish_reason", usage, temperature, topP = "top_p", seed
            case maxCompletionTokens = "max_completion_tokens", error, timings, turns
        }
    }
    var id: String
    var object = "eval.run.output_item"
    var createdAt: Int
    var evalID: String
    var runID: String
    var datasourceItemID: Int
    var datasourceItem: JobJSON
    var status: String
    var results: [EvalCriterionResult]
    var sample: Sample
    var repetition: Int

    init(id: String, createdAt: Int, evalID: String, runID: String, datasourceItemID: Int, datasourceItem: JobJSON, status: String,
         results: [EvalCriterionResult], sample: Sample, repetition: Int) {
        (self.id, self.createdAt, self.evalID, self.runID, self.datasourceItemID) = (id, createdAt, evalID, runID, datasourceItemID)
        (self.datasourceItem, self.status, self.results, self.sample, self.repetition) = (datasourceItem, status, results, sample, repetition)
    }

    enum CodingKeys: String, CodingKey {
        case id, object, createdAt = "created_at", evalID = "eval_id", runID = "run_id", datasourceItemID = "datasource_item_id"
        case datasourceItem = "datasource_item", status, results, sample, repetition
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

    /// The sample as a JSON value (what the graders read).
    public var json: JobJSON { (try? JobJSON(encoding: self)) ?? .object(["output_text": .string(outputText)]) }
}
