import AsyncHTTPClient
import Foundation
import Jobs
import Logging
import Runtime
import Serving
import Store
import Synchronization
import Testing

/// A job kind for the engine's tests: counts to `steps`, one pause point, progress event and
/// checkpoint per step, waiting `stepMillis` between steps; resumes from its checkpoint.
struct CountingJob: JobKind {
    struct Spec: Codable, Sendable {
        var steps: Int
        var stepMillis: Int = 20
        var claimMiB: Int? = nil
        /// Ignore cancellation (to test the forced cancel).
        var stubborn = false
        var failAt: Int? = nil
        /// Wait this long first, deaf to cancellation but holding no thread (a job stuck on
        /// something that does not observe cancellation).
        var deafMillis: Int? = nil
    }

    struct Result: Codable, Sendable, Equatable {
        var counted: Int
        var startedFrom: Int
    }

    static let name = "counting"
    static let idPrefix = "count"
    var policy: JobPolicy

    init(maxConcurrent: Int = 1, restart: JobPolicy.Restart = .resume, keepFinished: Int = 100) {
        policy = JobPolicy(maxConcurrent: maxConcurrent, pausable: true, restart: restart, keepFinished: keepFinished, cancelGrace: .milliseconds(300))
    }

    func model(of spec: Spec) -> String? { "m\(spec.steps)" }

    func run(_ spec: Spec, context: JobContext) async throws -> Result {
        if let mib = spec.claimMiB { try await context.claimMemory(["Host": mib], wait: false) }
        if let deafMillis = spec.deafMillis {
            await withCheckedContinuation { (done: CheckedContinuation<Void, Never>) in
                DispatchQueue.global().asyncAfter(deadline: .now() + .milliseconds(deafMillis)) { done.resume() }
            }
            deafWaitsEnded.withLock { $0 += 1 }
        }
        let start = (try? context.resumeFrom?.decode(Int.self)) ?? 0
        var i = start
        while i < spec.steps {
            if spec.stubborn {
                usleep(UInt32(spec.stepMillis * 1000))  // deaf to cancellation, unlike Task.sleep
                i += 1
                continue
            }
            try await context.pausePoint()
            try await Task.sleep(for: .milliseconds(spec.stepMillis))
            i += 1
            if i == spec.failAt { throw JobError("broken", "failed at step \(i)") }
            try await context.checkpoint(i)
            try await context.progress(Double(i), of: Double(spec.steps), unit: "steps")
        }
        return Result(counted: i, startedFrom: start)
    }
}

/// How many `deafMillis` waits have ended.
let deafWaitsEnded = Mutex(0)

/// The real SQLite store, with writes that can be made to fail on demand (a full disk cannot be
/// had on demand).
final class FlakyStore: JobStore {
    let base: Store
    let failing = Atomic<Bool>(false)

    init(_ base: Store) { self.base = base }

    struct WriteFailed: Error, CustomStringConvertible {
        var description: String { "disk I/O error (injected)" }
    }

    func check() throws { if failing.load(ordering: .relaxed) { throw WriteFailed() } }
    func putJob(_ job: StoredJob) async throws {
        try check()
        try await base.putJob(job)
    }
    func job(id: String) async throws -> StoredJob? { try await base.job(id: id) }
    func jobs(kind: String?, states: [String]?, model: String?, after: String?, limit: Int) async throws -> [StoredJob] {
        try await base.jobs(kind: kind, states: states, model: model, after: after, limit: limit)
    }
    func appendJobEvent(sequence: Int64, job: String, type: String, data: Data, at: Date) async throws {
        try check()
        try await base.appendJobEvent(sequence: sequence, job: job, type: type, data: data, at: at)
    }
    func lastJobEventSequence() async throws -> Int64 { try await base.lastJobEventSequence() }
    func jobEvents(job: String, after sequence: Int64, limit: Int) async throws -> [StoredJobEvent] {
        try await base.jobEvents(job: job, after: sequence, limit: limit)
    }
    func pruneJobs(kind: String, finishedStates: [String], keep: Int, olderThan: Date?) async throws -> Int {
        try check()
        return try await base.pruneJobs(kind: kind, finishedStates: finishedStates, keep: keep, olderThan: olderThan)
    }

    func deleteJob(id: String) async throws -> Bool {
        try check()
        return try await base.deleteJob(id: id)
    }
}

func temporaryStore() throws -> (Store, String) {
    let path = FileManager.default.temporaryDirectory.appendingPathComponent("jobs-\(UUID().uuidString).sqlite").path
    return (try Store.open(path: path), path)
}

/// What the engine reported as failed writes.
final class FailureLog: Sendable {
    let reasons = Mutex<[String]>([])
}

