/// Memory a model needs under given llama-server settings, from its GGUF header alone.
///
/// Follows llama.cpp's own accounting (checked against `llama-fit-params --fit-print on` by
/// `EstimatorAccuracyTests`): weights are the exact tensor bytes by placement, the KV cache is
/// exact per layer for the padded context, the compute buffer uses llama.cpp's graph-size
/// formulas for one ubatch (within 15 %).
public enum MemoryEstimator {
    /// A KV cache element type.
    public enum CacheType: String, Sendable, CaseIterable, Codable {
        case f32, f16, bf16, q8_0, q5_1, q5_0, q4_1, q4_0

        var ggml: GGMLType {
            switch self {
            case .f32: .f32
            case .f16: .f16
            case .bf16: GGMLType.all[30]!
            case .q8_0: .q8_0
            case .q5_1: GGMLType.all[7]!
            case .q5_0: GGMLType.all[6]!
            case .q4_1: GGMLType.all[3]!
            case .q4_0: GGMLType.all[2]!
            }
        }
    }

    /// llama-server settings that change memory.
    public struct Settings: Sendable, Equatable, Codable {
        /// `-c`; 0 means the trained context.
        public var contextSize = 0
        /// `-np`.
        public var parallel = 1
        /// `-kvu`: one KV pool shared by all slots (llama-server's default with automatic slots).
        public var unifiedKV = true
        public var cacheTypeK: CacheType = .f16
        public var cacheTypeV: CacheType = .f16
        public var flashAttention = true
        /// `-ub`.
        public var ubatch = 512
        /// `-ngl`; nil offloads every layer when a GPU exists.
        public var gpuLayers: Int?

        public init() {}
    }

    /// Bytes on one device.
    public struct Device: Sendable, Equatable, Codable {
        public var name: String
        public var weights: UInt64
        public var kv: UInt64
        public var compute: UInt64
        public var output: UInt64
        /// The fixed runtime overhead of a GPU backend (0 on the host).
        public var overhead: UInt64
        public var total: UInt64 { [weights, kv, compute, output, overhead].reduce(0, MemoryEstimator.add) }
    }

    public struct Estimate: Sendable, Equatable, Codable {
        /// The context actually allocated (padded to 256).
        public var contextSize: Int
        public var gpuLayers: Int
        /// KV bytes one more token of context costs.
        public var kvBytesPerToken: UInt64
        public var devices: [Device]
        public var total: UInt64 { devices.reduce(0) { MemoryEstimator.add($0, $1.total) } }
    }

    /// Why llama.cpp would refuse these cache settings for this model, if it would: quantized
    /// caches need head sizes divisible by their block, and a quantized V cache needs flash attention.
    public static func cacheProblem(_ facts: ModelFacts, _ settings: Settings) -> String? {
        for (name, type, size) in [("K", settings.cacheTypeK, facts.keyLength ?? 0), ("V", settings.cacheTypeV, facts.valueLength ?? 0)] {
            let block = Int(type.ggml.blockSize)
            if block > 1 && size % block != 0 { return "a \(type.rawValue) \(name) cache needs a head size divisible by \(block); this model's is \(size)" }
        }
        if ![.f16, .f32, .bf16].contains(settings.cacheTypeV) && !settings.flashAttention { return "a quantized V cache needs flash attention" }
        return nil
    }

    /// The fixed overhead llama.cpp reports per CUDA/ROCm device.
    public static let gpuOverhead: UInt64 = 457 << 20

    static func pad(_ n: Int, _ to: Int) -> Int { (n + to - 1) / to * to }

    /// Products and sums that stop at `UInt64.max` instead of trapping: header values come
    /// from files that may be hostile.
    static func mul(_ a: UInt64, _ b: UInt64) -> UInt64 {
        let (r, overflow) = a.multipliedReportingOverflow(by: b)
        return overflow ? .max : r
    }

    static func add(_ a: UInt64, _ b: UInt64) -> UInt64 {
        let (r, overflow) = a.addingReportingOverflow(b)
        return overflow ? .max : r
    }

    /// Header dimensions clamped to what any real model stays far below.
    static func dim(_ v: Int?, _ fallback: Int = 0) -> Int { min(max(v ?? fallback, 0), 1 << 24) }

