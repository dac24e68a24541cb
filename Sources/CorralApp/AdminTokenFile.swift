import Foundation

/// The admin token file in the data directory: created once, readable by its owner only.
public enum AdminTokenFile {
    /// Writes `token` to a new file at `path` (mode 0600); fails if the file exists.
    public static func write(_ token: String, to path: String) throws {
        let fd = open(path, O_WRONLY | O_CREAT | O_EXCL, 0o600)
        guard fd >= 0 else { throw CocoaError(.fileWriteFileExists, userInfo: [NSFilePathErrorKey: path]) }
        defer { close(fd) }
        let data = Array((token + "\n").utf8)
        guard Foundation.write(fd, data, data.count) == data.count else { throw CocoaError(.fileWriteUnknown) }
    }

    /// The token in the file at `path`, if it can be read.
    public static func read(from path: String) -> String? {
        (try? String(contentsOfFile: path, encoding: .utf8))?.trimmingCharacters(in: .whitespacesAndNewlines)
    }
}
