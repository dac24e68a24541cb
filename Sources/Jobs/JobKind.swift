import Foundation

/// One kind of long-running work: a `Codable` spec and an async `run`. The engine persists the
/// job, runs it under the kind's ``JobPolicy`` and keeps its event log; `run` reports progress,
/// detail and checkpoints through its ``JobContext`` and calls ``JobContext/pausePoint()`` where
/// it can stop or pause safely.
public protocol JobKind: Sendable {
    associatedtype Spec: Codable & Sendable
    associatedtype Result: Codable & Sendable

    /// The kind's name in records and URLs (`benchmark`, `tuning`, …).
    static var name: String { get }
    /// Prefix of the kind's job ids (`bench`, `tune`, …).
    static var idPrefix: String { get }
    var policy: JobPolicy { get }

    /// The model a job works on, for filtering (nil when none).
    func model(of spec: Spec) -> String?
    func run(_ spec: Spec, context: JobContext) async throws -> Result
    /// The detail to keep, and the reason to give, when Corral stopped under a job this kind
    /// cannot resume: e.g. trials that were running marked as interrupted, "finished trials are
    /// kept". The default keeps the detail and says the job must be started again.
    func interrupted(detail: JobJSON?) -> (detail: JobJSON?, reason: String)
}

extension JobKind {
    public func interrupted(detail: JobJSON?) -> (detail: JobJSON?, reason: String) {
        (detail, "Corral stopped while the job was running; start it again to redo it")
    }
}

/// How the engine treats the jobs of one kind.
public struct JobPolicy: Sendable {
    /// What happens to a job that was not finished when Corral stopped.
    public enum Restart: Sendable {
        /// Queued again; `run` starts with ``JobContext/resumeFrom`` set to the last checkpoint.
        case resume
        /// Marked `interrupted` with ``JobKind/interrupted(detail:)`` and the reason.
        case interrupt
    }

    /// Jobs of this kind running at once; the rest wait in `queued`.
    public var maxConcurrent: Int
    public var pausable: Bool
    public var restart: Restart
    /// Finished jobs kept (newest first); older ones and their events are deleted.
    public var keepFinished: Int
    /// Finished jobs older than this are deleted too (nil: by count only).
    public var maxAge: Duration?
    /// How long a cancelled job may take to stop before the engine marks it cancelled anyway.
    public var cancelGrace: Duration

    public init(maxConcurrent: Int = 1, pausable: Bool = false, restart: Restart = .interrupt, keepFinished: Int = 200,
                maxAge: Duration? = nil, cancelGrace: Duration = .seconds(10)) {
        self.maxConcurrent = maxConcurrent
        self.pausable = pausable
        self.restart = restart
        self.keepFinished = keepFinished
        self.maxAge = maxAge
        self.cancelGrace = cancelGrace
    }
}

/// Memory that a job holds outside the serving fleet (a tuning trial's llama-server, a trainer),
/// counted by the same accounting that sizes the fleet, so serving never goes out of memory
/// because of a job. The scheduler provides it.
public protocol MemoryClaims: Sendable {
    /// Claims MiB per device for `owner`: evicts idle models to make room, waits for busy ones
    /// when `wait`, and throws with the reason when it cannot be had.
    func claim(owner: String, mib: [String: Int], wait: Bool) async throws
    /// Gives back everything `owner` claimed.
    func releaseClaims(owner: String) async
}
