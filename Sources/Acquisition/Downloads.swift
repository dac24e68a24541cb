import Foundation
import Jobs

/// A download as `/admin/downloads` shows it.
public struct DownloadView: Sendable, Codable {
    public var id: String
    public var model: String
    /// queued, running, paused, completed, failed, cancelled or interrupted.
    public var state: String
    public var createdAt: Date
    public var completedBytes: Int64
    public var totalBytes: Int64?
    public var bytesPerSecond: Double?
    public var etaSeconds: Double?
    public var files: [DownloadProgress.File]
    /// The name the model is served under, once registered.
    public var name: String?
    public var error: JobError?

    init(_ job: JobRecord) throws {
        let spec = try job.spec.decode(DownloadSpec.self)
        let detail = try job.detail.map { try $0.decode(DownloadProgress.self) }
        let result = try job.result.map { try $0.decode(DownloadResult.self) }
        id = job.id
        model = spec.model
        state = job.state == .succeeded ? "completed" : job.state.rawValue
        createdAt = job.createdAt
        // The job's progress is the freshest count (the detail is written at most every second).
        completedBytes = result?.bytes ?? job.progress.map { Int64($0.completed) } ?? detail?.completedBytes ?? 0
        totalBytes = job.progress?.total.map { Int64($0) } ?? detail?.totalBytes
        bytesPerSecond = job.state == .running ? detail?.bytesPerSecond : nil
        etaSeconds = job.state == .running ? detail?.etaSeconds : nil
        files = detail?.files ?? []
        name = result?.name
        error = job.error
    }
}

/// Pulls as jobs: start one (two pulls of the same model share one download), list, follow,
/// pause, resume, cancel (which deletes the partial files). The HTTP layer decodes, calls this,
/// and encodes.
public struct Downloads: Sendable {
    public let engine: JobEngine
    public let sources: ModelSources
    /// Starts of the same model one at a time, so two pulls asked at once find each other.
    let starts = Turns()

    public init(engine: JobEngine, sources: ModelSources) {
        self.engine = engine
        self.sources = sources
    }

    /// Starts pulling `name`, or joins the pull of the same model already under way.
    public func start(_ name: String, insecure: Bool) async throws -> (job: JobRecord, joined: Bool) {
        let reference = try ModelReference(name)
        let model = reference.description
        let engine = self.engine
        return try await starts.holding(model) {
            let active = try await engine.list(kind: DownloadJob.name, states: [.queued, .running, .paused], model: model, limit: 50).jobs
            if let running = active.first { return (running, true) }
            return (try await engine.submit(DownloadJob.self, DownloadSpec(model: model, insecure: insecure)), false)
        }
    }

    public func download(_ id: String) async throws -> DownloadView? {
        guard let job = try await engine.get(id), job.kind == DownloadJob.name else { return nil }
        return try DownloadView(job)
    }

    public func list(limit: Int = 100) async throws -> [DownloadView] {
        try await engine.list(kind: DownloadJob.name, limit: limit).jobs.map(DownloadView.init)
    }

    /// Cancels a download and deletes its partial files (verified files stay: another model may
    /// share them, and a pull of this one again starts from them).
    public func cancel(_ id: String) async throws -> DownloadView? {
        guard let job = try await engine.get(id), job.kind == DownloadJob.name else { return nil }
        if !job.state.isFinal {
            _ = try await engine.cancel(id)
            _ = try await engine.finished(id)
        }
        guard let done = try await engine.get(id) else { return nil }
        if done.state == .cancelled, let detail = try done.detail.map({ try $0.decode(DownloadProgress.self) }) {
            for file in detail.files { BlobDownloader.removePartial(BlobTarget(url: "", sha256: nil, size: nil, path: file.path)) }
        }
        return try DownloadView(done)
    }
}
