import Foundation
import GRDB

/// Where the job engine keeps jobs and their event logs: ``Store`` on one node, `PostgresStore`
/// on a cluster (every node sees every job; each job runs on the node that took it).
public protocol JobStore: Sendable {
    func putJob(_ job: StoredJob) async throws
    func job(id: String) async throws -> StoredJob?
    func jobs(kind: String?, states: [String]?, model: String?, after: String?, limit: Int) async throws -> [StoredJob]
    /// Appends an event under the sequence number the job's engine gave it (unique within the job).
    func appendJobEvent(sequence: Int64, job: String, type: String, data: Data, at: Date) async throws
    /// The highest event sequence number stored (0 when there is none).
    func lastJobEventSequence() async throws -> Int64
    func jobEvents(job: String, after sequence: Int64, limit: Int) async throws -> [StoredJobEvent]
    func pruneJobs(kind: String, finishedStates: [String], keep: Int, olderThan: Date?) async throws -> Int
    func deleteJob(id: String) async throws -> Bool
}

/// Everything the workbench keeps (jobs, uploaded files, evaluations and the documents beside
/// them): one protocol for the backend `store.url` selects.
public typealias WorkStore = JobStore & FileRecordStore & EvalRecordStore & LibraryStateStore

extension Store: JobStore {}

/// One stored job row: the columns the engine filters on, and the whole record as JSON.
public struct StoredJob: Sendable {
    public var id: String
    public var kind: String
    public var state: String
    public var model: String?
    public var createdAt: Date
    public var body: Data
    /// The node that runs it (a cluster's; nil on one node, whose store has no such column).
    public var node: String?

    public init(id: String, kind: String, state: String, model: String?, createdAt: Date, body: Data, node: String? = nil) {
        (self.id, self.kind, self.state, self.model, self.createdAt, self.body, self.node) = (id, kind, state, model, createdAt, body, node)
    }
}

/// One entry of a job's append-only event log. `sequence` is unique and increasing across all
/// jobs, so it serves as the SSE event id.
public struct StoredJobEvent: Sendable {
    public var sequence: Int64
    public var job: String
    public var at: Date
    public var type: String
    public var data: Data

    public init(sequence: Int64, job: String, at: Date, type: String, data: Data) {
        (self.sequence, self.job, self.at, self.type, self.data) = (sequence, job, at, type, data)
    }
}

extension Store {
    static func registerJobMigrations(_ m: inout DatabaseMigrator) {
        m.registerMigration("v5-jobs") { db in
            try db.create(table: "job") { t in
                t.primaryKey("id", .text)
                t.column("kind", .text).notNull()
                t.column("state", .text).notNull()
                t.column("model", .text)
                t.column("createdAt", .datetime).notNull()
                t.column("body", .blob).notNull()
            }
            try db.create(index: "job_by_kind", on: "job", columns: ["kind", "createdAt"])
            try db.create(table: "job_event") { t in
                t.autoIncrementedPrimaryKey("sequence")
                t.column("job", .text).notNull().references("job", onDelete: .cascade)
                t.column("at", .datetime).notNull()
                t.column("type", .text).notNull()
                t.column("data", .blob).notNull()
            }
            try db.create(index: "job_event_by_job", on: "job_event", columns: ["job", "sequence"])
        }
    }

    /// Inserts or replaces a job row.
    public func putJob(_ job: StoredJob) async throws {
        try await writer.write { db in
            try db.execute(
                // An upsert, not INSERT OR REPLACE: a replace deletes the row, and with it (by the
                // cascade) the job's events.
                sql: """
                    INSERT INTO job (id, kind, state, model, createdAt, body) VALUES (?, ?, ?, ?, ?, ?)
                    ON CONFLICT(id) DO UPDATE SET state = excluded.state, model = excluded.model, body = excluded.body
                    """,
                arguments: [job.id, job.kind, job.state, job.model, job.createdAt, job.body])
        }
    }

