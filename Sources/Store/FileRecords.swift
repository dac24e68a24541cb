import Foundation
import GRDB

/// One uploaded file's row (the bytes live in the files directory under `id`).
public struct StoredFile: Sendable, Equatable {
    public var id: String
    /// The team that uploaded it (nil: open mode or the admin).
    public var team: String?
    public var purpose: String
    public var filename: String
    public var bytes: Int
    public var sha256: String
    public var createdAt: Date

    public init(id: String, team: String?, purpose: String, filename: String, bytes: Int, sha256: String, createdAt: Date) {
        (self.id, self.team, self.purpose, self.filename, self.bytes, self.sha256, self.createdAt) = (id, team, purpose, filename, bytes, sha256, createdAt)
    }
}

/// Where uploaded files are recorded. On one node (``Store``) the bytes live only in the node's
/// files directory; a shared store (`PostgresStore`) keeps them with the row too, so any node
/// can read a file another node took.
public protocol FileRecordStore: Sendable {
    /// Records a file; `contents` is kept with it where the store is shared.
    func putFile(_ file: StoredFile, contents: Data) async throws
    func file(id: String, scope: TeamScope) async throws -> StoredFile?
    func files(scope: TeamScope, purpose: String?, after: String?, limit: Int, newestFirst: Bool) async throws -> [StoredFile]
    func deleteFile(id: String, scope: TeamScope) async throws -> Bool
    /// The bytes kept with the row (nil where the store keeps none).
    func fileContents(id: String) async throws -> Data?
}

extension Store: FileRecordStore {
    /// The bytes are in the files directory; the row is enough here.
    public func putFile(_ file: StoredFile, contents: Data) async throws { try await putFile(file) }

    public func fileContents(id: String) async throws -> Data? { nil }
}

extension Store {
    static func registerFileMigrations(_ m: inout DatabaseMigrator) {
        m.registerMigration("v6-files") { db in
            try db.create(table: "file") { t in
                t.primaryKey("id", .text)
                t.column("team", .text)
                t.column("purpose", .text).notNull()
                t.column("filename", .text).notNull()
                t.column("bytes", .integer).notNull()
                t.column("sha256", .text).notNull()
                t.column("createdAt", .datetime).notNull()
            }
            try db.create(index: "file_by_team", on: "file", columns: ["team", "createdAt"])
        }
    }

    public func putFile(_ file: StoredFile) async throws {
        try await writer.write { db in
            try db.execute(
                sql: "INSERT INTO file (id, team, purpose, filename, bytes, sha256, createdAt) VALUES (?, ?, ?, ?, ?, ?, ?)",
                arguments: [file.id, file.team, file.purpose, file.filename, file.bytes, file.sha256, file.createdAt])
        }
    }

    /// The file `id` if `scope` may see it.
    public func file(id: String, scope: TeamScope) async throws -> StoredFile? {
        try await writer.read { db in try teamOwnedRow(db, "file", id: id, scope: scope).map(Self.file) }
    }

    /// Files `scope` may see, by creation time (`newestFirst` or oldest first), optionally of one
    /// purpose, after the file `after` (the paging cursor).
    public func files(scope: TeamScope, purpose: String?, after: String?, limit: Int, newestFirst: Bool) async throws -> [StoredFile] {
        try await writer.read { db in
            try teamOwnedPage(db, "file", scope: scope, filters: purpose.map { [("purpose", $0)] } ?? [], after: after, limit: limit, newestFirst: newestFirst)
                .map(Self.file)
        }
    }

    /// Deletes the row of file `id` if `scope` may see it; whether it did.
    public func deleteFile(id: String, scope: TeamScope) async throws -> Bool {
        try await writer.write { db in try deleteTeamOwned(db, "file", id: id, scope: scope) }
    }

    private static func file(_ row: Row) -> StoredFile {
        StoredFile(id: row["id"], team: row["team"], purpose: row["purpose"], filename: row["filename"], bytes: row["bytes"],
                   sha256: row["sha256"], createdAt: row["createdAt"])
    }
}
