import Foundation
import GRDB

/// A team as stored: its limits are a JSON policy document.
public struct TeamRecord: Sendable, Equatable, Codable {
    public var id: String
    public var name: String
    public var disabled: Bool
    /// JSON object (see `Access.Policy`).
    public var policy: String
    public var createdAt: Date

    public init(id: String, name: String, disabled: Bool, policy: String, createdAt: Date) {
        self.id = id
        self.name = name
        self.disabled = disabled
        self.policy = policy
        self.createdAt = createdAt
    }
}

/// An API key as stored: never the key itself, only its visible prefix and SHA-256.
public struct KeyRecord: Sendable, Equatable, Codable {
    public var prefix: String
    public var teamID: String
    public var name: String
    /// SHA-256 of the whole key, hex.
    public var hash: String
    public var policy: String
    public var createdAt: Date
    public var expiresAt: Date?
    public var revokedAt: Date?

    public init(prefix: String, teamID: String, name: String, hash: String, policy: String, createdAt: Date, expiresAt: Date?, revokedAt: Date?) {
        self.prefix = prefix
        self.teamID = teamID
        self.name = name
        self.hash = hash
        self.policy = policy
        self.createdAt = createdAt
        self.expiresAt = expiresAt
        self.revokedAt = revokedAt
    }
}

/// One row of the usage ledger: what one request cost and how it went. No prompt or output text.
public struct LedgerRow: Sendable, Equatable, Codable {
    public var requestID: String
    public var ts: Date
    public var team: String?
    public var keyPrefix: String?
    public var model: String
    public var route: String
    public var status: Int
    public var errorKind: String?
    public var promptTokens: Int?
    public var cachedTokens: Int?
    public var completionTokens: Int?
    public var queueMs: Double
    public var loadMs: Double
    public var ttftMs: Double?
    public var totalMs: Double
    public var promptTPS: Double?
    public var generationTPS: Double?
    public var clientDisconnected: Bool
    /// The cluster node that served the request (nil on a single node).
    public var node: String?

    public init(
        requestID: String, ts: Date, team: String?, keyPrefix: String?, model: String, route: String, status: Int, errorKind: String?,
        promptTokens: Int?, cachedTokens: Int?, completionTokens: Int?, queueMs: Double, loadMs: Double, ttftMs: Double?,
        totalMs: Double, promptTPS: Double?, generationTPS: Double?, clientDisconnected: Bool, node: String? = nil
    ) {
        self.requestID = requestID
        self.ts = ts
        self.team = team
        self.keyPrefix = keyPrefix
        self.model = model
        self.route = route
        self.status = status
        self.errorKind = errorKind
        self.promptTokens = promptTokens
        self.cachedTokens = cachedTokens
        self.completionTokens = completionTokens
        self.queueMs = queueMs
        self.loadMs = loadMs
        self.ttftMs = ttftMs
        self.totalMs = totalMs
        self.promptTPS = promptTPS
        self.generationTPS = generationTPS
        self.clientDisconnected = clientDisconnected
        self.node = node
    }
}

/// Requests and tokens of one group in one time bucket.
public struct UsageBucket: Sendable, Codable, Equatable {
    public var group: String?
    public var bucket: String
    public var requests: Int
    public var errors: Int
    public var promptTokens: Int
    public var completionTokens: Int
    public var cachedTokens: Int
    public var averageTotalMs: Double

    public init(group: String?, bucket: String, requests: Int, errors: Int, promptTokens: Int, completionTokens: Int, cachedTokens: Int, averageTotalMs: Double) {
        self.group = group
        self.bucket = bucket
        self.requests = requests
        self.errors = errors
        self.promptTokens = promptTokens
        self.completionTokens = completionTokens
        self.cachedTokens = cachedTokens
        self.averageTotalMs = averageTotalMs
    }
}

extension TeamRecord: FetchableRecord, PersistableRecord { public static let databaseTableName = "team" }
extension KeyRecord: FetchableRecord, PersistableRecord { public static let databaseTableName = "api_key" }
extension LedgerRow: FetchableRecord, PersistableRecord { public static let databaseTableName = "usage" }

extension Store {
    static func registerAccessMigrations(_ m: inout DatabaseMigrator) {
        m.registerMigration("v3-teams-keys-usage") { db in
            try db.create(table: "admin_token") { t in
                t.primaryKey("id", .integer)
                t.column("hash", .text).notNull()
                t.column("createdAt", .datetime).notNull()
            }
            try db.create(table: "team") { t in
                t.primaryKey("id", .text)
                t.column("name", .text).notNull().unique()
                t.column("disabled", .boolean).notNull()
                t.column("policy", .text).notNull()
                t.column("createdAt", .datetime).notNull()
            }
            try db.create(table: "api_key") { t in
                t.primaryKey("prefix", .text)
                t.column("teamID", .text).notNull().references("team", onDelete: .cascade)
                t.column("name", .text).notNull()
                t.column("hash", .text).notNull()
                t.column("policy", .text).notNull()
                t.column("createdAt", .datetime).notNull()
                t.column("expiresAt", .datetime)
                t.column("revokedAt", .datetime)
            }
            try db.create(table: "usage") { t in
                t.primaryKey("requestID", .text)
                t.column("ts", .datetime).notNull()
                t.column("team", .text)
                t.column("keyPrefix", .text)
                t.column("model", .text).notNull()
                t.column("route", .text).notNull()
                t.column("status", .integer).notNull()
                t.column("errorKind", .text)
                t.column("promptTokens", .integer)
                t.column("cachedTokens", .integer)
                t.column("completionTokens", .integer)
                t.column("queueMs", .double).notNull()
                t.column("loadMs", .double).notNull()
                t.column("ttftMs", .double)
                t.column("totalMs", .double).notNull()
                t.column("promptTPS", .double)
                t.column("generationTPS", .double)
                t.column("clientDisconnected", .boolean).notNull()
            }
            try db.create(index: "usage_key_ts", on: "usage", columns: ["keyPrefix", "ts"])
            try db.create(index: "usage_team_ts", on: "usage", columns: ["team", "ts"])
            try db.create(index: "usage_model_ts", on: "usage", columns: ["model", "ts"])
        }
    }

