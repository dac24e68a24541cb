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

    public init(store: any SharedQuotaStore, node: String, lease: Double = 15, deadline: Duration = .seconds(2), settleWindow: Duration = .milliseconds(5)) {
        self.store = store
        self.node = node
        self.lease = lease
        self.deadline = deadline
        self.settleWindow = settleWindow
    }

    /// Runs `operation` against the store, giving up after ``deadline``. A reservation the
    /// store records after that is settled at zero tokens, so it holds nothing.
    func withinDeadline<T: Sendable>(reservation: String, _ operation: @escaping @Sendable (any SharedQuotaStore) async throws -> T) async throws -> T {
        let store = self.store
        return try await withDeadline(deadline, { try await operation(store) }, abandoned: { [self] _ in settle(reservation, tokens: 0) })
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
