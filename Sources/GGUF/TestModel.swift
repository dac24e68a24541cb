/// The shape of a generated random-weight llama model for tests, benchmarks and the demo.
public struct TestModelShape: Sendable, Equatable {
    public enum WeightType: String, Sendable, CaseIterable {
        case f32, f16, q8_0
    }

    public var embeddingLength = 64
    public var layers = 2
    public var heads = 4
    public var kvHeads = 2
    public var feedForwardLength = 128
    /// Total vocabulary size; at least 259 + the built-in word pieces.
    public var vocabularySize = 352
    public var contextLength = 2048
    public var weightType: WeightType = .f32
    /// Marks the model as an embedding model (`pooling_type` mean).
    public var embedding = false
    /// Adds fill-in-the-middle tokens so the model reports the `insert` capability.
    public var fim = false
    /// A Hermes-style (Qwen 2.5) template with tools and `<tool_call>`, so llama-server parses tool calls.
    public var tools = false
    /// A reranker: Qwen 3's architecture with `pooling_type` rank and a two-label `cls.output`
    /// head, as Qwen3-Reranker GGUFs are, so llama-server serves it with `--reranking`.
    public var rerank = false
    public var name = "corral-test"
    public var seed: UInt64 = 42

    public init() {}

    /// Parses `key=value,…` (keys: embd, layers, heads, kv, ff, vocab, ctx, type, embedding, fim, tools, rerank, name, seed).
    public init(spec: String) throws(TestModelError) {
        self.init()
        for part in spec.split(separator: ",") where !part.isEmpty {
            let kv = part.split(separator: "=", maxSplits: 1).map(String.init)
            guard kv.count == 2 else { throw TestModelError("expected key=value, got \(part)") }
            let (k, v) = (kv[0], kv[1])
            func int() throws(TestModelError) -> Int {
                guard let i = Int(v), i > 0 else { throw TestModelError("\(k) must be a positive integer") }
                return i
            }
            switch k {
            case "embd": embeddingLength = try int()
            case "layers": layers = try int()
            case "heads": heads = try int()
            case "kv": kvHeads = try int()
            case "ff": feedForwardLength = try int()
            case "vocab": vocabularySize = try int()
            case "ctx": contextLength = try int()
            case "seed": seed = UInt64(try int())
            case "name": name = v
            case "embedding": embedding = v == "true" || v == "1"
            case "fim": fim = v == "true" || v == "1"
            case "tools": tools = v == "true" || v == "1"
            case "rerank": rerank = v == "true" || v == "1"
            case "type":
                guard let t = WeightType(rawValue: v) else { throw TestModelError("type must be f32, f16 or q8_0") }
                weightType = t
            default: throw TestModelError("unknown shape key \(k)")
            }
        }
        try validate()
    }

    public func validate() throws(TestModelError) {
        guard embeddingLength % heads == 0 else { throw TestModelError("embd must be a multiple of heads") }
        guard !(rerank && embedding) else { throw TestModelError("a model is a reranker or an embedding model, not both") }
        guard heads % kvHeads == 0 else { throw TestModelError("heads must be a multiple of kv") }
        guard vocabularySize >= TestModel.fixedVocabulary(fim: fim).count else {
            throw TestModelError("vocab must be at least \(TestModel.fixedVocabulary(fim: fim).count)")
        }
        if weightType == .q8_0 {
            guard embeddingLength % 32 == 0, feedForwardLength % 32 == 0 else {
                throw TestModelError("q8_0 needs embd and ff to be multiples of 32")
            }
        }
    }
}

public struct TestModelError: Error, Sendable, CustomStringConvertible {
    public var description: String
    init(_ description: String) { self.description = description }
}

/// Generates tiny random-weight llama GGUFs that the real llama-server loads and chats with.
///
/// The vocabulary holds `<unk>`, `<s>`, `</s>`, all 256 byte tokens (without them every chat
/// request fails inside llama.cpp), the SPM space marker and some word pieces. Output rows of
/// control and non-printable byte tokens are zero, so greedy output is printable text that runs
/// to `max_tokens`.
public enum TestModel {
    public static let chatTemplate =
        "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"

