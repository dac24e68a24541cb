import Foundation

/// The admin token file in the data directory: created once, readable by its owner only.
enum AdminTokenFile {
    static func write(_ token: String, to path: String) throws {
        let fd = open(path, O_WRONLY | O_CREAT | O_EXCL, 0o600)
        guard fd >= 0 else { throw CocoaError(.fileWriteFileExists, userInfo: [NSFilePathErrorKey: path]) }
        defer { close(fd) }
        let data = Array((token + "\n").utf8)
        guard Foundation.write(fd, data, data.count) == data.count else { throw CocoaError(.fileWriteUnknown) }
    }

    static func read(from path: String) -> String? {
        (try? String(contentsOfFile: path, encoding: .utf8))?.trimmingCharacters(in: .whitespacesAndNewlines)
    }
}
