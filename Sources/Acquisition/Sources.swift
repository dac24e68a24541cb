import AsyncHTTPClient
import Foundation
import GGUF
import NIOCore
import NIOHTTP1
import Runtime

/// What a pull will fetch and how it is registered once every file is verified.
public struct PullPlan: Sendable, Codable, Equatable {
    public struct File: Sendable, Codable, Equatable {
        public var target: BlobTarget
        /// Ollama's digest (`sha256:HEX`) or the hub's file name: what progress is reported under.
        public var label: String
        /// The hub's file name inside the snapshot (nil for Ollama blobs).
        public var snapshotName: String?
    }

    public var files: [File]
    /// Ollama: the manifest to write last, and where.
    public var manifest: Data?
    public var manifestPath: String?
    /// The hub: the repository folder and commit the snapshot links go under.
    public var hubRepository: String?
    public var hubCommit: String?
    /// The GGUF to read a fit verdict from (its URL and size), before downloading.
    public var modelFile: BlobTarget?

    public var totalBytes: Int64 { files.reduce(0) { $0 + ($1.target.size ?? 0) } }
}

/// Resolves a reference against its registry or hub: the files, their digests and sizes.
public struct ModelSources: Sendable {
    let client: HTTPClient
    /// Where pulled models are stored (Ollama's layout; the hub's under `huggingface/`).
    public let directory: String
    /// The hub (`HF_ENDPOINT`, default the public hub) and its token (`HF_TOKEN`).
    public let hubEndpoint: String
    let hubToken: String?

    public init(client: HTTPClient, directory: String, environment: [String: String] = ProcessInfo.processInfo.environment) {
        self.client = client
        self.directory = directory
        self.hubEndpoint = (environment["HF_ENDPOINT"] ?? "https://huggingface.co").trimmingCharacters(in: CharacterSet(charactersIn: "/"))
        self.hubToken = environment["HF_TOKEN"].flatMap { $0.isEmpty ? nil : $0 }
    }

    /// The hub's cache folder (`models--ORG--REPO/…`), which huggingface_hub reads too.
    public var hubDirectory: String { directory + "/huggingface" }

    /// Plain http is allowed with `insecure`, or for a hub endpoint the operator set to http.
    public func permitsPlainHTTP(_ reference: ModelReference, insecure: Bool) -> Bool {
        if insecure { return true }
        if case .huggingFace = reference { return hubEndpoint.hasPrefix("http://") }
        return false
    }

    public func plan(_ reference: ModelReference, insecure: Bool) async throws -> PullPlan {
        let insecure = permitsPlainHTTP(reference, insecure: insecure)
        switch reference {
        case .ollama(let host, let namespace, let model, let tag):
            return try await ollamaPlan(host: host, namespace: namespace, model: model, tag: tag, insecure: insecure)
        case .huggingFace(let repository, let quant):
            return try await hubPlan(repository: repository, quant: quant, insecure: insecure)
        }
    }

    // MARK: Ollama registries

    static let manifestTypes = "application/vnd.docker.distribution.manifest.v2+json, application/vnd.oci.image.manifest.v1+json"

