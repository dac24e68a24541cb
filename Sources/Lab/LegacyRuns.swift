import Foundation
import Jobs
import Store

/// Benchmark runs and tuning sessions saved by builds before the job engine, as documents of
/// kind `benchmark` and `tuning`, become finished jobs once at start, so model pages, the
/// benchmark history and `/admin/jobs` keep them. A document is deleted only after its job is
/// written; one that cannot be read is left where it is and reported.
public enum LegacyRuns {
    /// Imports what there is; returns the jobs written and the documents that could not be read.
    public static func importAll(store: Store) async throws -> (imported: Int, unreadable: [String]) {
        var imported = 0
        var unreadable: [String] = []
        for data in try await store.documents(kind: "benchmark", limit: 100_000) {
            guard let run = try? JobCoding.decoder.decode(LegacyBenchmark.self, from: data) else {
                unreadable.append("benchmark document (\(data.count) bytes)")
                continue
            }
            if try await store.job(id: run.id) == nil {
                var record = JobRecord(
                    id: run.id, kind: BenchmarkJob.name, model: run.model,
                    spec: try JobJSON(encoding: BenchmarkSpec(model: run.model, parameters: run.parameters)), at: run.createdAt)
                record.progress = JobProgress(completed: Double(run.completed), total: Double(run.parameters.requests), unit: "requests")
                if let result = run.result { record.result = try JobJSON(encoding: BenchmarkOutcome(result: result, memoryMiB: run.memoryMiB)) }
                finish(&record, legacyStatus: run.status, error: run.error)
                try await put(record, store: store)
                imported += 1
            }
            _ = try await store.deleteDocument(kind: "benchmark", id: run.id)
        }
        for data in try await store.documents(kind: "tuning", limit: 100_000) {
            guard let session = try? JobCoding.decoder.decode(LegacyTuning.self, from: data) else {
                unreadable.append("tuning document (\(data.count) bytes)")
                continue
            }
            if try await store.job(id: session.id) == nil {
                let spec = TuningSpec(model: session.model, path: "", request: session.request, trials: session.trials)
                var record = JobRecord(id: session.id, kind: TuningJob.name, model: session.model, spec: try JobJSON(encoding: spec), at: session.createdAt)
                record.result = try JobJSON(encoding: TuningProgress(trials: session.trials, best: session.best))
                finish(&record, legacyStatus: session.status, error: session.error)
                try await put(record, store: store)
                imported += 1
            }
            _ = try await store.deleteDocument(kind: "tuning", id: session.id)
        }
        return (imported, unreadable)
    }

    /// The final state a legacy status word stands for (a run still `running` was cut off).
    static func finish(_ record: inout JobRecord, legacyStatus: String, error: String?) {
        switch legacyStatus {
        case "done": record.state = .succeeded
        case "failed": record.state = .failed
        default: record.state = .interrupted
        }
        record.startedAt = record.createdAt
        record.finishedAt = record.createdAt
        if let error { record.error = JobError(record.state == .failed ? "failed" : "interrupted", error) }
        else if record.state == .interrupted { record.error = JobError("interrupted", "stopped before this build recorded jobs") }
    }

    static func put(_ record: JobRecord, store: Store) async throws {
        try await store.putJob(StoredJob(
            id: record.id, kind: record.kind, state: record.state.rawValue, model: record.model, createdAt: record.createdAt,
            body: try JobCoding.encoder.encode(record)))
    }

    /// A benchmark run as builds before the job engine saved it.
    struct LegacyBenchmark: Decodable {
        var id: String
        var model: String
        var status: String
        var createdAt: Date
        var parameters: BenchmarkParameters
        var completed: Int
        var result: LoadResult?
        var memoryMiB: [String: Double]?
        var error: String?
    }

    /// A tuning session as builds before the job engine saved it.
    struct LegacyTuning: Decodable {
        var id: String
        var model: String
        var createdAt: Date
        var status: String
        var request: TuningSession.Request
        var trials: [TuningSession.Trial]
        var best: Int?
        var error: String?
    }
}
