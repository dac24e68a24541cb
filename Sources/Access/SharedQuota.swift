import Foundation
import Store
import Synchronization

/// A cluster node's side of the shared quotas: which node it is, how long its reservations'
/// leases last, and the settlements on their way to the store.
///
/// Settlements are written in batches (every ``settleWindow``, one transaction for all of them)
/// instead of one transaction per request: a reservation is never smaller than what its request
/// used, so holding it a few milliseconds longer can only refuse, never overshoot. A batch the
/// store cannot take (PostgreSQL restarting) stays queued and is written when it can.
///
/// Admissions are batched too, without a wait: the first goes at once, those that arrive while
/// it is out go together in the next call, which admits them one by one in one transaction. The
/// checks are the same as one at a time, so the limits stay exact; a team's admissions, which
/// serialise on its counter row, cost one lock and one commit per batch instead of one each.
public final class SharedQuota: Sendable {
    let store: any SharedQuotaStore
    /// This node's name (reservations carry it, so their leases can be renewed and expire with it).
    public let node: String
    /// Seconds a reservation stays counted without its node renewing it.
    public let lease: Double
    /// How long an admission may wait for the store before the request is refused with 503
    /// (while PostgreSQL restarts, connection attempts would otherwise hold requests).
    public let deadline: Duration
    /// How long a settlement may wait to be written with others.
    public let settleWindow: Duration

    struct Queue {
        var waiting: [QuotaSettlement] = []
        var flushing = false
        var failing = false
    }
    private let queue = Mutex(Queue())

    /// Admissions waiting for a batch, the batches out (with when they left) and how many.
    struct Admissions {
        struct Waiting {
            var admission: QuotaAdmission
            var continuation: CheckedContinuation<QuotaDecision, any Error>
            var since: ContinuousClock.Instant
        }
        var waiting: [Waiting] = []
        /// Batches sent and not answered, by number; one the watchdog gave up on is removed (its
        /// callers were answered 503), and its answer, when it comes, only undoes its reservations.
        var out: [Int: (since: ContinuousClock.Instant, waiters: [Waiting])] = [:]
        var running = 0
        var nextBatch = 0
        var watchdog = false
    }
    private let admissions = Mutex(Admissions())
    /// Batches out at once. One (group commit) measured best: batches serialise in the store on
    /// a team's counter row anyway, and one batch out lets the next grow (`make bench-cluster`:
    /// 8,200 admissions/s with one, 6,400 with two, 7,900 with four, at 64 callers).
    let maxAdmissionBatches: Int
    static let largestAdmissionBatch = 256
    /// How often the watchdog looks for admissions past their deadline.
    static let watchdogInterval: Duration = .milliseconds(100)

    public init(store: any SharedQuotaStore, node: String, lease: Double = 15, deadline: Duration = .seconds(2), settleWindow: Duration = .milliseconds(5),
                maxAdmissionBatches: Int = 1) {
        self.store = store
        self.maxAdmissionBatches = max(1, maxAdmissionBatches)
        self.node = node
        self.lease = lease
        self.deadline = deadline
        self.settleWindow = settleWindow
    }

