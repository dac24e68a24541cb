import Foundation
import Logging
import NIOCore
import PostgresNIO
import ServiceLifecycle
import Store

/// Corral's records on PostgreSQL, shared by every node of a cluster: accounts and the ledger
/// (``AccountStore``), exact quotas (``SharedQuotaStore``), the node registry and change notices.
///
/// The client is a `Service` (its connection pool runs inside the service group). Every write to
/// teams, keys or the admin token bumps `change_version` and sends `NOTIFY corral_changes` in the
/// same transaction, so other nodes reload their caches at once, or at their next poll when a
/// notice is lost.
public final class PostgresStore: Service, Sendable {
    let client: PostgresClient
    let logger: Logger
    /// The notification channel for account changes.
    public static let changeChannel = "corral_changes"

    /// Connects lazily: nothing is sent until ``run()`` is running and a query is made.
    public init(location: PostgresLocation, password: String?, logger: Logger, maximumConnections: Int = 20) {
        var configuration: PostgresClient.Configuration
        if let directory = location.socketDirectory {
            configuration = .init(unixSocketPath: "\(directory)/.s.PGSQL.\(location.port)", username: location.user, password: password, database: location.database)
        } else {
            configuration = .init(host: location.host, port: location.port, username: location.user, password: password, database: location.database, tls: .disable)
        }
        configuration.options.maximumConnections = maximumConnections
        configuration.options.minimumConnections = 1
        configuration.options.connectTimeout = .seconds(3)
        // Dates are written and summed in UTC whatever the server's own time zone.
        configuration.options.additionalStartupParameters = [("TimeZone", "UTC")]
        self.client = PostgresClient(configuration: configuration, backgroundLogger: logger)
        self.logger = logger
    }

    public func run() async throws {
        await client.run()
    }

    // MARK: Migrations

    /// Each migration once, in order, under an advisory lock so that nodes starting together
    /// do not race. Returns the ids applied now.
    @discardableResult
    public func migrate() async throws -> [String] {
        try await client.withConnection { conn in
            try await conn.query("SELECT pg_advisory_lock(7243001)", logger: logger)
            do {
                try await conn.query("CREATE TABLE IF NOT EXISTS corral_migration (id TEXT PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())", logger: logger)
                var applied = Set<String>()
                for try await id in try await conn.query("SELECT id FROM corral_migration", logger: logger).decode(String.self) { applied.insert(id) }
                var now: [String] = []
                for (id, statements) in Self.migrations where !applied.contains(id) {
                    try await conn.withTransaction(logger: logger) { tx in
                        for sql in statements { try await tx.query(PostgresQuery(unsafeSQL: sql), logger: logger) }
                        try await tx.query("INSERT INTO corral_migration (id) VALUES (\(id))", logger: logger)
                    }
                    now.append(id)
                }
                if now.contains(Self.rollupMigration.0) {
                    // What the ledger held before rollups existed is counted once, here.
                    try await rebuildUsageRollups()
                }
                try await conn.query("SELECT pg_advisory_unlock(7243001)", logger: logger)
                return now
            } catch {
                _ = try? await conn.query("SELECT pg_advisory_unlock(7243001)", logger: logger)
                throw error
            }
        }
    }

