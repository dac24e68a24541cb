/// What a model can do, by Ollama's header heuristics.
public struct Capabilities: OptionSet, Sendable, Hashable {
    public let rawValue: UInt8
    public init(rawValue: UInt8) { self.rawValue = rawValue }

    public static let completion = Capabilities(rawValue: 1 << 0)
    public static let embedding = Capabilities(rawValue: 1 << 1)
    public static let tools = Capabilities(rawValue: 1 << 2)
    public static let thinking = Capabilities(rawValue: 1 << 3)
    public static let insert = Capabilities(rawValue: 1 << 4)
    public static let vision = Capabilities(rawValue: 1 << 5)
    /// A reranker (`pooling_type` rank): scores documents against a query (`/v1/rerank`).
    public static let rerank = Capabilities(rawValue: 1 << 6)

    /// Names in Ollama's spelling, in a stable order.
    public var names: [String] {
        let all: [(Capabilities, String)] = [
            (.completion, "completion"), (.embedding, "embedding"), (.tools, "tools"),
            (.thinking, "thinking"), (.insert, "insert"), (.vision, "vision"), (.rerank, "rerank"),
        ]
        return all.filter { contains($0.0) }.map(\.1)
    }
}

/// Typed facts about a model, read from its GGUF header (all split parts together).
public struct ModelFacts: Sendable, Equatable {
    public var architecture: String
    public var name: String?
    public var basename: String?
    public var sizeLabel: String?
    public var finetune: String?
    public var license: String?
    /// Total parameters, from the tensor shapes.
    public var parameterCount: UInt64
    /// Bytes of tensor data, from the tensor table.
    public var tensorBytes: UInt64
    public var fileType: UInt32?
    /// Q4_K_M and the like: from `general.file_type`, else the most common weight type.
    public var quantization: String
    public var bitsPerWeight: Double
    public var contextLength: Int?
    public var blockCount: Int?
    public var embeddingLength: Int?
    public var feedForwardLength: Int?
    /// Heads per layer (a scalar key becomes one value per layer).
    public var headCount: [Int]
    public var headCountKV: [Int]
    public var keyLength: Int?
    public var valueLength: Int?
    public var vocabularySize: Int?
    public var chatTemplate: String?
    public var tokenizerModel: String?
    /// What decides which models can draft for which (speculative decoding); nil when the
    /// header names no tokenizer.
    public var tokenizer: TokenizerFacts?
    public var expertCount: Int?
    public var expertUsedCount: Int?
    public var slidingWindow: Int?
    /// Weight bytes of each repeating layer (`blk.N.*`), of the output layer (`output*`) and of
    /// everything else (token embeddings: always on the host).
    public var layerBytes: [UInt64] = []
    public var outputBytes: UInt64 = 0
    public var inputBytes: UInt64 = 0
    public var poolingType: Int?
    public var capabilities: Capabilities
    public var splitCount: Int
    public var tensorCount: Int

