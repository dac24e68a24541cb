import Foundation
import Jobs
import Serving

/// What a benchmark sends.
public struct BenchmarkParameters: Sendable, Codable, Equatable {
    public var requests: Int
    public var concurrency: Int
    public var promptWords: Int
    public var maxTokens: Int
    /// Sampling fields every request carries (`temperature`, `top_p`, …: a tuning trial's).
    public var sampling: [String: Double]?

    public init(requests: Int, concurrency: Int, promptWords: Int, maxTokens: Int, sampling: [String: Double]? = nil) {
        (self.requests, self.concurrency, self.promptWords, self.maxTokens, self.sampling) = (requests, concurrency, promptWords, maxTokens, sampling)
    }
}

/// A benchmark job's spec: the model (its catalog id) and the load.
public struct BenchmarkSpec: Sendable, Codable, Equatable {
    public var model: String
    public var parameters: BenchmarkParameters

    public init(model: String, parameters: BenchmarkParameters) {
        (self.model, self.parameters) = (model, parameters)
    }
}

/// What a benchmark measured, and what the instance had allocated when it ended.
public struct BenchmarkOutcome: Sendable, Codable, Equatable {
    public var result: LoadResult
    /// MiB by device and kind.
    public var memoryMiB: [String: Double]?
}

/// Runs a benchmark through the serving path (scheduler, relay, ledger): streamed chat
/// requests at a fixed concurrency, measured from the client side and from llama-server's
/// timings. Pausable between requests; a restart interrupts it (a half-run load says nothing).
public struct BenchmarkJob: JobKind {
    public static let name = "benchmark"
    public static let idPrefix = "bench"

    /// Sends the requests through the serving path.
    let client: any ModelClient
    /// What the model's instance has allocated now (MiB by device and kind).
    let allocated: @Sendable (String) async -> [String: Double]?

    /// The route the ledger records a benchmark's requests under (anonymous, at client priority).
    public static let origin = ModelCallOrigin(priority: .client, route: "/admin/benchmarks")

    public init(client: any ModelClient, allocated: @escaping @Sendable (String) async -> [String: Double]?) {
        self.client = client
        self.allocated = allocated
    }

    public var policy: JobPolicy { JobPolicy(maxConcurrent: 2, pausable: true, restart: .interrupt, keepFinished: 500) }

    public func model(of spec: BenchmarkSpec) -> String? { spec.model }

    public func run(_ spec: BenchmarkSpec, context: JobContext) async throws -> BenchmarkOutcome {
        let p = spec.parameters
        let runner = LoadRunner(p)
        try await context.progress(0, of: Double(p.requests), unit: "requests")
        let result = await runner.run(
            model: spec.model, client: client, origin: Self.origin,
            progress: { done, total in try? await context.progress(Double(done), of: Double(total), unit: "requests") },
            beforeEach: { try await context.pausePoint() })
        try await context.pausePoint()
        let outcome = BenchmarkOutcome(result: result, memoryMiB: await allocated(spec.model))
        try await context.detail(outcome)
        if result.errors == result.requests {
            throw JobError("failed", result.firstError ?? "every request failed")
        }
        return outcome
    }
}

/// A benchmark as `/admin/benchmarks` shows it: the job's spec, progress and outcome in one.
public struct BenchmarkRun: Sendable, Codable {
    public var id: String
    public var model: String
    /// `queued`, `running`, `paused`, `done`, `failed`, `cancelled` or `interrupted`.
    public var status: String
    public var state: JobState
    public var createdAt: Date
    public var parameters: BenchmarkParameters
    public var completed: Int
    public var result: LoadResult?
    public var memoryMiB: [String: Double]?
    public var error: String?

    public init(_ job: JobRecord) throws {
        let spec = try job.spec.decode(BenchmarkSpec.self)
        let outcome = try (job.result ?? job.detail).map { try $0.decode(BenchmarkOutcome.self) }
        id = job.id
        model = spec.model
        state = job.state
        status = job.state.legacyStatus
        createdAt = job.createdAt
        parameters = spec.parameters
        completed = Int(job.progress?.completed ?? 0)
        result = outcome?.result
        if let outcome { completed = outcome.result.requests }
        memoryMiB = outcome?.memoryMiB
        error = job.error?.message ?? outcome?.result.firstError
    }
}

extension JobState {
    /// The status word benchmarks and tuning sessions have always shown (`done` for succeeded).
    public var legacyStatus: String { self == .succeeded ? "done" : rawValue }
}
