import Foundation
import Jobs

// The Evals API's objects as the openai SDK reads them, encoded by the HTTP layer as they are
// (snake_case keys; an optional left unset is absent unless its comment says null).

/// The SDK's `Eval` object.
public struct EvalObject: Codable, Sendable, Equatable {
    public struct DataSourceConfig: Codable, Sendable, Equatable {
        public var type = "custom"
        /// `{"type":"object","properties":{"item":…, "sample":…},"required":[…]}`.
        public var schema: JobJSON
    }

    /// A testing criterion as it was given (a judge's `input` is its list of messages).
    public struct Criterion: Codable, Sendable, Equatable {
        public var type: String
        public var name: String
        public var input: JobJSON
        public var reference: String?
        public var operation: String?
        public var evaluationMetric: String?
        public var passThreshold: Double?
        public var pattern: String?
        public var schema: JobJSON?
        public var model: String?
        public var labels: [String]?
        public var passingLabels: [String]?
        public var range: [Double]?

        enum CodingKeys: String, CodingKey {
            case type, name, input, reference, operation, pattern, schema, model, labels, range
            case evaluationMetric = "evaluation_metric", passThreshold = "pass_threshold", passingLabels = "passing_labels"
        }

        public init(_ g: Grader) {
            type = g.type.rawValue
            name = g.name
            input = g.messages.map { .array($0.map { .object(["role": .string($0.role), "content": .string($0.content)]) }) } ?? .string(g.input)
            reference = g.reference
            operation = g.operation
            evaluationMetric = g.evaluationMetric
            passThreshold = g.passThreshold
            pattern = g.pattern
            schema = g.schema
            model = g.model
            labels = g.labels
            passingLabels = g.passingLabels
            range = g.range
        }
    }

    public var id: String
    public var object = "eval"
    public var name: String
    public var createdAt: Int
    public var metadata: [String: String]
    public var dataSourceConfig: DataSourceConfig
    public var testingCriteria: [Criterion]

    enum CodingKeys: String, CodingKey {
        case id, object, name, metadata
        case createdAt = "created_at", dataSourceConfig = "data_source_config", testingCriteria = "testing_criteria"
    }

    public init(_ e: EvalDefinition) {
        var properties: [String: JobJSON] = ["item": e.itemSchema]
        var required: [JobJSON] = [.string("item")]
        if e.includeSampleSchema {
            properties["sample"] = .object(["type": .string("object"), "properties": .object(["output_text": .object(["type": .string("string")])])])
            required.append(.string("sample"))
        }
        id = e.id
        name = e.name
        createdAt = Int(e.createdAt.timeIntervalSince1970)
        metadata = e.metadata
        dataSourceConfig = DataSourceConfig(schema: .object(["type": .string("object"), "properties": .object(properties), "required": .array(required)]))
        testingCriteria = e.testingCriteria.map(Criterion.init)
    }
}

/// The SDK's `RunCreateResponse` (and retrieve, list, cancel), with Corral's `corral` extension.
public struct EvalRunObject: Codable, Sendable, Equatable {
    public struct RunError: Codable, Sendable, Equatable {
        public var code: String
        public var message: String
    }
    public struct ResultCounts: Codable, Sendable, Equatable {
        public var total: Int
        public var passed: Int
        public var failed: Int
        public var errored: Int
    }
    public struct CriterionResult: Codable, Sendable, Equatable {
        public var testingCriteria: String
        public var passed: Int
        public var failed: Int
        enum CodingKeys: String, CodingKey { case passed, failed, testingCriteria = "testing_criteria" }
    }
    public struct ModelUsage: Codable, Sendable, Equatable {
        public var modelName: String
        public var invocationCount: Int
        public var promptTokens: Int
        public var completionTokens: Int
        public var totalTokens: Int
        public var cachedTokens: Int
        enum CodingKeys: String, CodingKey {
            case modelName = "model_name", invocationCount = "invocation_count", promptTokens = "prompt_tokens"
            case completionTokens = "completion_tokens", totalTokens = "total_tokens", cachedTokens = "cached_tokens"
        }
    }

    public var id: String
    public var object = "eval.run"
    public var evalID: String
    public var name: String
    /// "" for a `jsonl` source.
    public var model: String
    public var status: String
    public var createdAt: Int
    public var metadata: [String: String]
    public var dataSource: JobJSON
    public var reportURL = ""
    /// Empty code and message while nothing failed.
    public var error: RunError
    public var resultCounts: ResultCounts
    public var perTestingCriteriaResults: [CriterionResult]
    public var perModelUsage: [ModelUsage]
    public var corral: EvalRunExtension

