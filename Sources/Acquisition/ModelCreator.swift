import Crypto
import Foundation
import GGUF
import NIOCore
import Runtime

#if canImport(Glibc)
import Glibc
#endif

/// Ollama's `/api/blobs` and `/api/create` on the downloads folder: a client uploads a GGUF as a
/// blob (verified against the digest it names), then creates a model from it — or derives one
/// from a model Corral already has — with its own system prompt, template and parameters. The
/// result is an Ollama manifest the catalog serves like a pulled model.
public struct ModelCreator: Sendable {
    public let directory: String

    public init(directory: String) { self.directory = directory }

    /// `sha256:HEX` → HEX, when it is one.
    public static func hex(of digest: String) -> String? {
        let hex = digest.hasPrefix("sha256:") ? String(digest.dropFirst(7)).lowercased() : ""
        return hex.count == 64 && hex.allSatisfy(\.isHexDigit) ? hex : nil
    }

    public func blobPath(_ hex: String) -> String { directory + "/blobs/sha256-" + hex }

    public func hasBlob(_ digest: String) -> Bool {
        guard let hex = Self.hex(of: digest) else { return false }
        return FileManager.default.fileExists(atPath: blobPath(hex))
    }

    /// Stores an uploaded blob: streamed to a temporary file while hashed, kept only when it
    /// hashes to `digest`.
    public func storeBlob(_ digest: String, body: some AsyncSequence<ByteBuffer, any Error>) async throws {
        guard let hex = Self.hex(of: digest) else { throw AcquisitionError.badName(digest, "a blob is named sha256:<64 hex digits>") }
        let final = blobPath(hex)
        let temporary = final + ".upload-" + UUID().uuidString
        do { try FileManager.default.createDirectory(atPath: directory + "/blobs", withIntermediateDirectories: true) } catch {
            throw AcquisitionError.storage("cannot create \(directory)/blobs: \(error.localizedDescription)")
        }
        let fd = open(temporary, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw AcquisitionError.storage("cannot write \(temporary): \(String(cString: strerror(errno)))") }
        var hasher = SHA256()
        do {
            defer { close(fd) }
            for try await chunk in body {
                chunk.withUnsafeReadableBytes { hasher.update(bufferPointer: $0) }
                try BlobDownloader.write(chunk, to: fd, path: temporary)
            }
        } catch {
            unlink(temporary)
            throw error
        }
        let actual = hasher.finalize().hex
        guard actual == hex else {
            unlink(temporary)
            throw AcquisitionError.digestMismatch(file: "the uploaded blob", expected: hex, actual: actual)
        }
        guard rename(temporary, final) == 0 else {
            unlink(temporary)
            throw AcquisitionError.storage("cannot store the blob: \(String(cString: strerror(errno)))")
        }
    }

    /// A model file Corral already has, as a blob of the downloads folder: linked under its
    /// SHA-256 (copied when the link cannot cross file systems).
    public func adopt(_ path: String, hex: String) throws(AcquisitionError) -> (hex: String, path: String) {
        let target = blobPath(hex)
        guard !FileManager.default.fileExists(atPath: target) else { return (hex, target) }
        do {
            try FileManager.default.createDirectory(atPath: directory + "/blobs", withIntermediateDirectories: true)
            if link(path, target) != 0 { try FileManager.default.copyItem(atPath: path, toPath: target) }
        } catch {
            throw .storage("cannot add \((path as NSString).lastPathComponent) to the blobs: \(error.localizedDescription)")
        }
        return (hex, target)
    }

    /// What `/api/create` asks for.
    public struct Request {
        /// The new model's name (Ollama's `model[:tag]`).
        public var name: String
        /// The GGUF to use: an uploaded blob's digest, or the file of an existing model.
        public var modelBlob: (hex: String, path: String)?
        /// A model to derive from: its layers (the GGUF, params, system, template) are kept
        /// unless this request replaces them.
        public var fromManifest: [String: Any]?
        public var system: String?
        public var template: String?
        public var parameters: [String: Any]?
        public var messages: [[String: Any]]?
        /// LoRA adapters (uploaded blobs), replacing the derived model's.
        public var adapters: [(hex: String, path: String)]?
        /// The model the GGUF was made from (a quantization's source): Ollama's `parent_model`.
        public var parent: String?

        public init(name: String) { self.name = name }
    }

