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
        return m
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