    func ollamaPlan(host: String, namespace: String, model: String, tag: String, insecure: Bool) async throws -> PullPlan {
        let base = "\(insecure ? "http" : "https")://\(host)/v2/\(namespace)/\(model)"
        let (status, body) = try await get(base + "/manifests/\(tag)", headers: ["Accept": Self.manifestTypes], insecure: insecure)
        guard status != 404 else { throw AcquisitionError.notFound("\(host)/\(namespace)/\(model):\(tag) was not found in the registry") }
        guard status == 200 else { throw AcquisitionError.upstream("the registry answered \(status) for the manifest of \(model):\(tag)") }
        guard let manifest = (try? JSONSerialization.jsonObject(with: body)) as? [String: Any], let layers = manifest["layers"] as? [[String: Any]] else {
            throw AcquisitionError.upstream("the registry's manifest for \(model):\(tag) is not a manifest")
        }
        var files: [PullPlan.File] = []
        var modelFile: BlobTarget?
        for layer in (manifest["config"] as? [String: Any]).map({ [$0] + layers }) ?? layers {
            guard let digest = layer["digest"] as? String, digest.hasPrefix("sha256:") else {
                throw AcquisitionError.upstream("a layer of \(model):\(tag) has no sha256 digest")
            }
            let hex = String(digest.dropFirst(7)).lowercased()
            // The digest becomes a file name: plain hex only.
            guard hex.count == 64, hex.allSatisfy(\.isHexDigit) else { throw AcquisitionError.upstream("a layer of \(model):\(tag) has a malformed digest") }
            let size = (layer["size"] as? NSNumber)?.int64Value
            let target = BlobTarget(url: base + "/blobs/" + digest, sha256: hex, size: size, path: directory + "/blobs/sha256-" + hex)
            if !files.contains(where: { $0.target.path == target.path }) { files.append(.init(target: target, label: digest)) }
            if layer["mediaType"] as? String == "application/vnd.ollama.image.model" { modelFile = target }
        }
        guard modelFile != nil else { throw AcquisitionError.upstream("\(model):\(tag) has no model layer (application/vnd.ollama.image.model)") }
        return PullPlan(files: files, manifest: body, manifestPath: "\(directory)/manifests/\(host)/\(namespace)/\(model)/\(tag)", modelFile: modelFile)
    }

    // MARK: The Hugging Face hub

    var hubHeaders: [String: String] { hubToken.map { ["Authorization": "Bearer \($0)"] } ?? [:] }

    /// The repository's GGUF files: the quant's (case-insensitive in the name; `Q4_K_M` by
    /// default, else the only or first one), all parts of a split model, and an `mmproj` file.
    func hubPlan(repository: String, quant: String?, insecure: Bool) async throws -> PullPlan {
        let (status, body) = try await get("\(hubEndpoint)/api/models/\(repository)/revision/main?blobs=true", headers: hubHeaders, insecure: insecure)
        guard status != 404, status != 401 else { throw AcquisitionError.notFound("hf.co/\(repository) was not found on the hub") }
        guard status == 200, let info = (try? JSONSerialization.jsonObject(with: body)) as? [String: Any] else {
            throw AcquisitionError.upstream("the hub answered \(status) for hf.co/\(repository)")
        }
        guard let commit = info["sha"] as? String, commit.count >= 7, commit.allSatisfy(\.isHexDigit) else {
            throw AcquisitionError.upstream("the hub gave no commit for hf.co/\(repository)")
        }
        let siblings = Self.ggufFiles(info)
        let models = siblings.filter { !$0.name.lowercased().contains("mmproj") }
        guard !models.isEmpty else { throw AcquisitionError.notFound("hf.co/\(repository) has no GGUF file") }
        let wanted = (quant ?? "Q4_K_M").lowercased()
        let chosen = models.first { $0.name.lowercased().contains(wanted) } ?? (quant == nil ? models.first : nil)
        guard let chosen else {
            throw AcquisitionError.notFound("hf.co/\(repository) has no GGUF file for \(quant!) (it has \(models.map(\.name).joined(separator: ", ")))")
        }
        var picked = [chosen]
        if let split = SplitFiles.splitInfo(chosen.name) {
            picked = models.filter { SplitFiles.splitInfo($0.name)?.stem == split.stem }.sorted { $0.name < $1.name }
            guard picked.count == split.count else { throw AcquisitionError.upstream("hf.co/\(repository) lacks parts of \(split.stem) (\(picked.count) of \(split.count))") }
        }
        if let projector = siblings.first(where: { $0.name.lowercased().contains("mmproj") }) { picked.append(projector) }
        let folder = hubDirectory + "/models--" + repository.replacingOccurrences(of: "/", with: "--")
        var files: [PullPlan.File] = []
        for file in picked {
            // A file name becomes a path under the snapshot: no parent references, no absolute paths.
            guard !file.name.hasPrefix("/"), !file.name.split(separator: "/").contains(where: { $0 == ".." || $0 == "." }) else {
                throw AcquisitionError.upstream("hf.co/\(repository) lists an unsafe file name")
            }
            guard let sha = file.sha?.lowercased(), sha.count == 64, sha.allSatisfy(\.isHexDigit) else {
                throw AcquisitionError.upstream("the hub gave no SHA-256 for \(file.name): it cannot be verified")
            }
            let url = "\(hubEndpoint)/\(repository)/resolve/\(commit)/\(file.name.split(separator: "/").map { $0.addingPercentEncoding(withAllowedCharacters: .urlPathAllowed) ?? String($0) }.joined(separator: "/"))"
            files.append(.init(target: BlobTarget(url: url, sha256: sha, size: file.size, path: folder + "/blobs/" + sha, headers: hubHeaders),
                               label: file.name, snapshotName: file.name))
        }
        return PullPlan(files: files, hubRepository: folder, hubCommit: commit, modelFile: files.first?.target)
    }