    /// The schema, one list of statements per migration (PostgreSQL's own; SQLite has its own set).
    static let migrations: [(String, [String])] = [
        ("pg1-accounts", [
            "CREATE TABLE admin_token (id INT PRIMARY KEY, hash TEXT NOT NULL, created_at TIMESTAMPTZ NOT NULL)",
            "CREATE TABLE team (id TEXT PRIMARY KEY, name TEXT NOT NULL UNIQUE, disabled BOOLEAN NOT NULL, policy TEXT NOT NULL, created_at TIMESTAMPTZ NOT NULL)",
            """
            CREATE TABLE api_key (prefix TEXT PRIMARY KEY, team_id TEXT NOT NULL REFERENCES team(id) ON DELETE CASCADE, name TEXT NOT NULL,
              hash TEXT NOT NULL, policy TEXT NOT NULL, created_at TIMESTAMPTZ NOT NULL, expires_at TIMESTAMPTZ, revoked_at TIMESTAMPTZ)
            """,
            """
            CREATE TABLE usage (request_id TEXT PRIMARY KEY, ts TIMESTAMPTZ NOT NULL, team TEXT, key_prefix TEXT, model TEXT NOT NULL,
              route TEXT NOT NULL, status INT NOT NULL, error_kind TEXT, prompt_tokens INT, cached_tokens INT, completion_tokens INT,
              queue_ms DOUBLE PRECISION NOT NULL, load_ms DOUBLE PRECISION NOT NULL, ttft_ms DOUBLE PRECISION, total_ms DOUBLE PRECISION NOT NULL,
              prompt_tps DOUBLE PRECISION, generation_tps DOUBLE PRECISION, client_disconnected BOOLEAN NOT NULL, node TEXT)
            """,
            "CREATE INDEX usage_key_ts ON usage (key_prefix, ts)",
            "CREATE INDEX usage_team_ts ON usage (team, ts)",
            "CREATE INDEX usage_model_ts ON usage (model, ts)",
            "CREATE TABLE change_version (id INT PRIMARY KEY, version BIGINT NOT NULL)",
            "INSERT INTO change_version VALUES (1, 0)",
        ]),
        ("pg2-quotas-and-nodes", QuotaSQL.tables + [QuotaSQL.periods, QuotaSQL.subjectCheck, QuotaSQL.admit, QuotaSQL.settle, QuotaSQL.settleMany, QuotaSQL.releaseExpired] + [
            """
            CREATE TABLE cluster_node (name TEXT PRIMARY KEY, url TEXT NOT NULL, version TEXT NOT NULL, state TEXT NOT NULL,
              detail TEXT NOT NULL, heartbeat DOUBLE PRECISION NOT NULL, started DOUBLE PRECISION NOT NULL)
            """,
        ]),
        libraryMigration,
        // Admission and settlement in batches, set by set, replace pg2's one-at-a-time functions
        // (dropped here).
        ("pg4-quota-batches", [QuotaSQL.verdict, QuotaSQL.retryAfter, QuotaSQL.admitMany, QuotaSQL.settleManyAtOnce,
                               "DROP FUNCTION corral_quota_admit", "DROP FUNCTION corral_quota_check", "DROP FUNCTION corral_quota_settle"]),
        workMigration,
        rollupMigration,
        rpcMigration,
    ]

    /// The ids of the migrations applied so far.
    public func appliedMigrations() async throws -> [String] {
        var out: [String] = []
        for try await id in try await client.query("SELECT id FROM corral_migration ORDER BY applied_at, id", logger: logger).decode(String.self) { out.append(id) }
        return out
    }

    /// Waits until the server answers (at most `timeout`), for a node starting beside its database.
    public func waitUntilReachable(timeout: Duration) async throws {
        let deadline = ContinuousClock.now + timeout
        while true {
            do {
                try await client.query("SELECT 1", logger: logger)
                return
            } catch {
                if ContinuousClock.now >= deadline { throw error }
                try await Task.sleep(for: .milliseconds(200))
            }
        }
    }

    // MARK: Change notices

    /// Bumps the change version and notifies every listening node, inside `tx`.
    func announceChange(_ tx: PostgresConnection) async throws {
        try await tx.query("UPDATE change_version SET version = version + 1 WHERE id = 1", logger: logger)
        try await tx.query(PostgresQuery(unsafeSQL: "NOTIFY \(Self.changeChannel)"), logger: logger)
    }

    /// The change version (nodes poll it in case a notice was lost).
    public func changeVersion() async throws -> Int64 {
        for try await v in try await client.query("SELECT version FROM change_version WHERE id = 1", logger: logger).decode(Int64.self) { return v }
        return 0
    }

    /// Calls `onChange` for every change notice until cancelled or the connection fails (then throws).
    public func listenForChanges(_ onChange: @Sendable () async -> Void) async throws {
        try await client.withConnection { conn in
            try await conn.listen(on: Self.changeChannel) { notifications in
                for try await _ in notifications { await onChange() }
            }
        }
    }

    func write(_ body: (PostgresConnection) async throws -> Void) async throws {
        try await client.withTransaction(logger: logger) { tx in
            try await body(tx)
        }
    }
}

/// Reading a row's columns by name.
extension PostgresRandomAccessRow {
    func get<T: PostgresDecodable>(_ column: String, _ type: T.Type = T.self) throws -> T {
        try self[column].decode(T.self)
    }
}
