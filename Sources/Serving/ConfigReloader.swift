import Foundation
import Logging
import Runtime
import ServiceLifecycle
import UnixSignals

/// Re-reads `routes.json` on SIGHUP or when the file changes, and swaps the model catalog.
///
/// In-flight requests are untouched: they hold leases on instances, not on the catalog. A model
/// removed from the file stays loaded until it idles out; an invalid file is logged and ignored.
/// Listen address, TLS and scheduler limits apply at the next start.
public struct ConfigReloader: Service {
    let path: String
    let scheduler: Scheduler
    let logger: Logger
    let pollInterval: Duration
    let cache: FactsCache?

    public init(path: String, scheduler: Scheduler, logger: Logger, pollInterval: Duration = .seconds(2), cache: FactsCache? = nil) {
        self.cache = cache
        self.path = path
        self.scheduler = scheduler
        self.logger = logger
        self.pollInterval = pollInterval
    }

    func modificationDate() -> Date? {
        (try? FileManager.default.attributesOfItem(atPath: path))?[.modificationDate] as? Date
    }

    /// Loads the file and swaps the catalog; returns false when the file is invalid.
    @discardableResult
    public func reload(reason: String) async -> Bool {
        do {
            let config = try CorralConfig.load(path: path)
            let catalog = ModelCatalog.build(from: config, cache: cache)
            await scheduler.replaceCatalog(catalog)
            logger.info("configuration reloaded", metadata: ["reason": "\(reason)", "models": "\(catalog.models.count)"])
            return true
        } catch {
            logger.error("configuration reload failed; keeping the previous one", metadata: ["error": "\(error)"])
            return false
        }
    }

    public func run() async throws {
        let signals = await UnixSignalsSequence(trapping: .sighup)
        let path = self.path
        await withTaskGroup(of: Void.self) { group in
            group.addTask {
                for await _ in signals.cancelOnGracefulShutdown() { await reload(reason: "SIGHUP") }
            }
            group.addTask {
                var last = modificationDate()
                while !Task.isCancelled && !Task.isShuttingDownGracefully {
                    try? await Task.sleep(for: pollInterval)
                    let now = modificationDate()
                    if now != last {
                        last = now
                        await reload(reason: "\(path) changed")
                    }
                }
            }
            try? await gracefulShutdown()
            group.cancelAll()
        }
    }
}