    /// A repository the hub's search found: its GGUF files with quant and size, and categories
    /// from its tags.
    public struct HubRepository: Sendable, Codable, Equatable {
        public struct File: Sendable, Codable, Equatable {
            public var name: String
            public var quant: String?
            public var sizeBytes: Int64?
        }
        public var id: String
        public var name: String
        public var categories: [String]
        public var downloads: Int?
        public var files: [File]
    }

    /// Searches the hub (`/api/models?search=&filter=gguf`) and lists each repository's GGUF files.
    public func searchHub(_ query: String, limit: Int) async throws -> [HubRepository] {
        let q = query.addingPercentEncoding(withAllowedCharacters: .urlQueryAllowed) ?? ""
        let insecure = hubEndpoint.hasPrefix("http://")
        let (status, body) = try await get("\(hubEndpoint)/api/models?search=\(q)&filter=gguf&limit=\(limit)", headers: hubHeaders, insecure: insecure)
        guard status == 200, let found = (try? JSONSerialization.jsonObject(with: body)) as? [[String: Any]] else {
            throw AcquisitionError.upstream("the hub's search answered \(status)")
        }
        var repositories: [HubRepository] = []
        for entry in found.prefix(limit) {
            guard let id = entry["id"] as? String ?? entry["modelId"] as? String, (try? ModelReference("hf.co/" + id)) != nil else { continue }
            let (infoStatus, infoBody) = try await get("\(hubEndpoint)/api/models/\(id)/revision/main?blobs=true", headers: hubHeaders, insecure: insecure)
            guard infoStatus == 200, let info = (try? JSONSerialization.jsonObject(with: infoBody)) as? [String: Any] else { continue }
            let files = Self.ggufFiles(info).filter { !$0.name.lowercased().contains("mmproj") }.map {
                HubRepository.File(name: $0.name, quant: Self.quant(of: $0.name), sizeBytes: $0.size)
            }
            guard !files.isEmpty else { continue }
            let tags = (entry["tags"] as? [String] ?? []) + (info["tags"] as? [String] ?? []) + [entry["pipeline_tag"] as? String ?? ""]
            repositories.append(HubRepository(id: id, name: "hf.co/" + id, categories: Self.categories(tags: tags, id: id),
                                              downloads: entry["downloads"] as? Int, files: files))
        }
        return repositories
    }

    /// A repository's GGUF files from the hub's model info (`siblings` with `blobs=true`): name,
    /// size and SHA-256 (from their `lfs` member).
    static func ggufFiles(_ info: [String: Any]) -> [(name: String, size: Int64?, sha: String?)] {
        (info["siblings"] as? [[String: Any]] ?? []).compactMap { s in
            guard let name = s["rfilename"] as? String, name.lowercased().hasSuffix(".gguf") else { return nil }
            let lfs = s["lfs"] as? [String: Any]
            return (name, (lfs?["size"] as? NSNumber ?? s["size"] as? NSNumber)?.int64Value, lfs?["sha256"] as? String)
        }
    }

