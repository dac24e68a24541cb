import Foundation
import GGUF
import Synchronization

/// GGUF facts by file identity, so rescanning thousands of files rereads only the ones whose
/// path, size or modification time changed.
public final class FactsCache: Sendable {
    private let entries = Mutex<[String: (identity: FileIdentity, facts: ModelFacts)]>([:])
    private let counts = Mutex<(read: Int, reused: Int)>((0, 0))

    public init() {}

    /// The facts of the model whose first file is `path`.
    public func facts(path: String) throws(GGUFError) -> ModelFacts {
        let identity = FileIdentity.of(path)
        if let identity, let hit = entries.withLock({ $0[path] }), hit.identity == identity {
            counts.withLock { $0.reused += 1 }
            return hit.facts
        }
        let facts = try ModelFacts.read(path: path)
        counts.withLock { $0.read += 1 }
        if let identity { entries.withLock { $0[path] = (identity, facts) } }
        return facts
    }

    /// Files read and reused since the last call.
    public func takeCounts() -> (read: Int, reused: Int) {
        counts.withLock { c in
            defer { c = (0, 0) }
            return c
        }
    }
}