    // MARK: Admin token

    /// SHA-256 (hex) of the admin token, if one was created.
    public func adminTokenHash() async throws -> String? {
        try await writer.read { db in try String.fetchOne(db, sql: "SELECT hash FROM admin_token WHERE id = 1") }
    }

    public func saveAdminTokenHash(_ hash: String) async throws {
        try await writer.write { db in
            try db.execute(sql: "INSERT OR REPLACE INTO admin_token (id, hash, createdAt) VALUES (1, ?, ?)", arguments: [hash, Date()])
        }
    }

    public func saveAdminTokenHashIfAbsent(_ hash: String) async throws -> String {
        try await writer.write { db in
            try db.execute(sql: "INSERT OR IGNORE INTO admin_token (id, hash, createdAt) VALUES (1, ?, ?)", arguments: [hash, Date()])
            return try String.fetchOne(db, sql: "SELECT hash FROM admin_token WHERE id = 1") ?? hash
        }
    }

    // MARK: Teams and keys

    public func teams() async throws -> [TeamRecord] { try await writer.read { db in try TeamRecord.fetchAll(db) } }
    public func keys() async throws -> [KeyRecord] { try await writer.read { db in try KeyRecord.fetchAll(db) } }
    public func keyWithTeam(prefix: String) async throws -> (KeyRecord, TeamRecord)? {
        try await writer.read { db in
            guard let key = try KeyRecord.fetchOne(db, key: prefix), let team = try TeamRecord.fetchOne(db, key: key.teamID) else { return nil }
            return (key, team)
        }
    }

    public func save(_ team: TeamRecord) async throws { try await writer.write { db in try team.save(db) } }
    public func save(_ key: KeyRecord) async throws { try await writer.write { db in try key.save(db) } }

    /// Deletes a team and its keys (usage rows stay: the ledger is history).
    public func deleteTeam(id: String) async throws {
        try await writer.write { db in
            try db.execute(sql: "DELETE FROM api_key WHERE teamID = ?", arguments: [id])
            try db.execute(sql: "DELETE FROM team WHERE id = ?", arguments: [id])
        }
    }

    // MARK: Ledger

    /// Appends ledger rows in one transaction (a row already present is kept as it was) and adds
    /// the new ones to the rollups in the same transaction.
    ///
    /// One cached statement with positional arguments: GRDB's `Encodable` insert builds a
    /// dictionary per row through a keyed encoder, which was most of the ledger thread's time.
    /// Dates bind as GRDB stores them everywhere else, so reads through `LedgerRow` see the same.
    public func appendUsage(_ rows: [LedgerRow]) async throws {
        guard !rows.isEmpty else { return }
        try await writer.write { db in
            let insert = try db.cachedStatement(sql: """
                INSERT OR IGNORE INTO usage (requestID, ts, team, keyPrefix, model, route, status, errorKind, promptTokens, cachedTokens,
                completionTokens, queueMs, loadMs, ttftMs, totalMs, promptTPS, generationTPS, clientDisconnected, node)
                VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                """)
            var inserted: [LedgerRow] = []
            inserted.reserveCapacity(rows.count)
            for r in rows {
                try insert.execute(arguments: [
                    r.requestID, r.ts, r.team, r.keyPrefix, r.model, r.route, r.status, r.errorKind, r.promptTokens, r.cachedTokens,
                    r.completionTokens, r.queueMs, r.loadMs, r.ttftMs, r.totalMs, r.promptTPS, r.generationTPS, r.clientDisconnected, r.node,
                ])
                // A row already there (written before a retry) is counted once.
                if db.changesCount > 0 { inserted.append(r) }
            }
            try Self.applyRollups(db, UsageRollups.aggregate(inserted))
        }
    }

    /// Ledger rows in a time range, newest first (at most `limit`).
    public func usageRows(from: Date, to: Date, team: String? = nil, model: String? = nil, limit: Int = 1000) async throws -> [LedgerRow] {
        try await writer.read { db in
            var request = LedgerRow.filter(Column("ts") >= from && Column("ts") < to)
            if let team { request = request.filter(Column("team") == team) }
            if let model { request = request.filter(Column("model") == model) }
            return try request.order(Column("ts").desc).limit(limit).fetchAll(db)
        }
    }

    /// Number of ledger rows (tests).
    public func usageCount() async throws -> Int {
        try await writer.read { db in try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM usage") ?? 0 }
    }
}
