import Foundation

/// Jan's models, read where Jan keeps them, served as `jan/ID`.
///
/// - Jan 0.6 and later: `DATA/llamacpp/models/ID/model.yml` (ID may hold slashes,
///   `org/model/q4`), flat YAML with `model_path` relative to the data folder, `name`,
///   `embedding`, `model_sha256`.
/// - Older Jan: `DATA/models/ID/model.json` with `format: gguf`, `settings.llama_model_path`
///   (or `sources[0].filename`), a file inside the model's folder, and `settings.ctx_len`.
///
/// Only files inside the data folder are served: a `model_path` that is absolute or climbs out
/// (`..`) is skipped, so a description file cannot point Corral at an arbitrary path.
enum JanModels {
    static func scan(_ directory: String) -> [DiscoveredModel] {
        let root = URL(fileURLWithPath: directory).standardizedFileURL.path
        return (current(root) + legacy(root)).sorted { $0.name < $1.name }
    }

    /// `llamacpp/models/**/model.yml`.
    static func current(_ root: String) -> [DiscoveredModel] {
        let models = root + "/llamacpp/models"
        let files = (FileManager.default.enumerator(atPath: models)?.allObjects as? [String]) ?? []
        var found: [DiscoveredModel] = []
        for relative in files.sorted() where relative == "model.yml" || relative.hasSuffix("/model.yml") {
            let id = String(relative.dropLast("model.yml".count)).trimmingCharacters(in: CharacterSet(charactersIn: "/"))
            guard !id.isEmpty, let text = try? String(contentsOfFile: models + "/" + relative, encoding: .utf8) else { continue }
            let fields = flatYAML(text)
            guard let modelPath = fields["model_path"], let path = inside(root, modelPath), path.lowercased().hasSuffix(".gguf"),
                FileManager.default.fileExists(atPath: path)
            else { continue }
            var model = DiscoveredModel(name: "jan/" + id, path: path)
            if let sha = fields["model_sha256"]?.lowercased(), sha.count == 64, sha.allSatisfy(\.isHexDigit) { model.digest = sha }
            found.append(model)
        }
        return found
    }

    /// `models/ID/model.json` (Jan before 0.6).
    static func legacy(_ root: String) -> [DiscoveredModel] {
        let models = root + "/models"
        var found: [DiscoveredModel] = []
        for id in ((try? FileManager.default.contentsOfDirectory(atPath: models)) ?? []).sorted() {
            let folder = models + "/" + id
            guard let data = FileManager.default.contents(atPath: folder + "/model.json"),
                let description = try? JSONDecoder().decode(LegacyModel.self, from: data),
                description.format == nil || description.format?.lowercased() == "gguf",
                let file = description.settings?.llama_model_path ?? description.sources?.first?.filename,
                let path = inside(root, "models/" + id + "/" + file), path.lowercased().hasSuffix(".gguf"),
                FileManager.default.fileExists(atPath: path)
            else { continue }
            var model = DiscoveredModel(name: "jan/" + id, path: path)
            model.contextSize = description.settings?.ctx_len
            found.append(model)
        }
        return found
    }

    struct LegacyModel: Decodable {
        struct Settings: Decodable {
            var llama_model_path: String?
            var ctx_len: Int?
        }
        struct Source: Decodable { var filename: String? }
        var format: String?
        var settings: Settings?
        var sources: [Source]?
    }

    /// `relative` under `root`, when it is relative and stays inside it.
    static func inside(_ root: String, _ relative: String) -> String? {
        guard !relative.isEmpty, !relative.hasPrefix("/"), !relative.hasPrefix("~"),
            !relative.split(separator: "/").contains(where: { $0 == ".." })
        else { return nil }
        let path = URL(fileURLWithPath: root + "/" + relative).standardizedFileURL.path
        return path.hasPrefix(root + "/") ? path : nil
    }

    /// Top-level `key: value` lines of a flat YAML document (quotes removed; nested, list and
    /// comment lines ignored).
    static func flatYAML(_ text: String) -> [String: String] {
        var fields: [String: String] = [:]
        for line in text.split(whereSeparator: \.isNewline) {
            guard let first = line.first, !first.isWhitespace, first != "#", first != "-", let colon = line.firstIndex(of: ":") else { continue }
            let key = line[..<colon].trimmingCharacters(in: .whitespaces)
            var value = line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces)
            if value.count >= 2, let q = value.first, q == "\"" || q == "'", value.last == q { value = String(value.dropFirst().dropLast()) }
            if !key.isEmpty, !value.isEmpty { fields[key] = value }
        }
        return fields
    }
}
