import Foundation
import GGUF
import Runtime

/// Whether and how a model fits this machine, from the header estimator.
public struct Compatibility: Sendable {
    public enum Verdict: String, Sendable { case fitsGPU = "fits_gpu", partialOffload = "partial_offload", cpuOnly = "cpu_only", doesNotFit = "does_not_fit" }

    public let hardware: HardwareInfo
    /// Free memory kept per device (the scheduler's margin).
    public let marginMiB: Int

    public init(hardware: HardwareInfo, marginMiB: Int) {
        self.hardware = hardware
        self.marginMiB = marginMiB
    }

    /// The first accelerator and the bytes each device may use.
    public var gpu: Device? { hardware.devices.first }
    public var available: [String: UInt64] {
        var a: [String: UInt64] = ["Host": UInt64(max(0, hardware.ramTotalMiB - marginMiB)) << 20]
        if let gpu { a[gpu.name] = UInt64(max(0, gpu.freeMiB - marginMiB)) << 20 }
        return a
    }

    public func fits(_ e: MemoryEstimator.Estimate) -> Bool { e.devices.allSatisfy { $0.total <= available[$0.name] ?? 0 } }

    /// The verdict and the estimate it rests on: every layer on the GPU, else the most layers
    /// that fit, else CPU only.
    public func assess(_ facts: ModelFacts, _ settings: MemoryEstimator.Settings) -> (verdict: Verdict, estimate: MemoryEstimator.Estimate) {
        let layers = facts.blockCount ?? facts.layerBytes.count
        var s = settings
        if let gpu {
            s.gpuLayers = settings.gpuLayers ?? (layers + 1)
            let full = MemoryEstimator.estimate(facts, s, gpu: gpu.name)
            if fits(full) { return (s.gpuLayers! > layers ? .fitsGPU : .partialOffload, full) }
            if settings.gpuLayers == nil {
                for ngl in stride(from: layers, through: 1, by: -1) {
                    s.gpuLayers = ngl
                    let partial = MemoryEstimator.estimate(facts, s, gpu: gpu.name)
                    if fits(partial) { return (.partialOffload, partial) }
                }
            }
        }
        s.gpuLayers = 0
        let cpu = MemoryEstimator.estimate(facts, s, gpu: nil)
        return (fits(cpu) ? .cpuOnly : .doesNotFit, cpu)
    }

    /// What would make a model fit (or fit with more context), each with the MiB it saves.
    public func suggestions(_ facts: ModelFacts, _ settings: MemoryEstimator.Settings, current: MemoryEstimator.Estimate) -> [Suggestion] {
        var out: [Suggestion] = []
        func saving(_ change: (inout MemoryEstimator.Settings) -> Void, _ what: String) {
            var s = settings
            s.gpuLayers = current.gpuLayers
            change(&s)
            let e = MemoryEstimator.estimate(facts, s, gpu: current.gpuLayers > 0 ? gpu?.name : nil)
            let saved = Int((Int64(current.total) - Int64(e.total)) / 1_048_576)
            if saved > 0 { out.append(Suggestion(change: what, savesMiB: saved)) }
        }
        var quantized = settings
        (quantized.cacheTypeK, quantized.cacheTypeV, quantized.flashAttention) = (.q8_0, .q8_0, true)
        if (settings.cacheTypeK == .f16 || settings.cacheTypeV == .f16) && MemoryEstimator.cacheProblem(facts, quantized) == nil {
            saving({ $0.cacheTypeK = .q8_0; $0.cacheTypeV = .q8_0; $0.flashAttention = true }, "q8_0 KV cache (-ctk q8_0 -ctv q8_0, needs flash attention)")
        }
        if !settings.flashAttention { saving({ $0.flashAttention = true }, "flash attention (-fa on)") }
        if !settings.unifiedKV && settings.parallel > 1 { saving({ $0.parallel = 1 }, "one parallel slot (-np 1)") }
        if settings.ubatch > 256 { saving({ $0.ubatch = 256 }, "smaller ubatch (-ub 256)") }
        return out
    }

    /// Memory per device over context sizes and GPU layer counts, for plotting.
    public func table(_ facts: ModelFacts, _ settings: MemoryEstimator.Settings) -> [TableRow] {
        let trained = facts.contextLength ?? 4096
        var contexts = [512, 1024, 2048, 4096, 8192, 16384, 32768, 65536, 131072].filter { $0 <= max(trained, 2048) }
        if !contexts.contains(trained) { contexts.append(trained) }
        let layers = facts.blockCount ?? facts.layerBytes.count
        let layerCounts = gpu == nil ? [0] : Array(Set([0, layers / 4, layers / 2, 3 * layers / 4, layers, layers + 1])).sorted()
        var rows: [TableRow] = []
        for ngl in layerCounts {
            for ctx in contexts.sorted() {
                var s = settings
                s.contextSize = ctx
                s.gpuLayers = ngl
                let e = MemoryEstimator.estimate(facts, s, gpu: ngl > 0 ? gpu?.name : nil)
                rows.append(TableRow(context: ctx, gpuLayers: ngl, fits: fits(e), deviceMiB: Dictionary(
                    e.devices.map { ($0.name, Int($0.total / 1_048_576)) }, uniquingKeysWith: { _, last in last })))
            }
        }
        return rows
    }

    /// A change that saves memory, and how much.
    public struct Suggestion: Encodable, Sendable, Equatable {
        public var change: String
        public var savesMiB: Int
    }

    /// One point of the table: a context and GPU layer count, whether it fits, and each
    /// device's MiB (encoded as `<device>MiB`, next to the other fields).
    public struct TableRow: Encodable, Sendable, Equatable {
        public var context: Int
        public var gpuLayers: Int
        public var fits: Bool
        public var deviceMiB: [String: Int]

        struct Key: CodingKey {
            var stringValue: String
            var intValue: Int? { nil }
            init(_ name: String) { stringValue = name }
            init?(stringValue: String) { self.stringValue = stringValue }
            init?(intValue: Int) { nil }
        }

        public func encode(to encoder: any Encoder) throws {
            var c = encoder.container(keyedBy: Key.self)
            try c.encode(context, forKey: Key("context"))
            try c.encode(gpuLayers, forKey: Key("gpuLayers"))
            try c.encode(fits, forKey: Key("fits"))
            for (device, mib) in deviceMiB { try c.encode(mib, forKey: Key(device + "MiB")) }
        }
    }
}
