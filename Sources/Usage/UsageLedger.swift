import Foundation
import Logging
import ServiceLifecycle
import Store
import Synchronization

/// Whether the ledger can take more requests: asked before a request is admitted.
public protocol UsageBackpressure: Sendable {
    /// False while the rows waiting to be written are at the bound.
    var hasRoom: Bool { get }
    /// Counts a request refused because the ledger was full (for `/metrics`).
    func noteRefused()
}

/// Writes one ledger row per request to the store, in batches off the request path.
///
/// Requests only append to an in-memory list; every `window` (200 ms) the list is written in one
/// transaction (rows and their rollups together). A graceful stop writes what is left, so a
/// `kill -9` loses at most one window of rows. When the store cannot be written (read-only, disk
/// full, locked) the rows stay in memory and are written once it works again; the condition is
/// logged and visible in `/metrics`.
///
/// Memory is bounded without dropping a row: once `capacity` rows wait, ``hasRoom`` turns false and
/// the gateway refuses new requests with 503 and `Retry-After` (counted in
/// `corral_ledger_refused_total`) until writes catch up. Requests already admitted still record
/// their rows, so the list can pass the bound by at most the requests in flight.
public final class UsageLedger: Service, UsageBackpressure, Sendable {
    let store: any AccountStore
    /// The cluster node name written on every row (nil on a single node).
    let node: String?
    let window: Duration
    let logger: Logger
    /// Rows waiting to be written past which new requests are refused.
    public let capacity: Int
    /// Rows waiting, and how many of those taken out are being written now.
    private let pending = Mutex<(rows: [LedgerRow], writing: Int)>(([], 0))
    private let pendingRows = Atomic<Int>(0)
    private let refusedCount = Atomic<Int>(0)
    private let failing = Mutex<String?>(nil)

    public init(store: any AccountStore, logger: Logger, node: String? = nil, window: Duration = .milliseconds(200), capacity: Int = 100_000) {
        self.store = store
        self.node = node
        self.logger = logger
        self.window = window
        self.capacity = max(1, capacity)
    }

    public var hasRoom: Bool { pendingRows.load(ordering: .relaxed) < capacity }

    public func noteRefused() { refusedCount.add(1, ordering: .relaxed) }

    /// Requests refused because the ledger was full, since start.
    public var refused: Int { refusedCount.load(ordering: .relaxed) }

    /// Queues a request's row (cheap: one lock and an append).
    public func record(_ r: RequestRecord) {
        // A relayed request's row is written by the node that admitted it (naming this node).
        guard r.relayedFrom == nil else { return }
        let row = LedgerRow(
            requestID: r.requestID, ts: r.date, team: r.team, keyPrefix: r.keyPrefix, model: r.model, route: r.route, status: r.status,
            errorKind: r.errorKind, promptTokens: r.promptTokens, cachedTokens: r.cachedTokens, completionTokens: r.completionTokens,
            queueMs: r.queueMs, loadMs: r.loadMs, ttftMs: r.timeToFirstByteMs, totalMs: r.totalMs, promptTPS: r.promptTokensPerSecond,
            generationTPS: r.generationTokensPerSecond, clientDisconnected: r.clientDisconnected, node: r.node ?? node)
        pending.withLock { p in
            p.rows.append(row)
            pendingRows.store(p.rows.count + p.writing, ordering: .relaxed)
        }
    }

    /// Rows not yet in the store.
    public var pendingCount: Int { pendingRows.load(ordering: .relaxed) }

    /// Why the last write failed, while it keeps failing.
    public var problem: String? { failing.withLock { $0 } }

    /// Writes everything queued so far.
    public func flush() async {
        // Taken out in one swap; counted as pending until written, so the bound holds meanwhile.
        let rows = pending.withLock { p in
            defer {
                p.writing = p.rows.count
                p.rows = []
            }
            return p.rows
        }
        guard !rows.isEmpty else { return }
        do {
            // Bounded: a store that hangs (PostgreSQL restarting) must not stall the ledger; rows
            // written late by the abandoned attempt are not written twice (the request id is the key).
            let store = self.store
            try await withDeadline(.seconds(5), { try await store.appendUsage(rows) })
            pending.withLock { p in
                p.writing = 0
                pendingRows.store(p.rows.count, ordering: .relaxed)
            }
            if let was = failing.withLock({ f in defer { f = nil }; return f }) {
                logger.notice("usage ledger writes work again", metadata: ["was": "\(was)"])
            }
        } catch {
            pending.withLock { p in
                p.rows.insert(contentsOf: rows, at: 0)
                p.writing = 0
                pendingRows.store(p.rows.count, ordering: .relaxed)
            }
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
