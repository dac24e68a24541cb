import Foundation
import GGUF
import Runtime
import Synchronization
import Testing

/// Speculative decoding: which models may draft for which (llama.cpp's
/// `common_speculative_are_compatible`), `models[].draft` in the configuration and the catalog,
/// the draft's llama-server flags, and its memory in the fit plan.
@Suite struct DraftTests {
    let dir: String

    init() throws {
        dir = NSTemporaryDirectory() + "corral-draft-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    }

    /// Writes a generated model of `spec`'s shape as `name.gguf` and returns its path.
    func model(_ name: String, _ spec: String = "", sparse: Bool = false) throws -> String {
        let path = "\(dir)/\(name).gguf"
        try TestModel.write(shape: try TestModelShape(spec: spec), to: path, sparse: sparse)
        return path
    }

    func facts(_ name: String, _ spec: String = "") throws -> ModelFacts {
        try ModelFacts.read(path: try model(name, spec, sparse: true))
    }

    // MARK: The rule

    @Test func tokenizersAreComparedAsLlamaCppCompares() throws {
        let target = try facts("target")
        let tokenizer = try #require(target.tokenizer)
        #expect(tokenizer.vocabType == "spm")
        #expect(tokenizer.tokenCount == 352)
        #expect(tokenizer.addBOS && tokenizer.bos == 1 && !tokenizer.addEOS && tokenizer.eos == 2)
        // Other weights, other depth: the same vocabulary drafts.
        #expect(target.draftRefusal(try facts("deeper", "layers=3,seed=9,embd=32")) == nil)
        #expect(target.draftRefusal(target) == nil)
        // 48 more tokens, the first 352 the same: within llama.cpp's 128.
        #expect(target.draftRefusal(try facts("v400", "vocab=400")) == nil)
        // 248 more: beyond it.
        let wide = try #require(target.draftRefusal(try facts("v600", "vocab=600")))
        #expect(wide.contains("sizes differ by 248"))
        // Fill-in-the-middle tokens shift every text after the byte tokens.
        let shifted = try #require(target.draftRefusal(try facts("fim", "fim=true")))
        #expect(shifted.contains("token texts differ"))
    }

    @Test func vocabulariesTooLargeToKeepAreComparedByTheirDigests() throws {
        // 5000 tokens: past the reader's 4096-element limit, so the texts are digested as read.
        let big = try facts("v5000", "vocab=5000")
        #expect(big.vocabularySize == 5000)
        #expect(big.tokenizer?.digests?.count == 5000)
        #expect(big.draftRefusal(try facts("v5100", "vocab=5100")) == nil)
        #expect(big.draftRefusal(try facts("v4900", "vocab=4900")) == nil)
        #expect(big.draftRefusal(try facts("v5000fim", "vocab=5000,fim=true"))?.contains("token texts differ") == true)
        // The digests of texts read one way and the other agree.
        let texts = (0..<5000).map { "t\($0)" }
        var changed = texts
        changed[4000] = "x"
        let a = TokenTextDigests(texts: texts)
        let b = TokenTextDigests(texts: Array(texts.prefix(4950)))
        #expect(a.digest(upTo: 4950) == b.digest(upTo: 4950))
        #expect(TokenTextDigests(texts: changed).digest(upTo: 4950) != b.digest(upTo: 4950))
        // Token 0 to 4 are not compared (llama.cpp starts at 5).
        var early = texts
        early[3] = "other"
        #expect(TokenTextDigests(texts: early).digest(upTo: 5000) == a.digest(upTo: 5000))
    }

    @Test func typesBOSAndEOSDecideBeforeTheTexts() {
        let digests = TokenTextDigests(texts: (0..<300).map { "t\($0)" })
        let spm = TokenizerFacts(vocabType: "spm", model: "llama", tokenCount: 300, addBOS: true, bos: 1, addEOS: false, eos: 2, digests: digests)
        var bpe = spm
        bpe.vocabType = "bpe"
        #expect(spm.refusal(ofDraft: bpe)?.contains("vocabulary types differ") == true)
        var noBOS = spm
        noBOS.addBOS = false
        #expect(spm.refusal(ofDraft: noBOS)?.contains("BOS") == true)
        var otherBOS = spm
        otherBOS.bos = 7
        #expect(spm.refusal(ofDraft: otherBOS)?.contains("BOS") == true)
        // The EOS id only matters when EOS is added.
        var otherEOS = spm
        otherEOS.eos = 9
        #expect(spm.refusal(ofDraft: otherEOS) == nil)
        var addsEOS = spm
        addsEOS.addEOS = true
        #expect(spm.refusal(ofDraft: addsEOS)?.contains("EOS") == true)
    }

    // MARK: Configuration

    func parse(_ draft: String) throws -> DraftSetting? {
        let json = #"{"models":[{"name":"m","path":"m.gguf","draft":\#(draft)}]}"#
        return try CorralConfig.parse(Data(json.utf8), baseDirectory: "/base").models[0].draft
    }

    func problem(_ draft: String) -> ConfigError? {
        do { _ = try parse(draft); return nil } catch { return error as? ConfigError }
    }

    @Test func theDraftIsANameAutoOrAnObject() throws {
        #expect(try parse(#""small""#) == DraftSetting(model: .named("small")))
        #expect(try parse(#""AUTO""#) == DraftSetting(model: .auto))
        #expect(try parse(#"{"model":"auto","maxTokens":8,"minP":0.5,"gpuLayers":0}"#)
            == DraftSetting(model: .auto, maxTokens: 8, minP: 0.5, gpuLayers: 0))
        #expect(problem(#""""#)?.key == "models[0].draft")
        #expect(problem(#"{"maxTokens":4}"#)?.key == "models[0].draft.model")
        #expect(problem(#"{"model":"s","minP":2}"#)?.key == "models[0].draft.minP")
        #expect(problem(#"{"model":"s","minP":true}"#)?.key == "models[0].draft.minP")
        #expect(problem(#"{"model":"s","maxTokens":0}"#)?.key == "models[0].draft.maxTokens")
        #expect(problem(#"{"model":"s","colour":1}"#)?.problem == "unknown key")
        let context = try #require(problem(#"{"model":"s","contextSize":512}"#))
        #expect(context.key == "models[0].draft.contextSize")
        #expect(context.problem.contains("the model's own context"))
        #expect(problem("3")?.problem == "must be an object")
    }

