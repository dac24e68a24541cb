import Foundation
import Logging
import ServiceLifecycle
import Store
import Synchronization

/// Prunes the usage ledger in the background: raw rows and per-minute rollups older than
/// `retainDays`, hourly rollups older than `retainRollupDays`. Deletes go in small batches with a
/// pause between them, so the ledger's writer is never held for long. A failed prune is logged
/// and counted (`corral_ledger_prune_failures_total`) and tried again on the next round.
public final class UsageRetention: Service, Sendable {
    let store: any AccountStore
    let retainDays: Int
    let retainRollupDays: Int
    let interval: Duration
    let batch: Int
    let logger: Logger
    let now: @Sendable () -> Date
    private let failures = Atomic<Int>(0)

    public init(store: any AccountStore, retainDays: Int, retainRollupDays: Int, logger: Logger, interval: Duration = .seconds(600),
                batch: Int = 5000, now: @escaping @Sendable () -> Date = { Date() }) {
        self.store = store
        self.retainDays = retainDays
        self.retainRollupDays = retainRollupDays
        self.interval = interval
        self.batch = batch
        self.logger = logger
        self.now = now
    }

    /// Prune rounds that failed, since start.
    public var failureCount: Int { failures.load(ordering: .relaxed) }

    /// One round: everything past its age, batch by batch. Returns rows and rollups removed.
    @discardableResult
    public func pruneOnce() async throws -> (rows: Int, rollups: Int) {
        let t = now()
        let rowCutoff = t.addingTimeInterval(-Double(retainDays) * 86_400)
        let rollupCutoff = t.addingTimeInterval(-Double(retainRollupDays) * 86_400)
        var rows = 0
        var rollups = 0
        func drain(_ step: () async throws -> Int) async throws -> Int {
            var total = 0
            while true {
                let n = try await step()
                total += n
                if n < batch || Task.isCancelled { return total }
                // Let the ledger's own writes through between batches.
                try? await Task.sleep(for: .milliseconds(20))
            }
        }
        rows = try await drain { try await store.pruneUsage(before: rowCutoff, limit: batch) }
        rollups += try await drain { try await store.pruneUsageRollups(span: UsageRollups.minute, before: rowCutoff, limit: batch) }
        rollups += try await drain { try await store.pruneUsageRollups(span: UsageRollups.hour, before: rollupCutoff, limit: batch) }
        if rows + rollups > 0 {
            logger.info("usage ledger pruned", metadata: ["rows": "\(rows)", "rollups": "\(rollups)", "retainDays": "\(retainDays)"])
        }
        return (rows, rollups)
    }

    public func run() async throws {
        while !Task.isShuttingDownGracefully && !Task.isCancelled {
            do {
                try await pruneOnce()
            } catch {
                failures.add(1, ordering: .relaxed)
                logger.error("the usage ledger could not be pruned; trying again next round", metadata: ["error": "\(error)"])
            }
            // Woken by a graceful shutdown: a pause of minutes must not hold the stop.
            do { try await cancelWhenGracefulShutdown { try await Task.sleep(for: self.interval) } } catch { return }
        }
    }
}