    public func job(id: String) async throws -> StoredJob? {
        try await writer.read { db in
            try Row.fetchOne(db, sql: "SELECT id, kind, state, model, createdAt, body FROM job WHERE id = ?", arguments: [id]).map(Self.job)
        }
    }

    /// Jobs newest first, filtered by kind, states and model, listed after the job `after` (the
    /// paging cursor: the previous page's last id).
    public func jobs(kind: String?, states: [String]?, model: String?, after: String?, limit: Int) async throws -> [StoredJob] {
        try await writer.read { db in
            var clauses: [String] = []
            var arguments: StatementArguments = []
            if let kind { clauses.append("kind = ?"); arguments += [kind] }
            if let model { clauses.append("model = ?"); arguments += [model] }
            if let states, !states.isEmpty {
                clauses.append("state IN (\(states.map { _ in "?" }.joined(separator: ",")))")
                for s in states { arguments += [s] }
            }
            if let after {
                clauses.append("(createdAt, id) < (SELECT createdAt, id FROM job WHERE id = ?)")
                arguments += [after]
            }
            let filter = clauses.isEmpty ? "" : "WHERE " + clauses.joined(separator: " AND ")
            arguments += [limit]
            return try Row.fetchAll(
                db, sql: "SELECT id, kind, state, model, createdAt, body FROM job \(filter) ORDER BY createdAt DESC, id DESC LIMIT ?",
                arguments: arguments
            ).map(Self.job)
        }
    }

    /// Appends an event to a job's log under the sequence number the engine gave it.
    public func appendJobEvent(sequence: Int64, job: String, type: String, data: Data, at: Date) async throws {
        try await writer.write { db in
            try db.execute(sql: "INSERT INTO job_event (sequence, job, at, type, data) VALUES (?, ?, ?, ?, ?)", arguments: [sequence, job, at, type, data])
        }
    }

    /// The highest event sequence number stored (0 when there is none).
    public func lastJobEventSequence() async throws -> Int64 {
        try await writer.read { db in try Int64.fetchOne(db, sql: "SELECT MAX(sequence) FROM job_event") ?? 0 }
    }

    /// A job's events after `sequence`, oldest first.
    public func jobEvents(job: String, after sequence: Int64, limit: Int) async throws -> [StoredJobEvent] {
        try await writer.read { db in
            try Row.fetchAll(
                db, sql: "SELECT sequence, job, at, type, data FROM job_event WHERE job = ? AND sequence > ? ORDER BY sequence LIMIT ?",
                arguments: [job, sequence, limit]
            ).map { StoredJobEvent(sequence: $0["sequence"], job: $0["job"], at: $0["at"], type: $0["type"], data: $0["data"]) }
        }
    }

    /// Deletes finished jobs (and their events) of a kind beyond the newest `keep`, and those
    /// finished before `olderThan`. Returns how many went.
    public func pruneJobs(kind: String, finishedStates: [String], keep: Int, olderThan: Date?) async throws -> Int {
        try await writer.write { db in
            let states = finishedStates.map { _ in "?" }.joined(separator: ",")
            var arguments: StatementArguments = [kind]
            for s in finishedStates { arguments += [s] }
            arguments += [kind]
            for s in finishedStates { arguments += [s] }
            arguments += [keep, olderThan ?? Date.distantPast]
            try db.execute(
                sql: """
                    DELETE FROM job WHERE kind = ? AND state IN (\(states)) AND (id NOT IN (
                      SELECT id FROM job WHERE kind = ? AND state IN (\(states)) ORDER BY createdAt DESC, id DESC LIMIT ?
                    ) OR createdAt < ?)
                    """, arguments: arguments)
            return db.changesCount
        }
    }

    private static func job(_ row: Row) -> StoredJob {
        StoredJob(id: row["id"], kind: row["kind"], state: row["state"], model: row["model"], createdAt: row["createdAt"], body: row["body"])
    }
}