    /// Facts from the headers of every part of one model (part 1 first).
    public init(parts: [GGUFFile]) {
        let file = parts[0]
        let arch = file["general.architecture"]?.string ?? "unknown"
        func key(_ suffix: String) -> GGUFValue? { file["\(arch).\(suffix)"] }

        architecture = arch
        name = file["general.name"]?.string
        basename = file["general.basename"]?.string
        sizeLabel = file["general.size_label"]?.string
        finetune = file["general.finetune"]?.string
        license = file["general.license"]?.string
        let tensors = parts.flatMap(\.tensors)
        tensorCount = tensors.count
        splitCount = parts.count
        parameterCount = tensors.reduce(0) { $0 + $1.elementCount }
        tensorBytes = tensors.reduce(0) { $0 + $1.byteCount }
        bitsPerWeight = parameterCount == 0 ? 0 : Double(tensorBytes) * 8 / Double(parameterCount)
        var bytesByLayer: [Int: UInt64] = [:]
        for t in tensors {
            if t.name.hasPrefix("blk."), let n = Int(t.name.dropFirst(4).prefix { $0.isNumber }) {
                bytesByLayer[n, default: 0] += t.byteCount
            } else if t.name.hasPrefix("output") {
                outputBytes += t.byteCount
            } else {
                inputBytes += t.byteCount
            }
        }
        layerBytes = (0..<(bytesByLayer.keys.max().map { $0 + 1 } ?? 0)).map { bytesByLayer[$0] ?? 0 }
        fileType = file["general.file_type"]?.int.map { UInt32(truncatingIfNeeded: $0) }
        quantization = fileType.flatMap(FileTypeLabel.label(for:)) ?? ModelFacts.dominantType(tensors) ?? "unknown"

        blockCount = key("block_count")?.int
        contextLength = key("context_length")?.int
        embeddingLength = key("embedding_length")?.int
        feedForwardLength = key("feed_forward_length")?.ints?.max()
        let layers = blockCount ?? 0
        func perLayer(_ v: [Int]?) -> [Int] {
            guard let v else { return [] }
            return v.count == 1 && layers > 1 ? Array(repeating: v[0], count: layers) : v
        }
        let heads = perLayer(key("attention.head_count")?.ints)
        let kv = perLayer(key("attention.head_count_kv")?.ints)
        headCount = heads
        headCountKV = kv.isEmpty ? heads : kv
        var defaultHeadDim: Int? = nil
        if let e = embeddingLength, let h = heads.first, h > 0 { defaultHeadDim = e / h }
        keyLength = key("attention.key_length")?.int ?? defaultHeadDim
        valueLength = key("attention.value_length")?.int ?? defaultHeadDim
        vocabularySize = file["tokenizer.ggml.tokens"]?.array.map { Int($0.count) } ?? key("vocab_size")?.int
        chatTemplate = file["tokenizer.chat_template"]?.string
        tokenizerModel = file["tokenizer.ggml.model"]?.string
        tokenizer = TokenizerFacts(file)
        expertCount = key("expert_count")?.int
        expertUsedCount = key("expert_used_count")?.int
        slidingWindow = key("attention.sliding_window")?.int
        poolingType = key("pooling_type")?.int

        var caps: Capabilities = []
        if poolingType == 4 {
            caps.insert(.rerank)
        } else if poolingType != nil && poolingType != 0 || file["general.type"]?.string == "embedding" {
            caps.insert(.embedding)
        } else {
            caps.insert(.completion)
        }
        if let t = chatTemplate {
            if t.contains("tools") || t.contains("tool_call") { caps.insert(.tools) }
            if t.contains("<think>") && t.contains("</think>") { caps.insert(.thinking) }
            if t.contains(".Suffix") || t.contains("fim_") { caps.insert(.insert) }
        }
        let fimKeys = ["tokenizer.ggml.fim_pre_token_id", "tokenizer.ggml.prefix_token_id"]
        if fimKeys.contains(where: { file[$0] != nil }) { caps.insert(.insert) }
        if file.metadata.contains(where: { $0.key.hasPrefix("\(arch).vision.") || $0.key.hasPrefix("clip.vision") }) {
            caps.insert(.vision)
        }
        capabilities = caps
    }

    /// The type holding most bytes among 2-D weight tensors.
    static func dominantType(_ tensors: [GGUFTensorInfo]) -> String? {
        var bytes: [String: UInt64] = [:]
        for t in tensors where t.dimensions.count >= 2 { bytes[t.type.name, default: 0] += t.byteCount }
        return bytes.max { $0.value < $1.value }?.key
    }

    /// Reads every part of the model whose first (or only) file is `path`.
    public static func read(path: String) throws(GGUFError) -> ModelFacts {
        ModelFacts(parts: try SplitFiles.parts(of: path).map { path throws(GGUFError) in try GGUFFile.read(path: path) })
    }
}

/// Naming of split models: `NAME-00001-of-00003.gguf`.
public enum SplitFiles {
    /// Index and count when `path` names a split part.
    public static func splitInfo(_ path: String) -> (index: Int, count: Int, stem: String)? {
        guard path.hasSuffix(".gguf") else { return nil }
        let base = path.dropLast(5)
        // -NNNNN-of-NNNNN
        guard base.count > 15 else { return nil }
        let tail = base.suffix(15)
        let chars = Array(tail)
        guard chars[0] == "-", String(chars[6...9]) == "-of-",
            let index = Int(String(chars[1...5])), let count = Int(String(chars[10...14])),
            index >= 1, count >= 1, index <= count
        else { return nil }
        return (index, count, String(base.dropLast(15)))
    }

    /// All part paths of the model starting at `path` (the path itself when not split).
    public static func parts(of path: String) -> [String] {
        guard let info = splitInfo(path), info.count > 1 else { return [path] }
        return (1...info.count).map { i in
            "\(info.stem)-\(pad(i))-of-\(pad(info.count)).gguf"
        }
    }

    static func pad(_ n: Int) -> String {
        let s = String(n)
        return String(repeating: "0", count: max(0, 5 - s.count)) + s
    }
}
