import Foundation
import GGUF

/// A model file found in a source, with the name it is served under.
public struct DiscoveredModel: Sendable, Equatable {
    public var name: String
    public var path: String
    /// SHA-256 of the file when the source already knows it (Ollama blobs are named by it).
    public var digest: String?
    /// Ollama's `params` layer (option names as Ollama spells them).
    public var parameters: [String: SendableJSON]?
    /// Ollama's `system` layer.
    public var system: String?
    /// Ollama's `adapter` layers: LoRA files applied with `--lora`.
    public var adapters: [String] = []
    /// The context a fine-tuned model is served with (its base's: the trainer records its own).
    public var contextSize: Int?
    /// llama-server arguments the source gives the model (a fine-tuned model's chat template).
    public var arguments: [String] = []
    /// Other names the model answers to: the names it was pulled as (`hf.co/ORG/REPO:Q8_0` for a
    /// file served as `hf.co/org/repo`).
    public var aliases: [String] = []
    /// The model it was made from (Ollama's `parent_model`, which Corral's quantize records).
    public var parent: String?
}

/// Finds GGUF models in each kind of source. Only names come from the folder layout; a request's
/// model name is later matched against these names and never turned into a path.
public enum SourceScanner {
    static func scan(_ source: CorralConfig.Source) -> [DiscoveredModel] {
        switch source.kind {
        case .gguf: return ggufFolder(source.directory, recursive: source.recursive)
        case .ollama: return ollamaStore(source.directory)
        case .huggingface: return huggingFaceCache(source.directory)
        case .lmstudio: return lmStudio(source.directory)
        case .finetuned: return fineTuned(source.directory)
        case .jan: return JanModels.scan(source.directory)
        }
    }

    /// Fine-tuning jobs' folders: each `JOB/models.json` lists `{"name", "file", "contextSize",
    /// "chatTemplateFile"}`; only plain file names inside the job's folder are accepted.
    static func fineTuned(_ directory: String) -> [DiscoveredModel] {
        let fm = FileManager.default
        var found: [DiscoveredModel] = []
        for job in ((try? fm.contentsOfDirectory(atPath: directory)) ?? []).sorted() {
            let folder = directory + "/" + job
            guard let data = fm.contents(atPath: folder + "/models.json"),
                let json = try? JSONSerialization.jsonObject(with: data) as? [String: Any],
                let models = json["models"] as? [[String: Any]]
            else { continue }
            func plain(_ name: String) -> Bool { !name.isEmpty && !name.contains("/") && name != "." && name != ".." }
            for entry in models {
                guard let name = entry["name"] as? String, let file = entry["file"] as? String, plain(file),
                    fm.fileExists(atPath: folder + "/" + file)
                else { continue }
                var model = DiscoveredModel(name: name, path: folder + "/" + file)
                model.contextSize = entry["contextSize"] as? Int
                if let template = entry["chatTemplateFile"] as? String, plain(template), fm.fileExists(atPath: folder + "/" + template) {
                    model.arguments = ["--chat-template-file", folder + "/" + template]
                }
                found.append(model)
            }
        }
        return found
    }

    /// Any folder: names are file stems (split models by their stem, without `-00001-of-0000N`).
    static func ggufFolder(_ directory: String, recursive: Bool) -> [DiscoveredModel] {
        ModelCatalog.scan(directory, recursive: recursive).map { path in
            let file = URL(fileURLWithPath: path).lastPathComponent
            let stem = SplitFiles.splitInfo(file)?.stem ?? String(file.dropLast(5))
            return DiscoveredModel(name: stem, path: path)
        }
    }

    /// Ollama's store: `manifests/REGISTRY/NAMESPACE/MODEL/TAG` JSON files whose
    /// `application/vnd.ollama.image.model` layer names a blob `blobs/sha256-HEX`.
    /// `registry.ollama.ai/library/llama3/latest` is served as `llama3:latest`, other namespaces
    /// as `NAMESPACE/MODEL:TAG`, other registries with the registry in front (as Ollama lists them).
    static func ollamaStore(_ directory: String) -> [DiscoveredModel] {
        let manifests = directory + "/manifests"
        guard let files = FileManager.default.enumerator(atPath: manifests)?.allObjects as? [String] else { return [] }
        var found: [DiscoveredModel] = []
        for relative in files.sorted() {
            let parts = relative.split(separator: "/").map(String.init)
            guard parts.count == 4 else { continue }
            let (registry, namespace, model, tag) = (parts[0], parts[1], parts[2], parts[3])
            guard let data = FileManager.default.contents(atPath: manifests + "/" + relative),
                let json = try? JSONSerialization.jsonObject(with: data) as? [String: Any],
                let layers = json["layers"] as? [[String: Any]],
                let layer = layers.first(where: { ($0["mediaType"] as? String) == "application/vnd.ollama.image.model" }),
                let digest = layer["digest"] as? String, digest.hasPrefix("sha256:")
            else { continue }
            let hex = String(digest.dropFirst(7))
            // The digest becomes a file name: only plain hex is accepted.
            guard hex.count == 64, hex.allSatisfy(\.isHexDigit) else { continue }
            let blob = directory + "/blobs/sha256-" + hex
            guard FileManager.default.fileExists(atPath: blob) else { continue }
            var name = "\(model):\(tag)"
            if namespace != "library" || registry != "registry.ollama.ai" { name = "\(namespace)/" + name }
            if registry != "registry.ollama.ai" { name = "\(registry)/" + name }
            var discovered = DiscoveredModel(name: name, path: blob, digest: hex.lowercased())
            if let params = layerContents(layers, "application/vnd.ollama.image.params", directory),
                let object = try? JSONSerialization.jsonObject(with: params) as? [String: Any]
            {
                discovered.parameters = object.compactMapValues(SendableJSON.init(parameter:))
            }
            discovered.adapters = layers.filter { ($0["mediaType"] as? String) == "application/vnd.ollama.image.adapter" }.compactMap { layer in
                guard let digest = layer["digest"] as? String, digest.hasPrefix("sha256:"), digest.dropFirst(7).count == 64,
                    digest.dropFirst(7).allSatisfy(\.isHexDigit)
                else { return nil }
                let path = directory + "/blobs/sha256-" + digest.dropFirst(7)
                return FileManager.default.fileExists(atPath: path) ? path : nil
            }
            if let system = layerContents(layers, "application/vnd.ollama.image.system", directory) {
                discovered.system = String(decoding: system, as: UTF8.self)
            }
            if let config = json["config"] as? [String: Any], let data = layerContents([config], config["mediaType"] as? String ?? "", directory),
                let object = try? JSONSerialization.jsonObject(with: data) as? [String: Any], let parent = object["parent_model"] as? String, !parent.isEmpty
            {
                discovered.parent = parent
            }
            found.append(discovered)
        }
        return found
    }

