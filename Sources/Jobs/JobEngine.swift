import Foundation
import Logging
import ServiceLifecycle
import Store

/// Why the engine refused an operation.
public enum JobEngineError: Error, Sendable, Equatable, CustomStringConvertible {
    case notFound(String)
    case unknownKind(String)
    /// Cancel, pause or resume asked of a job whose state does not allow it.
    case wrongState(id: String, state: JobState, action: String)
    case notPausable(kind: String)
    /// The store refused a write or read.
    case persistence(String)
    case shuttingDown
    /// The job runs on another node of the cluster, which cannot be reached to change it.
    case ownerUnreachable(node: String, why: String)

    public var description: String {
        switch self {
        case .notFound(let id): "no job '\(id)'"
        case .unknownKind(let kind): "no job kind '\(kind)'"
        case .wrongState(let id, let state, let action): "job '\(id)' is \(state.rawValue): it cannot \(action)"
        case .notPausable(let kind): "\(kind) jobs cannot be paused"
        case .persistence(let why): "the job store failed: \(why)"
        case .shuttingDown: "Corral is shutting down"
        case .ownerUnreachable(let node, let why): "the job runs on node '\(node)', which cannot be reached: \(why)"
        }
    }
}

/// The durable job engine: every job is persisted with a typed state, an append-only event log
/// and the kind's detail and checkpoint; jobs run under their kind's concurrency limit, can be
/// cancelled (cooperatively, then forced after a grace) and paused, take memory through
/// ``MemoryClaims``, and are resumed or marked interrupted after a restart. A failed write
/// fails the job with the reason, is logged and is reported to `onPersistenceFailure`.
public actor JobEngine {
    /// A registered kind, its types erased to JSON.
    struct Registered: Sendable {
        var idPrefix: String
        var policy: JobPolicy
        var model: @Sendable (JobJSON) -> String?
        var run: @Sendable (JobJSON, JobContext) async throws -> JobJSON
        var interrupted: @Sendable (JobJSON?) -> (detail: JobJSON?, reason: String)
    }

    /// A job of this process that has not finished (or finished without being saved).
    struct Live {
        var record: JobRecord
        var task: Task<Void, Never>?
        var cancelRequested = false
        var pauseWaiters: [CheckedContinuation<Void, Never>] = []
        var lastProgressEvent: ContinuousClock.Instant?
        /// When progress alone last caused the record to be written.
        var lastProgressSave: ContinuousClock.Instant?
    }

    let store: any JobStore
    /// This node's name on a cluster (jobs it takes are its own; it recovers only those); nil on
    /// one node.
    let node: String?
    /// How a cancel, pause or resume reaches the node that runs a job (a cluster's); nil on one node.
    var remote: (any RemoteJobControl)?
    let claims: (any MemoryClaims)?
    let logger: Logger
    let onPersistenceFailure: @Sendable (String) -> Void
    var kinds: [String: Registered] = [:]
    var live: [String: Live] = [:]
    /// Finished jobs whose final record could not be saved: still answered from memory.
    var unsaved: [String: JobRecord] = [:]
    /// Queued job ids, oldest first.
    var pending: [String] = []
    var runningByKind: [String: Int] = [:]
    var subscribers: [String: [UUID: AsyncStream<JobEvent>.Continuation]] = [:]
    var nextSequence: Int64 = 0
    /// Progress events are kept at most this often (the record's progress is always current).
    let progressInterval: Duration

    /// An engine for `kinds`, keeping jobs in `store` and claiming memory through `claims`.
    /// Call ``recover()`` once at start-up.
    public init(store: any JobStore, node: String? = nil, claims: (any MemoryClaims)?, logger: Logger, kinds: [any JobKind], progressInterval: Duration = .milliseconds(100),
                onPersistenceFailure: @escaping @Sendable (String) -> Void = { _ in }) {
        self.store = store
        self.node = node
        self.claims = claims
        self.logger = logger
        self.progressInterval = progressInterval
        self.onPersistenceFailure = onPersistenceFailure
        for kind in kinds {
            let registered = Self.registered(kind)
            self.kinds[registered.name] = registered.kind
        }
    }

    // MARK: Kinds and start-up

    private static func registered<K: JobKind>(_ kind: K) -> (name: String, kind: Registered) {
        (K.name, Registered(
            idPrefix: K.idPrefix, policy: kind.policy,
            model: { spec in (try? spec.decode(K.Spec.self)).flatMap(kind.model(of:)) },
            run: { spec, context in try JobJSON(encoding: try await kind.run(try spec.decode(K.Spec.self), context: context)) },
            interrupted: { kind.interrupted(detail: $0) }))
    }

    /// Sets how control reaches jobs that run on other nodes (a cluster node, once its peers are known).
    public func useRemoteControl(_ remote: any RemoteJobControl) {
        self.remote = remote
    }

    /// The registered kinds and their policies.
    public var kindNames: [String] { kinds.keys.sorted() }

    /// Applies each kind's restart rule to the jobs a previous run of Corral left unfinished:
    /// resumable ones are queued again (and start), the others become `interrupted`.
    public func recover() async throws {
        do { nextSequence = max(nextSequence, try await store.lastJobEventSequence()) } catch { throw JobEngineError.persistence("\(error)") }
        let unfinished: [StoredJob]
        do {
            unfinished = try await store.jobs(kind: nil, states: [JobState.queued, .running, .paused].map(\.rawValue), model: nil, after: nil, limit: 100_000)
        } catch { throw JobEngineError.persistence("\(error)") }
        // On a cluster each node recovers its own jobs; another node's go on there.
        for stored in unfinished.reversed() where stored.node == nil || stored.node == node {
            guard live[stored.id] == nil else { continue }
            var record: JobRecord
            do { record = try JobCoding.decoder.decode(JobRecord.self, from: stored.body) } catch {
                // Left as it is (it will show as unreadable in lists); the rest recover.
                logger.error("a stored job cannot be read and is not recovered", metadata: ["job": "\(stored.id)", "error": "\(error)"])
                onPersistenceFailure(stored.id)
                continue
            }
            let kind = kinds[record.kind]
            if let kind, kind.policy.restart == .resume {
                record.state = record.state.next(on: .requeue) ?? .queued
                record.restarts += 1
                live[record.id] = Live(record: record)
                pending.append(record.id)
                await emit(record.id, "state", .object(["state": .string("queued"), "reason": .string("resumed after a restart")]))
                await save(record.id)
            } else {
                let (detail, reason) = kind?.interrupted(record.detail) ?? (record.detail, "Corral stopped during the job; its kind '\(record.kind)' is unknown now")
                record.state = .interrupted
                record.detail = detail
                record.error = JobError("interrupted", reason)
                record.finishedAt = Date()
                record.updatedAt = Date()
                live[record.id] = Live(record: record)
                await emit(record.id, "state", .object(["state": .string("interrupted"), "error": .string(reason)]))
                let saved = await save(record.id)
                if let final = live.removeValue(forKey: record.id)?.record, !saved { unsaved[record.id] = final }
            }
        }
        startQueued()
    }

    // MARK: Submitting and reading

    /// Persists a new job and starts it when its kind has a free slot (else it waits queued).
    public func submit<K: JobKind>(_ kind: K.Type, _ spec: K.Spec) async throws -> JobRecord {
        guard let registered = kinds[K.name] else { throw JobEngineError.unknownKind(K.name) }
        guard !isShuttingDown else { throw JobEngineError.shuttingDown }
        let json = try JobJSON(encoding: spec)
        let id = registered.idPrefix + "-" + UUID().uuidString.prefix(8).lowercased()
        var record = JobRecord(id: id, kind: K.name, model: registered.model(json), spec: json)
        record.node = node
        do {
            try await store.putJob(try stored(record))
        } catch {
            persistenceFailed(id, "\(error)")
            throw JobEngineError.persistence("\(error)")
        }
        live[id] = Live(record: record)
        pending.append(id)
        await emit(id, "state", .object(["state": .string("queued")]))
        startQueued()
        return live[id]?.record ?? record
    }

    /// A job by id: this process's copy when it has one, else the stored record.
    public func get(_ id: String) async throws -> JobRecord? {
        if let job = live[id]?.record ?? unsaved[id] { return job }
        let stored: StoredJob?
        do { stored = try await store.job(id: id) } catch { throw JobEngineError.persistence("\(error)") }
        return try stored.map { try JobCoding.decoder.decode(JobRecord.self, from: $0.body) }
    }

    /// Jobs newest first, filtered; `after` is the `next` of the previous page.
    public func list(kind: String? = nil, states: [JobState]? = nil, model: String? = nil, after: String? = nil, limit: Int = 50) async throws -> JobPage {
        if let after, try await get(after) == nil { throw JobEngineError.notFound(after) }
        let rows: [StoredJob]
        do {
            rows = try await store.jobs(kind: kind, states: states?.map(\.rawValue), model: model, after: after, limit: limit + 1)
        } catch { throw JobEngineError.persistence("\(error)") }
        // The stored row may lag this process's copy by a write; show the newer one.
        let jobs = try rows.prefix(limit).map { row in
            if let newer = live[row.id]?.record ?? unsaved[row.id] { return newer }
            do { return try JobCoding.decoder.decode(JobRecord.self, from: row.body) } catch {
                throw JobEngineError.persistence("job \(row.id) cannot be read: \(error)")
            }
        }
        return JobPage(jobs: jobs, next: rows.count > limit ? jobs.last?.id : nil)
    }

    /// The job's events after `after` (an event id; 0 for all): first those stored, then each new
    /// one as it happens, ending after the job's final state.
    public func events(_ id: String, after: Int64 = 0) async throws -> AsyncStream<JobEvent> {
        guard let current = try await get(id) else { throw JobEngineError.notFound(id) }
        let (liveEvents, continuation) = AsyncStream<JobEvent>.makeStream(bufferingPolicy: .unbounded)
        // A job another node runs: its events arrive through the store only.
        let follow = live[id] == nil && !current.state.isFinal
        if live[id] == nil {
            continuation.finish()
        } else {
            let token = UUID()
            subscribers[id, default: [:]][token] = continuation
            continuation.onTermination = { _ in Task { await self.unsubscribe(id, token) } }
        }
        let store = self.store
        let logger = self.logger
        return AsyncStream { out in
            let reader = Task {
                var last = after
                var sawFinal = false
                while !Task.isCancelled {
                    let page: [StoredJobEvent]
                    do { page = try await store.jobEvents(job: id, after: last, limit: 500) } catch {
                        // The stored log cannot be read: end the stream rather than skip to live
                        // events with a gap (a follower reconnects with its last id).
                        logger.error("job event log could not be read", metadata: ["job": "\(id)", "error": "\(error)"])
                        out.finish()
                        return
                    }
                    if page.isEmpty {
                        guard follow, !sawFinal else { break }
                        // Ended once the stored job is final and one more read finds no event
                        // written before that.
                        do { sawFinal = try await store.job(id: id).map { JobState(rawValue: $0.state)?.isFinal ?? true } ?? true } catch {
                            logger.error("a followed job cannot be read", metadata: ["job": "\(id)", "error": "\(error)"])
                            out.finish()
                            return
                        }
                        if !sawFinal { try? await Task.sleep(for: Self.followInterval) }
                        continue
                    }
                    for e in page {
                        guard let data = try? JobCoding.decoder.decode(JobJSON.self, from: e.data) else {
                            logger.error("a stored job event cannot be read", metadata: ["job": "\(id)", "event": "\(e.sequence)"])
                            out.finish()
                            return
                        }
                        out.yield(JobEvent(id: e.sequence, job: e.job, at: e.at, type: e.type, data: data))
                        last = e.sequence
                    }
                }
                for await e in liveEvents where e.id > last {
                    out.yield(e)
                    last = e.id
                }
                out.finish()
            }
            out.onTermination = { _ in reader.cancel() }
        }
    }

    // MARK: Control

    /// How often a job run by another node is read from the store while it is followed.
    static let followInterval: Duration = .milliseconds(200)

    /// The node that runs `id` when that is another node (nil: this one, or none).
    private func foreignOwner(_ id: String) async throws -> String? {
        guard live[id] == nil, let node else { return nil }
        let stored: StoredJob?
        do { stored = try await store.job(id: id) } catch { throw JobEngineError.persistence("\(error)") }
        guard let owner = stored?.node, owner != node, let state = stored.flatMap({ JobState(rawValue: $0.state) }), !state.isFinal else { return nil }
        return owner
    }

    /// Sends a control action to the node that runs the job.
    private func control(_ id: String, _ action: JobControl, on owner: String) async throws -> JobRecord {
        guard let remote else { throw JobEngineError.ownerUnreachable(node: owner, why: "this node knows no peers") }
        return try await remote.control(action, job: id, on: owner)
    }

    /// Cancels a job: a queued one at once; a running or paused one is asked to stop (its task is
    /// cancelled and its pause points throw) and is marked cancelled when it does, or after the
    /// kind's grace period if it does not.
    @discardableResult
    public func cancel(_ id: String) async throws -> JobRecord {
        if let owner = try await foreignOwner(id) { return try await control(id, .cancel, on: owner) }
        guard var job = live[id] else {
            guard let record = try await get(id) else { throw JobEngineError.notFound(id) }
            throw JobEngineError.wrongState(id: id, state: record.state, action: "be cancelled")
        }
        switch job.record.state {
        case .queued:
            pending.removeAll { $0 == id }
            await finish(id, state: .cancelled, error: JobError("cancelled", "cancelled before it started"))
        case .running, .paused:
            guard !job.cancelRequested else { break }
            job.cancelRequested = true
            let waiters = job.pauseWaiters
            job.pauseWaiters = []
            live[id] = job
            for w in waiters { w.resume() }
            job.task?.cancel()
            await emit(id, "cancelling", .object([:]))
            let grace = kinds[job.record.kind]?.policy.cancelGrace ?? .seconds(10)
            Task {
                try? await Task.sleep(for: grace)
                await self.forceCancel(id, after: grace)
            }
        default:
            throw JobEngineError.wrongState(id: id, state: job.record.state, action: "be cancelled")
        }
        if let record = live[id]?.record { return record }
        guard let record = try await get(id) else { throw JobEngineError.notFound(id) }
        return record
    }

    private func forceCancel(_ id: String, after grace: Duration) async {
        guard let job = live[id], job.cancelRequested, !job.record.state.isFinal else { return }
        logger.warning("job did not stop within its grace period; marked cancelled", metadata: ["job": "\(id)", "grace": "\(grace)"])
        await finish(id, state: .cancelled, error: JobError("cancelled", "cancelled; the job did not stop within \(grace) and was abandoned"))
    }

    /// Pauses a running job of a pausable kind at its next pause point.
    @discardableResult
    public func pause(_ id: String) async throws -> JobRecord {
        if let owner = try await foreignOwner(id) { return try await control(id, .pause, on: owner) }
        let record = try await controllable(id)
        guard kinds[record.kind]?.policy.pausable == true else { throw JobEngineError.notPausable(kind: record.kind) }
        guard let next = record.state.next(on: .pause), !live[id]!.cancelRequested else {
            throw JobEngineError.wrongState(id: id, state: record.state, action: "be paused")
        }
        live[id]!.record.state = next
        live[id]!.record.updatedAt = Date()
        await emit(id, "state", .object(["state": .string(next.rawValue)]))
        await save(id)
        return live[id]?.record ?? record
    }

    /// Lets a paused job go on.
    @discardableResult
    public func resume(_ id: String) async throws -> JobRecord {
        if let owner = try await foreignOwner(id) { return try await control(id, .resume, on: owner) }
        let record = try await controllable(id)
        guard let next = record.state.next(on: .resume) else { throw JobEngineError.wrongState(id: id, state: record.state, action: "be resumed") }
        live[id]!.record.state = next
        live[id]!.record.updatedAt = Date()
        let waiters = live[id]!.pauseWaiters
        live[id]!.pauseWaiters = []
        for w in waiters { w.resume() }
        await emit(id, "state", .object(["state": .string(next.rawValue)]))
        await save(id)
        return live[id]?.record ?? record
    }

    private func controllable(_ id: String) async throws -> JobRecord {
        if let record = live[id]?.record { return record }
        guard let record = try await get(id) else { throw JobEngineError.notFound(id) }
        throw JobEngineError.wrongState(id: id, state: record.state, action: "change")
    }

    /// Deletes a finished job and its event log; a job still queued, running or paused must be
    /// cancelled first.
    public func delete(_ id: String) async throws {
        if let job = live[id] { throw JobEngineError.wrongState(id: id, state: job.record.state, action: "be deleted") }
        // Another node's job that has not finished is still live there.
        if let record = try await get(id), !record.state.isFinal {
            throw JobEngineError.wrongState(id: id, state: record.state, action: "be deleted")
        }
        unsaved[id] = nil
        let deleted: Bool
        do { deleted = try await uncancelled { try await self.store.deleteJob(id: id) } } catch { throw JobEngineError.persistence("\(error)") }
        guard deleted else { throw JobEngineError.notFound(id) }
    }

    /// Waits until the job is final and returns its record.
    public func finished(_ id: String) async throws -> JobRecord {
        for await _ in try await events(id, after: Int64.max - 1) {}
        guard let record = try await get(id) else { throw JobEngineError.notFound(id) }
        return record
    }

    // MARK: Shutting down

    var isShuttingDown = false

    /// Stops every running job without recording an outcome, so that the next start of Corral
    /// resumes or interrupts each by its kind's rule; waits at most `grace` for them to stop.
    /// Submissions are refused from now on.
    public func shutdown(grace: Duration = .seconds(5)) async {
        isShuttingDown = true
        pending.removeAll()
        let tasks = live.values.compactMap(\.task)
        for (id, job) in live where !job.record.state.isFinal {
            live[id]!.cancelRequested = true
            let waiters = job.pauseWaiters
            live[id]!.pauseWaiters = []
            for w in waiters { w.resume() }
        }
        for task in tasks { task.cancel() }
        // Not a task group: it would wait for its children, and awaiting a job's task does not
        // end on cancellation, so a job slow to stop held the whole shutdown past the grace.
        do { try await withDeadline(grace) { for task in tasks { await task.value } } } catch {
            logger.warning("jobs still running at shutdown were left to stop with the process", metadata: ["grace": "\(grace)"])
        }
    }

    // MARK: Running

    private func startQueued() {
        var still: [String] = []
        for id in pending {
            guard let job = live[id], job.record.state == .queued, let kind = kinds[job.record.kind] else { continue }
            if runningByKind[job.record.kind, default: 0] >= kind.policy.maxConcurrent {
                still.append(id)
                continue
            }
            runningByKind[job.record.kind, default: 0] += 1
            start(id, kind)
        }
        pending = still
    }

    private func start(_ id: String, _ kind: Registered) {
        guard var job = live[id], let next = job.record.state.next(on: .start) else { return }
        job.record.state = next
        job.record.startedAt = job.record.startedAt ?? Date()
        job.record.updatedAt = Date()
        let context = JobContext(id: id, engine: self, resumeFrom: job.record.restarts > 0 ? job.record.checkpoint : nil)
        let spec = job.record.spec
        job.task = Task {
            await self.emit(id, "state", .object(["state": .string("running")]))
            await self.save(id)
            let outcome: Result<JobJSON, any Error>
            do { outcome = .success(try await kind.run(spec, context)) } catch { outcome = .failure(error) }
            await self.ran(id, outcome)
        }
        live[id] = job
    }

    private func ran(_ id: String, _ outcome: Result<JobJSON, any Error>) async {
        guard let job = live[id], !job.record.state.isFinal else { return }
        if isShuttingDown {
            // Left unfinished in the store (with its latest progress, which is saved only now and
            // then while it runs): the next start applies the kind's restart rule.
            await save(id)
            await claims?.releaseClaims(owner: "job:\(id)")
            return
        }
        switch outcome {
        case .success(let result):
            if job.cancelRequested {
                await finish(id, state: .cancelled, error: JobError("cancelled", "cancelled"))
            } else {
                await finish(id, state: .succeeded, result: result)
            }
        case .failure(let error):
            if job.cancelRequested {
                await finish(id, state: .cancelled, error: JobError("cancelled", "cancelled"))
            } else if let error = error as? JobError {
                await finish(id, state: .failed, error: error)
            } else {
                await finish(id, state: .failed, error: JobError("failed", "\(error)"))
            }
        }
    }

    /// Moves a job to a final state: frees its slot and memory, starts what waits, records it,
    /// ends its event streams and applies the kind's retention.
    private func finish(_ id: String, state: JobState, result: JobJSON? = nil, error: JobError? = nil) async {
        guard var job = live[id], !job.record.state.isFinal else { return }
        let wasRunning = job.record.state == .running || job.record.state == .paused
        job.record.state = state
        job.record.finishedAt = Date()
        job.record.updatedAt = Date()
        if let result { job.record.result = result }
        if let error { job.record.error = error }
        let waiters = job.pauseWaiters
        job.pauseWaiters = []
        live[id] = job
        for w in waiters { w.resume() }
        let kind = job.record.kind
        if wasRunning { runningByKind[kind, default: 1] -= 1 }
        startQueued()
        await claims?.releaseClaims(owner: "job:\(id)")
        var data: [String: JobJSON] = ["state": .string(state.rawValue)]
        if let error { data["error"] = .string(error.message) }
        await emit(id, "state", .object(data))
        let saved = await save(id)
        if let record = live.removeValue(forKey: id)?.record, !saved { unsaved[id] = record }
        for (_, c) in subscribers.removeValue(forKey: id) ?? [:] { c.finish() }
        if let policy = kinds[kind]?.policy {
            do {
                _ = try await uncancelled { [store] in try await store.pruneJobs(kind: kind, finishedStates: JobState.finalStates.map(\.rawValue), keep: policy.keepFinished,
                                              olderThan: policy.maxAge.map { Date().addingTimeInterval(-Double($0.components.seconds)) }) }
            } catch {
                persistenceFailed(nil, "pruning \(kind) jobs: \(error)")
            }
        }
    }

    // MARK: Records and events

    nonisolated func stored(_ record: JobRecord) throws -> StoredJob {
        StoredJob(id: record.id, kind: record.kind, state: record.state.rawValue, model: record.model, createdAt: record.createdAt,
                  body: try JobCoding.encoder.encode(record), node: node)
    }

    /// Writes the job's current record. A failure fails the job (when it is not final yet).
    @discardableResult
    func save(_ id: String) async -> Bool {
        guard let record = live[id]?.record else { return false }
        do {
            try await uncancelled { [store] in try await store.putJob(try self.stored(record)) }
            return true
        } catch {
            persistenceFailed(id, "\(error)")
            return false
        }
    }

    /// Appends an event to the job's log and hands it to its followers. The event gets its id
    /// at once, so followers see it even when the write fails (which fails the job).
    func emit(_ id: String, _ type: String, _ data: JobJSON) async {
        nextSequence = Self.sequence(after: nextSequence)
        let event = JobEvent(id: nextSequence, job: id, at: Date(), type: type, data: data)
        live[id]?.record.lastEventID = event.id
        for (_, c) in subscribers[id] ?? [:] { c.yield(event) }
        do {
            let bytes = try JobCoding.encoder.encode(data)
            try await uncancelled { [store] in try await store.appendJobEvent(sequence: event.id, job: id, type: type, data: bytes, at: event.at) }
        } catch {
            persistenceFailed(id, "\(error)")
        }
    }

    /// Logs and counts a failed write; fails the job it belongs to, since its state can no
    /// longer be trusted to survive a restart.
    func persistenceFailed(_ id: String?, _ why: String) {
        logger.error("job store write failed", metadata: ["job": "\(id ?? "-")", "error": "\(why)"])
        onPersistenceFailure(why)
        guard let id, !isShuttingDown, var job = live[id], !job.record.state.isFinal, !job.cancelRequested else { return }
        let wasRunning = job.record.state == .running || job.record.state == .paused
        job.record.state = .failed
        job.record.error = JobError("persistence", "the job could not be saved: \(why)")
        job.record.finishedAt = Date()
        job.cancelRequested = true
        let waiters = job.pauseWaiters
        job.pauseWaiters = []
        job.task?.cancel()
        live.removeValue(forKey: id)
        unsaved[id] = job.record
        pending.removeAll { $0 == id }
        for w in waiters { w.resume() }
        if wasRunning { runningByKind[job.record.kind, default: 1] -= 1 }
        nextSequence = Self.sequence(after: nextSequence)
        let failed = JobEvent(id: nextSequence, job: id, at: Date(), type: "state",
                              data: .object(["state": .string("failed"), "error": .string(job.record.error!.message)]))
        for (_, c) in subscribers.removeValue(forKey: id) ?? [:] {
            c.yield(failed)
            c.finish()
        }
        startQueued()
        if let claims { Task { await claims.releaseClaims(owner: "job:\(id)") } }
    }

    /// Runs a store call outside the caller's task: a job's task is cancelled to stop it, and
    /// the store (GRDB) refuses work on a cancelled task, but the job's final record must still
    /// be written.
    private func uncancelled<T: Sendable>(_ body: @escaping @Sendable () async throws -> T) async throws -> T {
        try await Task { try await body() }.value
    }

    /// Event ids are microseconds since 1970, made strictly increasing: unique without asking
    /// the store first, later than any id of an earlier run of Corral, and exact in JSON numbers.
    static func sequence(after previous: Int64) -> Int64 {
        max(previous + 1, Int64(Date().timeIntervalSince1970 * 1_000_000))
    }

    private func unsubscribe(_ id: String, _ token: UUID) {
        subscribers[id]?[token] = nil
        if subscribers[id]?.isEmpty == true { subscribers[id] = nil }
    }

    // MARK: What a running job calls (through its JobContext)

    func check(_ id: String) throws {
        guard let job = live[id], !job.cancelRequested, !job.record.state.isFinal else { throw CancellationError() }
    }

    func pausePoint(_ id: String) async throws {
        try check(id)
        if live[id]?.record.state == .paused {
            await withCheckedContinuation { live[id]!.pauseWaiters.append($0) }
        }
        try check(id)
    }

    func update(_ id: String, progress: JobProgress) async throws {
        try check(id)
        live[id]!.record.progress = progress
        live[id]!.record.updatedAt = Date()
        let now = ContinuousClock.now
        let due = live[id]!.lastProgressEvent.map { now - $0 >= progressInterval } ?? true
        guard due || progress.total == progress.completed else { return }
        live[id]!.lastProgressEvent = now
        await emit(id, "progress", try JobJSON(encoding: progress))
        // The job may have ended while the event went out (the actor is reentrant across the
        // await): its final row is saved by whatever ended it.
        guard let entry = live[id] else { return }
        // Readers get the live record (and the event log has every progress event); the stored
        // row, which only a restart reads, is brought up to date at most once a second.
        let saveDue = entry.lastProgressSave.map { now - $0 >= .seconds(1) } ?? true
        guard saveDue || progress.total == progress.completed else { return }
        live[id]!.lastProgressSave = now
        guard await save(id) else { throw JobEngineError.persistence("the job could not be saved") }
    }

    func update(_ id: String, detail: JobJSON?, checkpoint: JobJSON?, event: String?) async throws {
        try check(id)
        if let detail { live[id]!.record.detail = detail }
        if let checkpoint { live[id]!.record.checkpoint = checkpoint }
        live[id]!.record.updatedAt = Date()
        if let event { await emit(id, event, detail ?? checkpoint ?? .null) }
        // Ended while the event went out: its final row is saved by whatever ended it.
        guard live[id] != nil else { return }
        guard await save(id) else { throw JobEngineError.persistence("the job could not be saved") }
    }

    /// Appends an event of the kind's own to a job that is not final (a route's note about a
    /// control action, say); throws when the job is final or unknown.
    public func note(_ id: String, _ type: String, _ data: JobJSON) async throws {
        try check(id)
        await emit(id, type, data)
    }

    func claim(_ id: String, mib: [String: Int], wait: Bool) async throws {
        try check(id)
        guard let claims else { return }
        await emit(id, "waiting", .object(["for": .string("memory"), "mib": .object(mib.mapValues { .number(Double($0)) })]))
        do {
            try await claims.claim(owner: "job:\(id)", mib: mib, wait: wait)
        } catch {
            throw JobError("insufficient_memory", "\(error)")
        }
        try check(id)
    }

    func releaseClaims(_ id: String) async {
        await claims?.releaseClaims(owner: "job:\(id)")
    }
}

