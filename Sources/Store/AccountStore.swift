import Foundation

/// Everything Corral keeps about accounts: the admin token, teams, keys and the usage ledger.
///
/// Two backends implement it: ``Store`` (SQLite, one node, the default) and `PostgresStore`
/// (PostgreSQL, shared by every node of a cluster). Callers never know which one they have.
public protocol AccountStore: Sendable {
    /// SHA-256 (hex) of the admin token, if one was created.
    func adminTokenHash() async throws -> String?
    /// Saves the admin token's hash, replacing any.
    func saveAdminTokenHash(_ hash: String) async throws
    /// Saves `hash` only when no admin token exists; returns the hash stored afterwards (another
    /// node's, when it was first).
    func saveAdminTokenHashIfAbsent(_ hash: String) async throws -> String
    func teams() async throws -> [TeamRecord]
    func keys() async throws -> [KeyRecord]
    /// One key and its team, read now (a key another node created a moment ago).
    func keyWithTeam(prefix: String) async throws -> (KeyRecord, TeamRecord)?
    func save(_ team: TeamRecord) async throws
    func save(_ key: KeyRecord) async throws
    /// Deletes a team and its keys (usage rows stay: the ledger is history).
    func deleteTeam(id: String) async throws
    /// Appends ledger rows in one transaction (a row already present is kept as it was) and adds
    /// the new ones to the rollups in the same transaction.
    func appendUsage(_ rows: [LedgerRow]) async throws
    /// Ledger rows in a time range, newest first (at most `limit`).
    func usageRows(from: Date, to: Date, team: String?, model: String?, limit: Int) async throws -> [LedgerRow]
    /// Rollups covering `[from, to)` at minute resolution: hour rollups for whole hours, minute
    /// rollups at the ends (``UsageRollups/cover(from:to:)``); per model only (`modelLevel`), or
    /// per team, key and model.
    func usageRollups(from: Date, to: Date, modelLevel: Bool) async throws -> [(UsageRollupKey, UsageRollup)]
    /// Rollup sums over `[from, to)` (minute resolution) grouped in SQL by `unit` (3600 or 86400
    /// seconds: the start of each hour or day) and by `group` (`team`, `keyPrefix` or `model`;
    /// "" is open mode's team and key). Histograms are not read.
    func usageSums(from: Date, to: Date, group: UsageGroup, unit: Int) async throws -> [(bucket: Int, group: String, sums: UsageRollup)]
    /// Recounts the rollups from the raw rows kept.
    func rebuildUsageRollups() async throws
    /// Deletes at most `limit` ledger rows older than `cutoff`; returns how many went.
    func pruneUsage(before cutoff: Date, limit: Int) async throws -> Int
    /// Deletes at most `limit` rollups of `span` seconds whose bucket started before `cutoff`.
    func pruneUsageRollups(span: Int, before cutoff: Date, limit: Int) async throws -> Int
    /// Number of ledger rows.
    func usageCount() async throws -> Int
}

extension Store: AccountStore {}

/// Where Corral keeps what it persists, from `store.url` in routes.json.
public enum StoreLocation: Sendable, Equatable, CustomStringConvertible {
    /// A SQLite file (the default: `DATA_DIR/corral.sqlite`).
    case sqlite(path: String)
    /// A PostgreSQL database shared by every node of a cluster.
    case postgres(PostgresLocation)

    /// Parses `sqlite:PATH`, `sqlite://PATH` or `postgres://USER@HOST:PORT/DB` (also
    /// `postgresql://`; `?host=/socket/dir` for a Unix socket). A password in the URL is refused:
    /// it comes from the environment variable `passwordEnv` names.
    public static func parse(_ url: String, defaultSQLitePath: String) throws(StoreLocationError) -> StoreLocation {
        let trimmed = url.trimmingCharacters(in: .whitespaces)
        if trimmed.isEmpty || trimmed == "sqlite:" || trimmed == "sqlite://" { return .sqlite(path: defaultSQLitePath) }
        if trimmed.hasPrefix("sqlite:") {
            var path = String(trimmed.dropFirst("sqlite:".count))
            if path.hasPrefix("//") { path = String(path.dropFirst(2)) }
            return .sqlite(path: path)
        }
        guard trimmed.hasPrefix("postgres://") || trimmed.hasPrefix("postgresql://"), let components = URLComponents(string: trimmed) else {
            throw StoreLocationError("store.url must be sqlite:PATH or postgres://USER@HOST:PORT/DATABASE, not '\(url)'")
        }
        if components.password != nil {
            throw StoreLocationError("store.url must not carry a password: put it in an environment variable and name it in store.passwordEnv")
        }
        guard let user = components.user, !user.isEmpty else { throw StoreLocationError("store.url needs a user: postgres://USER@HOST:PORT/DATABASE") }
        let database = components.path.hasPrefix("/") ? String(components.path.dropFirst()) : components.path
        guard !database.isEmpty else { throw StoreLocationError("store.url needs a database: postgres://USER@HOST:PORT/DATABASE") }
        let socketDirectory = components.queryItems?.first { $0.name == "host" }?.value
        let host = components.host ?? ""
        guard socketDirectory != nil || !host.isEmpty else { throw StoreLocationError("store.url needs a host (or ?host=/socket/directory)") }
        return .postgres(PostgresLocation(user: user, host: host, port: components.port ?? 5432, database: database, socketDirectory: socketDirectory))
    }

    public var description: String {
        switch self {
        case .sqlite(let path): "sqlite:\(path)"
        case .postgres(let p): p.description
        }
    }
}

/// A PostgreSQL server and database, without its password.
public struct PostgresLocation: Sendable, Equatable, CustomStringConvertible {
    public var user: String
    public var host: String
    public var port: Int
    public var database: String
    /// The directory of the server's Unix socket, when connecting through it.
    public var socketDirectory: String?

    public init(user: String, host: String, port: Int, database: String, socketDirectory: String? = nil) {
        self.user = user
        self.host = host
        self.port = port
        self.database = database
        self.socketDirectory = socketDirectory
    }

    public var description: String {
        if let socketDirectory { return "postgres://\(user)@/\(database)?host=\(socketDirectory)&port=\(port)" }
        return "postgres://\(user)@\(host):\(port)/\(database)"
    }
}

public struct StoreLocationError: Error, CustomStringConvertible, Sendable {
    public let description: String
    public init(_ description: String) { self.description = description }
}
