import Foundation
import Runtime
import Store
import Synchronization

/// Named sampling presets: Corral's built-ins, then `routes.json`, then the admin API (each
/// overriding the one before). A request names one with `"profile"` or `model@profile`, or gets
/// its model's default; fields the request sets itself always win.
public final class SamplingProfiles: Sendable {
    public struct Entry: Sendable {
        public var fields: [String: SendableJSON]
        /// builtin, config or admin.
        public var source: String
    }

    private let entries: Mutex<[String: Entry]>
    let config: [String: [String: SendableJSON]]
    let store: (any LibraryStateStore)?

    public init(config: [String: [String: SendableJSON]], store: (any LibraryStateStore)?) {
        var e: [String: Entry] = [:]
        for (name, fields) in SamplingFields.builtIn { e[name] = Entry(fields: fields, source: "builtin") }
        for (name, fields) in config { e[name] = Entry(fields: fields, source: "config") }
        entries = Mutex(e)
        self.config = config
        self.store = store
    }

    /// Adds the profiles saved through the admin API. A store that cannot be read, or a saved
    /// profile that cannot be decoded, is an error (the caller reports it), never an empty list.
    public func load() async throws(LibraryError) {
        let documents: [Data]
        do { documents = try await store?.documents(kind: "sampling-profile", limit: 10_000) ?? [] } catch {
            throw .storage("the saved sampling profiles could not be read: \(error)")
        }
        var saved: [Saved] = []
        for data in documents {
            do { saved.append(try JSONDecoder().decode(Saved.self, from: data)) } catch {
                throw .storage("a saved sampling profile could not be decoded: \(error)")
            }
        }
        // Loaded again after another node changed them: a profile deleted there goes here too
        // (what routes.json or the built-ins define comes back).
        let config = self.config
        entries.withLock { e in
            for (name, entry) in e where entry.source == "admin" { e[name] = Self.underlying(name, config: config) }
            for s in saved { e[s.name] = Entry(fields: s.fields, source: "admin") }
        }
    }

    /// What routes.json, else the built-ins, define under `name` (an admin profile hides it).
    static func underlying(_ name: String, config: [String: [String: SendableJSON]]) -> Entry? {
        config[name].map { Entry(fields: $0, source: "config") } ?? SamplingFields.builtIn[name].map { Entry(fields: $0, source: "builtin") }
    }

    struct Saved: Codable {
        var name: String
        var fields: [String: SendableJSON]
    }

    public func all() -> [String: Entry] { entries.withLock { $0 } }
    public func get(_ name: String) -> Entry? { entries.withLock { $0[name] } }

    public func put(_ name: String, fields: [String: SendableJSON]) async throws {
        let data = try JSONEncoder().encode(Saved(name: name, fields: fields))
        try await store?.putDocument(kind: "sampling-profile", id: name, model: nil, body: data)
        entries.withLock { $0[name] = Entry(fields: fields, source: "admin") }
    }

    /// Removes an admin-defined profile (built-in and configured ones stay).
    public func delete(_ name: String) async throws -> Bool {
        guard entries.withLock({ $0[name]?.source }) == "admin" else { return false }
        _ = try await store?.deleteDocument(kind: "sampling-profile", id: name)
        // What routes.json or the built-ins define under that name comes back, as after a load.
        let restored = Self.underlying(name, config: config)
        entries.withLock { $0[name] = restored }
        return true
    }

    /// Splits `model@profile` when the part after `@` names a profile.
    public func split(_ model: String) -> (model: String, profile: String?) {
        guard let at = model.lastIndex(of: "@") else { return (model, nil) }
        let name = String(model[model.index(after: at)...])
        guard get(name) != nil else { return (model, nil) }
        return (String(model[..<at]), name)
    }

    /// The fields of the named profile (else the model's default) that a request gains: those
    /// `requestSets` says it does not set itself (and no `max_tokens` for a request that sets
    /// any length limit). Empty when no profile applies; an unknown name is a 400.
    public func fields(named: String?, modelDefault: String?, requestSets: (String) -> Bool) throws(LibraryError) -> [String: SendableJSON] {
        guard let chosen = named ?? modelDefault else { return [:] }
        guard let entry = get(chosen) else {
            throw LibraryError.badRequest("no sampling profile named '\(chosen)' (known: \(all().keys.sorted().joined(separator: ", ")))", param: "profile")
        }
        let limits = ["max_tokens", "max_completion_tokens", "n_predict"]
        return entry.fields.filter { key, _ in
            !requestSets(key) && !(key == "max_tokens" && limits.contains(where: requestSets))
        }
    }
}