/// Stops the engine's running jobs when Corral shuts down (before the fleet stops), so they
/// are resumed or marked interrupted on the next start instead of failing now.
public struct JobsService: Service {
    let engine: JobEngine

    public init(engine: JobEngine) { self.engine = engine }

    public func run() async throws {
        try? await gracefulShutdown()
        await engine.shutdown()
    }
}

/// What a running job uses to report and to cooperate: progress, detail, checkpoints, events of
/// its own, pause points, and memory claims. Every call throws `CancellationError` once the job
/// is cancelled (or failed because it could not be saved), so a `run` stops at its next call.
public struct JobContext: Sendable {
    public let id: String
    let engine: JobEngine
    /// The last checkpoint when a resumable job starts again after a restart; nil on a first run.
    public let resumeFrom: JobJSON?

    init(id: String, engine: JobEngine, resumeFrom: JobJSON?) {
        self.id = id
        self.engine = engine
        self.resumeFrom = resumeFrom
    }

    public func progress(_ completed: Double, of total: Double? = nil, unit: String? = nil, message: String? = nil) async throws {
        try await engine.update(id, progress: JobProgress(completed: completed, total: total, unit: unit, message: message))
    }

    /// Replaces the kind's live view of the job (and records a `detail` event).
    public func detail(_ value: some Encodable & Sendable) async throws {
        try await engine.update(id, detail: try JobJSON(encoding: value), checkpoint: nil, event: "detail")
    }

    /// Saves what a restart resumes from.
    public func checkpoint(_ value: some Encodable & Sendable) async throws {
        try await engine.update(id, detail: nil, checkpoint: try JobJSON(encoding: value), event: "checkpoint")
    }

    /// Appends an event of the kind's own to the log (`trial`, `pruned`, …).
    public func event(_ type: String, _ data: some Encodable & Sendable) async throws {
        try await engine.note(id, type, try JobJSON(encoding: data))
    }

    /// Returns at once unless the job is paused (then waits for resume); throws when cancelled.
    public func pausePoint() async throws { try await engine.pausePoint(id) }

    /// Claims memory through the scheduler's accounting (see ``MemoryClaims``); released when the
    /// job ends or by ``releaseMemory()``. Throws ``JobError`` `insufficient_memory` with the reason.
    public func claimMemory(_ mib: [String: Int], wait: Bool = true) async throws { try await engine.claim(id, mib: mib, wait: wait) }

    public func releaseMemory() async { await engine.releaseClaims(id) }
}
