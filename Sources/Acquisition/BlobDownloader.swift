import AsyncHTTPClient
import Crypto
import Foundation
import NIOCore
import NIOHTTP1
import Runtime

#if canImport(Glibc)
    import Glibc
#endif

/// One file to fetch: where from, what it must hash to, and where it goes once verified.
public struct BlobTarget: Sendable, Codable, Equatable {
    public var url: String
    /// Lower-case hex SHA-256 the bytes must have (nil: only the size is checked).
    public var sha256: String?
    public var size: Int64?
    /// Where the verified file is renamed to.
    public var path: String
    /// Headers for the first host only (a redirect to another host drops them).
    public var headers: [String: String] = [:]

    public init(url: String, sha256: String?, size: Int64?, path: String, headers: [String: String] = [:]) {
        (self.url, self.sha256, self.size, self.path, self.headers) = (url, sha256, size, path, headers)
    }

    /// The file bytes go to until they are verified: `PATH.partial` (kept across restarts).
    public var partialPath: String { path + ".partial" }
    /// What the server said identifies this version of the file (`If-Range` on resume).
    var validatorPath: String { path + ".partial.validator" }
}

/// Fetches files over HTTP the way a long download must be done: resumes with `Range` (after a
/// dropped connection, with bounded retries and backoff, and after a restart from the partial
/// file's size, with `If-Range` so a changed file starts over), restarts cleanly when a server
/// ignores the range, honours `Retry-After` on 429 and 503, follows redirects itself (the
/// `Authorization` header never goes to another host), hashes while streaming, checks the free
/// disk space before the first byte, and renames the file into place only once verified.
public struct BlobDownloader: Sendable {
    let client: HTTPClient
    /// Attempts in a row that make no progress before a download fails.
    var maxAttempts = 6
    /// First backoff; doubled per attempt without progress, at most 30 s.
    var backoff: Duration = .milliseconds(250)
    var maxRetryAfter: Duration = .seconds(60)

    public init(client: HTTPClient) { self.client = client }

    /// Downloads `target` (if not already in place); `progress` hears the bytes on disk so far.
    /// On a digest mismatch the partial file is deleted and the error names both digests. Two
    /// downloads of the same file (two models sharing a layer) take turns: the second finds the
    /// file in place.
    public func fetch(
        _ target: BlobTarget, insecure: Bool, progress: @Sendable (Int64) async throws -> Void, checkpoint: @Sendable () async throws -> Void
    ) async throws {
        try await Turns.files.holding(target.path) {
            try await fetchAlone(target, insecure: insecure, progress: progress, checkpoint: checkpoint)
        }
    }