func engine(_ store: any JobStore, kinds: [any JobKind] = [CountingJob()], claims: (any MemoryClaims)? = nil,
            failures: FailureLog? = nil) -> JobEngine {
    JobEngine(store: store, claims: claims, logger: Logger(label: "test"), kinds: kinds, progressInterval: .zero,
              onPersistenceFailure: { why in failures?.reasons.withLock { $0.append(why) } })
}

/// Polls until `condition` holds (at most ~10 s).
func eventually(_ what: String, _ condition: () async throws -> Bool) async throws {
    for _ in 0..<1000 {
        if try await condition() { return }
        try await Task.sleep(for: .milliseconds(10))
    }
    Issue.record("timed out waiting for \(what)")
}

@Suite struct JobEngineTests {
    @Test func aJobRunsToSuccessWithItsEventsStoredInOrder() async throws {
        let (store, _) = try temporaryStore()
        let jobs = engine(store)
        let submitted = try await jobs.submit(CountingJob.self, .init(steps: 3))
        #expect(submitted.state == .queued || submitted.state == .running)
        let done = try await jobs.finished(submitted.id)
        #expect(done.state == .succeeded)
        #expect(try done.result?.decode(CountingJob.Result.self) == .init(counted: 3, startedFrom: 0))
        #expect(done.progress == JobProgress(completed: 3, total: 3, unit: "steps"))
        let events = try await collect(jobs.events(submitted.id))
        #expect(events.map(\.id) == events.map(\.id).sorted() && Set(events.map(\.id)).count == events.count)
        let states = events.filter { $0.type == "state" }.compactMap { $0.data["state"] }
        #expect(states == [.string("queued"), .string("running"), .string("succeeded")])
        #expect(events.filter { $0.type == "progress" }.count == 3)
        // Stored: a new engine on the same store reads the same record.
        let reread = try await engine(store).get(submitted.id)
        #expect(reread?.state == .succeeded && reread?.result == done.result)
    }

    @Test func replayFromALastEventIDMissesNothingAndRepeatsNothing() async throws {
        let (store, _) = try temporaryStore()
        let jobs = engine(store)
        let job = try await jobs.submit(CountingJob.self, .init(steps: 6, stepMillis: 30))
        // Follow a while, "disconnect", then reconnect with the last id seen.
        var firstPart: [JobEvent] = []
        for await e in try await jobs.events(job.id) {
            firstPart.append(e)
            if e.type == "progress" && e.data["completed"] == .number(2) { break }
        }
        let rest = try await collect(jobs.events(job.id, after: firstPart.last!.id))
        let all = try await collect(jobs.events(job.id))
        #expect((firstPart + rest).map(\.id) == all.map(\.id))
        #expect(all.last?.data["state"] == .string("succeeded"))
        #expect(rest.allSatisfy { $0.id > firstPart.last!.id })
    }

    @Test func cancelStopsARunningJobAndAQueuedOne() async throws {
        let (store, _) = try temporaryStore()
        let jobs = engine(store)
        let running = try await jobs.submit(CountingJob.self, .init(steps: 1000))
        let queued = try await jobs.submit(CountingJob.self, .init(steps: 1000))  // maxConcurrent 1
        try await eventually("the first job to run") { try await jobs.get(running.id)?.progress != nil }
        #expect(try await jobs.get(queued.id)?.state == .queued)
        try await jobs.cancel(queued.id)
        #expect(try await jobs.get(queued.id)?.state == .cancelled)
        try await jobs.cancel(running.id)
        let stopped = try await jobs.finished(running.id)
        #expect(stopped.state == .cancelled)
        #expect((stopped.progress?.completed ?? 1000) < 1000)
        await #expect(throws: JobEngineError.self) { try await jobs.cancel(running.id) }
        // A job that ignores cancellation is marked cancelled after the kind's grace period.
        let stubborn = try await jobs.submit(CountingJob.self, .init(steps: 100, stepMillis: 50, stubborn: true))
        try await eventually("the stubborn job to run") { try await jobs.get(stubborn.id)?.state == .running }
        try await jobs.cancel(stubborn.id)
        let forced = try await jobs.finished(stubborn.id)
        #expect(forced.state == .cancelled && forced.error?.message.contains("abandoned") == true)
    }

    @Test func pauseHoldsAJobAtItsPausePointAndResumeLetsItFinish() async throws {
        let (store, _) = try temporaryStore()
        let jobs = engine(store)
        let job = try await jobs.submit(CountingJob.self, .init(steps: 10, stepMillis: 20))
        try await eventually("progress") { try await jobs.get(job.id)?.progress != nil }
        #expect(try await jobs.pause(job.id).state == .paused)
        try await Task.sleep(for: .milliseconds(100))
        let held = try await jobs.get(job.id)!.progress!.completed
        try await Task.sleep(for: .milliseconds(200))
        #expect(try await jobs.get(job.id)!.progress!.completed == held)
        #expect(try await jobs.get(job.id)!.state == .paused)
        await #expect(throws: JobEngineError.self) { try await jobs.pause(job.id) }
        try await jobs.resume(job.id)
        let done = try await jobs.finished(job.id)
        #expect(done.state == .succeeded)
    }

