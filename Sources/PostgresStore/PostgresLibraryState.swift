import Foundation
import NIOCore
import PostgresNIO
import Store

/// Document kinds whose change other nodes apply at once (the rest are read when needed).
let announcedDocumentKinds: Set<String> = ["sampling-profile", "setting", "pin"]

extension PostgresStore: LibraryStateStore {
    static let libraryMigration: (String, [String]) = ("pg3-library-state", [
        """
        CREATE TABLE document (kind TEXT NOT NULL, id TEXT NOT NULL, model TEXT, created_at TIMESTAMPTZ NOT NULL, body BYTEA NOT NULL,
          PRIMARY KEY (kind, id))
        """,
        "CREATE INDEX document_kind_model ON document (kind, model, created_at)",
        "CREATE TABLE model_alias (alias TEXT PRIMARY KEY, target TEXT NOT NULL, created_at TIMESTAMPTZ NOT NULL)",
        "CREATE TABLE fit_cache (key TEXT PRIMARY KEY, model TEXT NOT NULL, plan BYTEA NOT NULL, created_at TIMESTAMPTZ NOT NULL)",
    ])

    public func putDocument(kind: String, id: String, model: String?, body: Data, createdAt: Date) async throws {
        try await write { tx in
            try await tx.query("""
                INSERT INTO document (kind, id, model, created_at, body) VALUES (\(kind), \(id), \(model), \(createdAt), \(ByteBuffer(bytes: body)))
                ON CONFLICT (kind, id) DO UPDATE SET model = EXCLUDED.model, body = EXCLUDED.body
                """, logger: logger)
            if announcedDocumentKinds.contains(kind) { try await announceChange(tx) }
        }
    }

    public func document(kind: String, id: String) async throws -> Data? {
        for try await body in try await client.query("SELECT body FROM document WHERE kind = \(kind) AND id = \(id)", logger: logger).decode(ByteBuffer.self) {
            return Data(body.readableBytesView)
        }
        return nil
    }

    public func documents(kind: String, model: String?, limit: Int) async throws -> [Data] {
        var out: [Data] = []
        let rows = try await client.query("""
            SELECT body FROM document WHERE kind = \(kind) AND (\(model)::TEXT IS NULL OR model = \(model)) ORDER BY created_at DESC LIMIT \(limit)
            """, logger: logger)
        for try await body in rows.decode(ByteBuffer.self) { out.append(Data(body.readableBytesView)) }
        return out
    }

    public func storedDocuments(kind: String) async throws -> [StoredDocument] {
        var out: [StoredDocument] = []
        let rows = try await client.query("SELECT kind, id, model, created_at, body FROM document WHERE kind = \(kind) ORDER BY created_at", logger: logger)
        for try await (kind, id, model, createdAt, body) in rows.decode((String, String, String?, Date, ByteBuffer).self) {
            out.append(StoredDocument(kind: kind, id: id, model: model, createdAt: createdAt, body: Data(body.readableBytesView)))
        }
        return out
    }

    public func deleteDocument(kind: String, id: String) async throws -> Bool {
        var deleted = false
        try await write { tx in
            for try await _ in try await tx.query("DELETE FROM document WHERE kind = \(kind) AND id = \(id) RETURNING id", logger: logger) { deleted = true }
            if deleted && announcedDocumentKinds.contains(kind) { try await announceChange(tx) }
        }
        return deleted
    }

    public func modelAliases() async throws -> [String: String] {
        var out: [String: String] = [:]
        for try await (alias, target) in try await client.query("SELECT alias, target FROM model_alias", logger: logger).decode((String, String).self) {
            out[alias] = target
        }
        return out
    }

    public func saveModelAlias(_ alias: String, target: String) async throws {
        try await write { tx in
            try await tx.query("""
                INSERT INTO model_alias (alias, target, created_at) VALUES (\(alias), \(target), now())
                ON CONFLICT (alias) DO UPDATE SET target = EXCLUDED.target
                """, logger: logger)
            try await announceChange(tx)
        }
    }

    public func deleteModelAlias(_ alias: String) async throws {
        try await write { tx in
            try await tx.query("DELETE FROM model_alias WHERE alias = \(alias)", logger: logger)
            try await announceChange(tx)
        }
    }

    public func fitPlan(key: String) async throws -> Data? {
        for try await plan in try await client.query("SELECT plan FROM fit_cache WHERE key = \(key)", logger: logger).decode(ByteBuffer.self) {
            return Data(plan.readableBytesView)
        }
        return nil
    }

    public func saveFitPlan(key: String, model: String, plan: Data) async throws {
        try await client.query("""
            INSERT INTO fit_cache (key, model, plan, created_at) VALUES (\(key), \(model), \(ByteBuffer(bytes: plan)), now())
            ON CONFLICT (key) DO UPDATE SET model = EXCLUDED.model, plan = EXCLUDED.plan, created_at = now()
            """, logger: logger)
    }
}
