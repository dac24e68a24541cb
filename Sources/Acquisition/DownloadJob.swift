import Foundation
import Jobs
import Runtime

/// A pull's spec: the reference (as normalised text) and whether plain http is allowed.
public struct DownloadSpec: Sendable, Codable, Equatable {
    public var model: String
    public var insecure: Bool

    public init(model: String, insecure: Bool) {
        (self.model, self.insecure) = (model, insecure)
    }
}

/// Where a pull stands: its files with bytes done, the total, the rate and the time left.
public struct DownloadProgress: Sendable, Codable, Equatable {
    public struct File: Sendable, Codable, Equatable {
        public var label: String
        public var path: String
        public var total: Int64?
        public var completed: Int64
    }
    public var files: [File] = []
    public var completedBytes: Int64 = 0
    public var totalBytes: Int64 = 0
    public var bytesPerSecond: Double?
    public var etaSeconds: Double?
}

/// What a pull ended with: the name the model is served under and its files.
public struct DownloadResult: Sendable, Codable, Equatable {
    public var name: String
    public var files: [String]
    public var bytes: Int64
    public var seconds: Double
}

/// Pulls a model as a job: resolve the manifest (or the hub's file list), fetch every file
/// (resumable, verified), register it in Ollama's or the hub's layout, and have the catalog
/// rescan. A restart resumes from the partial files; pause holds between chunks. Each step is
/// also a `pull` event shaped as Ollama's `/api/pull` progress lines.
public struct DownloadJob: JobKind {
    public static let name = "download"
    public static let idPrefix = "pull"

    let sources: ModelSources
    let downloader: BlobDownloader
    let maxConcurrent: Int
    /// Makes the catalog see the newly registered files (a rescan).
    let registered: @Sendable () async -> Void

    public init(sources: ModelSources, maxConcurrent: Int, registered: @escaping @Sendable () async -> Void) {
        self.sources = sources
        self.downloader = BlobDownloader(client: sources.client)
        self.maxConcurrent = maxConcurrent
        self.registered = registered
    }

    public var policy: JobPolicy { JobPolicy(maxConcurrent: maxConcurrent, pausable: true, restart: .resume, keepFinished: 500) }

    public func model(of spec: DownloadSpec) -> String? { spec.model }

    public func run(_ spec: DownloadSpec, context: JobContext) async throws -> DownloadResult {
        let reference: ModelReference
        do { reference = try ModelReference(spec.model) } catch { throw JobError("bad_name", error.description) }
        let started = ContinuousClock.now
        let insecure = sources.permitsPlainHTTP(reference, insecure: spec.insecure)
        try await context.event("pull", Line(status: "pulling manifest"))
        let plan: PullPlan
        do { plan = try await sources.plan(reference, insecure: insecure) } catch let error as AcquisitionError { throw Self.jobError(error) }
        let state = PullState(context: context, progress: DownloadProgress(
            files: plan.files.map { .init(label: $0.label, path: $0.target.path, total: $0.target.size, completed: 0) }, totalBytes: plan.totalBytes))
        try await context.detail(await state.progress)
        try await context.progress(0, of: Double(plan.totalBytes), unit: "bytes")
        for (i, file) in plan.files.enumerated() {
            let line = Line(status: Self.status(file.label), digest: file.target.sha256.map { "sha256:" + $0 } ?? file.label, total: file.target.size)
            do {
                try await downloader.fetch(file.target, insecure: insecure, progress: { done in
                    try await state.report(file: i, done: done, line: line)
                }, checkpoint: { try await context.pausePoint() })
            } catch let error as AcquisitionError {
                throw Self.jobError(error)
            }
            try await state.finish(file: i, size: BlobDownloader.fileSize(file.target.path) ?? file.target.size ?? 0, line: line)
        }
        try await context.event("pull", Line(status: "verifying sha256 digest"))
        try await context.event("pull", Line(status: "writing manifest"))
        do { try sources.register(plan, as: reference.description) } catch { throw Self.jobError(error) }
        await registered()
        try await context.event("pull", Line(status: "success"))
        let elapsed = ContinuousClock.now - started
        return DownloadResult(name: reference.description, files: plan.files.map(\.target.path), bytes: await state.progress.completedBytes,
                              seconds: elapsed.inSeconds)
    }

    /// Ollama's progress label: `pulling` and the digest's first 12 hex digits (or the file name).
    static func status(_ label: String) -> String {
        label.hasPrefix("sha256:") ? "pulling " + label.dropFirst(7).prefix(12) : "pulling " + label
    }

    static func jobError(_ error: AcquisitionError) -> JobError {
        switch error {
        case .badName, .invalid: JobError("bad_name", error.description)
        case .notFound: JobError("not_found", error.description)
        case .digestMismatch: JobError("digest_mismatch", error.description)
        case .insufficientSpace: JobError("insufficient_space", error.description)
        case .storage: JobError("storage", error.description)
        case .insecure: JobError("insecure", error.description)
        case .upstream: JobError("upstream", error.description)
        }
    }

    /// One line of Ollama's `/api/pull` stream.
    public struct Line: Sendable, Codable, Equatable {
        public var status: String
        public var digest: String?
        public var total: Int64?
        public var completed: Int64?
    }

    /// A pull's progress as it goes: `pull` events and the job's progress at most every 200 ms,
    /// the detail (files, rate, time left) at most every second.
    actor PullState {
        let context: JobContext
        private(set) var progress: DownloadProgress
        var meter = RateMeter()
        var lastLine: ContinuousClock.Instant?
        var lastDetail = ContinuousClock.now

        init(context: JobContext, progress: DownloadProgress) {
            (self.context, self.progress) = (context, progress)
        }

        func report(file: Int, done: Int64, line: Line) async throws {
            progress.files[file].completed = done
            progress.completedBytes = progress.files.reduce(0) { $0 + $1.completed }
            meter.note(progress.completedBytes)
            let now = ContinuousClock.now
            if lastLine == nil || now - lastLine! >= .milliseconds(200) {
                lastLine = now
                var line = line
                line.completed = done
                try await context.event("pull", line)
                try await context.progress(Double(progress.completedBytes), of: Double(progress.totalBytes), unit: "bytes", message: line.status)
            }
            if now - lastDetail >= .seconds(1) {
                lastDetail = now
                updateRate()
                try await context.detail(progress)
            }
        }

        func finish(file: Int, size: Int64, line: Line) async throws {
            progress.files[file].completed = size
            progress.completedBytes = progress.files.reduce(0) { $0 + $1.completed }
            updateRate()
            var line = line
            (line.total, line.completed) = (size, size)
            try await context.event("pull", line)
            try await context.detail(progress)
        }

        func updateRate() {
            progress.bytesPerSecond = meter.rate
            if let rate = progress.bytesPerSecond, rate > 0 {
                progress.etaSeconds = Double(max(0, progress.totalBytes - progress.completedBytes)) / rate
            }
        }
    }

    /// Bytes per second over the last few seconds.
    struct RateMeter {
        var samples: [(ContinuousClock.Instant, Int64)] = []

        mutating func note(_ bytes: Int64) {
            let now = ContinuousClock.now
            samples.append((now, bytes))
            samples.removeAll { now - $0.0 > .seconds(5) }
        }

        var rate: Double? {
            guard let first = samples.first, let last = samples.last, last.0 > first.0 else { return nil }
            let d = last.0 - first.0
            return Double(last.1 - first.1) / d.inSeconds
        }
    }
}