    /// ``fetch(_:insecure:progress:checkpoint:)`` with the file's turn already taken.
    func fetchAlone(
        _ target: BlobTarget,
        insecure: Bool,
        progress: @Sendable (Int64) async throws -> Void,
        checkpoint: @Sendable () async throws -> Void
    ) async throws {
        let fm = FileManager.default
        if let size = target.size, let existing = Self.fileSize(target.path), existing == size { return }
        let directory = (target.path as NSString).deletingLastPathComponent
        do { try fm.createDirectory(atPath: directory, withIntermediateDirectories: true) } catch {
            throw AcquisitionError.storage("cannot create \(directory): \(error.localizedDescription)")
        }
        var offset = Self.fileSize(target.partialPath) ?? 0
        if let size = target.size, offset > size { offset = 0 }
        if let size = target.size {
            let free = Self.freeBytes(directory)
            if let free, free < size - offset {
                throw AcquisitionError.insufficientSpace(neededBytes: size - offset, freeBytes: free, directory: directory)
            }
        }
        // The hash of what is already there (a resumed download), then of each new byte as it comes.
        var hasher = SHA256()
        if offset > 0 { offset = try Self.hashPrefix(target.partialPath, length: offset, into: &hasher) }
        try await progress(offset)
        var attemptsWithoutProgress = 0
        var validator = try? String(contentsOfFile: target.validatorPath, encoding: .utf8)
        while true {
            try Task.checkCancellation()
            var headers = target.headers
            if offset > 0 {
                headers["Range"] = "bytes=\(offset)-"
                if let validator { headers["If-Range"] = validator }
            }
            let answer: (HTTPClientResponse, HTTPClientRequest)
            do {
                answer = try await follow(HTTPClientRequest(url: target.url), headers: headers, insecure: insecure)
            } catch let error as AcquisitionError {
                throw error
            } catch is CancellationError {
                throw CancellationError()
            } catch {
                attemptsWithoutProgress += 1
                guard attemptsWithoutProgress < maxAttempts else { throw AcquisitionError.upstream("\(target.url): \(error)") }
                try await Task.sleep(for: delay(attemptsWithoutProgress))
                continue
            }
            let (response, request) = answer
            let status = response.status.code
            switch status {
            case 200, 206:
                break
            case 416:
                // The range starts at or past the end: complete if the size says so, else start over.
                if let size = target.size, offset == size { return try finish(target, hasher: hasher, length: offset) }
                // Start over: the partial file is cut back to nothing when it is opened again.
                (offset, hasher, validator) = (0, SHA256(), nil)
                attemptsWithoutProgress += 1
                guard attemptsWithoutProgress < maxAttempts else { throw AcquisitionError.upstream("\(target.url) answered 416 to every range") }
                continue
            case 404, 410:
                throw AcquisitionError.notFound("\(request.url) was not found (\(status))")
            case 401, 403:
                throw AcquisitionError.upstream("\(request.url) refused the download (\(status))")
            case 429, 500...599:
                attemptsWithoutProgress += 1
                guard attemptsWithoutProgress < maxAttempts else {
                    throw AcquisitionError.upstream("\(request.url) answered \(status) \(maxAttempts) times")
                }
                let retryAfter = response.headers.first(name: "retry-after").flatMap(Int.init).map { Duration.seconds($0) }
                try await Task.sleep(for: min(retryAfter ?? delay(attemptsWithoutProgress), maxRetryAfter))
                continue
            default:
                throw AcquisitionError.upstream("\(request.url) answered \(status)")
            }
            if status == 200, offset > 0 {
                // The server sent the whole file (no range support, or the file changed): start over.
                (offset, hasher) = (0, SHA256())
            } else if status == 206 {
                let start = response.headers.first(name: "content-range").flatMap(Self.rangeStart)
                guard start == offset else {
                    throw AcquisitionError.upstream("\(request.url) sent range \(start.map(String.init) ?? "?") for \(offset)")
                }
            }
            if let v = response.headers.first(name: "etag") ?? response.headers.first(name: "last-modified"), v != validator {
                validator = v
                do { try v.write(toFile: target.validatorPath, atomically: true, encoding: .utf8) } catch {
                    throw AcquisitionError.storage("cannot write \(target.validatorPath): \(error.localizedDescription)")
                }
            }
            let fd = open(target.partialPath, O_WRONLY | O_CREAT | O_CLOEXEC, 0o644)
            guard fd >= 0 else { throw AcquisitionError.storage("cannot open \(target.partialPath): \(String(cString: strerror(errno)))") }
            guard ftruncate(fd, off_t(offset)) == 0, lseek(fd, off_t(offset), SEEK_SET) == off_t(offset) else {
                close(fd)
                throw AcquisitionError.storage("cannot write \(target.partialPath): \(String(cString: strerror(errno)))")
            }
            let before = offset
            // Chunks are written 1 MiB at a time, and progress, pause and cancel are looked at
            // every 4 MiB or 100 ms: per-chunk syscalls and task switches would cost a third of
            // the throughput on loopback.
            var pending = ByteBuffer()
            var reported = (bytes: offset, at: ContinuousClock.now)
            do {
                defer { close(fd) }
                do {
                    for try await chunk in response.body {
                        chunk.withUnsafeReadableBytes { hasher.update(bufferPointer: $0) }
                        offset += Int64(chunk.readableBytes)
                        if let size = target.size, offset > size {
                            throw AcquisitionError.upstream("\(request.url) sent more than its \(size) bytes")
                        }
                        if pending.readableBytes == 0 && chunk.readableBytes >= 1 << 20 {
                            try Self.write(chunk, to: fd, path: target.partialPath)
                        } else {
                            pending.writeImmutableBuffer(chunk)
                            if pending.readableBytes >= 1 << 20 {
                                try Self.write(pending, to: fd, path: target.partialPath)
                                pending.clear()
                            }
                        }
                        if offset - reported.bytes >= 4 << 20 || ContinuousClock.now - reported.at >= .milliseconds(100) {
                            try Self.write(pending, to: fd, path: target.partialPath)
                            pending.clear()
                            reported = (offset, .now)
                            try await progress(offset)
                            try await checkpoint()
                        }
                    }
                } catch {
                    // Keep what arrived before the break (it is hashed already), then go on from it.
                    try Self.write(pending, to: fd, path: target.partialPath)
                    throw error
                }
                try Self.write(pending, to: fd, path: target.partialPath)
                pending.clear()
                try await progress(offset)
            } catch let error as AcquisitionError {
                throw error
            } catch is CancellationError {
                throw CancellationError()
            } catch {
                // The connection dropped: go on from what arrived.
                if offset > before { attemptsWithoutProgress = 0 }
                attemptsWithoutProgress += 1
                guard attemptsWithoutProgress < maxAttempts else { throw AcquisitionError.upstream("\(request.url): \(error)") }
                try await Task.sleep(for: delay(attemptsWithoutProgress))
                continue
            }
            if let size = target.size, offset < size {
                // A short body: ask for the rest.
                if offset > before { attemptsWithoutProgress = 0 }
                attemptsWithoutProgress += 1
                guard attemptsWithoutProgress < maxAttempts else {
                    throw AcquisitionError.upstream("\(request.url) ended at \(offset) of \(size) bytes")
                }
                continue
            }
            return try finish(target, hasher: hasher, length: offset)
        }
    }

