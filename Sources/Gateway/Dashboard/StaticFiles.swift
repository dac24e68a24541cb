import Foundation
import HTTPTypes
import Hummingbird
import NIOCore

/// The dashboard's files, read once from the target's resources (`Dashboard/ui`) and served from
/// memory: a request can only ever name one of these, never a path on disk.
struct StaticFiles: Sendable {
    struct File: Sendable {
        var body: ByteBuffer
        var contentType: String
        var etag: String
    }

    let files: [String: File]

    static let contentTypes = [
        "html": "text/html; charset=utf-8", "js": "text/javascript; charset=utf-8", "css": "text/css; charset=utf-8",
        "svg": "image/svg+xml", "json": "application/json",
    ]

    /// Every file under `directory`, keyed by its path relative to it (`pages/overview.js`).
    init(directory: URL) {
        var files: [String: File] = [:]
        let root = directory.standardizedFileURL.path
        let walker = FileManager.default.enumerator(at: directory, includingPropertiesForKeys: [.isRegularFileKey])
        while let url = walker?.nextObject() as? URL {
            guard (try? url.resourceValues(forKeys: [.isRegularFileKey]).isRegularFile) == true, let data = try? Data(contentsOf: url) else { continue }
            let path = String(url.standardizedFileURL.path.dropFirst(root.count + 1))
            var hash = FNV1a()
            for byte in data { hash.add(byte) }
            files[path] = File(
                body: ByteBuffer(bytes: data), contentType: Self.contentTypes[url.pathExtension] ?? "application/octet-stream",
                etag: "\"\(String(hash.value, radix: 16))\"")
        }
        self.files = files
    }

    /// The file at `path` with validation caching (`no-cache` + ETag: the browser asks each time
    /// and gets a 304 while the file is unchanged), or nil when there is no such file.
    func response(_ path: String, request: Request) -> Response? {
        guard let file = files[path] else { return nil }
        var headers: HTTPFields = [
            .contentType: file.contentType, .cacheControl: "no-cache", .eTag: file.etag,
            HTTPField.Name("X-Content-Type-Options")!: "nosniff",
            HTTPField.Name("Content-Security-Policy")!:
                "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
            HTTPField.Name("Referrer-Policy")!: "no-referrer",
        ]
        if request.headers[.ifNoneMatch] == file.etag {
            headers[.contentType] = nil
            return Response(status: .notModified, headers: headers)
        }
        return Response(status: .ok, headers: headers, body: .init(byteBuffer: file.body))
    }
}

/// 64-bit FNV-1a: a stable content hash for ETags (Swift's `Hasher` is seeded per process).
private struct FNV1a {
    var value: UInt64 = 0xcbf2_9ce4_8422_2325
    mutating func add(_ byte: UInt8) { value = (value ^ UInt64(byte)) &* 0x100_0000_01b3 }
}
