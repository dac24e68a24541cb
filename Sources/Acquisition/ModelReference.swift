import Foundation

/// A model to pull, in the names users already type: Ollama's `[host/][namespace/]model[:tag]`
/// and Ollama's `hf.co/{org}/{repo}[:{quant}]` for the Hugging Face hub. Every part is checked
/// against a narrow alphabet before it can become a URL or a path under the downloads folder.
public enum ModelReference: Sendable, Equatable, Hashable, Codable, CustomStringConvertible {
    case ollama(host: String, namespace: String, model: String, tag: String)
    case huggingFace(repository: String, quant: String?)

    public static let defaultRegistry = "registry.ollama.ai"

    /// Parses a name; throws with the reason when it is not one Corral can pull.
    public init(_ raw: String) throws(AcquisitionError) {
        let name = raw.trimmingCharacters(in: .whitespaces)
        guard !name.isEmpty, name.count <= 300 else { throw .badName(raw, "a model name is 1 to 300 characters") }
        for prefix in ["hf.co/", "huggingface.co/"] where name.lowercased().hasPrefix(prefix) {
            let rest = name.dropFirst(prefix.count)
            let (repository, quant) = Self.splitTag(String(rest))
            let parts = repository.split(separator: "/", omittingEmptySubsequences: false)
            guard parts.count == 2, parts.allSatisfy({ Self.isPart($0) }) else {
                throw .badName(raw, "a Hugging Face model is hf.co/ORGANISATION/REPOSITORY[:QUANT]")
            }
            if let quant, !Self.isPart(Substring(quant)) { throw .badName(raw, "the quant '\(quant)' is not a plain word") }
            self = .huggingFace(repository: repository, quant: quant)
            return
        }
        let (path, tag) = Self.splitTag(name)
        var parts = path.split(separator: "/", omittingEmptySubsequences: false).map(String.init)
        guard (1...3).contains(parts.count) else { throw .badName(raw, "an Ollama model is [HOST/][NAMESPACE/]MODEL[:TAG]") }
        var host = Self.defaultRegistry
        // A first part with a dot or a port (or `localhost`) is a registry host, as in Ollama.
        if parts.count == 3 || (parts.count == 2 && (parts[0].contains(".") || parts[0].contains(":") || parts[0] == "localhost")) {
            host = parts.removeFirst()
        }
        let namespace = parts.count == 2 ? parts[0] : "library"
        let model = parts.last!
        guard Self.isHost(host) else { throw .badName(raw, "'\(host)' is not a registry host") }
        guard Self.isPart(Substring(namespace)), Self.isPart(Substring(model)), Self.isPart(Substring(tag ?? "latest")) else {
            throw .badName(raw, "names, namespaces and tags are letters, digits, '.', '_' and '-'")
        }
        self = .ollama(host: host.lowercased(), namespace: namespace.lowercased(), model: model.lowercased(), tag: tag ?? "latest")
    }

    /// `MODEL:TAG` → (MODEL, TAG); a colon inside the host part (`127.0.0.1:5000/…`) is not a tag.
    static func splitTag(_ name: String) -> (String, String?) {
        guard let colon = name.lastIndex(of: ":"), !name[colon...].contains("/") else { return (name, nil) }
        return (String(name[..<colon]), String(name[name.index(after: colon)...]))
    }

    static func isPart(_ s: Substring) -> Bool {
        !s.isEmpty && s.count <= 128 && s != "." && s != ".." && s.allSatisfy { $0.isASCII && ($0.isLetter || $0.isNumber || "._-".contains($0)) }
    }

    /// `NAME[:PORT]`: letters, digits, dots and dashes, and a numeric port.
    static func isHost(_ s: String) -> Bool {
        let parts = s.split(separator: ":", omittingEmptySubsequences: false)
        guard (1...2).contains(parts.count), let name = parts.first, !name.isEmpty, name.count <= 253, !name.hasPrefix("."),
            name.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || ".-".contains($0)) })
        else { return false }
        return parts.count == 1 || (1...5).contains(parts[1].count) && parts[1].allSatisfy(\.isNumber)
    }

    /// The name the pulled model is served under: Ollama's short form for the default registry's
    /// `library`, the full name otherwise; `hf.co/ORG/REPO[:QUANT]` for the hub.
    public var description: String {
        switch self {
        case .ollama(let host, let namespace, let model, let tag):
            var name = "\(model):\(tag)"
            if namespace != "library" || host != Self.defaultRegistry { name = "\(namespace)/" + name }
            if host != Self.defaultRegistry { name = "\(host)/" + name }
            return name
        case .huggingFace(let repository, let quant):
            return "hf.co/\(repository)" + (quant.map { ":\($0)" } ?? "")
        }
    }
}

/// Why a pull could not be done, as the API says it.
public enum AcquisitionError: Error, Sendable, Equatable, CustomStringConvertible {
    case badName(String, String)
    /// A request Corral cannot act on (a create without a model file, bad parameters).
    case invalid(String)
    /// The registry or hub has no such model, tag or file (404).
    case notFound(String)
    /// The server answered with something Corral cannot use.
    case upstream(String)
    /// The bytes did not hash to the digest the registry published: nothing was registered.
    case digestMismatch(file: String, expected: String, actual: String)
    case insufficientSpace(neededBytes: Int64, freeBytes: Int64, directory: String)
    case storage(String)
    /// Plain http to a registry without `insecure`.
    case insecure(String)

    public var description: String {
        switch self {
        case .badName(let name, let why): "'\(name)' is not a model name Corral can pull: \(why)"
        case .invalid(let why): why
        case .notFound(let what): what
        case .upstream(let what): what
        case .digestMismatch(let file, let expected, let actual):
            "\(file) does not match its digest: expected sha256 \(expected), got \(actual); the download was deleted and nothing was registered"
        case .insufficientSpace(let needed, let free, let directory):
            "not enough disk space in \(directory): the download needs \(needed >> 20) MiB more, \(free >> 20) MiB are free"
        case .storage(let what): what
        case .insecure(let what): what
        }
    }
}