    /// Writes the model's manifest (with new layers for system, template, params and messages);
    /// returns the status lines Ollama reports along the way.
    public func create(_ request: Request) throws -> (name: String, lines: [String]) {
        let reference = try ModelReference(request.name)
        guard case .ollama(let host, let namespace, let model, let tag) = reference else {
            throw AcquisitionError.badName(request.name, "a created model has an Ollama name")
        }
        var lines: [String] = []
        var layers = (request.fromManifest?["layers"] as? [[String: Any]]) ?? []
        if let blob = request.modelBlob {
            guard (try? GGUFFile.read(path: blob.path)) != nil else {
                throw AcquisitionError.invalid("the model file sha256:\(blob.hex) is not a GGUF file")
            }
            lines.append("parsing GGUF")
            layers.removeAll { $0["mediaType"] as? String == "application/vnd.ollama.image.model" }
            layers.insert(layer(hex: blob.hex, path: blob.path, mediaType: "application/vnd.ollama.image.model"), at: 0)
            lines.append("using existing layer sha256:\(blob.hex)")
        }
        guard layers.contains(where: { $0["mediaType"] as? String == "application/vnd.ollama.image.model" }) else {
            throw AcquisitionError.invalid("give the model's GGUF in `files` or a model to derive from in `from`")
        }
        if let adapters = request.adapters {
            layers.removeAll { $0["mediaType"] as? String == "application/vnd.ollama.image.adapter" }
            for adapter in adapters {
                guard let file = try? GGUFFile.read(path: adapter.path), file["general.type"]?.string == "adapter" else {
                    throw AcquisitionError.invalid("the adapter sha256:\(adapter.hex) is not a GGUF adapter (general.type adapter)")
                }
                layers.append(layer(hex: adapter.hex, path: adapter.path, mediaType: "application/vnd.ollama.image.adapter"))
                lines.append("using adapter layer sha256:\(adapter.hex)")
            }
        }
        var extra: [(String, Data)] = []
        if let system = request.system { extra.append(("application/vnd.ollama.image.system", Data(system.utf8))) }
        if let template = request.template { extra.append(("application/vnd.ollama.image.template", Data(template.utf8))) }
        if let parameters = request.parameters {
            guard JSONSerialization.isValidJSONObject(parameters), let data = try? JSONSerialization.data(withJSONObject: parameters, options: [.sortedKeys]) else {
                throw AcquisitionError.invalid("parameters must be a JSON object")
            }
            extra.append(("application/vnd.ollama.image.params", data))
        }
        if let messages = request.messages {
            guard JSONSerialization.isValidJSONObject(messages), let data = try? JSONSerialization.data(withJSONObject: messages, options: [.sortedKeys]) else {
                throw AcquisitionError.invalid("messages must be a list of JSON objects")
            }
            extra.append(("application/vnd.ollama.image.messages", data))
        }
        for (mediaType, data) in extra {
            let hex = SHA256.hash(data: data).hex
            let path = blobPath(hex)
            do {
                try FileManager.default.createDirectory(atPath: directory + "/blobs", withIntermediateDirectories: true)
                if !FileManager.default.fileExists(atPath: path) { try data.write(to: URL(fileURLWithPath: path), options: .atomic) }
            } catch {
                throw AcquisitionError.storage("cannot store a layer: \(error.localizedDescription)")
            }
            layers.removeAll { $0["mediaType"] as? String == mediaType }
            layers.append(layer(hex: hex, path: path, mediaType: mediaType))
            lines.append("creating \(mediaType.split(separator: ".").last ?? "") layer")
        }
        var configObject: [String: String] = ["model_format": "gguf"]
        configObject["parent_model"] = request.parent
        let config = try JSONEncoder.sorted.encode(configObject)
        let configHex = SHA256.hash(data: config).hex
        let manifest: [String: Any] = [
            "schemaVersion": 2, "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
            "config": ["mediaType": "application/vnd.docker.container.image.v1+json", "digest": "sha256:" + configHex, "size": config.count],
            "layers": layers,
        ]
        let path = "\(directory)/manifests/\(host)/\(namespace)/\(model)/\(tag)"
        do {
            if !FileManager.default.fileExists(atPath: blobPath(configHex)) { try config.write(to: URL(fileURLWithPath: blobPath(configHex)), options: .atomic) }
            try FileManager.default.createDirectory(atPath: (path as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
            try JSONSerialization.data(withJSONObject: manifest, options: [.sortedKeys]).write(to: URL(fileURLWithPath: path), options: .atomic)
        } catch {
            throw AcquisitionError.storage("cannot write the manifest: \(error.localizedDescription)")
        }
        lines += ["writing manifest", "success"]
        return (reference.description, lines)
    }

    func layer(hex: String, path: String, mediaType: String) -> [String: Any] {
        let size = (try? FileManager.default.attributesOfItem(atPath: path))?[.size] as? Int ?? 0
        return ["mediaType": mediaType, "digest": "sha256:" + hex, "size": size]
    }

    /// The manifest an existing model of the downloads folder was made from (for `from`).
    public func manifest(of name: String) -> [String: Any]? {
        guard case .ollama(let host, let namespace, let model, let tag) = try? ModelReference(name),
            let data = FileManager.default.contents(atPath: "\(directory)/manifests/\(host)/\(namespace)/\(model)/\(tag)")
        else { return nil }
        return (try? JSONSerialization.jsonObject(with: data)) as? [String: Any]
    }
}

extension JSONEncoder {
    /// Keys sorted, so equal objects encode to equal bytes (and equal digests).
    static var sorted: JSONEncoder {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return encoder
    }
}