    /// The estimate for `facts` with `settings`; `gpu` names the accelerator layers go to (nil: CPU only).
    public static func estimate(_ facts: ModelFacts, _ settings: Settings, gpu: String? = nil) -> Estimate {
        let layers = dim(facts.blockCount ?? facts.layerBytes.count)
        let trained = dim(facts.contextLength, 4096)
        let requested = min(settings.contextSize > 0 ? settings.contextSize : trained, 1 << 26)
        let parallel = min(max(1, settings.parallel), 1 << 16)
        let context = settings.unifiedKV ? pad(requested, 256) : pad(requested / parallel, 256) * parallel
        let ngl = gpu == nil ? 0 : max(0, min(settings.gpuLayers ?? (layers + 1), layers + 1))
        let firstOnGPU = max(layers + 1 - ngl, 0)

        // KV per token, split by where each layer lives.
        let kl = dim(facts.keyLength)
        let vl = dim(facts.valueLength)
        var kvHost: UInt64 = 0
        var kvGPU: UInt64 = 0
        for l in 0..<layers {
            let heads = dim(l < facts.headCountKV.count ? facts.headCountKV[l] : facts.headCountKV.first)
            let perToken = add(row(settings.cacheTypeK, kl * heads), row(settings.cacheTypeV, vl * heads))
            if l >= firstOnGPU { kvGPU = add(kvGPU, perToken) } else { kvHost = add(kvHost, perToken) }
        }
        var weightsHost = facts.inputBytes
        var weightsGPU: UInt64 = 0
        for (l, bytes) in facts.layerBytes.enumerated() {
            if gpu != nil && l >= firstOnGPU { weightsGPU = add(weightsGPU, bytes) } else { weightsHost = add(weightsHost, bytes) }
        }
        if gpu != nil && ngl > layers { weightsGPU = add(weightsGPU, facts.outputBytes) } else { weightsHost = add(weightsHost, facts.outputBytes) }

        // One ubatch's graph, on the GPU when any layer is there.
        let ub = UInt64(min(max(1, settings.ubatch), 1 << 20))
        let vocab = UInt64(dim(facts.vocabularySize, 32000))
        let ff = UInt64(dim(facts.feedForwardLength))
        let embd = UInt64(dim(facts.embeddingLength))
        let heads = UInt64(max(1, dim(facts.headCount.first, 1)))
        let kvLen = UInt64(context)
        let compute: UInt64 = settings.flashAttention
            ? add(mul(4 * ub, vocab + 2 * ff), mul(2 * ub, kvLen))
            : max(mul(4 * ub, add(1 + 4 * embd, mul(kvLen, 1 + heads))), mul(4 * ub, embd + vocab))
        let output = mul(4 * vocab, UInt64(parallel))
        let onGPU = gpu != nil && ngl > 0
        var devices = [Device(name: "Host", weights: weightsHost, kv: mul(kvHost, UInt64(context)), compute: onGPU ? 0 : compute,
                              output: output, overhead: 0)]
        if let gpu {
            devices.append(Device(name: gpu, weights: weightsGPU, kv: mul(kvGPU, UInt64(context)), compute: onGPU ? compute : 0,
                                  output: 0, overhead: gpuOverhead))
        }
        return Estimate(contextSize: context, gpuLayers: ngl, kvBytesPerToken: add(kvHost, kvGPU), devices: devices)
    }

    /// Bytes of `elements` values of a cache type.
    static func row(_ type: CacheType, _ elements: Int) -> UInt64 {
        let t = type.ggml
        return mul(UInt64(max(0, elements)) / t.blockSize + (UInt64(max(0, elements)) % t.blockSize == 0 ? 0 : 1), t.bytesPerBlock)
    }

    /// The largest context (a multiple of 256, at most `limit`) whose estimate fits `available`
    /// bytes per device (`Host` and the GPU name); 0 when not even 256 tokens fit.
    public static func largestContext(_ facts: ModelFacts, _ settings: Settings, gpu: String? = nil, available: [String: UInt64],
                                      limit: Int = 1 << 20) -> Int {
        func fits(_ ctx: Int) -> Bool {
            var s = settings
            s.contextSize = ctx
            return estimate(facts, s, gpu: gpu).devices.allSatisfy { $0.total <= available[$0.name] ?? 0 }
        }
        guard fits(256) else { return 0 }
        var (low, high) = (256, max(256, min(limit, 1 << 26) / 256 * 256))
        if fits(high) { return high }
        while high - low > 256 {
            let mid = (low + high) / 2 / 256 * 256
            if fits(mid) { low = mid } else { high = mid }
        }
        return low
    }
}
