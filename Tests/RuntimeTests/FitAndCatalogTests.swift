import Foundation
import GGUF
import Runtime
import Testing

@Suite struct FitAndCatalogTests {
    @Test func parsesFitParamsOutputLines() {
        #expect(FitPlan.parseArguments("-c 2048 -ngl -1") == ["-c", "2048", "-ngl", "-1"])
        let line = #"-c 32768 -ngl 62 -ts 30,32 -ot "blk\.31\.ffn_(gate|gate_up|down).*=CUDA1,blk\.58\.ffn_(up|down|gate_up|gate)_(ch|)exps=CPU""#
        let args = FitPlan.parseArguments(line)
        let plan = FitPlan(arguments: args, projection: [], source: .fitParams)
        #expect(plan.contextSize == 32768)
        #expect(plan.gpuLayers == 62)
        #expect(plan.tensorSplit == "30,32")
        #expect(plan.overrideTensors == #"blk\.31\.ffn_(gate|gate_up|down).*=CUDA1,blk\.58\.ffn_(up|down|gate_up|gate)_(ch|)exps=CPU"#)
        // Older builds: unquoted -ot and 999 for all layers.
        #expect(FitPlan.parseArguments("-c 4096 -ngl 999 -ot a=CPU").count == 6)
    }

    @Test func parsesFitPrintProjection() {
        let p = FitPlan.parseProjection(["CUDA0 4899 1024 298", "Host 72 32 73 ", "garbage line", "warning: x"])
        #expect(p.count == 2)
        #expect(p[0] == .init(device: "CUDA0", modelMiB: 4899, contextMiB: 1024, computeMiB: 298))
        #expect(p[1].totalMiB == 177)
    }

    @Test func parsesListDevices() {
        let devices = Device.parseList([
            "Available devices:", "  CUDA0: NVIDIA H100 80GB HBM3 (81089 MiB, 80514 MiB free)", "  (none)",
        ])
        #expect(devices == [Device(name: "CUDA0", description: "NVIDIA H100 80GB HBM3", totalMiB: 81089, freeMiB: 80514)])
    }

    @Test func catalogResolvesNamesSafely() throws {
        let dir = NSTemporaryDirectory() + "corral-cat-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: dir + "/sub", withIntermediateDirectories: true)
        try TestModel.write(shape: TestModelShape(), to: dir + "/Llama-Tiny.gguf")
        try TestModel.write(shape: TestModelShape(), to: dir + "/sub/other.gguf")
        try TestModel.write(shape: TestModelShape(), to: dir + "/sub/mmproj-x.gguf")
        FileManager.default.createFile(atPath: dir + "/broken.gguf", contents: Data("nope".utf8))
        var config = CorralConfig()
        config.sources = [.init(directory: dir, recursive: true)]
        var explicit = CorralConfig.Model(name: "Chat", path: dir + "/Llama-Tiny.gguf")
        explicit.aliases = ["c"]
        config.models = [explicit]
        let catalog = ModelCatalog.build(from: config)
        #expect(catalog.models.map(\.id).sorted() == ["chat", "other"])
        #expect(catalog.resolve("CHAT:latest")?.id == "chat")
        #expect(catalog.resolve("c")?.id == "chat")
        #expect(catalog.resolve("Other")?.path == dir + "/sub/other.gguf")
        #expect(catalog.resolve("sub/other") == nil)
        #expect(catalog.resolve(dir + "/sub/other.gguf") == nil)
        #expect(catalog.resolve("../other") == nil)
        #expect(catalog.problems.count == 1)
    }

    @Test func estimatorFallbackWhenFitParamsIsMissing() async throws {
        let dir = NSTemporaryDirectory() + "corral-est-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        var shape = TestModelShape()
        shape.embeddingLength = 256
        shape.vocabularySize = 4000
        try TestModel.write(shape: shape, to: dir + "/m.gguf", sparse: true)
        var config = CorralConfig()
        config.models = [.init(name: "m", path: dir + "/m.gguf")]
        let spec = try #require(ModelCatalog.build(from: config).resolve("m"))
        let planner = FitPlanner(fitParamsPath: "/nonexistent/llama-fit-params", marginMiB: 1024)
        let plan = await planner.plan(model: spec, baseArguments: ["-c", "2048"])
        #expect(plan.source == .estimator)
        #expect(plan.note?.contains("cannot start") == true)
        // Weights: 2 × 4000 × 256 × 4 bytes ≈ 7.8 MiB plus layers.
        #expect(plan.projection.first?.modelMiB == Int(spec.facts!.tensorBytes) >> 20)
    }
}
