import Foundation
import NIOCore
import PostgresNIO
import Store

/// Jobs, their event logs, uploaded files (bytes included, so any node can read a file another
/// node took) and evaluations, shared by a cluster's nodes. A job row names the node that runs
/// it; event sequence numbers are unique within a job (its node numbers them).
extension PostgresStore {
    static let workMigration: (String, [String]) = ("pg5-work", [
        """
        CREATE TABLE job (id TEXT PRIMARY KEY, kind TEXT NOT NULL, state TEXT NOT NULL, model TEXT, node TEXT,
          created_at TIMESTAMPTZ NOT NULL, body BYTEA NOT NULL)
        """,
        "CREATE INDEX job_by_kind ON job (kind, created_at)",
        "CREATE INDEX job_by_created ON job (created_at, id)",
        """
        CREATE TABLE job_event (job TEXT NOT NULL REFERENCES job(id) ON DELETE CASCADE, sequence BIGINT NOT NULL,
          at TIMESTAMPTZ NOT NULL, type TEXT NOT NULL, data BYTEA NOT NULL, PRIMARY KEY (job, sequence))
        """,
        "CREATE INDEX job_event_sequence ON job_event (sequence)",
        """
        CREATE TABLE file (id TEXT PRIMARY KEY, team TEXT, purpose TEXT NOT NULL, filename TEXT NOT NULL, bytes BIGINT NOT NULL,
          sha256 TEXT NOT NULL, created_at TIMESTAMPTZ NOT NULL, contents BYTEA NOT NULL)
        """,
        "CREATE INDEX file_by_team ON file (team, created_at)",
        "CREATE TABLE eval (id TEXT PRIMARY KEY, team TEXT, created_at TIMESTAMPTZ NOT NULL, body BYTEA NOT NULL)",
        """
        CREATE TABLE eval_output_item (id TEXT PRIMARY KEY, run TEXT NOT NULL, idx INT NOT NULL, status TEXT NOT NULL, body BYTEA NOT NULL,
          UNIQUE (run, idx))
        """,
    ])

    /// Deletes the row `id` of a team-owned table (`file`, `eval`) if `scope` may see it; whether it did.
    fileprivate func deleteTeamOwned(_ table: String, id: String, scope: TeamScope) async throws -> Bool {
        let (all, team) = Self.visible(scope)
        var deleted = false
        for try await _ in try await client.query(
            "DELETE FROM \(unescaped: table) WHERE id = \(id) AND (\(all) OR team IS NOT DISTINCT FROM \(team)) RETURNING id", logger: logger) { deleted = true }
        return deleted
    }

    /// The condition that limits a team-owned table's rows to what `scope` may see.
    fileprivate static func visible(_ scope: TeamScope) -> (all: Bool, team: String?) {
        switch scope {
        case .all: (true, nil)
        case .team(let team): (false, team)
        }
    }
}

extension PostgresStore: JobStore {
    public func putJob(_ job: StoredJob) async throws {
        try await client.query("""
            INSERT INTO job (id, kind, state, model, node, created_at, body)
            VALUES (\(job.id), \(job.kind), \(job.state), \(job.model), \(job.node), \(job.createdAt), \(ByteBuffer(bytes: job.body)))
            ON CONFLICT (id) DO UPDATE SET state = EXCLUDED.state, model = EXCLUDED.model, body = EXCLUDED.body
            """, logger: logger)
    }

    public func job(id: String) async throws -> StoredJob? {
        try await jobRows("SELECT id, kind, state, model, created_at, body, node FROM job WHERE id = \(id)").first
    }

    public func jobs(kind: String?, states: [String]?, model: String?, after: String?, limit: Int) async throws -> [StoredJob] {
        let states = states?.isEmpty == false ? states : nil
        return try await jobRows("""
            SELECT id, kind, state, model, created_at, body, node FROM job
            WHERE (\(kind)::TEXT IS NULL OR kind = \(kind)) AND (\(model)::TEXT IS NULL OR model = \(model))
              AND (\(states)::TEXT[] IS NULL OR state = ANY(\(states)::TEXT[]))
              AND (\(after)::TEXT IS NULL OR (created_at, id) < (SELECT created_at, id FROM job WHERE id = \(after)))
            ORDER BY created_at DESC, id DESC LIMIT \(limit)
            """)
    }

    private func jobRows(_ query: PostgresQuery) async throws -> [StoredJob] {
        var out: [StoredJob] = []
        let rows = try await client.query(query, logger: logger)
        for try await (id, kind, state, model, createdAt, body, node) in rows.decode((String, String, String, String?, Date, ByteBuffer, String?).self) {
            out.append(StoredJob(id: id, kind: kind, state: state, model: model, createdAt: createdAt, body: Data(body.readableBytesView), node: node))
        }
        return out
    }

