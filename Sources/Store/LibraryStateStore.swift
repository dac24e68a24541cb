import Foundation

/// The library's state: JSON documents (sampling profiles, settings such as the default model,
/// runtime pins, learned allocations), aliases made at runtime, and the fit-plan cache.
///
/// ``Store`` keeps it in SQLite for one node; on a cluster `PostgresStore` keeps it in the shared
/// database, so that a profile, an alias, the default model or a pin set on one node is every
/// node's (nodes reload them on a change notice), and a fit plan made by one node is found by
/// another with the same hardware (the key says which).
public protocol LibraryStateStore: Sendable {
    func putDocument(kind: String, id: String, model: String?, body: Data, createdAt: Date) async throws
    func document(kind: String, id: String) async throws -> Data?
    /// Documents of a kind (optionally of one model), newest first.
    func documents(kind: String, model: String?, limit: Int) async throws -> [Data]
    func deleteDocument(kind: String, id: String) async throws -> Bool
    /// Every document of a kind with its key and dates, oldest first (`corral store copy`).
    func storedDocuments(kind: String) async throws -> [StoredDocument]
    /// Aliases created at runtime (Ollama's `/api/copy`), alias → target model.
    func modelAliases() async throws -> [String: String]
    func saveModelAlias(_ alias: String, target: String) async throws
    func deleteModelAlias(_ alias: String) async throws
    /// A cached fit plan (JSON) by its full identity key.
    func fitPlan(key: String) async throws -> Data?
    func saveFitPlan(key: String, model: String, plan: Data) async throws
}

/// A document with its key and dates.
public struct StoredDocument: Sendable {
    public var kind: String
    public var id: String
    public var model: String?
    public var createdAt: Date
    public var body: Data
    public init(kind: String, id: String, model: String?, createdAt: Date, body: Data) {
        (self.kind, self.id, self.model, self.createdAt, self.body) = (kind, id, model, createdAt, body)
    }
}

extension LibraryStateStore {
    public func putDocument(kind: String, id: String, model: String?, body: Data) async throws {
        try await putDocument(kind: kind, id: id, model: model, body: body, createdAt: Date())
    }

    public func documents(kind: String, limit: Int) async throws -> [Data] {
        try await documents(kind: kind, model: nil, limit: limit)
    }
}

extension Store: LibraryStateStore {}
