import Foundation
import Logging
import ServiceLifecycle
import Store
import Synchronization

/// Writes one ledger row per request to SQLite, in batches off the request path.
///
/// Requests only append to an in-memory list; every `window` (200 ms) the list is written in one
/// transaction. A graceful stop writes what is left, so a `kill -9` loses at most one window of
/// rows. When SQLite cannot be written (read-only, disk full, locked) the rows stay in memory
/// and are written once it works again; the condition is logged and visible in `/metrics`.
public final class UsageLedger: Service, Sendable {
    let store: any AccountStore
    /// The cluster node name written on every row (nil on a single node).
    let node: String?
    let window: Duration
    let logger: Logger
    /// Rows kept in memory at most while SQLite is failing (the oldest are dropped beyond it).
    let maxPending: Int
    private let pending = Mutex<[LedgerRow]>([])
    private let failing = Mutex<String?>(nil)

    public init(store: any AccountStore, logger: Logger, node: String? = nil, window: Duration = .milliseconds(200), maxPending: Int = 1_000_000) {
        self.store = store
        self.node = node
        self.logger = logger
        self.window = window
        self.maxPending = maxPending
    }

    /// Queues a request's row (cheap: one lock and an append).
    public func record(_ r: RequestRecord) {
        // A relayed request's row is written by the node that admitted it (naming this node).
        guard r.relayedFrom == nil else { return }
        let row = LedgerRow(
            requestID: r.requestID, ts: r.date, team: r.team, keyPrefix: r.keyPrefix, model: r.model, route: r.route, status: r.status,
            errorKind: r.errorKind, promptTokens: r.promptTokens, cachedTokens: r.cachedTokens, completionTokens: r.completionTokens,
            queueMs: r.queueMs, loadMs: r.loadMs, ttftMs: r.timeToFirstByteMs, totalMs: r.totalMs, promptTPS: r.promptTokensPerSecond,
            generationTPS: r.generationTokensPerSecond, clientDisconnected: r.clientDisconnected, node: r.node ?? node)
        pending.withLock { rows in
            rows.append(row)
            if rows.count > maxPending { rows.removeFirst(rows.count - maxPending) }
        }
    }

    /// Rows not yet in SQLite.
    public var pendingCount: Int { pending.withLock { $0.count } }

    /// Why the last write failed, while it keeps failing.
    public var problem: String? { failing.withLock { $0 } }

    /// Writes everything queued so far.
    public func flush() async {
        let rows = pending.withLock { rows in
            defer { rows.removeAll(keepingCapacity: true) }
            return rows
        }
        guard !rows.isEmpty else { return }
        do {
            // Bounded: a store that hangs (PostgreSQL restarting) must not stall the ledger; rows
            // written late by the abandoned attempt are not written twice (the request id is the key).
            let store = self.store
            try await withDeadline(.seconds(5), { try await store.appendUsage(rows) })
            if let was = failing.withLock({ f in defer { f = nil }; return f }) {
                logger.notice("usage ledger writes work again", metadata: ["was": "\(was)"])
            }
        } catch {
            pending.withLock { $0.insert(contentsOf: rows, at: 0) }
            let message = "\(error)"
            let first = failing.withLock { f in defer { f = message }; return f == nil }
            if first { logger.error("cannot write the usage ledger; keeping rows in memory", metadata: ["error": "\(message)"]) }
        }
    }

    public func run() async throws {
        while !Task.isShuttingDownGracefully && !Task.isCancelled {
            try? await Task.sleep(for: window)
            await flush()
        }
        await flush()
    }
}