    public func appendJobEvent(sequence: Int64, job: String, type: String, data: Data, at: Date) async throws {
        try await client.query("""
            INSERT INTO job_event (job, sequence, at, type, data) VALUES (\(job), \(sequence), \(at), \(type), \(ByteBuffer(bytes: data)))
            """, logger: logger)
    }

    public func lastJobEventSequence() async throws -> Int64 {
        for try await n in try await client.query("SELECT coalesce(max(sequence), 0)::BIGINT FROM job_event", logger: logger).decode(Int64.self) { return n }
        return 0
    }

    public func jobEvents(job: String, after sequence: Int64, limit: Int) async throws -> [StoredJobEvent] {
        var out: [StoredJobEvent] = []
        let rows = try await client.query("""
            SELECT sequence, job, at, type, data FROM job_event WHERE job = \(job) AND sequence > \(sequence) ORDER BY sequence LIMIT \(limit)
            """, logger: logger)
        for try await (sequence, job, at, type, data) in rows.decode((Int64, String, Date, String, ByteBuffer).self) {
            out.append(StoredJobEvent(sequence: sequence, job: job, at: at, type: type, data: Data(data.readableBytesView)))
        }
        return out
    }

    public func pruneJobs(kind: String, finishedStates: [String], keep: Int, olderThan: Date?) async throws -> Int {
        var n = 0
        let rows = try await client.query("""
            DELETE FROM job WHERE kind = \(kind) AND state = ANY(\(finishedStates)::TEXT[]) AND (id NOT IN (
              SELECT id FROM job WHERE kind = \(kind) AND state = ANY(\(finishedStates)::TEXT[]) ORDER BY created_at DESC, id DESC LIMIT \(keep)
            ) OR created_at < \(olderThan ?? Date.distantPast))
            RETURNING id
            """, logger: logger)
        for try await _ in rows { n += 1 }
        return n
    }

    public func deleteJob(id: String) async throws -> Bool {
        var deleted = false
        for try await _ in try await client.query("DELETE FROM job WHERE id = \(id) RETURNING id", logger: logger) { deleted = true }
        return deleted
    }
}

extension PostgresStore: FileRecordStore {
    public func putFile(_ file: StoredFile, contents: Data) async throws {
        try await client.query("""
            INSERT INTO file (id, team, purpose, filename, bytes, sha256, created_at, contents)
            VALUES (\(file.id), \(file.team), \(file.purpose), \(file.filename), \(file.bytes), \(file.sha256), \(file.createdAt), \(ByteBuffer(bytes: contents)))
            """, logger: logger)
    }

    public func file(id: String, scope: TeamScope) async throws -> StoredFile? {
        let (all, team) = Self.visible(scope)
        return try await fileRows("""
            SELECT id, team, purpose, filename, bytes, sha256, created_at FROM file WHERE id = \(id) AND (\(all) OR team IS NOT DISTINCT FROM \(team))
            """).first
    }

    public func files(scope: TeamScope, purpose: String?, after: String?, limit: Int, newestFirst: Bool) async throws -> [StoredFile] {
        let (all, team) = Self.visible(scope)
        let (order, beyond) = newestFirst ? ("DESC", "<") : ("ASC", ">")
        return try await fileRows("""
            SELECT id, team, purpose, filename, bytes, sha256, created_at FROM file
            WHERE (\(all) OR team IS NOT DISTINCT FROM \(team)) AND (\(purpose)::TEXT IS NULL OR purpose = \(purpose))
              AND (\(after)::TEXT IS NULL OR (created_at, id) \(unescaped: beyond) (SELECT created_at, id FROM file WHERE id = \(after)))
            ORDER BY created_at \(unescaped: order), id \(unescaped: order) LIMIT \(limit)
            """)
    }

    private func fileRows(_ query: PostgresQuery) async throws -> [StoredFile] {
        var out: [StoredFile] = []
        let rows = try await client.query(query, logger: logger)
        for try await (id, team, purpose, filename, bytes, sha256, createdAt) in rows.decode((String, String?, String, String, Int, String, Date).self) {
            out.append(StoredFile(id: id, team: team, purpose: purpose, filename: filename, bytes: bytes, sha256: sha256, createdAt: createdAt))
        }
        return out
    }

    public func deleteFile(id: String, scope: TeamScope) async throws -> Bool {
        try await deleteTeamOwned("file", id: id, scope: scope)
    }

