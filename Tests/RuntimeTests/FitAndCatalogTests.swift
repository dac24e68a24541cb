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

    @Test func llamaServersOwnFlagsAreLeftOutOfTheFitInput() {
        let input = ["-np", "1", "--embeddings", "--pooling", "mean", "-c", "2048", "--chat-template-file", "/t.jinja", "--jinja", "--reranking",
                     "--lora", "/a.gguf", "-fa", "on"]
        #expect(FitPlanner.fitArguments(input) == ["-np", "1", "-c", "2048", "--lora", "/a.gguf", "-fa", "on"])
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

    @Test func longSpellingsOfAPulledNameResolveToTheModel() throws {
        let dir = NSTemporaryDirectory() + "corral-names-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        try TestModel.write(shape: TestModelShape(), to: dir + "/a.gguf")
        var config = CorralConfig()
        config.models = [.init(name: "llama3:8b", path: dir + "/a.gguf"), .init(name: "hf.co/org/repo", path: dir + "/a.gguf")]
        let catalog = ModelCatalog.build(from: config)
        #expect(catalog.resolve("registry.ollama.ai/library/llama3:8b")?.id == "llama3:8b")
        #expect(catalog.resolve("library/Llama3:8b")?.id == "llama3:8b")
        #expect(catalog.resolve("huggingface.co/org/repo")?.id == "hf.co/org/repo")
        #expect(catalog.resolve("other.registry/library/llama3:8b") == nil)
        #expect(catalog.resolve("registry.ollama.ai/") == nil)
    }

    @Test func aHubFileAnswersToTheNamesItWasPulledAs() throws {
        let dir = NSTemporaryDirectory() + "corral-hub-\(UUID().uuidString)"
        let snapshot = dir + "/models--org--repo-GGUF/snapshots/abc"
        try FileManager.default.createDirectory(atPath: snapshot, withIntermediateDirectories: true)
        try TestModel.write(shape: TestModelShape(), to: snapshot + "/repo-Q8_0.gguf")
        try TestModel.write(shape: TestModelShape(), to: snapshot + "/repo-F32.gguf")
        let names = ["hf.co/org/repo-GGUF:Q8_0": "repo-Q8_0.gguf", "hf.co/org/repo-GGUF:q8": "repo-Q8_0.gguf", "hf.co/org/repo-GGUF:gone": "gone.gguf"]
        try JSONEncoder().encode(names).write(to: URL(fileURLWithPath: dir + "/models--org--repo-GGUF/" + SourceScanner.pulledNamesFile))
        var config = CorralConfig()
        config.sources = [.init(directory: dir, kind: .huggingface)]
        let catalog = ModelCatalog.build(from: config)
        let q8 = try #require(catalog.resolve("hf.co/org/repo-GGUF:repo-Q8_0"))
        #expect(catalog.resolve("hf.co/org/repo-GGUF:Q8_0")?.id == q8.id)
        #expect(catalog.resolve("hf.co/org/repo-gguf:q8")?.id == q8.id)
        #expect(q8.listedAliases.sorted() == ["hf.co/org/repo-gguf:q8", "hf.co/org/repo-gguf:q8_0"])
        #expect(catalog.resolve("hf.co/org/repo-GGUF:gone") == nil)
        #expect(catalog.resolve("hf.co/org/repo-GGUF:F32") == nil)
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

/// Jan's model folders, in both layouts, from fixture folders written here.
@Suite struct JanSourceTests {
    func write(_ text: String, _ path: String) throws {
        try FileManager.default.createDirectory(atPath: (path as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
        try Data(text.utf8).write(to: URL(fileURLWithPath: path))
    }

    @Test func janModelsAreServedAsJanSlashID() throws {
        let data = NSTemporaryDirectory() + "corral-jan-\(UUID().uuidString)"
        let current = data + "/llamacpp/models/org/model/q4"
        try FileManager.default.createDirectory(atPath: current, withIntermediateDirectories: true)
        try TestModel.write(shape: TestModelShape(), to: current + "/model.gguf")
        let sha = String(repeating: "ab", count: 32)
        try write("model_path: llamacpp/models/org/model/q4/model.gguf\nname: org/model/q4\nsize_bytes: 64\nmodel_sha256: \(sha)\nembedding: false\n", current + "/model.yml")
        // Older Jan: model.json naming its file.
        try FileManager.default.createDirectory(atPath: data + "/models/tiny-1b", withIntermediateDirectories: true)
        try TestModel.write(shape: TestModelShape(), to: data + "/models/tiny-1b/tiny-1b.Q4.gguf")
        try write(#"{"id":"tiny-1b","format":"gguf","sources":[{"filename":"tiny-1b.Q4.gguf","url":"x"}],"settings":{"ctx_len":1024,"llama_model_path":"tiny-1b.Q4.gguf"}}"#,
                  data + "/models/tiny-1b/model.json")
        // Descriptions pointing outside the data folder, or at nothing, are skipped.
        try write("model_path: ../../etc/passwd.gguf\n", data + "/llamacpp/models/escape/model.yml")
        try write("model_path: /tmp/absolute.gguf\n", data + "/llamacpp/models/absolute/model.yml")
        try write("model_path: llamacpp/models/missing/model.gguf\n", data + "/llamacpp/models/missing/model.yml")
        try write(#"{"format":"gguf","settings":{"llama_model_path":"../../x.gguf"}}"#, data + "/models/climb/model.json")
        try write(#"{"format":"api","settings":{}}"#, data + "/models/remote/model.json")

        var config = CorralConfig()
        config.sources = [.init(directory: data, kind: .jan)]
        let catalog = ModelCatalog.build(from: config)
        #expect(catalog.models.map(\.id).sorted() == ["jan/org/model/q4", "jan/tiny-1b"])
        let current4 = try #require(catalog.resolve("jan/org/model/q4"))
        #expect(current4.path == current + "/model.gguf")
        #expect(current4.knownDigest == sha)
        #expect(current4.facts != nil)
        let legacy = try #require(catalog.resolve("JAN/tiny-1b"))
        #expect(legacy.contextSize == 1024)
        #expect(legacy.path == data + "/models/tiny-1b/tiny-1b.Q4.gguf")
    }

    @Test func theJanKindParsesWithItsDefaultFolder() throws {
        let c = try CorralConfig.parse(Data(#"{"sources":[{"kind":"jan"}]}"#.utf8), baseDirectory: "/base")
        #expect(c.sources.first?.kind == .jan)
        #expect(c.sources.first?.directory.hasSuffix("/Jan/data") == true)
    }
}