    @Test func shutdownWaitsNoLongerThanItsGraceForAJobThatDoesNotStop() async throws {
        let (store, _) = try temporaryStore()
        let jobs = engine(store)
        // Deaf to cancellation for six seconds: shutdown would wait that long if it waited for it.
        let job = try await jobs.submit(CountingJob.self, .init(steps: 1, deafMillis: 6000))
        try await eventually("the job to run") { try await jobs.get(job.id)?.state == .running }
        await jobs.shutdown(grace: .milliseconds(300))
        // Returned while the job was still deaf, not when it ended.
        #expect(deafWaitsEnded.withLock { $0 } == 0)
        await #expect(throws: JobEngineError.shuttingDown) { try await jobs.submit(CountingJob.self, .init(steps: 1)) }
    }

    @Test func aRestartResumesFromTheCheckpointOrInterrupts() async throws {
        let (store, _) = try temporaryStore()
        let first = engine(store, kinds: [CountingJob(restart: .resume)])
        let job = try await first.submit(CountingJob.self, .init(steps: 12, stepMillis: 30))
        try await eventually("some steps") { (try await first.get(job.id)?.progress?.completed ?? 0) >= 3 }
        await first.shutdown()
        let left = try #require(try await first.get(job.id))
        #expect(left.state == .running)  // nothing final was recorded: Corral stopped under it

        let second = engine(store, kinds: [CountingJob(restart: .resume)])
        try await second.recover()
        let resumed = try await second.finished(job.id)
        #expect(resumed.state == .succeeded && resumed.restarts == 1)
        let result = try #require(try resumed.result?.decode(CountingJob.Result.self))
        #expect(result.counted == 12 && result.startedFrom >= 3)

        // The same after a stop, for a kind that cannot resume: interrupted, with the reason.
        let third = engine(store, kinds: [CountingJob(restart: .interrupt)])
        let other = try await third.submit(CountingJob.self, .init(steps: 1000, stepMillis: 20))
        try await eventually("a step") { try await third.get(other.id)?.progress != nil }
        await third.shutdown()
        let fourth = engine(store, kinds: [CountingJob(restart: .interrupt)])
        try await fourth.recover()
        let interrupted = try #require(try await fourth.get(other.id))
        #expect(interrupted.state == .interrupted && interrupted.error?.code == "interrupted")
        #expect(interrupted.progress != nil)  // what was done is kept
        let states = try await collect(fourth.events(other.id)).filter { $0.type == "state" }.compactMap { $0.data["state"] }
        #expect(states.last == .string("interrupted"))
    }

    @Test func aFailedWriteFailsTheJobAndIsCounted() async throws {
        let (base, _) = try temporaryStore()
        let store = FlakyStore(base)
        let failures = FailureLog()
        let jobs = engine(store, failures: failures)
        let job = try await jobs.submit(CountingJob.self, .init(steps: 1000, stepMillis: 10))
        try await eventually("progress") { try await jobs.get(job.id)?.progress != nil }
        store.failing.store(true, ordering: .relaxed)
        let failed = try await jobs.finished(job.id)
        #expect(failed.state == .failed && failed.error?.code == "persistence")
        #expect(failed.error?.message.contains("disk I/O error") == true)
        #expect(failures.reasons.withLock { !$0.isEmpty })
        // A submission that cannot be stored is refused, not accepted and lost.
        await #expect(throws: JobEngineError.self) { try await jobs.submit(CountingJob.self, .init(steps: 1)) }
        // The slot it held is free again.
        store.failing.store(false, ordering: .relaxed)
        let next = try await jobs.submit(CountingJob.self, .init(steps: 2))
        #expect(try await jobs.finished(next.id).state == .succeeded)
    }

    @Test func aFailingRunIsFailedWithItsReason() async throws {
        let (store, _) = try temporaryStore()
        let jobs = engine(store)
        let job = try await jobs.submit(CountingJob.self, .init(steps: 5, failAt: 2))
        let failed = try await jobs.finished(job.id)
        #expect(failed.state == .failed && failed.error == JobError("broken", "failed at step 2"))
    }