    /// Checks the digest and size, then renames the file into place; a mismatch deletes it.
    func finish(_ target: BlobTarget, hasher: SHA256, length: Int64) throws(AcquisitionError) {
        let actual = hasher.finalize().hex
        let file = (target.path as NSString).lastPathComponent
        if let expected = target.sha256, expected.lowercased() != actual {
            Self.removePartial(target)
            throw .digestMismatch(file: file, expected: expected.lowercased(), actual: actual)
        }
        if let size = target.size, size != length {
            Self.removePartial(target)
            throw .upstream("\(file) has \(length) bytes, the registry said \(size)")
        }
        guard rename(target.partialPath, target.path) == 0 else {
            throw .storage("cannot move \(file) into place: \(String(cString: strerror(errno)))")
        }
        try? FileManager.default.removeItem(atPath: target.validatorPath)
    }

    /// Deletes a target's partial file and validator (a cancelled or failed download).
    public static func removePartial(_ target: BlobTarget) {
        try? FileManager.default.removeItem(atPath: target.partialPath)
        try? FileManager.default.removeItem(atPath: target.validatorPath)
    }

    /// Sends `request`, following up to 10 redirects; a redirect to another host (or scheme)
    /// loses the headers meant for the first one. Plain http needs `insecure`.
    func follow(_ request: HTTPClientRequest, headers: [String: String], insecure: Bool) async throws -> (HTTPClientResponse, HTTPClientRequest) {
        var request = request
        let origin = URL(string: request.url)
        var sameOrigin = true
        for _ in 0..<10 {
            guard let url = URL(string: request.url), let scheme = url.scheme?.lowercased(), scheme == "https" || scheme == "http" else {
                throw AcquisitionError.upstream("cannot fetch \(request.url)")
            }
            if scheme == "http" && !insecure { throw AcquisitionError.insecure("\(request.url) is plain http: pass insecure to allow it") }
            request.headers = HTTPHeaders()
            for (name, value) in headers where sameOrigin || ["range", "if-range"].contains(name.lowercased()) {
                request.headers.add(name: name, value: value)
            }
            request.headers.replaceOrAdd(name: "user-agent", value: "corral")
            let response = try await client.execute(request, timeout: .seconds(60))
            guard (300...399).contains(response.status.code), response.status.code != 304,
                let location = response.headers.first(name: "location"), let next = URL(string: location, relativeTo: url)?.absoluteURL
            else { return (response, request) }
            // Drain nothing: the redirect's own body is dropped with the response.
            sameOrigin = sameOrigin && next.host == origin?.host && next.port == origin?.port && next.scheme == origin?.scheme
            request = HTTPClientRequest(url: next.absoluteString)
        }
        throw AcquisitionError.upstream("\(request.url): too many redirects")
    }