    /// The quant a file name carries (`Q4_K_M`, `Q8_0`, `IQ3_XS`, `F16`, `BF16`, …).
    static func quant(of name: String) -> String? {
        let stem = (name as NSString).lastPathComponent.dropLast(5)
        let words = stem.split(whereSeparator: { $0 == "-" || $0 == "." }).map { $0.uppercased() }
        return words.last { w in
            ["F16", "F32", "BF16"].contains(w) || ((w.hasPrefix("Q") || w.hasPrefix("IQ")) && w.dropFirst(w.hasPrefix("IQ") ? 2 : 1).first?.isNumber == true)
        }
    }

    /// chat, code, embedding, vision from the hub's tags (and the name for code models).
    static func categories(tags: [String], id: String) -> [String] {
        let t = Set(tags.map { $0.lowercased() })
        var found: [String] = []
        if !t.isDisjoint(with: ["text-generation", "conversational", "chat"]) { found.append("chat") }
        if t.contains("code") || id.lowercased().contains("coder") || id.lowercased().contains("code") { found.append("code") }
        if !t.isDisjoint(with: ["feature-extraction", "sentence-similarity", "embedding", "embeddings"]) { found.append("embedding") }
        if !t.isDisjoint(with: ["image-text-to-text", "vision", "multimodal"]) { found.append("vision") }
        return found
    }

    /// Registers what was verified: Ollama's manifest, or the hub's snapshot links and `refs/main`
    /// (and `name`, the name it was pulled as, beside them: the catalog serves the file under it).
    public func register(_ plan: PullPlan, as name: String) throws(AcquisitionError) {
        let fm = FileManager.default
        do {
            if let manifest = plan.manifest, let path = plan.manifestPath {
                try fm.createDirectory(atPath: (path as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
                try manifest.write(to: URL(fileURLWithPath: path), options: .atomic)
            }
            if let folder = plan.hubRepository, let commit = plan.hubCommit {
                let snapshot = folder + "/snapshots/" + commit
                for file in plan.files {
                    guard let name = file.snapshotName, let sha = file.target.sha256 else { continue }
                    let link = snapshot + "/" + name
                    try fm.createDirectory(atPath: (link as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
                    let depth = name.split(separator: "/").count + 1
                    let relative = String(repeating: "../", count: depth) + "blobs/" + sha
                    try? fm.removeItem(atPath: link)
                    try fm.createSymbolicLink(atPath: link, withDestinationPath: relative)
                }
                try fm.createDirectory(atPath: folder + "/refs", withIntermediateDirectories: true)
                try Data(commit.utf8).write(to: URL(fileURLWithPath: folder + "/refs/main"), options: .atomic)
                if let model = plan.files.first?.snapshotName {
                    var names = SourceScanner.pulledNames(inRepository: folder)
                    names[name] = model
                    let encoder = JSONEncoder()
                    encoder.outputFormatting = [.sortedKeys, .prettyPrinted]
                    try encoder.encode(names).write(to: URL(fileURLWithPath: folder + "/" + SourceScanner.pulledNamesFile), options: .atomic)
                }
            }
        } catch {
            throw .storage("the pulled model could not be registered: \(error.localizedDescription)")
        }
    }

    /// A small GET (manifests, hub listings), read whole up to 8 MiB.
    func get(_ url: String, headers: [String: String], insecure: Bool) async throws -> (Int, Data) {
        let downloader = BlobDownloader(client: client)
        var attempts = 0
        while true {
            do {
                let (response, _) = try await downloader.follow(HTTPClientRequest(url: url), headers: headers, insecure: insecure)
                let code = Int(response.status.code)
                if (code == 429 || code >= 500) && attempts < 3 {
                    attempts += 1
                    let wait = response.headers.first(name: "retry-after").flatMap(Int.init).map { Duration.seconds(min($0, 30)) } ?? .milliseconds(250 << attempts)
                    try await Task.sleep(for: wait)
                    continue
                }
                let body = try await response.body.collect(upTo: 8 << 20)
                return (code, Data(body.readableBytesView))
            } catch let error as AcquisitionError {
                throw error
            } catch is CancellationError {
                throw CancellationError()
            } catch {
                attempts += 1
                guard attempts < 3 else { throw AcquisitionError.upstream("\(url): \(error)") }
                try await Task.sleep(for: .milliseconds(250 << attempts))
            }
        }
    }
}

