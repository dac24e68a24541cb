import Foundation
import Store
import Synchronization

/// A cluster node's side of the shared quotas: which node it is, how long its reservations'
/// leases last, and settlements that could not be written yet (PostgreSQL restarting), retried
/// until they are.
public final class SharedQuota: Sendable {
    let store: any SharedQuotaStore
    /// This node's name (reservations carry it, so their leases can be renewed and expire with it).
    public let node: String
    /// Seconds a reservation stays counted without its node renewing it.
    public let lease: Double
    /// The cluster-wide use of a subject (admin views), when the store offers it.
    let readUse: @Sendable (String) async throws -> (day: Int, month: Int, inFlight: Int)
    private let unsettled = Mutex<[(id: String, tokens: Int)]>([])

    public init(store: any SharedQuotaStore, node: String, lease: Double = 15, deadline: Duration = .seconds(2),
                use: @escaping @Sendable (String) async throws -> (day: Int, month: Int, inFlight: Int)) {
        self.store = store
        self.deadline = deadline
        self.node = node
        self.lease = lease
        self.readUse = use
    }

    /// How long an admission may wait for the store before the request is refused with 503
    /// (while PostgreSQL restarts, connection attempts would otherwise hold requests).
    public let deadline: Duration

    /// Runs `operation` against the store, giving up after ``deadline``. A reservation the
    /// store records after that is settled at zero tokens, so it holds nothing.
    func withinDeadline<T: Sendable>(reservation: String, _ operation: @escaping @Sendable (any SharedQuotaStore) async throws -> T) async throws -> T {
        let store = self.store
        return try await withDeadline(deadline, { try await operation(store) }, abandoned: { [self] _ in settle(reservation, tokens: 0) })
    }

    /// Settles a reservation in the background; kept for ``retry()`` when the store fails.
    func settle(_ id: String, tokens: Int) {
        Task {
            do { try await store.settle(reservation: id, tokens: tokens) } catch { unsettled.withLock { $0.append((id, tokens)) } }
        }
    }

    func use(subject: String) async throws -> (day: Int, month: Int, inFlight: Int) { try await readUse(subject) }

    /// Settlements still to write.
    public var pendingSettlements: Int { unsettled.withLock { $0.count } }

    /// Writes the ledger rows of requests admitted by nodes lost for longer than a lease.
    public func recoverLostRequests(staleAfter: Double) async throws -> Int {
        try await store.recoverLostRequests(staleAfter: staleAfter)
    }

    /// Renews this node's leases and writes the settlements that failed before (the heartbeat
    /// calls it). Throws when the store cannot be reached.
    public func renew() async throws {
        let waiting = unsettled.withLock { list in defer { list.removeAll() }; return list }
        for (i, item) in waiting.enumerated() {
            do { try await store.settle(reservation: item.id, tokens: item.tokens) } catch {
                unsettled.withLock { $0.append(contentsOf: waiting[i...]) }
                throw error
            }
        }
        try await store.renewLeases(node: node, lease: lease)
    }
}
