import Foundation
import GRDB

/// JSON documents by kind and id: benchmark runs, tuning sessions (rewritten as each trial
/// finishes), runtime profiles and sampling profiles. Each is small and read whole.
extension Store {
    static func registerDocumentMigrations(_ m: inout DatabaseMigrator) {
        m.registerMigration("v4-documents") { db in
            try db.create(table: "document") { t in
                t.column("kind", .text).notNull()
                t.column("id", .text).notNull()
                t.column("model", .text)
                t.column("createdAt", .datetime).notNull()
                t.column("body", .blob).notNull()
                t.primaryKey(["kind", "id"])
            }
            try db.create(index: "document_kind_model", on: "document", columns: ["kind", "model", "createdAt"])
        }
    }

    /// Inserts or replaces a document.
    public func putDocument(kind: String, id: String, model: String?, body: Data, createdAt: Date = Date()) async throws {
        try await writer.write { db in
            try db.execute(
                sql: """
                    INSERT INTO document (kind, id, model, createdAt, body) VALUES (?, ?, ?, ?, ?)
                    ON CONFLICT(kind, id) DO UPDATE SET model = excluded.model, body = excluded.body
                    """, arguments: [kind, id, model, createdAt, body])
        }
    }

    public func document(kind: String, id: String) async throws -> Data? {
        try await writer.read { db in try Data.fetchOne(db, sql: "SELECT body FROM document WHERE kind = ? AND id = ?", arguments: [kind, id]) }
    }

    /// Documents of a kind (optionally of one model), newest first.
    public func documents(kind: String, model: String? = nil, limit: Int = 100) async throws -> [Data] {
        try await writer.read { db in
            if let model {
                return try Data.fetchAll(db, sql: "SELECT body FROM document WHERE kind = ? AND model = ? ORDER BY createdAt DESC LIMIT ?", arguments: [kind, model, limit])
            }
            return try Data.fetchAll(db, sql: "SELECT body FROM document WHERE kind = ? ORDER BY createdAt DESC LIMIT ?", arguments: [kind, limit])
        }
    }

    public func storedDocuments(kind: String) async throws -> [StoredDocument] {
        try await writer.read { db in
            try Row.fetchAll(db, sql: "SELECT kind, id, model, createdAt, body FROM document WHERE kind = ? ORDER BY createdAt", arguments: [kind]).map {
                StoredDocument(kind: $0["kind"], id: $0["id"], model: $0["model"], createdAt: $0["createdAt"], body: $0["body"])
            }
        }
    }

    public func deleteDocument(kind: String, id: String) async throws -> Bool {
        try await writer.write { db in
            try db.execute(sql: "DELETE FROM document WHERE kind = ? AND id = ?", arguments: [kind, id])
            return db.changesCount > 0
        }
    }
}