    enum CodingKeys: String, CodingKey {
        case id, object, name, model, status, metadata, error, corral
        case evalID = "eval_id", createdAt = "created_at", dataSource = "data_source", reportURL = "report_url"
        case resultCounts = "result_counts", perTestingCriteriaResults = "per_testing_criteria_results", perModelUsage = "per_model_usage"
    }

    public init(_ job: JobRecord, _ spec: EvalRunSpec) {
        let state = (try? (job.result ?? job.checkpoint)?.decode(EvalRunState.self)) ?? EvalRunState(criteria: spec.criteria.map { .init(name: $0.name) })
        id = job.id
        evalID = spec.evalID
        name = spec.name
        model = spec.model ?? ""
        status = Evaluations.status(job.state)
        createdAt = Int(job.createdAt.timeIntervalSince1970)
        metadata = spec.metadata
        dataSource = spec.dataSource
        error = RunError(code: job.error?.code ?? "", message: job.error?.message ?? "")
        resultCounts = ResultCounts(total: spec.unitCount, passed: state.passed, failed: state.failed, errored: state.errored)
        perTestingCriteriaResults = state.criteria.map { CriterionResult(testingCriteria: $0.name, passed: $0.passed, failed: $0.failed) }
        perModelUsage = state.usage.sorted { $0.key < $1.key }.map { model, u in
            ModelUsage(
                modelName: model, invocationCount: u.invocations, promptTokens: u.promptTokens, completionTokens: u.completionTokens,
                totalTokens: u.promptTokens + u.completionTokens, cachedTokens: u.cachedTokens)
        }
        corral = EvalRunExtension(state, spec)
    }
}

/// What Corral adds to a run object: concurrency and repetitions, the instance and machine that
/// answered, the pass rate with its Wilson 95 % interval, and with repetitions (once every item
/// is done) each item's pass rate and interval.
public struct EvalRunExtension: Codable, Sendable, Equatable {
    public struct Item: Codable, Sendable, Equatable {
        public var index: Int
        public var passes: Int
        public var runs: Int
        public var passRate: Double
        public var interval: [Double]
        enum CodingKeys: String, CodingKey { case index, passes, runs, interval, passRate = "pass_rate" }
    }

    public var concurrency: Int
    public var repetitions: Int
    /// `EvalEnvironment` as the job stored it.
    public var environment: JobJSON?
    public var passRate: Double?
    public var passRateInterval: [Double]?
    public var items: [Item]?

    enum CodingKeys: String, CodingKey {
        case concurrency, repetitions, environment, items
        case passRate = "pass_rate", passRateInterval = "pass_rate_interval"
    }

    init(_ state: EvalRunState, _ spec: EvalRunSpec) {
        let graded = state.passed + state.failed + state.errored
        concurrency = spec.concurrency
        repetitions = max(1, spec.repetitions)
        environment = state.environment.flatMap { try? JobJSON(encoding: $0) }
        if let overall = Wilson.interval(successes: state.passed, trials: graded) {
            passRate = Double(state.passed) / Double(graded)
            passRateInterval = [overall.low, overall.high]
        }
        if spec.repetitions > 1, state.next == spec.unitCount {
            items = (0..<spec.itemCount).map { index in
                let passes = state.itemPasses[index] ?? 0
                let interval = Wilson.interval(successes: passes, trials: spec.repetitions)!
                return Item(index: index, passes: passes, runs: spec.repetitions, passRate: Double(passes) / Double(spec.repetitions), interval: [interval.low, interval.high])
            }
        }
    }
}

/// `{"object": "eval.deleted", "deleted": true, "eval_id": …}` and the run's counterpart.
public struct EvalDeleted: Codable, Sendable, Equatable {
    public var object: String
    public var deleted = true
    public var evalID: String?
    public var runID: String?
    enum CodingKeys: String, CodingKey { case object, deleted, evalID = "eval_id", runID = "run_id" }

    public static func eval(_ id: String) -> EvalDeleted { EvalDeleted(object: "eval.deleted", evalID: id) }
    public static func run(_ id: String) -> EvalDeleted { EvalDeleted(object: "eval.run.deleted", runID: id) }
}
