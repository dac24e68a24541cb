/// Digests of a vocabulary's token texts, enough to compare two vocabularies the way llama.cpp
/// does without keeping every token: for each prefix length `k` from `max(5, count - 128)` to
/// `count`, an FNV-1a digest of the texts of tokens 5 ..< k (each text led by its length).
///
/// llama.cpp compares the texts of tokens 5 ..< min(count₁, count₂) and allows the two counts to
/// differ by at most 128, so that overlap's length is in both models' stored range.
public struct TokenTextDigests: Sendable, Equatable {
    /// Tokens in the vocabulary.
    public var count: Int
    /// The prefix length of `prefixes[0]`.
    public var firstLength: Int
    /// `prefixes[i]` covers tokens 5 ..< firstLength + i.
    public var prefixes: [UInt64]

    /// The first token whose text llama.cpp compares (`SPEC_VOCAB_CHECK_START_TOKEN_ID`).
    public static let firstCompared = 5
    /// How far two vocabulary sizes may differ (`SPEC_VOCAB_MAX_SIZE_DIFFERENCE`).
    public static let maxSizeDifference = 128
    static let offsetBasis: UInt64 = 0xcbf2_9ce4_8422_2325
    static let prime: UInt64 = 0x100_0000_01b3

    /// The digest of tokens 5 ..< `length`, when `length` is in the stored range.
    public func digest(upTo length: Int) -> UInt64? {
        if length <= Self.firstCompared { return Self.offsetBasis }
        let i = length - firstLength
        return prefixes.indices.contains(i) ? prefixes[i] : nil
    }

    /// Digests of `texts` (tests and writers; a file's are computed while its header is read).
    public init(texts: [String]) {
        var builder = Builder(count: texts.count)
        for t in texts { builder.add(Array(t.utf8)[...]) }
        self = builder.result
    }

    init(count: Int, firstLength: Int, prefixes: [UInt64]) {
        self.count = count
        self.firstLength = firstLength
        self.prefixes = prefixes
    }

    /// Hashes token texts one at a time, in order.
    struct Builder {
        let count: Int
        let firstLength: Int
        var index = 0
        var hash = TokenTextDigests.offsetBasis
        var prefixes: [UInt64] = []

        init(count: Int) {
            self.count = count
            firstLength = max(TokenTextDigests.firstCompared, count - TokenTextDigests.maxSizeDifference)
            if firstLength == TokenTextDigests.firstCompared { prefixes.append(hash) }
        }

        mutating func mix(_ byte: UInt8) {
            hash = (hash ^ UInt64(byte)) &* TokenTextDigests.prime
        }

        /// Starts a token's text of `length` bytes (called before its bytes).
        mutating func begin(length: UInt64) {
            // The length in one step (not byte by byte): it only has to separate the texts.
            if index >= TokenTextDigests.firstCompared { hash = (hash ^ length) &* TokenTextDigests.prime }
        }

        mutating func bytes(_ chunk: ArraySlice<UInt8>) {
            guard index >= TokenTextDigests.firstCompared else { return }
            for b in chunk { mix(b) }
        }

        /// Ends the current token.
        mutating func end() {
            index += 1
            if index >= firstLength && index > TokenTextDigests.firstCompared { prefixes.append(hash) }
        }

        mutating func add(_ text: ArraySlice<UInt8>) {
            begin(length: UInt64(text.count))
            bytes(text)
            end()
        }

        var result: TokenTextDigests { TokenTextDigests(count: count, firstLength: firstLength, prefixes: prefixes) }
    }
}

/// What of a model's tokenizer decides whether it can draft for another (llama.cpp's
/// `common_speculative_are_compatible`), read from the GGUF header with llama.cpp's defaults.
public struct TokenizerFacts: Sendable, Equatable {
    /// llama.cpp's vocabulary type: `spm`, `bpe`, `wpm`, `ugm`, `rwkv`, `plamo2`, `none`, or the
    /// raw `tokenizer.ggml.model` when llama.cpp does not know it.
    public var vocabType: String
    /// `tokenizer.ggml.model` and `tokenizer.ggml.pre` as written.
    public var model: String
    public var pre: String?
    public var tokenCount: Int
    public var addBOS: Bool
    public var bos: Int?
    public var addEOS: Bool
    public var eos: Int?
    /// Nil when the header has no token texts (a vocabulary-less model).
    public var digests: TokenTextDigests?

    public init(vocabType: String, model: String, pre: String? = nil, tokenCount: Int, addBOS: Bool, bos: Int?, addEOS: Bool, eos: Int?,
                digests: TokenTextDigests?) {
        self.vocabType = vocabType
        self.model = model
        self.pre = pre
        self.tokenCount = tokenCount
        self.addBOS = addBOS
        self.bos = bos
        self.addEOS = addEOS
        self.eos = eos
        self.digests = digests
    }