    func delay(_ attempt: Int) -> Duration {
        min(backoff * (1 << min(attempt - 1, 7)), .seconds(30))
    }

    static func write(_ chunk: ByteBuffer, to fd: Int32, path: String) throws(AcquisitionError) {
        let failure: Int32? = chunk.withUnsafeReadableBytes { raw in
            var done = 0
            while done < raw.count {
                let n = Glibc.write(fd, raw.baseAddress! + done, raw.count - done)
                if n < 0 {
                    if errno == EINTR { continue }
                    return errno
                }
                done += n
            }
            return nil
        }
        if let failure {
            throw failure == ENOSPC
                ? .storage("the disk is full writing \(path)") : .storage("cannot write \(path): \(String(cString: strerror(failure)))")
        }
    }

    static func hashPrefix(_ path: String, length: Int64, into hasher: inout SHA256) throws(AcquisitionError) -> Int64 {
        guard let handle = FileHandle(forReadingAtPath: path) else { throw .storage("cannot read \(path)") }
        defer { try? handle.close() }
        var read: Int64 = 0
        while read < length {
            let data: Data?
            do { data = try handle.read(upToCount: Int(min(4 << 20, length - read))) } catch { throw .storage("cannot read \(path): \(error)") }
            guard let data, !data.isEmpty else { break }
            hasher.update(data: data)
            read += Int64(data.count)
        }
        return read
    }

    static func fileSize(_ path: String) -> Int64? {
        ((try? FileManager.default.attributesOfItem(atPath: path))?[.size] as? NSNumber)?.int64Value
    }

    static func freeBytes(_ directory: String) -> Int64? {
        ((try? FileManager.default.attributesOfFileSystem(forPath: directory))?[.systemFreeSize] as? NSNumber)?.int64Value
    }

    /// The first byte of `bytes START-END/TOTAL`.
    static func rangeStart(_ header: String) -> Int64? {
        guard let range = header.split(separator: " ").last?.split(separator: "-").first else { return nil }
        return Int64(range)
    }
}

/// One body at a time per key (its awaits included): a file being downloaded, a model whose pull
/// is being started.
actor Turns {
    /// The files being downloaded in this process.
    static let files = Turns()
    var held: Set<String> = []
    var waiting: [String: [CheckedContinuation<Void, Never>]] = [:]

    func holding<T: Sendable>(_ key: String, _ body: @Sendable () async throws -> T) async throws -> T {
        while held.contains(key) { await withCheckedContinuation { waiting[key, default: []].append($0) } }
        held.insert(key)
        defer {
            held.remove(key)
            if var queue = waiting[key], !queue.isEmpty {
                queue.removeFirst().resume()
                waiting[key] = queue.isEmpty ? nil : queue
            }
        }
        return try await body()
    }
}