    @Test func listingFiltersAndPages() async throws {
        let (store, _) = try temporaryStore()
        let jobs = engine(store, kinds: [CountingJob(maxConcurrent: 4, keepFinished: 3)])
        var ids: [String] = []
        for steps in 1...5 {
            let job = try await jobs.submit(CountingJob.self, .init(steps: steps, stepMillis: 1))
            _ = try await jobs.finished(job.id)
            ids.append(job.id)
            try await Task.sleep(for: .milliseconds(5))
        }
        // Retention keeps the newest three finished jobs of the kind.
        let all = try await jobs.list(kind: "counting", limit: 50)
        #expect(all.jobs.map(\.id) == ids.suffix(3).reversed())
        let first = try await jobs.list(limit: 2)
        #expect(first.jobs.count == 2 && first.next != nil)
        let second = try await jobs.list(after: first.next, limit: 2)
        #expect(second.jobs.map(\.id) == [ids[2]] && second.next == nil)
        #expect(try await jobs.list(states: [.failed]).jobs.isEmpty)
        #expect(try await jobs.list(model: "m5").jobs.map(\.id) == [ids[4]])
    }

    @Test func aStoredJobThatCannotBeReadIsAnErrorNotAGap() async throws {
        let (store, _) = try temporaryStore()
        try await store.putJob(StoredJob(id: "count-broken", kind: "counting", state: "succeeded", model: nil, createdAt: Date(), body: Data("{".utf8)))
        let jobs = engine(store)
        await #expect(throws: JobEngineError.self) { _ = try await jobs.list(kind: "counting") }
        await #expect(throws: (any Error).self) { _ = try await jobs.get("count-broken") }
    }

    @Test func stateMachineAllowsOnlyItsMoves() {
        #expect(JobState.queued.next(on: .start) == .running)
        #expect(JobState.running.next(on: .pause) == .paused)
        #expect(JobState.paused.next(on: .resume) == .running)
        #expect(JobState.running.next(on: .requeue) == .queued)
        for final in JobState.finalStates {
            #expect(JobState.Action.allForTests.allSatisfy { final.next(on: $0) == nil })
        }
        #expect(JobState.queued.next(on: .pause) == nil)
        #expect(JobState.paused.next(on: .succeed) == nil)
    }
}

@Suite struct MemoryClaimTests {
    func scheduler(budgetMiB: Int) throws -> Scheduler {
        let config = try CorralConfig.parse(Data(#"{"models": []}"#.utf8), baseDirectory: "/tmp")
        var limits = Scheduler.Limits(from: config.scheduler, hostTotalMiB: budgetMiB)
        limits.memoryBudgetMiB = ["Host": budgetMiB]
        return Scheduler(catalog: ModelCatalog.build(from: config), limits: limits, tools: LlamaTools(), client: HTTPClient.shared,
                         logger: Logger(label: "test"))
    }

    @Test func claimsAreRefusedWithTheReasonWhenMemoryIsShort() async throws {
        let fleet = try scheduler(budgetMiB: 1000)
        await #expect(throws: SchedulerError.self) { try await fleet.claimMemory(owner: "a", mib: ["Host": 1500], wait: false) }
        try await fleet.claimMemory(owner: "a", mib: ["Host": 600], wait: false)
        do {
            try await fleet.claimMemory(owner: "b", mib: ["Host": 600], wait: false)
            Issue.record("a claim past the budget was granted")
        } catch {
            #expect("\(error)".contains("600 MiB on Host"))
        }
        await fleet.releaseMemoryClaims(owner: "a")
        try await fleet.claimMemory(owner: "b", mib: ["Host": 600], wait: false)
        #expect(await fleet.claimedMemory == ["b": ["Host": 600]])
    }

    @Test func aJobWhoseClaimCannotBeHadFailsWithTheReasonAndFreesItsClaim() async throws {
        let fleet = try scheduler(budgetMiB: 1000)
        let (store, _) = try temporaryStore()
        let jobs = engine(store, kinds: [CountingJob(maxConcurrent: 2)], claims: fleet)
        let big = try await jobs.submit(CountingJob.self, .init(steps: 1, claimMiB: 5000))
        let refused = try await jobs.finished(big.id)
        #expect(refused.state == .failed && refused.error?.code == "insufficient_memory")
        #expect(refused.error?.message.contains("1000 MiB") == true)
        let holder = try await jobs.submit(CountingJob.self, .init(steps: 1000, claimMiB: 800))
        try await eventually("the claim") { await fleet.claimedMemory["job:\(holder.id)"] == ["Host": 800] }
        let second = try await jobs.submit(CountingJob.self, .init(steps: 1, claimMiB: 800))
        #expect(try await jobs.finished(second.id).error?.code == "insufficient_memory")
        try await jobs.cancel(holder.id)
        _ = try await jobs.finished(holder.id)
        #expect(await fleet.claimedMemory.isEmpty)
    }
}

extension JobState.Action {
    static let allForTests: [Self] = [.start, .pause, .resume, .succeed, .fail, .cancel, .interrupt, .requeue]
}

func collect(_ stream: AsyncStream<JobEvent>) async -> [JobEvent] {
    var out: [JobEvent] = []
    for await e in stream { out.append(e) }
    return out
}
