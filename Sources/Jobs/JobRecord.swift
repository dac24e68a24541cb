import Foundation

/// Where a job is in its life. The allowed moves are ``next(on:)``; nothing else changes a state.
public enum JobState: String, Sendable, Codable, CaseIterable {
    case queued, running, paused, succeeded, failed, cancelled, interrupted

    /// What can happen to a job.
    public enum Action: Sendable, Equatable {
        /// A concurrency slot is free: the job starts (or starts again after a requeue).
        case start
        case pause, resume
        /// The job's `run` returned.
        case succeed
        /// The job's `run` threw, or its record could not be saved.
        case fail
        case cancel
        /// Corral stopped while the job was not finished and the kind cannot resume it.
        case interrupt
        /// Corral stopped while the job was not finished and the kind resumes from its checkpoint.
        case requeue
    }

    /// No action moves a job out of a final state.
    public var isFinal: Bool { [.succeeded, .failed, .cancelled, .interrupted].contains(self) }

    /// The state after `action`, or nil when the action does not apply here.
    public func next(on action: Action) -> JobState? {
        switch (self, action) {
        case (.queued, .start): .running
        case (.running, .pause): .paused
        case (.paused, .resume): .running
        case (.running, .succeed): .succeeded
        case (.running, .fail), (.paused, .fail), (.queued, .fail): .failed
        case (.queued, .cancel), (.running, .cancel), (.paused, .cancel): .cancelled
        case (.queued, .interrupt), (.running, .interrupt), (.paused, .interrupt): .interrupted
        case (.queued, .requeue), (.running, .requeue), (.paused, .requeue): .queued
        default: nil
        }
    }

    public static let finalStates: [JobState] = allCases.filter(\.isFinal)
}

/// How far a job has got, in the kind's own unit.
public struct JobProgress: Sendable, Codable, Equatable {
    public var completed: Double
    public var total: Double?
    /// e.g. "requests", "trials", "bytes".
    public var unit: String?
    public var message: String?

    public init(completed: Double, total: Double? = nil, unit: String? = nil, message: String? = nil) {
        (self.completed, self.total, self.unit, self.message) = (completed, total, unit, message)
    }
}

/// Why a job failed, as an API can show it.
public struct JobError: Error, Sendable, Codable, Equatable, CustomStringConvertible {
    /// A stable word: `failed`, `persistence`, `insufficient_memory`, `no_capacity`, `interrupted`,
    /// `cancelled`, or one of the kind's own.
    public var code: String
    public var message: String

    public init(_ code: String, _ message: String) {
        (self.code, self.message) = (code, message)
    }

    public var description: String { message }
}

/// Everything the engine keeps about one job.
public struct JobRecord: Sendable, Codable, Equatable {
    public var id: String
    public var kind: String
    public var state: JobState
    /// The model the job works on, when it has one (for filtering).
    public var model: String?
    public var createdAt: Date
    public var startedAt: Date?
    public var finishedAt: Date?
    public var updatedAt: Date
    /// The kind's `Spec`, as submitted.
    public var spec: JobJSON
    public var progress: JobProgress?
    /// The kind's live view of its work (trials so far, partial counts).
    public var detail: JobJSON?
    /// What a resumable kind resumes from after a restart.
    public var checkpoint: JobJSON?
    /// The kind's `Result`, once succeeded.
    public var result: JobJSON?
    public var error: JobError?
    /// How many times Corral restarted under this job and resumed it.
    public var restarts: Int
    /// Sequence of the last event in the job's log (the SSE id to resume after).
    public var lastEventID: Int64
    /// The cluster node that runs it (nil on a single node).
    public var node: String?

    public init(id: String, kind: String, model: String?, spec: JobJSON, at: Date = Date()) {
        self.id = id
        self.kind = kind
        self.state = .queued
        self.model = model
        self.createdAt = at
        self.updatedAt = at
        self.spec = spec
        self.restarts = 0
        self.lastEventID = 0
    }
}

/// One entry of a job's event log.
public struct JobEvent: Sendable, Codable, Equatable {
    /// Unique and increasing within the job (across all of a node's jobs): the SSE `id:`.
    public var id: Int64
    public var job: String
    public var at: Date
    /// `state` (a transition), `progress`, `detail`, `waiting`, or one of the kind's own.
    public var type: String
    public var data: JobJSON

    public init(id: Int64, job: String, at: Date, type: String, data: JobJSON) {
        (self.id, self.job, self.at, self.type, self.data) = (id, job, at, type, data)
    }
}

/// One page of a job listing, newest first.
public struct JobPage: Sendable, Codable {
    public var jobs: [JobRecord]
    /// Pass as `after` to get the next page; nil on the last page.
    public var next: String?
}