    /// Qwen 2.5's tool-calling template, shortened: tools in the system turn, calls as
    /// `<tool_call>{"name":…,"arguments":…}</tool_call>`, results as `<tool_response>`.
    public static let toolsChatTemplate = """
        {%- if tools %}<|im_start|>system
        {% if messages[0]['role'] == 'system' %}{{ messages[0]['content'] }}

        {% endif %}# Tools

        You are provided with function signatures within <tools></tools> XML tags:
        <tools>{% for tool in tools %}
        {{ tool | tojson }}{% endfor %}
        </tools>

        For each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:
        <tool_call>
        {"name": <function-name>, "arguments": <args-json-object>}
        </tool_call><|im_end|>
        {% elif messages[0]['role'] == 'system' %}<|im_start|>system
        {{ messages[0]['content'] }}<|im_end|>
        {% endif %}
        {%- for message in messages %}
        {%- if message.role == "user" or (message.role == "system" and not loop.first) or (message.role == "assistant" and not message.tool_calls) %}<|im_start|>{{ message.role }}
        {{ message.content }}<|im_end|>
        {% elif message.role == "assistant" %}<|im_start|>assistant
        {% if message.content %}{{ message.content }}{% endif %}
        {%- for tool_call in message.tool_calls %}{% if tool_call.function is defined %}{% set tool_call = tool_call.function %}{% endif %}
        <tool_call>
        {"name": "{{ tool_call.name }}", "arguments": {{ tool_call.arguments | tojson }}}
        </tool_call>{% endfor %}<|im_end|>
        {% elif message.role == "tool" %}<|im_start|>user
        <tool_response>
        {{ message.content }}
        </tool_response><|im_end|>
        {% endif %}
        {%- endfor %}
        {%- if add_generation_prompt %}<|im_start|>assistant
        {% endif %}
        """

    static let words = [
        "the", "a", "model", "llama", "corral", "hello", "world", "gate", "way", "token", "fast", "slow",
        "is", "and", "to", "of", "in", "it", "you", "that", "he", "was", "for", "on", "are", "with",
        "as", "I", "his", "they", "be", "at", "one", "have", "this", "from", "or", "had", "by", "word",
        "but", "what", "some", "we", "can", "out", "other", "were", "all", "there", "when", "up", "use",
        "your", "how", "said", "an", "each", "she", "which", "do", "their", "time", "if", "will",
        "way", "about", "many", "then", "them", "write", "would", "like", "so", "these", "her", "long",
        "make", "thing", "see", "him", "two", "has", "look", "more", "day", "could", "go", "come",
    ]

    /// (piece, type) for the fixed part of the vocabulary. Types: 1 normal, 2 unknown, 3 control, 6 byte.
    static func fixedVocabulary(fim: Bool) -> [(String, Int32)] {
        var v: [(String, Int32)] = [("<unk>", 2), ("<s>", 3), ("</s>", 3)]
        for b in 0..<256 { v.append(("<0x" + hex2(b) + ">", 6)) }
        if fim {
            for t in ["<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>"] { v.append((t, 3)) }
        }
        v.append(("\u{2581}", 1))
        var seen = Set<String>()
        for w in words where seen.insert(w).inserted { v.append(("\u{2581}" + w, 1)) }
        return v
    }

    static func hex2(_ b: Int) -> String {
        let digits = Array("0123456789ABCDEF")
        return String([digits[b >> 4], digits[b & 15]])
    }

