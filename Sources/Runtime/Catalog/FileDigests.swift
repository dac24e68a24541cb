import Crypto
import Foundation

/// A file as it is now: a digest is valid while path, size and modification time are unchanged.
public struct FileIdentity: Hashable, Sendable {
    public var path: String
    public var size: UInt64
    public var modified: Double

    public init(path: String, size: UInt64, modified: Double) {
        self.path = path
        self.size = size
        self.modified = modified
    }

    /// The identity of the file at `path` now, nil when it cannot be read.
    public static func of(_ path: String) -> FileIdentity? {
        guard let a = try? FileManager.default.attributesOfItem(atPath: path), let size = a[.size] as? UInt64,
            let date = a[.modificationDate] as? Date
        else { return nil }
        return FileIdentity(path: path, size: size, modified: date.timeIntervalSince1970)
    }
}

/// SHA-256 of model files (Ollama's `digest`), computed once per file identity in the
/// background, one file at a time at low priority, and remembered across restarts through
/// `persist`. Asking never blocks: the first answer may be nil while the hash is computed.
public actor FileDigests {
    public typealias Persist = @Sendable (FileIdentity, String) async -> Void
    private var known: [FileIdentity: String]
    private var queued: [FileIdentity] = []
    private var worker: Task<Void, Never>?
    private let persist: Persist?

    public init(preloaded: [FileIdentity: String] = [:], persist: Persist? = nil) {
        self.known = preloaded
        self.persist = persist
    }

    /// The digest of the file at `path` (hex), or nil while it is still being computed.
    public func digest(path: String) -> String? {
        guard let id = FileIdentity.of(path) else { return nil }
        if let d = known[id] { return d }
        if !queued.contains(id) {
            queued.append(id)
            startWorker()
        }
        return nil
    }

    /// Records a digest a source already knows (Ollama blobs are named by theirs).
    public func remember(path: String, digest: String) {
        if let id = FileIdentity.of(path) { known[id] = digest }
    }

    /// Waits until every queued file has been hashed (tests and `corral` CLI use).
    public func drain() async {
        while let w = worker { await w.value; if worker == w { worker = nil } }
    }

    private func startWorker() {
        guard worker == nil else { return }
        worker = Task(priority: .background) { [weak self] in
            while let next = await self?.takeNext() {
                let digest = await Task.detached(priority: .background) { Self.sha256(path: next.path) }.value
                await self?.finished(next, digest)
            }
        }
    }

    private func takeNext() -> FileIdentity? {
        guard !queued.isEmpty else {
            worker = nil
            return nil
        }
        return queued.first
    }

    private func finished(_ id: FileIdentity, _ digest: String?) async {
        queued.removeAll { $0 == id }
        // The file may have changed while it was read: keep the digest only if it did not.
        guard let digest, FileIdentity.of(id.path) == id else { return }
        known[id] = digest
        await persist?(id, digest)
    }

    /// Streams the file through SHA-256 in 4 MiB reads.
    public static func sha256(path: String) -> String? {
        guard let handle = FileHandle(forReadingAtPath: path) else { return nil }
        defer { try? handle.close() }
        var hasher = SHA256()
        while true {
            let data: Data?
            do { data = try handle.read(upToCount: 4 << 20) } catch { return nil }
            guard let data, !data.isEmpty else { break }  // nil or empty: end of file
            hasher.update(data: data)
        }
        return hasher.finalize().hex
    }
}

extension SHA256.Digest {
    /// The digest as lower-case hex, as file names and APIs spell it.
    public var hex: String { map { String(format: "%02x", $0) }.joined() }
}
