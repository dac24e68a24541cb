import Foundation
import Logging
import PostgresStore
import Runtime
import Store

/// The stores `store.url` selects, opened and migrated: the node's own SQLite file always (what
/// stays per node: runtime profiles, file digests, and everything on a single node), and for a
/// cluster the shared PostgreSQL database that holds teams, keys, quotas, the ledger, the node
/// registry, the library state, jobs, uploaded files and evaluations.
public struct OpenedStores: Sendable {
    public let local: Store
    public let shared: PostgresStore?
    /// The cluster secret read from `cluster.secretEnv`.
    public let clusterSecret: String?
    /// Where accounts live: `shared` when there is one.
    public var accounts: any AccountStore { shared ?? local }
    /// Where the library state lives: `shared` when there is one.
    public var libraryState: any LibraryStateStore { shared ?? local }
    /// Where jobs, uploaded files and evaluations live: `shared` when there is one.
    public var work: any WorkStore { shared ?? local }
    private let client: Task<Void, Never>?

    /// Why the stores cannot be opened, in words for the operator.
    public struct Problem: Error, CustomStringConvertible {
        public let description: String
    }

    /// Opens (and with `migrate`, migrates) the stores `cfg` names.
    public static func open(_ cfg: CorralConfig, logger: Logger, migrate: Bool) async throws -> OpenedStores {
        let defaultPath = cfg.dataDirectory + "/corral.sqlite"
        let location: StoreLocation
        do { location = try StoreLocation.parse(cfg.storeURL, defaultSQLitePath: defaultPath) } catch { throw Problem(description: "\(error)") }
        switch location {
        case .sqlite(let path):
            if cfg.cluster != nil {
                throw Problem(description: "cluster settings need a shared store: set store.url to postgres://USER@HOST:PORT/DATABASE")
            }
            return OpenedStores(local: try Store.open(path: path), shared: nil, clusterSecret: nil, client: nil)
        case .postgres(let pgLocation):
            guard let cluster = cfg.cluster else {
                throw Problem(description: "a PostgreSQL store is shared by a cluster's nodes: set cluster.nodeName, cluster.advertiseURL and cluster.secretEnv")
            }
            guard let secret = ProcessInfo.processInfo.environment[cluster.secretEnv], secret.count >= 16 else {
                throw Problem(description: "the cluster secret is missing: set the environment variable \(cluster.secretEnv) (cluster.secretEnv) to the same value of at least 16 characters on every node")
            }
            let pg = try await openPostgres(pgLocation, passwordEnv: cfg.storePasswordEnv, logger: logger, migrate: migrate)
            return OpenedStores(local: try Store.open(path: defaultPath), shared: pg.store, clusterSecret: secret, client: pg.client)
        }
    }

    /// A PostgreSQL store with its client running, reachable and migrated.
    public static func openPostgres(_ location: PostgresLocation, passwordEnv: String?, logger: Logger, migrate: Bool) async throws -> (store: PostgresStore, client: Task<Void, Never>) {
        var password: String?
        if let passwordEnv {
            guard let value = ProcessInfo.processInfo.environment[passwordEnv] else {
                throw Problem(description: "store.passwordEnv names \(passwordEnv), which is not set")
            }
            password = value
        }
        let pg = PostgresStore(location: location, password: password, logger: logger)
        let client = Task { _ = try? await pg.run() }
        do {
            try await pg.waitUntilReachable(timeout: .seconds(30))
            if migrate {
                let applied = try await pg.migrate()
                if !applied.isEmpty { logger.info("shared store migrated", metadata: ["applied": "\(applied.joined(separator: ", "))"]) }
            }
        } catch {
            client.cancel()
            throw Problem(description: "cannot use the shared store \(location): \(String(reflecting: error))")
        }
        return (pg, client)
    }

    /// Stops the shared store's client (after the services are done with it).
    public func stop() { client?.cancel() }
}