    public func fileContents(id: String) async throws -> Data? {
        for try await bytes in try await client.query("SELECT contents FROM file WHERE id = \(id)", logger: logger).decode(ByteBuffer.self) {
            return Data(bytes.readableBytesView)
        }
        return nil
    }
}

extension PostgresStore: EvalRecordStore {
    public func putEval(id: String, team: String?, createdAt: Date, body: Data) async throws {
        try await client.query("""
            INSERT INTO eval (id, team, created_at, body) VALUES (\(id), \(team), \(createdAt), \(ByteBuffer(bytes: body)))
            ON CONFLICT (id) DO UPDATE SET body = EXCLUDED.body
            """, logger: logger)
    }

    public func eval(id: String, scope: TeamScope) async throws -> Data? {
        let (all, team) = Self.visible(scope)
        return try await bodies("SELECT body FROM eval WHERE id = \(id) AND (\(all) OR team IS NOT DISTINCT FROM \(team))").first
    }

    public func evals(scope: TeamScope, after: String?, limit: Int, newestFirst: Bool) async throws -> [Data] {
        let (all, team) = Self.visible(scope)
        let (order, beyond) = newestFirst ? ("DESC", "<") : ("ASC", ">")
        return try await bodies("""
            SELECT body FROM eval WHERE (\(all) OR team IS NOT DISTINCT FROM \(team))
              AND (\(after)::TEXT IS NULL OR (created_at, id) \(unescaped: beyond) (SELECT created_at, id FROM eval WHERE id = \(after)))
            ORDER BY created_at \(unescaped: order), id \(unescaped: order) LIMIT \(limit)
            """)
    }

    public func deleteEval(id: String, scope: TeamScope) async throws -> Bool {
        try await deleteTeamOwned("eval", id: id, scope: scope)
    }

    public func putEvalOutputItems(_ rows: [EvalOutputRow], run: String) async throws {
        guard !rows.isEmpty else { return }
        try await client.query("""
            INSERT INTO eval_output_item (id, run, idx, status, body)
            SELECT u.id, \(run), u.idx, u.status, u.body FROM unnest(\(rows.map(\.id))::TEXT[], \(rows.map(\.index))::INT[], \(rows.map(\.status))::TEXT[],
              \(rows.map { ByteBuffer(bytes: $0.body) })::BYTEA[]) AS u(id, idx, status, body)
            ON CONFLICT (id) DO UPDATE SET idx = EXCLUDED.idx, status = EXCLUDED.status, body = EXCLUDED.body
            """, logger: logger)
    }

    public func evalOutputItems(run: String, status: String?, after: String?, limit: Int, descending: Bool) async throws -> [Data] {
        let (order, beyond) = descending ? ("DESC", "<") : ("ASC", ">")
        return try await bodies("""
            SELECT body FROM eval_output_item WHERE run = \(run) AND (\(status)::TEXT IS NULL OR status = \(status))
              AND (\(after)::TEXT IS NULL OR idx \(unescaped: beyond) (SELECT idx FROM eval_output_item WHERE id = \(after)))
            ORDER BY idx \(unescaped: order) LIMIT \(limit)
            """)
    }

    public func evalOutputItem(id: String, run: String) async throws -> Data? {
        try await bodies("SELECT body FROM eval_output_item WHERE id = \(id) AND run = \(run)").first
    }

    public func deleteEvalOutputItems(run: String) async throws {
        try await client.query("DELETE FROM eval_output_item WHERE run = \(run)", logger: logger)
    }

    public func storedEvals() async throws -> [StoredEval] {
        var out: [StoredEval] = []
        let rows = try await client.query("SELECT id, team, created_at, body FROM eval ORDER BY created_at, id", logger: logger)
        for try await (id, team, createdAt, body) in rows.decode((String, String?, Date, ByteBuffer).self) {
            out.append(StoredEval(id: id, team: team, createdAt: createdAt, body: Data(body.readableBytesView)))
        }
        return out
    }

    public func storedEvalOutputItems(run: String) async throws -> [EvalOutputRow] {
        var out: [EvalOutputRow] = []
        let rows = try await client.query("SELECT id, idx, status, body FROM eval_output_item WHERE run = \(run) ORDER BY idx", logger: logger)
        for try await (id, index, status, body) in rows.decode((String, Int, String, ByteBuffer).self) {
            out.append(EvalOutputRow(id: id, index: index, status: status, body: Data(body.readableBytesView)))
        }
        return out
    }

    private func bodies(_ query: PostgresQuery) async throws -> [Data] {
        var out: [Data] = []
        for try await body in try await client.query(query, logger: logger).decode(ByteBuffer.self) { out.append(Data(body.readableBytesView)) }
        return out
    }
}