    /// The writer for a model of this shape. `withData: false` leaves tensor data out (sparse).
    public static func writer(shape: TestModelShape, withData: Bool = true) -> GGUFWriter {
        var vocab = fixedVocabulary(fim: shape.fim)
        // Tool models: `<tool_call>` is one user-defined token that always wins the first choice
        // (see the output rows below), so llama-server's lazy tool-call grammar is triggered at
        // once and constrains the rest into a valid call — a random model that calls tools.
        let toolCallToken = vocab.count
        if shape.tools { vocab += [("<tool_call>\n{", 4), ("</tool_call>", 4)] }
        var n = 0
        while vocab.count < shape.vocabularySize {
            vocab.append(("\u{2581}t\(n)", 1))
            n += 1
        }
        let nVocab = UInt64(vocab.count)
        let nEmbd = UInt64(shape.embeddingLength)
        let headDim = shape.embeddingLength / shape.heads
        let nKV = UInt64(headDim * shape.kvHeads)
        let nFF = UInt64(shape.feedForwardLength)

        var w = GGUFWriter()
        let arch = shape.rerank ? "qwen3" : "llama"
        w.set("general.architecture", .string(arch))
        w.set("general.name", .string(shape.name))
        w.set("general.file_type", .uint32(shape.weightType == .f32 ? 0 : shape.weightType == .f16 ? 1 : 7))
        w.set("\(arch).context_length", .uint32(UInt32(shape.contextLength)))
        w.set("\(arch).embedding_length", .uint32(UInt32(nEmbd)))
        w.set("\(arch).block_count", .uint32(UInt32(shape.layers)))
        w.set("\(arch).feed_forward_length", .uint32(UInt32(nFF)))
        w.set("\(arch).attention.head_count", .uint32(UInt32(shape.heads)))
        w.set("\(arch).attention.head_count_kv", .uint32(UInt32(shape.kvHeads)))
        w.set("\(arch).attention.layer_norm_rms_epsilon", .float32(1e-5))
        w.set("\(arch).rope.dimension_count", .uint32(UInt32(headDim)))
        if shape.embedding { w.set("llama.pooling_type", .uint32(1)) }
        if shape.rerank {
            // Two labels, as Qwen3-Reranker's yes/no head: llama-server scores the softmax's first.
            w.set("qwen3.pooling_type", .uint32(4))
            w.set("qwen3.classifier.output_labels", .array(GGUFArray(.string, [.string("yes"), .string("no")])))
        }
        w.set("tokenizer.ggml.model", .string("llama"))
        w.set("tokenizer.ggml.pre", .string("default"))
        w.set("tokenizer.ggml.tokens", .array(GGUFArray(.string, vocab.map { .string($0.0) })))
        w.set("tokenizer.ggml.scores", .array(GGUFArray(.float32, vocab.indices.map { .float32(-Float($0)) })))
        w.set("tokenizer.ggml.token_type", .array(GGUFArray(.int32, vocab.map { .int32($0.1) })))
        w.set("tokenizer.ggml.unknown_token_id", .uint32(0))
        w.set("tokenizer.ggml.bos_token_id", .uint32(1))
        w.set("tokenizer.ggml.eos_token_id", .uint32(2))
        w.set("tokenizer.ggml.add_bos_token", .bool(true))
        w.set("tokenizer.ggml.add_eos_token", .bool(false))
        if shape.fim {
            let base = UInt32(259)
            w.set("tokenizer.ggml.fim_pre_token_id", .uint32(base))
            w.set("tokenizer.ggml.fim_suf_token_id", .uint32(base + 1))
            w.set("tokenizer.ggml.fim_mid_token_id", .uint32(base + 2))
        }
        w.set("tokenizer.chat_template", .string(shape.tools ? toolsChatTemplate : chatTemplate))

        var rng = SplitMix64(seed: shape.seed)
        let weightType: GGMLType = switch shape.weightType {
        case .f32: .f32
        case .f16: .f16
        case .q8_0: .q8_0
        }
        func matrix(_ name: String, _ cols: UInt64, _ rows: UInt64, scale: Float = 0.5,
                    zeroRows: Set<Int> = []) -> GGUFWriter.Tensor {
            var data: [UInt8]? = nil
            if withData {
                var values = [Float](repeating: 0, count: Int(cols * rows))
                for r in 0..<Int(rows) where !zeroRows.contains(r) {
                    for c in 0..<Int(cols) { values[r * Int(cols) + c] = rng.nextFloat(scale) }
                }
                data = encode(values, as: weightType)
            }
            return .init(name: name, dimensions: [cols, rows], type: weightType, data: data)
        }
        func norm(_ name: String, size: UInt64 = nEmbd) -> GGUFWriter.Tensor {
            .init(name: name, dimensions: [size], type: .f32,
                  data: withData ? encode([Float](repeating: 1, count: Int(size)), as: .f32) : nil)
        }
        // Control tokens and non-printable bytes never win the greedy choice.
        var silent = Set<Int>([0, 1, 2])
        for (i, (_, type)) in vocab.enumerated() where type == 3 { silent.insert(i) }
        for b in 0..<256 where b < 0x20 || b > 0x7E { silent.insert(3 + b) }

        var embeddings = matrix("token_embd.weight", nEmbd, nVocab)
        var output = matrix("output.weight", nEmbd, nVocab, zeroRows: silent)
        if shape.tools, withData, weightType == .f32 {
            // Every token embedding gets a large constant first component, which survives the
            // layers; the `<tool_call>` output row reads it, so that token always scores highest.
            embeddings.data = patchF32(embeddings.data!, rows: Int(nVocab), cols: Int(nEmbd)) { row, _ in 30 }
            output.data = patchF32(output.data!, rows: Int(nVocab), cols: Int(nEmbd)) { row, v in row == toolCallToken ? 10 : v }
        }
        w.tensors.append(embeddings)
        w.tensors.append(norm("output_norm.weight"))
        w.tensors.append(output)
        for l in 0..<shape.layers {
            let p = "blk.\(l)."
            w.tensors.append(norm(p + "attn_norm.weight"))
            w.tensors.append(matrix(p + "attn_q.weight", nEmbd, nEmbd, scale: 0.2))
            w.tensors.append(matrix(p + "attn_k.weight", nEmbd, nKV, scale: 0.2))
            w.tensors.append(matrix(p + "attn_v.weight", nEmbd, nKV, scale: 0.2))
            w.tensors.append(matrix(p + "attn_output.weight", nEmbd, nEmbd, scale: 0.2))
            if shape.rerank {
                w.tensors.append(norm(p + "attn_q_norm.weight", size: UInt64(headDim)))
                w.tensors.append(norm(p + "attn_k_norm.weight", size: UInt64(headDim)))
            }
            w.tensors.append(norm(p + "ffn_norm.weight"))
            w.tensors.append(matrix(p + "ffn_gate.weight", nEmbd, nFF, scale: 0.2))
            w.tensors.append(matrix(p + "ffn_up.weight", nEmbd, nFF, scale: 0.2))
            w.tensors.append(matrix(p + "ffn_down.weight", nFF, nEmbd, scale: 0.2))
        }
        if shape.rerank { w.tensors.append(matrix("cls.output.weight", nEmbd, 2)) }
        return w
    }