    /// A small layer's bytes (params, system: at most 64 KiB), when its blob is there.
    static func layerContents(_ layers: [[String: Any]], _ mediaType: String, _ directory: String) -> Data? {
        guard let layer = layers.first(where: { ($0["mediaType"] as? String) == mediaType }), let digest = layer["digest"] as? String,
            digest.hasPrefix("sha256:"), digest.dropFirst(7).count == 64, digest.dropFirst(7).allSatisfy(\.isHexDigit)
        else { return nil }
        let path = directory + "/blobs/sha256-" + digest.dropFirst(7)
        guard let size = (try? FileManager.default.attributesOfItem(atPath: path))?[.size] as? Int, size <= 64 << 10 else { return nil }
        return FileManager.default.contents(atPath: path)
    }

    /// The file in a hub repository folder where Corral keeps the names each snapshot file was
    /// pulled as (`{"hf.co/org/repo:Q8_0": "repo-Q8_0.gguf"}`); huggingface_hub ignores it.
    public static let pulledNamesFile = "corral-pulled-names.json"

    /// The names recorded in a hub repository folder's ``pulledNamesFile`` (empty when none or unreadable).
    public static func pulledNames(inRepository folder: String) -> [String: String] {
        guard let data = FileManager.default.contents(atPath: folder + "/" + pulledNamesFile),
            let names = try? JSONDecoder().decode([String: String].self, from: data)
        else { return [:] }
        return names
    }

    /// The Hugging Face hub cache: `models--ORG--REPO/snapshots/REVISION/FILE.gguf`, served as
    /// `hf.co/ORG/REPO:STEM` (or `hf.co/ORG/REPO` when the repository holds one model), and also
    /// under every name it was pulled as.
    static func huggingFaceCache(_ directory: String) -> [DiscoveredModel] {
        let fm = FileManager.default
        guard let repos = try? fm.contentsOfDirectory(atPath: directory) else { return [] }
        var found: [DiscoveredModel] = []
        for repo in repos.sorted() where repo.hasPrefix("models--") {
            let names = repo.dropFirst(8).components(separatedBy: "--")
            guard names.count >= 2 else { continue }
            let snapshots = directory + "/" + repo + "/snapshots"
            // Newest snapshot only: older revisions of the same file would be duplicates.
            let revisions = ((try? fm.contentsOfDirectory(atPath: snapshots)) ?? []).map { snapshots + "/" + $0 }
            guard let newest = revisions.max(by: { modified($0) < modified($1) }) else { continue }
            let files = ggufFolder(newest, recursive: true)
            let pulled = pulledNames(inRepository: directory + "/" + repo)
            for f in files {
                let name = "hf.co/" + names.joined(separator: "/") + (files.count > 1 ? ":" + f.name : "")
                var model = DiscoveredModel(name: name, path: f.path)
                let inSnapshot = String(f.path.dropFirst(newest.count + 1))
                model.aliases = pulled.filter { $0.value == inSnapshot }.keys.sorted()
                found.append(model)
            }
        }
        return found
    }

    /// LM Studio: `PUBLISHER/REPO/FILE.gguf`, served as `PUBLISHER/REPO` (`:STEM` when the
    /// repository holds several models).
    static func lmStudio(_ directory: String) -> [DiscoveredModel] {
        let fm = FileManager.default
        var found: [DiscoveredModel] = []
        for publisher in ((try? fm.contentsOfDirectory(atPath: directory)) ?? []).sorted() {
            for repo in ((try? fm.contentsOfDirectory(atPath: directory + "/" + publisher)) ?? []).sorted() {
                let files = ggufFolder(directory + "/" + publisher + "/" + repo, recursive: true)
                for f in files {
                    found.append(DiscoveredModel(name: "\(publisher)/\(repo)" + (files.count > 1 ? ":" + f.name : ""), path: f.path))
                }
            }
        }
        return found
    }

    static func modified(_ path: String) -> Date {
        ((try? FileManager.default.attributesOfItem(atPath: path))?[.modificationDate] as? Date) ?? .distantPast
    }
}
