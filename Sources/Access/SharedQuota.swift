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

    /// Admissions waiting for a batch, and how many batches are out.
    struct Admissions {
        var waiting: [(QuotaAdmission, CheckedContinuation<QuotaDecision, any Error>)] = []
        var running = 0
    }
    private let admissions = Mutex(Admissions())
    /// Batches out at once. One (group commit) measured best: batches serialise in the store on
    /// a team's counter row anyway, and one batch out lets the next grow (`make bench-cluster`:
    /// 8,200 admissions/s with one, 6,400 with two, 7,900 with four, at 64 callers).
    let maxAdmissionBatches: Int
    static let largestAdmissionBatch = 256

    public init(store: any SharedQuotaStore, node: String, lease: Double = 15, deadline: Duration = .seconds(2), settleWindow: Duration = .milliseconds(5),
                maxAdmissionBatches: Int = 1) {
        self.store = store
        self.maxAdmissionBatches = max(1, maxAdmissionBatches)
        self.node = node
        self.lease = lease
        self.deadline = deadline
        self.settleWindow = settleWindow
    }

    /// Admits through the store's batches, giving up after ``deadline``. A reservation the
    /// store records after that is settled at zero tokens, so it holds nothing.
    func admit(_ admission: QuotaAdmission) async throws -> QuotaDecision {
        try await withDeadline(deadline, { [self] in try await queuedAdmission(admission) }, abandoned: { [self] _ in
            settle(admission.request.id, tokens: 0)
        })
    }

    /// Waits for `admission`'s turn in a batch. Cancelled (the deadline passed) while still
    /// queued, it leaves the queue without reaching the store.
    private func queuedAdmission(_ admission: QuotaAdmission) async throws -> QuotaDecision {
        let id = admission.request.id
        return try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<QuotaDecision, any Error>) in
                let start = admissions.withLock { q in
                    q.waiting.append((admission, continuation))
                    guard q.running < maxAdmissionBatches else { return false }
                    q.running += 1
                    return true
                }
                if start { Task { await admitQueued() } }
            }
        } onCancel: {
            let dropped = admissions.withLock { q -> CheckedContinuation<QuotaDecision, any Error>? in
                guard let i = q.waiting.firstIndex(where: { $0.0.request.id == id }) else { return nil }
                return q.waiting.remove(at: i).1
            }
            dropped?.resume(throwing: CancellationError())
        }
    }

    /// Sends what is queued as one batch, then the next, until the queue is empty: admissions
    /// that arrive while a batch is out go together in the next (group commit).
    private func admitQueued() async {
        while true {
            let batch = admissions.withLock { q in
                let n = min(q.waiting.count, Self.largestAdmissionBatch)
                defer { q.waiting.removeFirst(n) }
                if n == 0 { q.running -= 1 }
                return Array(q.waiting.prefix(n))
            }
            guard !batch.isEmpty else { return }
            let store = self.store, node = self.node, lease = self.lease
            let admissions = batch.map(\.0)
            do {
                let decisions = try await withDeadline(deadline, { try await store.admit(admissions, node: node, lease: lease) }, abandoned: { [self] decisions in
                    for (admission, decision) in zip(admissions, decisions) where decision.refusal == nil { settle(admission.request.id, tokens: 0) }
                })
                for ((_, continuation), decision) in zip(batch, decisions) { continuation.resume(returning: decision) }
            } catch {
                for (_, continuation) in batch { continuation.resume(throwing: error) }
            }
        }
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