    /// BPE pre-tokenizers for which llama.cpp adds a BOS token unless the header says otherwise.
    static let bpeWithBOS: Set<String> = ["llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral", "midm-2.0", "lfm2", "jina-v5-nano",
                                          "tekken", "chameleon"]

    /// The tokenizer of `file` as llama.cpp's vocabulary loader reads it (`llama_vocab::impl::load`):
    /// the type from `tokenizer.ggml.model`, then default special tokens and BOS/EOS flags per type,
    /// then the header's own keys. Nil when the header names no tokenizer.
    init?(_ file: GGUFFile) {
        guard let model = file["tokenizer.ggml.model"]?.string else { return nil }
        let pre = file["tokenizer.ggml.pre"]?.string
        let count = Int(file["tokenizer.ggml.tokens"]?.array?.count ?? 0)
        var bos: Int?
        var eos: Int?
        var addBOS = false
        var addEOS = false
        let type: String
        switch model {
        case "no_vocab", "none": type = "none"
        case "llama": (type, bos, eos, addBOS) = ("spm", 1, 2, true)
        case "bert": (type, bos, addBOS) = ("wpm", 101, true)
        case "gpt2", "hybriddna", "whitespace":
            (type, bos, eos) = ("bpe", 11, 11)
            addBOS = pre.map(Self.bpeWithBOS.contains) ?? false
            if pre == "chatglm-bpe" || pre == "glm4" || pre == "glm5" { bos = nil }
        case "gemma4": (type, addBOS) = ("bpe", true)
        case "t5": (type, eos, addEOS) = ("ugm", 1, true)
        case "rwkv": type = "rwkv"
        case "plamo2": (type, bos, eos) = ("plamo2", 1, 2)
        default: type = model
        }
        // Default ids outside the vocabulary are disabled; the header's own ids win when in range.
        if let b = bos, b >= count { bos = nil }
        if let e = eos, e >= count { eos = nil }
        if let b = file["tokenizer.ggml.bos_token_id"]?.int, b >= 0, b < count { bos = b }
        if let e = file["tokenizer.ggml.eos_token_id"]?.int, e >= 0, e < count { eos = e }
        if let a = file["tokenizer.ggml.add_bos_token"]?.bool { addBOS = a }
        if let a = file["tokenizer.ggml.add_eos_token"]?.bool { addEOS = a }
        if model == "gemma4" { addBOS = true }
        self.init(vocabType: type, model: model, pre: pre, tokenCount: count, addBOS: addBOS, bos: bos, addEOS: addEOS, eos: eos,
                  digests: file.tokenDigests)
    }

    /// Why a model with tokenizer `draft` cannot draft for one with tokenizer `self` (llama.cpp
    /// would refuse the pair: `common_speculative_are_compatible`), or nil when it can.
    public func refusal(ofDraft draft: TokenizerFacts) -> String? {
        if vocabType != draft.vocabType {
            return "the vocabulary types differ (\(vocabType) against the draft's \(draft.vocabType))"
        }
        if addBOS != draft.addBOS || (addBOS && bos != draft.bos) {
            return "the BOS tokens differ (adds \(addBOS), id \(bos.map(String.init) ?? "none") against the draft's \(draft.addBOS), id \(draft.bos.map(String.init) ?? "none"))"
        }
        if addEOS != draft.addEOS || (addEOS && eos != draft.eos) {
            return "the EOS tokens differ (adds \(addEOS), id \(eos.map(String.init) ?? "none") against the draft's \(draft.addEOS), id \(draft.eos.map(String.init) ?? "none"))"
        }
        let difference = abs(tokenCount - draft.tokenCount)
        if difference > TokenTextDigests.maxSizeDifference {
            return "the vocabulary sizes differ by \(difference) tokens (\(tokenCount) against the draft's \(draft.tokenCount); llama.cpp allows \(TokenTextDigests.maxSizeDifference))"
        }
        let overlap = min(tokenCount, draft.tokenCount)
        guard overlap > TokenTextDigests.firstCompared else { return nil }
        guard let mine = digests?.digest(upTo: overlap), let theirs = draft.digests?.digest(upTo: overlap) else {
            return "the token texts cannot be compared (a header without them)"
        }
        if mine != theirs { return "the token texts differ (tokens \(TokenTextDigests.firstCompared) to \(overlap - 1))" }
        return nil
    }
}

extension ModelFacts {
    /// Why the model `draft` cannot draft for this one (llama.cpp would refuse the pair), or nil
    /// when it can; see ``TokenizerFacts/refusal(ofDraft:)``.
    public func draftRefusal(_ draft: ModelFacts) -> String? {
        guard let mine = tokenizer else { return "this model's header names no tokenizer" }
        guard let theirs = draft.tokenizer else { return "the draft's header names no tokenizer" }
        return mine.refusal(ofDraft: theirs)
    }
}