    /// Replaces column 0 of each row of an f32 matrix with `value(row, old)`.
    static func patchF32(_ data: [UInt8], rows: Int, cols: Int, _ value: (Int, Float) -> Float) -> [UInt8] {
        var out = data
        for r in 0..<rows {
            let at = r * cols * 4
            let old = Float(bitPattern: UInt32(out[at]) | UInt32(out[at + 1]) << 8 | UInt32(out[at + 2]) << 16 | UInt32(out[at + 3]) << 24)
            let bits = value(r, old).bitPattern
            for i in 0..<4 { out[at + i] = UInt8(truncatingIfNeeded: bits >> (8 * UInt32(i))) }
        }
        return out
    }

    /// A LoRA adapter for a model of `shape` (llama.cpp's GGUF adapter format: `general.type`
    /// `adapter`, `adapter.type` `lora`): rank-`rank` pairs `lora_a` [n_embd, rank] and `lora_b`
    /// [rank, n_embd] on every layer's `attn_q`, for tests of adapters (`--lora`).
    public static func loraWriter(shape: TestModelShape, rank: Int = 4) -> GGUFWriter {
        var w = GGUFWriter()
        w.set("general.architecture", .string("llama"))
        w.set("general.type", .string("adapter"))
        w.set("general.name", .string(shape.name))
        w.set("adapter.type", .string("lora"))
        w.set("adapter.lora.alpha", .float32(Float(rank)))
        var rng = SplitMix64(seed: shape.seed)
        let (nEmbd, r) = (UInt64(shape.embeddingLength), UInt64(rank))
        func matrix(_ name: String, _ cols: UInt64, _ rows: UInt64) -> GGUFWriter.Tensor {
            let values = (0..<Int(cols * rows)).map { _ in rng.nextFloat(0.1) }
            return .init(name: name, dimensions: [cols, rows], type: .f32, data: encode(values, as: .f32))
        }
        for l in 0..<shape.layers {
            w.tensors.append(matrix("blk.\(l).attn_q.weight.lora_a", nEmbd, r))
            w.tensors.append(matrix("blk.\(l).attn_q.weight.lora_b", r, nEmbd))
        }
        return w
    }

    /// Writes a model of `shape` to `path`. `sparse` leaves the tensor data as a hole.
    public static func write(shape: TestModelShape, to path: String, sparse: Bool = false) throws(GGUFError) {
        try writer(shape: shape, withData: !sparse).write(to: path, sparse: sparse)
    }

    static func encode(_ values: [Float], as type: GGMLType) -> [UInt8] {
        var out: [UInt8] = []
        switch type.rawValue {
        case GGMLType.f32.rawValue:
            out.reserveCapacity(values.count * 4)
            for v in values { GGUFWriter.put(v.bitPattern, &out) }
        case GGMLType.f16.rawValue:
            out.reserveCapacity(values.count * 2)
            for v in values { GGUFWriter.put(Float16(v).bitPattern, &out) }
        default:  // Q8_0: blocks of 32 values, an f16 scale then 32 signed bytes.
            var i = 0
            while i < values.count {
                let block = values[i..<min(i + 32, values.count)]
                let amax = block.map { abs($0) }.max() ?? 0
                let d = amax / 127
                GGUFWriter.put(Float16(d).bitPattern, &out)
                for v in block {
                    let q = d == 0 ? 0 : Int8(max(-127, min(127, (v / d).rounded())))
                    out.append(UInt8(bitPattern: q))
                }
                i += 32
            }
        }
        return out
    }
}

/// A small deterministic generator (SplitMix64): reproducible generated models, tuning's random
/// strategy, seeded fuzzing.
public struct SplitMix64: RandomNumberGenerator, Sendable {
    var state: UInt64
    public init(seed: UInt64) { state = seed }
    public mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
    /// Uniform in [-scale, scale).
    mutating func nextFloat(_ scale: Float) -> Float {
        (Float(next() >> 40) / Float(1 << 24) * 2 - 1) * scale
    }
}
