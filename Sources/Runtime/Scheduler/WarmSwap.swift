import AsyncHTTPClient
import Crypto
import Foundation
import NIOCore
import NIOHTTP1
import Synchronization

/// Keeps llama-server's KV caches across a stop (issue 34's warm swaps): before an instance
/// stops, each slot that holds a prompt is saved (`POST /slots/N?action=save`) into a folder of
/// `DATA_DIR/kv` named by everything that shapes the cache; when a launch with the same shape
/// starts, the files there are restored (`?action=restore`), so the next turn of a conversation
/// is a cache hit instead of recomputing its prompt.
///
/// A folder's name is a hash of the model file (path, size, modification time), the launch
/// arguments that decide the cache (context, KV types, slots, …: every argument but the port and
/// log level) and the llama-server binary (path, size, modification time): a saved cache is never
/// restored into a launch it was not made by. The folders together stay under `maxBytes`, the
/// least recently used files dropped first (a restore counts as a use).
public struct WarmSwapStore: Sendable {
    /// `DATA_DIR/kv`.
    public let root: String
    /// `cache.diskMiB`, in bytes.
    public let maxBytes: UInt64
    /// `cache.saveTimeout`: how long a stop waits for the saves before it goes on without them.
    public let saveTimeout: Duration

    public init(root: String, maxBytes: UInt64, saveTimeout: Duration) {
        self.root = root
        self.maxBytes = maxBytes
        self.saveTimeout = saveTimeout
    }

    /// The folder for a launch of `modelPath` with `arguments` (port and log level left out by
    /// the caller) by the llama-server at `serverPath`; nil when a file cannot be read.
    public func folder(modelPath: String, arguments: [String], serverPath: String) -> String? {
        guard let model = FileIdentity.of(modelPath), let server = FileIdentity.of(serverPath) else { return nil }
        let shape = [model.path, String(model.size), String(model.modified), server.path, String(server.size), String(server.modified)] + arguments
        let digest = SHA256.hash(data: Data(shape.joined(separator: "\u{1f}").utf8))
        return root + "/" + digest.prefix(16).map { String(format: "%02x", $0) }.joined()
    }

    /// Saves every slot of the llama-server on `port` that holds a prompt into its folder (where
    /// it was started with `--slot-save-path`); the number saved. Throws when a save fails or the
    /// whole takes longer than `saveTimeout`.
    public func save(port: Int, client: HTTPClient) async throws(WarmSwapFailure) -> Int {
        let deadline = NIODeadline.now() + .microseconds(Int64(saveTimeout / .microseconds(1)))
        let base = "http://127.0.0.1:\(port)"
        let slots: [SlotState]
        do {
            let response = try await client.execute(HTTPClientRequest(url: base + "/slots"), deadline: deadline)
            let body = try await response.body.collect(upTo: 1 << 22)
            guard response.status == .ok else { throw WarmSwapFailure("GET /slots answered \(response.status.code)") }
            slots = try JSONDecoder().decode([SlotState].self, from: Data(body.readableBytesView))
        } catch let failure as WarmSwapFailure {
            throw failure
        } catch {
            throw WarmSwapFailure("GET /slots failed: \(error)")
        }
        var saved = 0
        for slot in slots {
            // A slot that never held a task has no prompt (llama-server lists no count then).
            guard (slot.n_prompt_tokens ?? 0) > 0 else { continue }
            let id = slot.id
            var request = HTTPClientRequest(url: base + "/slots/\(id)?action=save")
            request.method = .POST
            request.headers.add(name: "content-type", value: "application/json")
            request.body = .bytes(ByteBuffer(string: #"{"filename":"slot-\#(id).bin"}"#))
            do {
                let response = try await client.execute(request, deadline: deadline)
                _ = try await response.body.collect(upTo: 1 << 20)
                guard response.status == .ok else { throw WarmSwapFailure("saving slot \(id) answered \(response.status.code)") }
                saved += 1
            } catch let failure as WarmSwapFailure {
                throw failure
            } catch {
                throw WarmSwapFailure("saving slot \(id) failed: \(error)")
            }
        }
        return saved
    }

    /// Restores the slots saved in `folder` into the llama-server on `port` (slots beyond
    /// `slotCount` are skipped); the number restored. A file llama-server refuses is deleted, so
    /// it is not offered again.
    public func restore(folder: String, port: Int, slotCount: Int, client: HTTPClient) async -> (restored: Int, refused: [String]) {
        let files = (try? FileManager.default.contentsOfDirectory(atPath: folder)) ?? []
        var restored = 0
        var refused: [String] = []
        for file in files.sorted() {
            guard file.hasPrefix("slot-"), file.hasSuffix(".bin"), let id = Int(file.dropFirst(5).dropLast(4)), id < slotCount else { continue }
            var request = HTTPClientRequest(url: "http://127.0.0.1:\(port)/slots/\(id)?action=restore")
            request.method = .POST
            request.headers.add(name: "content-type", value: "application/json")
            request.body = .bytes(ByteBuffer(string: #"{"filename":"\#(file)"}"#))
            let ok: Bool
            do {
                let response = try await client.execute(request, timeout: .seconds(30))
                _ = try await response.body.collect(upTo: 1 << 20)
                ok = response.status == .ok
            } catch {
                ok = false
            }
            if ok {
                restored += 1
                // A use: the least recently used files are the ones trimmed first.
                try? FileManager.default.setAttributes([.modificationDate: Date()], ofItemAtPath: folder + "/" + file)
            } else {
                refused.append(file)
                try? FileManager.default.removeItem(atPath: folder + "/" + file)
            }
        }
        return (restored, refused)
    }

    /// Deletes the least recently used saved caches until all of them fit in `maxBytes`; the
    /// paths deleted.
    @discardableResult
    public func trim() -> [String] {
        var files: [(path: String, bytes: UInt64, used: Date)] = []
        let fm = FileManager.default
        for folder in (try? fm.contentsOfDirectory(atPath: root)) ?? [] {
            for file in (try? fm.contentsOfDirectory(atPath: root + "/" + folder)) ?? [] {
                let path = root + "/" + folder + "/" + file
                guard let attributes = try? fm.attributesOfItem(atPath: path) else { continue }
                files.append((path, (attributes[.size] as? NSNumber)?.uint64Value ?? 0, attributes[.modificationDate] as? Date ?? .distantPast))
            }
        }
        var total = files.reduce(0) { $0 + $1.bytes }
        var deleted: [String] = []
        for file in files.sorted(by: { $0.used < $1.used }) where total > maxBytes {
            guard (try? fm.removeItem(atPath: file.path)) != nil else { continue }
            total -= file.bytes
            deleted.append(file.path)
        }
        return deleted
    }
}

/// What `GET /slots` says of a slot that matters here.
struct SlotState: Decodable {
    var id: Int
    var n_prompt_tokens: Int?
}

/// Why saving an instance's KV caches failed (the stop went on without them).
public struct WarmSwapFailure: Error, Sendable, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}

/// What warm swaps did since start: saves, restores, and saves that failed or timed out.
public struct WarmSwapCounts: Sendable, Equatable {
    public var slotsSaved = 0
    public var slotsRestored = 0
    public var saveFailures = 0
    public init() {}
}

/// ``WarmSwapCounts`` shared by the scheduler and the stops it runs off the actor.
public final class WarmSwapCounter: Sendable {
    private let counts = Mutex(WarmSwapCounts())
    public init() {}
    public func add(_ change: (inout WarmSwapCounts) -> Void) { counts.withLock { change(&$0) } }
    /// The counts now.
    public var now: WarmSwapCounts { counts.withLock { $0 } }
}
