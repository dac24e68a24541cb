import Crypto
import Foundation
import Store

/// Why a file operation was refused.
public enum FileError: Error, Sendable, Equatable, CustomStringConvertible {
    case badRequest(String, param: String?)
    case notFound(String)
    case tooLarge(limit: Int)
    /// The files directory or the database could not be written or read.
    case storage(String)

    public var description: String {
        switch self {
        case .badRequest(let message, _): message
        case .notFound(let id): "no file '\(id)'"
        case .tooLarge(let limit): "the file is larger than the limit of \(limit) bytes (files.maxBytes)"
        case .storage(let why): "the file store failed: \(why)"
        }
    }
}

/// Uploaded files (the OpenAI Files API, shared by evaluations and fine-tuning): the bytes under
/// `directory/<id>`, written whole to a temporary name and renamed into place, the row (team,
/// purpose, name, size, SHA-256) in the store. A file belongs to the team that uploaded it; a
/// name from a request is metadata only and never becomes a path.
public struct FileLibrary: Sendable {
    public let store: any FileRecordStore
    public let directory: String
    /// The largest file accepted.
    public let maxBytes: Int

    /// The purposes accepted, as OpenAI names them.
    public static let purposes = ["evals", "fine-tune", "batch", "user_data"]

    public init(store: any FileRecordStore, directory: String, maxBytes: Int) throws(FileError) {
        self.store = store
        self.directory = directory
        self.maxBytes = maxBytes
        do { try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true) } catch {
            throw .storage("cannot create \(directory): \(error.localizedDescription)")
        }
    }

    /// Stores an upload once it is checked: size, purpose and what ``validate(_:purpose:filename:)``
    /// checks for `evals` and `fine-tune` files (the first bad line is named).
    public func create(_ contents: Data, filename: String, purpose: String, team: String?) async throws(FileError) -> StoredFile {
        guard Self.purposes.contains(purpose) else {
            throw .badRequest("purpose must be one of \(Self.purposes.joined(separator: ", "))", param: "purpose")
        }
        guard contents.count <= maxBytes else { throw .tooLarge(limit: maxBytes) }
        try Self.validate(contents, purpose: purpose, filename: filename)
        return try await keep(contents, filename: filename, purpose: purpose, team: team)
    }

    /// Keeps a file Corral made itself (a fine-tuning job's metrics, purpose
    /// `fine-tune-results`), which no upload may claim.
    public func createResult(_ contents: Data, filename: String, purpose: String, team: String?) async throws(FileError) -> StoredFile {
        try await keep(contents, filename: filename, purpose: purpose, team: team)
    }

    private func keep(_ contents: Data, filename: String, purpose: String, team: String?) async throws(FileError) -> StoredFile {
        let name = String((filename.split(separator: "/").last.map(String.init) ?? "").prefix(255))
        let id = "file-" + Self.randomHex(12)
        let path = directory + "/" + id
        do { try contents.write(to: URL(fileURLWithPath: path), options: .atomic) } catch {
            throw .storage("cannot write the file: \(error.localizedDescription)")
        }
        let digest = Self.sha256(contents)
        let file = StoredFile(id: id, team: team, purpose: purpose, filename: name.isEmpty ? id : name, bytes: contents.count, sha256: digest, createdAt: Date())
        do { try await store.putFile(file, contents: contents) } catch {
            try? FileManager.default.removeItem(atPath: path)
            throw .storage("cannot record the file: \(error)")
        }
        return file
    }

    /// The file `id`, if `scope` may see it.
    public func file(_ id: String, scope: TeamScope) async throws(FileError) -> StoredFile {
        let found: StoredFile?
        do { found = try await store.file(id: id, scope: scope) } catch { throw .storage("\(error)") }
        guard let found else { throw .notFound(id) }
        return found
    }

    /// A page of the files `scope` may see, and whether more follow.
    public func list(scope: TeamScope, purpose: String?, after: String?, limit: Int, newestFirst: Bool) async throws(FileError) -> (files: [StoredFile], hasMore: Bool) {
        do {
            let page = try await store.files(scope: scope, purpose: purpose, after: after, limit: limit + 1, newestFirst: newestFirst)
            return (Array(page.prefix(limit)), page.count > limit)
        } catch {
            throw .storage("\(error)")
        }
    }

    /// A file's bytes, checked against the SHA-256 recorded at upload.
    public func contents(_ id: String, scope: TeamScope) async throws(FileError) -> (StoredFile, Data) {
        let file = try await file(id, scope: scope)
        let path = directory + "/" + file.id
        if FileManager.default.fileExists(atPath: path) {
            let data: Data
            do { data = try Data(contentsOf: URL(fileURLWithPath: path)) } catch {
                throw .storage("cannot read \(file.id): \(error.localizedDescription)")
            }
            guard Self.sha256(data) == file.sha256 else { throw .storage("\(file.id) no longer matches the SHA-256 recorded at upload") }
            return (file, data)
        }
        // Taken by another node of the cluster: the shared store has the bytes; kept here too
        // once they match the digest recorded at upload.
        let shared: Data?
        do { shared = try await store.fileContents(id: file.id) } catch { throw .storage("cannot read \(file.id) from the shared store: \(error)") }
        guard let data = shared else { throw .storage("cannot read \(file.id): its bytes are not in \(directory)") }
        guard Self.sha256(data) == file.sha256 else { throw .storage("\(file.id) in the shared store does not match the SHA-256 recorded at upload") }
        do { try data.write(to: URL(fileURLWithPath: path), options: .atomic) } catch {
            throw .storage("cannot keep a copy of \(file.id): \(error.localizedDescription)")
        }
        return (file, data)
    }

    /// Deletes a file `scope` may see: its row, then its bytes.
    public func delete(_ id: String, scope: TeamScope) async throws(FileError) {
        let deleted: Bool
        do { deleted = try await store.deleteFile(id: id, scope: scope) } catch { throw .storage("\(error)") }
        guard deleted else { throw .notFound(id) }
        let path = directory + "/" + id
        guard FileManager.default.fileExists(atPath: path) else { return }
        do { try FileManager.default.removeItem(atPath: path) } catch {
            throw .storage("the file's record is gone but its bytes could not be removed: \(error.localizedDescription)")
        }
    }

    /// Checks an upload before it is kept: every non-blank line of an `evals` file must be
    /// `{"item": {…}}`; a `fine-tune` file must be UTF-8 text, and one JSON object per line when
    /// it is JSONL (the first bad line is named). The shapes of fine-tuning examples, in every
    /// format, are checked when a job validates its files (``TrainingData``).
    static func validate(_ contents: Data, purpose: String, filename: String) throws(FileError) {
        if purpose == "fine-tune" {
            do { try TrainingData.checkUpload(contents, filename: filename) } catch {
                throw .badRequest(error.line.map { "line \($0): \(error.message)" } ?? error.message, param: "file")
            }
            return
        }
        guard purpose == "evals" else { return }
        var lines = 0
        for (number, text) in TrainingData.lines(contents) {
            lines += 1
            guard let object = (try? JSONSerialization.jsonObject(with: Data(text))) as? [String: Any] else {
                throw .badRequest("line \(number) is not a JSON object", param: "file")
            }
            guard object["item"] is [String: Any] else { throw .badRequest("line \(number) has no \"item\" object", param: "file") }
        }
        guard lines > 0 else { throw .badRequest("the file has no JSON lines", param: "file") }
    }

    /// The hex SHA-256 a file's row records.
    public static func sha256(_ data: Data) -> String {
        SHA256.hash(data: data).map { String(format: "%02x", $0) }.joined()
    }

    static func randomHex(_ bytes: Int) -> String {
        (0..<bytes).map { _ in String(format: "%02x", UInt8.random(in: 0...255)) }.joined()
    }
}
