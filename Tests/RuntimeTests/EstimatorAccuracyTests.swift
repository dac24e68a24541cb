import Foundation
import GGUF
import Runtime
import Testing

/// The header estimator against llama.cpp's own projection (`llama-fit-params --fit-print on`,
/// CPU build, no mmap) over generated shapes: dense and GQA, F16 and Q8_0 weights, several
/// contexts, ubatch sizes, slot counts, KV types and flash attention on and off. Weights and KV
/// must agree within 1 % (or 1 MiB of print rounding), compute within 15 %.
@Suite(.serialized) struct EstimatorAccuracyTests {
    struct Case: CustomStringConvertible {
        var shape: String
        var context: Int
        var ubatch = 512
        var parallel = 1
        var cacheType: MemoryEstimator.CacheType = .f16
        var flashAttention = true
        var description: String { "\(shape) c=\(context) ub=\(ubatch) np=\(parallel) kv=\(cacheType) fa=\(flashAttention)" }
    }

    static let dense = "embd=2048,layers=8,heads=16,kv=16,ff=5632,vocab=32000,ctx=16384,type=f16"
    static let gqa = "embd=2048,layers=8,heads=16,kv=4,ff=5632,vocab=32000,ctx=16384,type=f16"
    static let gqaQ8 = "embd=3072,layers=6,heads=24,kv=8,ff=8192,vocab=48000,ctx=32768,type=q8_0"
    static let wide = "embd=4096,layers=4,heads=32,kv=8,ff=11008,vocab=32000,ctx=8192,type=q8_0"
    static let small = "embd=1024,layers=12,heads=8,kv=2,ff=2816,vocab=16000,ctx=8192,type=f32"

    static let cases: [Case] = [
        Case(shape: dense, context: 2048), Case(shape: dense, context: 8192), Case(shape: dense, context: 4096, flashAttention: false),
        Case(shape: dense, context: 4096, cacheType: .q8_0), Case(shape: dense, context: 4096, ubatch: 1024),
        Case(shape: gqa, context: 4096), Case(shape: gqa, context: 16384), Case(shape: gqa, context: 3000, parallel: 4),
        Case(shape: gqa, context: 8192, ubatch: 256, flashAttention: false), Case(shape: gqa, context: 8192, cacheType: .q8_0),
        Case(shape: gqaQ8, context: 4096), Case(shape: gqaQ8, context: 32768), Case(shape: gqaQ8, context: 8192, flashAttention: false),
        Case(shape: gqaQ8, context: 8192, ubatch: 2048), Case(shape: gqaQ8, context: 16384, cacheType: .q8_0),
        Case(shape: wide, context: 2048), Case(shape: wide, context: 8192, parallel: 2), Case(shape: wide, context: 4096, flashAttention: false),
        Case(shape: small, context: 8192), Case(shape: small, context: 5000, ubatch: 128),
        // (A quantized V cache needs flash attention: llama.cpp refuses q8_0 KV with -fa off.)
        Case(shape: small, context: 4096, ubatch: 256, cacheType: .q8_0),
    ]

