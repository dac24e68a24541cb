import Foundation
import GRDB

/// One graded item of an evaluation run, as stored.
public struct EvalOutputRow: Sendable {
    public var id: String
    public var index: Int
    public var status: String
    public var body: Data
    public init(id: String, index: Int, status: String, body: Data) { (self.id, self.index, self.status, self.body) = (id, index, status, body) }
}

/// Evaluations (their definition as JSON, owned by a team) and the output items of their runs
/// (one row per item graded; runs themselves are jobs): ``Store`` on one node, `PostgresStore`
/// on a cluster.
public protocol EvalRecordStore: Sendable {
    func putEval(id: String, team: String?, createdAt: Date, body: Data) async throws
    func eval(id: String, scope: TeamScope) async throws -> Data?
    func evals(scope: TeamScope, after: String?, limit: Int, newestFirst: Bool) async throws -> [Data]
    func deleteEval(id: String, scope: TeamScope) async throws -> Bool
    func putEvalOutputItems(_ rows: [EvalOutputRow], run: String) async throws
    func evalOutputItems(run: String, status: String?, after: String?, limit: Int, descending: Bool) async throws -> [Data]
    func evalOutputItem(id: String, run: String) async throws -> Data?
    func deleteEvalOutputItems(run: String) async throws
    /// Every evaluation with its key and owner, oldest first (`corral store copy`).
    func storedEvals() async throws -> [StoredEval]
    /// Every output item of a run as stored, in item order (`corral store copy`).
    func storedEvalOutputItems(run: String) async throws -> [EvalOutputRow]
}

/// An evaluation's row.
public struct StoredEval: Sendable {
    public var id: String
    public var team: String?
    public var createdAt: Date
    public var body: Data
    public init(id: String, team: String?, createdAt: Date, body: Data) { (self.id, self.team, self.createdAt, self.body) = (id, team, createdAt, body) }
}

extension Store: EvalRecordStore {}

extension Store {
    static func registerEvalMigrations(_ m: inout DatabaseMigrator) {
        m.registerMigration("v7-evals") { db in
            try db.create(table: "eval") { t in
                t.primaryKey("id", .text)
                t.column("team", .text)
                t.column("createdAt", .datetime).notNull()
                t.column("body", .blob).notNull()
            }
            try db.create(table: "eval_output_item") { t in
                t.primaryKey("id", .text)
                t.column("run", .text).notNull()
                t.column("idx", .integer).notNull()
                t.column("status", .text).notNull()
                t.column("body", .blob).notNull()
            }
            try db.create(index: "eval_output_item_by_run", on: "eval_output_item", columns: ["run", "idx"], unique: true)
        }
    }

    /// Inserts or replaces an evaluation.
    public func putEval(id: String, team: String?, createdAt: Date, body: Data) async throws {
        try await writer.write { db in
            try db.execute(
                sql: """
                    INSERT INTO eval (id, team, createdAt, body) VALUES (?, ?, ?, ?)
                    ON CONFLICT(id) DO UPDATE SET body = excluded.body
                    """, arguments: [id, team, createdAt, body])
        }
    }

    /// An evaluation's body if `scope` may see it.
    public func eval(id: String, scope: TeamScope) async throws -> Data? {
        try await writer.read { db in try teamOwnedRow(db, "eval", id: id, scope: scope)?["body"] }
    }

    /// Evaluations `scope` may see by creation time, after the evaluation `after`.
    public func evals(scope: TeamScope, after: String?, limit: Int, newestFirst: Bool) async throws -> [Data] {
        try await writer.read { db in
            try teamOwnedPage(db, "eval", scope: scope, after: after, limit: limit, newestFirst: newestFirst).map { $0["body"] }
        }
    }

    public func deleteEval(id: String, scope: TeamScope) async throws -> Bool {
        try await writer.write { db in try deleteTeamOwned(db, "eval", id: id, scope: scope) }
    }

    /// Stores graded items of a run in one transaction (replacing those a resumed run grades again).
    public func putEvalOutputItems(_ rows: [EvalOutputRow], run: String) async throws {
        guard !rows.isEmpty else { return }
        try await writer.write { db in
            let statement = try db.cachedStatement(sql: "INSERT OR REPLACE INTO eval_output_item (id, run, idx, status, body) VALUES (?, ?, ?, ?, ?)")
            for row in rows { try statement.execute(arguments: [row.id, run, row.index, row.status, row.body]) }
        }
    }

    /// A run's output items in item order (or reversed), optionally of one status, after the
    /// item `after`.
    public func evalOutputItems(run: String, status: String?, after: String?, limit: Int, descending: Bool) async throws -> [Data] {
        try await writer.read { db in
            var sql = "SELECT body FROM eval_output_item WHERE run = ?"
            var arguments: StatementArguments = [run]
            if let status { sql += " AND status = ?"; arguments += [status] }
            if let after {
                sql += " AND idx \(descending ? "<" : ">") (SELECT idx FROM eval_output_item WHERE id = ?)"
                arguments += [after]
            }
            sql += " ORDER BY idx \(descending ? "DESC" : "ASC") LIMIT ?"
            arguments += [limit]
            return try Data.fetchAll(db, sql: sql, arguments: arguments)
        }
    }

    public func evalOutputItem(id: String, run: String) async throws -> Data? {
        try await writer.read { db in try Data.fetchOne(db, sql: "SELECT body FROM eval_output_item WHERE id = ? AND run = ?", arguments: [id, run]) }
    }

    public func storedEvals() async throws -> [StoredEval] {
        try await writer.read { db in
            try Row.fetchAll(db, sql: "SELECT id, team, createdAt, body FROM eval ORDER BY createdAt, id").map {
                StoredEval(id: $0["id"], team: $0["team"], createdAt: $0["createdAt"], body: $0["body"])
            }
        }
    }

    public func storedEvalOutputItems(run: String) async throws -> [EvalOutputRow] {
        try await writer.read { db in
            try Row.fetchAll(db, sql: "SELECT id, idx, status, body FROM eval_output_item WHERE run = ? ORDER BY idx", arguments: [run]).map {
                EvalOutputRow(id: $0["id"], index: $0["idx"], status: $0["status"], body: $0["body"])
            }
        }
    }

    public func deleteEvalOutputItems(run: String) async throws {
        try await writer.write { db in try db.execute(sql: "DELETE FROM eval_output_item WHERE run = ?", arguments: [run]) }
    }

    /// Deletes a job row (and, by the cascade, its events).
    public func deleteJob(id: String) async throws -> Bool {
        try await writer.write { db in
            try db.execute(sql: "DELETE FROM job WHERE id = ?", arguments: [id])
            return db.changesCount > 0
        }
    }
}
