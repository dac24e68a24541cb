import Foundation
import Runtime
import Store

/// Fit plans, and what loads with them allocated, kept in the store (SQLite, or a cluster's
/// PostgreSQL), keyed by everything that
/// changes the answer: the file (path, size, mtime), the hardware, the arguments and the
/// llama.cpp build. Any change is a new key.
public struct StoreFitPlanCache: FitPlanCache {
    let store: any LibraryStateStore
    let hardwareFingerprint: String
    let llamaBuild: String
    /// Told of each write that failed (what, and the error), to be logged and counted: a failed
    /// cache write costs the next load a fit, and must not pass unseen.
    let writeFailed: @Sendable (String, any Error) -> Void

    public init(store: any LibraryStateStore, hardwareFingerprint: String, llamaBuild: String,
                writeFailed: @escaping @Sendable (String, any Error) -> Void) {
        self.store = store
        self.hardwareFingerprint = hardwareFingerprint
        self.llamaBuild = llamaBuild
        self.writeFailed = writeFailed
    }

    func key(_ spec: ModelSpec, _ arguments: [String]) -> String? {
        guard let file = spec.path.flatMap(FileIdentity.of) else { return nil }
        var parts = [file.path, String(file.size), String(file.modified), hardwareFingerprint, arguments.joined(separator: "\u{1f}"), llamaBuild]
        // A draft model's file is part of the plan too (its rows); its path is in the arguments.
        if let draftPath = spec.draftArguments.isEmpty ? nil : spec.draft?.path {
            guard let draft = FileIdentity.of(draftPath) else { return nil }
            parts += [String(draft.size), String(draft.modified)]
        }
        return parts.joined(separator: "\u{1e}")
    }

    public func plan(for spec: ModelSpec, arguments: [String]) async -> FitPlan? {
        guard let key = key(spec, arguments), let data = try? await store.fitPlan(key: key) else { return nil }
        return try? JSONDecoder().decode(FitPlan.self, from: data)
    }

    public func save(_ plan: FitPlan, for spec: ModelSpec, arguments: [String]) async {
        guard let key = key(spec, arguments) else { return }
        do { try await store.saveFitPlan(key: key, model: spec.id, plan: try JSONEncoder().encode(plan)) } catch {
            writeFailed("the fit plan of \(spec.id)", error)
        }
    }

    /// Allocations are documents of kind `allocations`, under the same kind of key as plans
    /// (with the launch arguments in place of the fit arguments).
    public func allocations(for spec: ModelSpec, arguments: [String]) async -> LearnedAllocations? {
        guard let key = key(spec, arguments), let data = try? await store.document(kind: "allocations", id: key) else { return nil }
        return try? JSONDecoder().decode(LearnedAllocations.self, from: data)
    }

    public func save(_ allocations: LearnedAllocations, for spec: ModelSpec, arguments: [String]) async {
        guard let key = key(spec, arguments) else { return }
        do { try await store.putDocument(kind: "allocations", id: key, model: spec.id, body: try JSONEncoder().encode(allocations)) } catch {
            writeFailed("the learned allocations of \(spec.id)", error)
        }
    }
}