    // MARK: The catalog

    func catalog(_ drafts: [String: DraftSetting], extra: [String: String] = [:]) throws -> ModelCatalog {
        var config = CorralConfig()
        let shapes = ["big": "embd=128,layers=4,ff=256", "small": "layers=1,seed=3", "tiny": "embd=32,layers=1,ff=64,seed=5",
                      "fim": "fim=true,embd=32,layers=1", "wide": "vocab=600,embd=32,layers=1"].merging(extra) { $1 }
        for (name, shape) in shapes.sorted(by: { $0.key < $1.key }) {
            var m = CorralConfig.Model(name: name, path: try model(name, shape))
            m.draft = drafts[name]
            config.models.append(m)
        }
        return ModelCatalog.build(from: config)
    }

    @Test func aNamedDraftGivesItsFlagsToTheModel() throws {
        let catalog = try catalog(["big": DraftSetting(model: .named("Small"), maxTokens: 6, minP: 0.25, gpuLayers: 0)])
        let big = try #require(catalog.resolve("big"))
        let draft = try #require(big.draft)
        #expect(draft.model == "small" && !draft.automatic)
        #expect(big.draftArguments == ["-md", "\(dir)/small.gguf", "--spec-type", "draft-simple", "-ngld", "0", "--spec-draft-n-max", "6",
                                       "--spec-draft-p-min", "0.25"])
        #expect(Array(big.defaultArguments.suffix(big.draftArguments.count)) == big.draftArguments)
        #expect(big.fitInputArguments.contains("-md"))
        // llama-server's slot files hold the model's cache, not the draft's: no warm swaps.
        #expect(!big.keepsWarmCaches)
        #expect(catalog.resolve("small")?.keepsWarmCaches == true)
        // Its embedding companion embeds: no draft.
        #expect(big.embeddingCompanion?.draftArguments == [])
        #expect(big.embeddingCompanion?.defaultArguments.contains("-md") == false)
        #expect(catalog.problems.isEmpty)
        // A model drafting for itself is allowed (the same tokenizer); it answers alike.
        let selfDrafted = try self.catalog(["small": DraftSetting(model: .named("small"))])
        #expect(selfDrafted.resolve("small")?.draft?.model == "small")
    }

    @Test func anIncompatibleOrUnknownDraftIsRefusedWithTheReason() throws {
        let catalog = try catalog(["big": DraftSetting(model: .named("fim")), "small": DraftSetting(model: .named("wide")),
                                   "tiny": DraftSetting(model: .named("nowhere"))])
        let big = try #require(catalog.resolve("big"))
        #expect(big.draft == nil && big.draftArguments.isEmpty && big.keepsWarmCaches)
        let refusal = try #require(big.draftRefusal)
        #expect(refusal.requested == "fim")
        #expect(refusal.reason.contains("'fim' does not share the tokenizer of 'big'"))
        #expect(refusal.reason.contains("token texts differ"))
        #expect(catalog.resolve("small")?.draftRefusal?.reason.contains("sizes differ by 248") == true)
        #expect(catalog.resolve("tiny")?.draftRefusal?.reason == "no model named 'nowhere'")
        #expect(catalog.problems.map(\.path).sorted() == ["models[big].draft", "models[small].draft", "models[tiny].draft"])
        #expect(catalog.problems.first { $0.path == "models[big].draft" }?.error.hasPrefix("'fim' refused: ") == true)
    }

    @Test func autoTakesTheSmallestMatchingModel() throws {
        let catalog = try catalog(["big": DraftSetting(model: .auto), "tiny": DraftSetting(model: .auto), "fim": DraftSetting(model: .auto)])
        // tiny < small < big, all one vocabulary; fim and wide have other tokenizers.
        #expect(catalog.resolve("big")?.draft?.model == "tiny")
        #expect(catalog.resolve("big")?.draft?.automatic == true)
        // Nothing smaller than tiny matches; fim matches nothing.
        #expect(catalog.resolve("tiny")?.draftRefusal?.reason == "no smaller library model shares the tokenizer of 'tiny'")
        #expect(catalog.resolve("fim")?.draft == nil)
        let pairs = DraftPairs(catalog)
        #expect(pairs.candidates["big"] == ["tiny", "small"])
        #expect(pairs.candidates["small"] == ["tiny"])
        #expect(pairs.candidates["tiny"] == nil)
        #expect(pairs.draftsFor["tiny"] == ["big", "small"])
        #expect(pairs.draftsFor["fim"] == nil)
    }

    @Test func anEmbeddingModelNeitherDraftsNorIsDrafted() throws {
        let catalog = try catalog(["emb": DraftSetting(model: .auto)], extra: ["emb": "embedding=true,embd=128,layers=4,ff=256"])
        #expect(catalog.resolve("emb")?.draftRefusal?.reason == "'emb' does not generate text")
        #expect(DraftPairs(catalog).draftsFor["emb"] == nil)
    }

    // MARK: The fit

    @Test func theDraftsFlagsAreLeftOutOfTheFitAndItsContextFollowsTheModel() {
        let input = ["-np", "2", "-md", "/d.gguf", "--spec-type", "draft-simple", "-ngld", "3", "--spec-draft-n-max", "4", "--spec-draft-p-min", "0.5",
                     "-c", "2048", "-ctkd", "q8_0", "-fa", "on", "--lora", "/a.gguf", "-kvu"]
        #expect(FitPlanner.fitArguments(input) == ["-np", "2", "-c", "2048", "-ctkd", "q8_0", "-fa", "on", "--lora", "/a.gguf", "-kvu"])
    }

    @Test func theEstimatorCountsTheDraft() async throws {
        let catalog = try catalog(["big": DraftSetting(model: .named("small"))])
        let big = try #require(catalog.resolve("big"))
        let planner = FitPlanner(fitParamsPath: "/nonexistent/llama-fit-params", marginMiB: 1024)
        let plan = await planner.plan(model: big, baseArguments: big.fitInputArguments + ["-c", "2048"])
        #expect(plan.source == .estimator)
        let draftRows = plan.projection.filter { $0.part == FitPlan.draftPart }
        #expect(draftRows.map(\.device) == ["Host"])
        // small: 352 × 64 f32 embeddings and output plus one layer, about 0.2 MiB, rounded up.
        #expect(plan.draftMiB >= 1)
        var alone = big
        alone.draft = nil
        let without = await planner.plan(model: alone, baseArguments: alone.fitInputArguments + ["-c", "2048"])
        #expect(plan.totalMiB == without.totalMiB + plan.draftMiB)
    }

    @Test func llamaFitParamsPlansTheDraftApart() async throws {
        guard let tool = LlamaTools.discover().fitParams?.path else {
            #expect(ProcessInfo.processInfo.environment["CI"] != "true", "llama-fit-params missing under CI")
            return
        }
        // A draft large enough to show in whole MiB: 2 layers of 512 wide f32 weights.
        let catalog = try catalog(["big": DraftSetting(model: .named("drafter"))], extra: ["drafter": "embd=512,ff=1024,layers=2"])
        let big = try #require(catalog.resolve("big"))
        let planner = FitPlanner(fitParamsPath: tool, marginMiB: 0)
        let plan = await planner.plan(model: big, baseArguments: big.fitInputArguments + ["-c", "1024"])
        #expect(plan.source == .fitParams, "\(plan.note ?? "")")
        #expect(plan.note == nil)
        let rows = plan.projection.filter { $0.part == FitPlan.draftPart }
        #expect(!rows.isEmpty)
        // The draft's weights (about 20 MiB), as its header counts them, to the MiB.
        let weights = Int(try #require(catalog.resolve("drafter")?.facts?.tensorBytes)) >> 20
        #expect(weights >= 18)
        #expect(abs(rows.reduce(0) { $0 + $1.modelMiB } - weights) <= 1)
        var alone = big
        alone.draft = nil
        let without = await planner.plan(model: alone, baseArguments: alone.fitInputArguments + ["-c", "1024"])
        #expect(plan.totalMiB == without.totalMiB + plan.draftMiB)
        #expect(plan.contextSize == 1024)
    }

    // MARK: Agreement with llama-server

    @Test func llamaServerAcceptsAndRefusesTheSamePairs() async throws {
        guard let server = LlamaTools.discover().server?.path else {
            #expect(ProcessInfo.processInfo.environment["CI"] != "true", "llama-server missing under CI")
            return
        }
        let target = try model("target")
        for (name, shape) in [("v400", "vocab=400,layers=1"), ("v600", "vocab=600,layers=1"), ("fim", "fim=true,layers=1"), ("same", "layers=1,seed=4")] {
            let draft = try model(name, shape)
            let ours = try ModelFacts.read(path: target).draftRefusal(try ModelFacts.read(path: draft))
            // llama-server logs "the target and draft vocabs are not compatible" and goes on without
            // the draft; it is listening either way.
            let lines = Mutex<[String]>([])
            let child = try ChildProcess(executable: server, arguments: ["-m", target, "-md", draft, "--spec-type", "draft-simple", "-c", "512",
                                                                         "--host", "127.0.0.1", "--port", "0", "--no-webui"],
                                         onLine: { line in if let line { lines.withLock { $0.append(line) } } })
            for _ in 0..<1500 where !lines.withLock({ $0.contains { $0.contains("listening on") || $0.contains("failed to load") } }) {
                try await Task.sleep(for: .milliseconds(20))
            }
            _ = await child.stop(grace: .seconds(2))
            let log = lines.withLock { $0 }
            #expect(log.contains { $0.contains("listening on") }, "\(name): \(log.suffix(5))")
            let refused = log.contains { $0.contains("vocabs are not compatible") }
            #expect(refused == (ours != nil), "\(name): llama-server \(refused ? "refused" : "accepted"), Corral: \(ours ?? "accepted")")
        }
    }
}

