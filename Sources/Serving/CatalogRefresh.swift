import Foundation
import Runtime
import Synchronization

/// Rebuilds the model catalog from `routes.json` (or the configuration Corral started with, when
/// it has no file) and the sources it names: the library's rescan and a finished pull use it.
public final class CatalogRefresh: Sendable {
    struct Where: Sendable {
        var path: String?
        var cache: FactsCache
    }
    private let place: Mutex<Where>
    let scheduler: Scheduler
    let fallback: CorralConfig

    public init(scheduler: Scheduler, fallback: CorralConfig, cache: FactsCache) {
        self.scheduler = scheduler
        self.fallback = fallback
        self.place = Mutex(Where(path: nil, cache: cache))
    }

    /// Which file the catalog comes from and which facts cache it shares.
    public func use(path: String?, cache: FactsCache) { place.withLock { $0 = Where(path: path, cache: cache) } }

    public var cache: FactsCache { place.withLock { $0.cache } }

    /// Rereads the configuration and rescans every source; the new catalog replaces the old.
    @discardableResult
    public func callAsFunction() async throws -> ModelCatalog {
        let (path, cache) = place.withLock { ($0.path, $0.cache) }
        let config = try path.map { try CorralConfig.load(path: $0) } ?? fallback
        let catalog = ModelCatalog.build(from: config, cache: cache)
        await scheduler.replaceCatalog(catalog)
        return catalog
    }
}