    /// Admits through the store's batches. An admission not answered within ``deadline`` (the
    /// store unreachable) fails with ``DeadlinePassed``; one the store makes after that is
    /// settled at zero tokens, so it holds nothing. The deadline is kept by one watchdog for all
    /// admissions, not by tasks of each one's own: those cost more than the admission's round
    /// trip.
    func admit(_ admission: QuotaAdmission) async throws -> QuotaDecision {
        try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<QuotaDecision, any Error>) in
            let (start, watch) = admissions.withLock { q -> (Bool, Bool) in
                q.waiting.append(.init(admission: admission, continuation: continuation, since: .now))
                let watch = !q.watchdog
                q.watchdog = true
                guard q.running < maxAdmissionBatches else { return (false, watch) }
                q.running += 1
                return (true, watch)
            }
            if watch { startWatchdog() }
            if start { Task { await admitQueued() } }
        }
    }

    /// Sends what is queued as one batch, then the next, until the queue is empty: admissions
    /// that arrive while a batch is out go together in the next (group commit).
    private func admitQueued() async {
        while true {
            let next = admissions.withLock { q -> (Int, [Admissions.Waiting])? in
                let n = min(q.waiting.count, Self.largestAdmissionBatch)
                guard n > 0 else {
                    q.running -= 1
                    return nil
                }
                let batch = Array(q.waiting.prefix(n))
                q.waiting.removeFirst(n)
                q.nextBatch += 1
                q.out[q.nextBatch] = (.now, batch)
                return (q.nextBatch, batch)
            }
            guard let (number, batch) = next else { return }
            let result: Result<[QuotaDecision], any Error>
            do { result = .success(try await store.admit(batch.map(\.admission), node: node, lease: lease)) } catch { result = .failure(error) }
            let waiters = admissions.withLock { $0.out.removeValue(forKey: number)?.waiters }
            guard let waiters else {
                // The watchdog answered these callers already: undo what the store admitted.
                if case .success(let decisions) = result {
                    for (w, decision) in zip(batch, decisions) where decision.refusal == nil { settle(w.admission.request.id, tokens: 0) }
                }
                continue
            }
            switch result {
            case .success(let decisions) where decisions.count == waiters.count:
                for (w, decision) in zip(waiters, decisions) { w.continuation.resume(returning: decision) }
            case .success(let decisions):
                for (w, decision) in zip(waiters, decisions) where decision.refusal == nil { settle(w.admission.request.id, tokens: 0) }
                for w in waiters { w.continuation.resume(throwing: NoDecision(asked: waiters.count, answered: decisions.count)) }
            case .failure(let error):
                for w in waiters { w.continuation.resume(throwing: error) }
            }
        }
    }

    /// The store answered a batch with the wrong number of decisions.
    struct NoDecision: Error, CustomStringConvertible {
        let asked: Int, answered: Int
        var description: String { "the shared store answered \(answered) of \(asked) admissions" }
    }

    /// Answers every admission waiting or out for longer than ``deadline`` with
    /// ``DeadlinePassed``, every ``watchdogInterval``, for as long as this object lives.
    private func startWatchdog() {
        Task { [weak self] in
            while true {
                try? await Task.sleep(for: Self.watchdogInterval)
                guard let self else { return }
                self.answerLateAdmissions()
            }
        }
    }

    /// Fails the admissions queued or out for ``deadline`` or longer (the watchdog's round).
    func answerLateAdmissions(now: ContinuousClock.Instant = .now) {
        let late = admissions.withLock { q -> [Admissions.Waiting] in
            var late: [Admissions.Waiting] = []
            for (number, batch) in q.out where now - batch.since >= deadline {
                late += batch.waiters
                q.out[number] = nil
            }
            let (old, young) = (q.waiting.filter { now - $0.since >= deadline }, q.waiting.filter { now - $0.since < deadline })
            q.waiting = young
            return late + old
        }
        for w in late { w.continuation.resume(throwing: DeadlinePassed(deadline: deadline)) }
    }

    /// Queues a settlement; a flush is started unless one is under way (it takes this one too).
    func settle(_ id: String, tokens: Int) {
        let start = queue.withLock { q in
            q.waiting.append(QuotaSettlement(reservation: id, tokens: tokens))
            // While the store fails, the heartbeat's renew() retries; while a flush runs, it
            // takes this one too.
            guard !q.flushing && !q.failing else { return false }
            q.flushing = true
            return true
        }
        if start { Task { await flush(after: settleWindow) } }
    }

    /// Writes what is queued, batch after batch, until the queue is empty or the store fails
    /// (then ``renew()`` retries with the heartbeat).
    func flush(after pause: Duration = .zero) async {
        if pause > .zero { try? await Task.sleep(for: pause) }
        while true {
            let batch = queue.withLock { q in
                defer { q.waiting.removeAll(keepingCapacity: true) }
                if q.waiting.isEmpty { q.flushing = false }
                return q.waiting
            }
            guard !batch.isEmpty else { return }
            do {
                let store = self.store
                try await withDeadline(deadline) { try await store.settle(batch) }
                queue.withLock { $0.failing = false }
            } catch {
                queue.withLock { q in
                    q.waiting.insert(contentsOf: batch, at: 0)
                    q.failing = true
                    q.flushing = false
                }
                return
            }
        }
    }

    /// Writes every queued settlement now (a node leaving).
    public func writePending() async { await flush() }

    /// The cluster-wide use of a subject (admin views).
    func use(subject: String) async throws -> (day: Int, month: Int, inFlight: Int) { try await store.quotaUse(subject: subject) }

    /// Settlements not yet written.
    public var pendingSettlements: Int { queue.withLock { $0.waiting.count } }

    /// Writes the ledger rows of requests admitted by nodes lost for longer than a lease.
    public func recoverLostRequests(staleAfter: Double) async throws -> Int {
        try await store.recoverLostRequests(staleAfter: staleAfter)
    }

    /// Renews this node's leases, writes settlements that failed before and releases expired
    /// leases (the heartbeat calls it). Throws when the store cannot be reached.
    public func renew() async throws {
        try await store.renewLeases(node: node, lease: lease)
        let retry = queue.withLock { q in
            guard q.failing, !q.flushing, !q.waiting.isEmpty else { return false }
            q.flushing = true
            return true
        }
        if retry { await flush() }
        try await store.releaseExpiredLeases()
    }
}