    @Test func estimatorMatchesLlamaFitParams() async throws {
        let tools = LlamaTools.discover()
        guard let fitParams = tools.fitParams?.path else {
            #expect(ProcessInfo.processInfo.environment["CI"] != "true", "llama-fit-params missing under CI")
            return
        }
        let dir = NSTemporaryDirectory() + "corral-estimator-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        var files: [String: String] = [:]
        var report: [String] = []
        for c in Self.cases {
            if files[c.shape] == nil {
                let path = dir + "/m\(files.count).gguf"
                // Sparse: the tensor data is a hole; llama-fit-params reads only the header.
                try TestModel.write(shape: try TestModelShape(spec: c.shape), to: path, sparse: true)
                files[c.shape] = path
            }
            let path = files[c.shape]!
            let args = ["-m", path, "-c", String(c.context), "-np", String(c.parallel), "-ub", String(c.ubatch), "-b", String(max(2048, c.ubatch)),
                        "-fa", c.flashAttention ? "on" : "off", "-ctk", c.cacheType.rawValue, "-ctv", c.cacheType.rawValue,
                        "--fit-print", "on", "-lm", "none"]
            let run = try await LlamaTools.run(fitParams, args)
            let projection = FitPlan.parseProjection(run.lines)
            let host = try #require(projection.first { $0.device == "Host" }, "\(c): \(run.lines.suffix(5))")
            var settings = MemoryEstimator.Settings()
            settings.contextSize = c.context
            settings.parallel = c.parallel
            settings.ubatch = c.ubatch
            settings.flashAttention = c.flashAttention
            settings.cacheTypeK = c.cacheType
            settings.cacheTypeV = c.cacheType
            let facts = try ModelFacts.read(path: path)
            let e = MemoryEstimator.estimate(facts, settings).devices[0]
            let mib = 1_048_576.0
            let (w, kv, compute) = (Double(e.weights) / mib, Double(e.kv + e.output) / mib, Double(e.compute) / mib)
            report.append(String(format: "%@: weights %.1f/%d kv %.1f/%d compute %.1f/%d", c.description, w, host.modelMiB, kv, host.contextMiB, compute, host.computeMiB))
            #expect(abs(w - Double(host.modelMiB)) <= max(1, 0.01 * Double(host.modelMiB)), "\(c) weights \(w) vs \(host.modelMiB)")
            #expect(abs(kv - Double(host.contextMiB)) <= max(1, 0.01 * Double(host.contextMiB)), "\(c) kv \(kv) vs \(host.contextMiB)")
            #expect(abs(compute - Double(host.computeMiB)) <= 0.15 * Double(host.computeMiB), "\(c) compute \(compute) vs \(host.computeMiB)")
        }
        print(report.joined(separator: "\n"))
    }

    /// Facts of a generated shape written as a sparse file.
    static func sparseFacts(_ shape: String) throws -> ModelFacts {
        let path = NSTemporaryDirectory() + "corral-facts-\(UUID().uuidString).gguf"
        defer { try? FileManager.default.removeItem(atPath: path) }
        try TestModel.write(shape: try TestModelShape(spec: shape), to: path, sparse: true)
        return try ModelFacts.read(path: path)
    }

    @Test func largestContextIsTheLastThatFits() throws {
        let facts = try Self.sparseFacts(Self.gqa)
        var s = MemoryEstimator.Settings()
        s.contextSize = 4096
        let at4k = MemoryEstimator.estimate(facts, s)
        let budget = at4k.devices[0].total + at4k.kvBytesPerToken * 200  // less than 256 more tokens
        let largest = MemoryEstimator.largestContext(facts, s, available: ["Host": budget])
        #expect(largest == 4096)
        s.contextSize = largest + 256
        #expect(MemoryEstimator.estimate(facts, s).devices[0].total > budget)
        #expect(MemoryEstimator.largestContext(facts, s, available: ["Host": 1 << 20]) == 0)
    }

    @Test func layersOffloadFromTheEnd() throws {
        let facts = try Self.sparseFacts(Self.gqa)
        var s = MemoryEstimator.Settings()
        s.contextSize = 2048
        s.gpuLayers = 3
        let e = MemoryEstimator.estimate(facts, s, gpu: "CUDA0")
        let gpu = e.devices[1]
        // -ngl counts the output layer: 3 puts the last 2 repeating layers on the GPU, not the output.
        #expect(gpu.weights == facts.layerBytes.suffix(2).reduce(0, +))
        #expect(gpu.kv == e.kvBytesPerToken / 8 * 2 * 2048)
        #expect(gpu.compute > 0 && e.devices[0].compute == 0)
        s.gpuLayers = nil
        let all = MemoryEstimator.estimate(facts, s, gpu: "CUDA0")
        #expect(all.devices[1].weights == facts.layerBytes.reduce(0, +) + facts.outputBytes)
        #expect(all.devices[0].weights == facts.inputBytes)
    }
}
