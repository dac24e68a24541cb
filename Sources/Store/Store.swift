import Foundation
import GRDB

/// Corral's SQLite database: migrations and typed access. WAL mode; writes are serialised by
/// GRDB on its own queue, off the concurrency pool.
public struct Store: Sendable {
    let writer: any DatabaseWriter

    /// Opens (creating if needed) the database file and migrates it.
    public static func open(path: String) throws -> Store {
        var config = Configuration()
        config.busyMode = .timeout(5)
        // WAL with synchronous=NORMAL: a commit survives the process dying (kill -9 included)
        // and costs no fsync; only an OS crash or power loss can take the last commits back.
        // FULL (SQLite's default) fsynced every job event and output item.
        config.prepareDatabase { db in try db.execute(sql: "PRAGMA synchronous = NORMAL") }
        let pool = try DatabasePool(path: path, configuration: config)
        try migrator.migrate(pool)
        return Store(writer: pool)
    }

    /// An in-memory database, for tests.
    public static func inMemory() throws -> Store {
        let queue = try DatabaseQueue()
        try migrator.migrate(queue)
        return Store(writer: queue)
    }

    static var migrator: DatabaseMigrator {
        var m = DatabaseMigrator()
        m.registerMigration("v1-fit-cache") { db in
            try db.create(table: "fit_cache") { t in
                t.primaryKey("key", .text)
                t.column("model", .text).notNull()
                t.column("plan", .blob).notNull()
                t.column("createdAt", .datetime).notNull()
            }
        }
        m.registerMigration("v2-digests-and-aliases") { db in
            try db.create(table: "file_digest") { t in
                t.primaryKey("path", .text)
                t.column("size", .integer).notNull()
                t.column("modified", .double).notNull()
                t.column("digest", .text).notNull()
            }
            try db.create(table: "model_alias") { t in
                t.primaryKey("alias", .text)
                t.column("target", .text).notNull()
                t.column("createdAt", .datetime).notNull()
            }
        }
        registerAccessMigrations(&m)
        registerDocumentMigrations(&m)
        registerJobMigrations(&m)
        registerFileMigrations(&m)
        registerEvalMigrations(&m)
        m.registerMigration("v8-usage-node") { db in
            // The cluster node that served a request (nil on a single node).
            try db.alter(table: "usage") { t in t.add(column: "node", .text) }
        }
        registerUsageRollupMigrations(&m)
        return m
    }

    /// Remembered file digests: path, size, modification time and SHA-256 hex.
    public func fileDigests() async throws -> [(path: String, size: Int64, modified: Double, digest: String)] {
        try await writer.read { db in
            try Row.fetchAll(db, sql: "SELECT path, size, modified, digest FROM file_digest").map {
                ($0["path"], $0["size"], $0["modified"], $0["digest"])
            }
        }
    }

    /// Saves the digest of a file (one row per path).
    public func saveFileDigest(path: String, size: Int64, modified: Double, digest: String) async throws {
        try await writer.write { db in
            try db.execute(
                sql: "INSERT OR REPLACE INTO file_digest (path, size, modified, digest) VALUES (?, ?, ?, ?)",
                arguments: [path, size, modified, digest])
        }
    }

    /// Aliases created at runtime (Ollama's `/api/copy`), alias → target model.
    public func modelAliases() async throws -> [String: String] {
        try await writer.read { db in
            Dictionary(uniqueKeysWithValues: try Row.fetchAll(db, sql: "SELECT alias, target FROM model_alias").map { ($0["alias"], $0["target"]) })
        }
    }

    public func saveModelAlias(_ alias: String, target: String) async throws {
        try await writer.write { db in
            try db.execute(sql: "INSERT OR REPLACE INTO model_alias (alias, target, createdAt) VALUES (?, ?, ?)", arguments: [alias, target, Date()])
        }
    }

    public func deleteModelAlias(_ alias: String) async throws {
        try await writer.write { db in try db.execute(sql: "DELETE FROM model_alias WHERE alias = ?", arguments: [alias]) }
    }

    /// A cached fit plan (JSON) by its full identity key.
    public func fitPlan(key: String) async throws -> Data? {
        try await writer.read { db in
            try Data.fetchOne(db, sql: "SELECT plan FROM fit_cache WHERE key = ?", arguments: [key])
        }
    }

    /// Saves a fit plan, replacing any plan for the same key.
    public func saveFitPlan(key: String, model: String, plan: Data) async throws {
        try await writer.write { db in
            try db.execute(
                sql: "INSERT OR REPLACE INTO fit_cache (key, model, plan, createdAt) VALUES (?, ?, ?, ?)",
                arguments: [key, model, plan, Date()])
        }
    }

    /// Number of cached fit plans.
    public func fitPlanCount() async throws -> Int {
        try await writer.read { db in try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM fit_cache") ?? 0 }
    }
}
