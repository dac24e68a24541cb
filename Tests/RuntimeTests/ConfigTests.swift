import Foundation
import Runtime
import Testing

@Suite struct ConfigTests {
    func parse(_ json: String) throws -> CorralConfig {
        try CorralConfig.parse(Data(json.utf8), baseDirectory: "/base")
    }

    func problem(_ json: String) -> ConfigError? {
        do { _ = try parse(json); return nil } catch { return error as? ConfigError }
    }

    @Test func theShippedRoutesJSONIsValid() throws {
        let path = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("../../routes.json").standardized.path
        let config = try CorralConfig.load(path: path)
        #expect(config.listen.port == 11434)
        #expect(config.listen.host == "127.0.0.1")
        #expect(config.models.first?.name == "smollm2-135m-instruct")
        #expect(config.models.first?.aliases == ["demo"])
        #expect(config.defaultModel == "smollm2-135m-instruct")
        let offline = try CorralConfig.load(path: path.replacingOccurrences(of: "routes.json", with: "routes.offline.json"))
        #expect(offline.defaultModel == "random-demo")
        #expect(offline.models.first?.aliases == ["demo"])
    }

    @Test func fullConfigParses() throws {
        let c = try parse(#"""
        {"listen":{"host":"0.0.0.0","port":8080},"tls":{"certificate":"certs/a.pem","key":"/k.pem"},
         "scheduler":{"maxLoadedModels":2,"memoryMarginMiB":512,"memoryBudgetMiB":4096,"defaultTTL":"90s",
                      "queueDepth":5,"loadTimeout":30,"fit":false},
         "sources":[{"directory":"models","recursive":false}],
         "models":[{"name":"m","path":"m.gguf","aliases":["x"],"args":["-fa","on"],"contextSize":4096,
                    "ttl":"-1","parallel":2,"pinned":true,"embeddings":true}],
         "upstreams":[{"name":"r","baseURL":"http://127.0.0.1:9","models":["gpt"],"apiKeyEnv":"K"}],
         "maxBodyBytes":2048}
        """#)
        #expect(c.tls?.certificate == "/base/certs/a.pem")
        #expect(c.tls?.key == "/k.pem")
        #expect(c.scheduler.defaultTTL == .seconds(90))
        #expect(c.scheduler.loadTimeout == .seconds(30))
        #expect(c.scheduler.fit == false)
        #expect(c.sources.first?.directory == "/base/models")
        #expect(c.models.first?.ttl == .seconds(-1))
        #expect(c.models.first?.pinned == true)
        #expect(c.upstreams.first?.models == ["gpt"])
    }

    @Test func warmSwapsAreBoundedTimedAndOptOut() throws {
        let c = try parse(#"{"cache":{"diskMiB":64,"saveTimeout":"500ms"},"models":[{"name":"a","path":"a.gguf"},{"name":"b","path":"b.gguf","warmSwap":false}]}"#)
        #expect(c.cacheDiskMiB == 64 && c.cacheSaveTimeout == .milliseconds(500))
        #expect(c.models[0].warmSwap && !c.models[1].warmSwap)
        let defaults = try parse("{}")
        #expect(defaults.cacheDiskMiB == 4096 && defaults.cacheSaveTimeout == .seconds(2))
        #expect(problem(#"{"cache":{"diskMiB":-1}}"#)?.key == "cache.diskMiB")
        #expect(problem(#"{"cache":{"saveTimeout":"soon"}}"#)?.key == "cache.saveTimeout")
        let catalog = ModelCatalog.build(from: c)
        let a = try #require(catalog.resolve("a"))
        #expect(a.keepsWarmCaches)
        #expect(catalog.resolve("b")?.keepsWarmCaches == false)
        // The embedding companion keeps no prompts to save.
        #expect(a.embeddingCompanion?.keepsWarmCaches == false)
    }

    @Test func thePromptCacheIsSizedAndCounted() throws {
        let c = try parse(#"{"cache":{"ramMiB":300},"models":[{"name":"a","path":"a.gguf"},{"name":"b","path":"b.gguf","cacheRamMiB":0}]}"#)
        #expect(c.cacheRamMiB == 300 && c.models[0].cacheRamMiB == nil && c.models[1].cacheRamMiB == 0)
        #expect(try parse("{}").cacheRamMiB == 1024)
        #expect(problem(#"{"cache":{"ramMiB":-1}}"#)?.key == "cache.ramMiB")
        let catalog = ModelCatalog.build(from: c)
        let a = try #require(catalog.resolve("a"))
        #expect(a.cacheRamMiB == 300 && a.defaultArguments.starts(with: ["-np", "4", "--cache-ram", "300"]))
        #expect(catalog.resolve("b")?.cacheRamMiB == 0)
        // The embedding companion keeps no prompts.
        #expect(a.embeddingCompanion?.defaultArguments.contains(where: { $0 == "--embeddings" }) == true)
        let companion = try #require(a.embeddingCompanion?.defaultArguments)
        #expect(companion[companion.firstIndex(of: "--cache-ram")! + 1] == "0")
        // What a launch keeps: the last --cache-ram given (pinned arguments come last).
        #expect(ModelSpec.cacheRamMiB(in: ["--cache-ram", "300", "-cram", "100"]) == 100)
        #expect(ModelSpec.cacheRamMiB(in: ["--cache-ram", "-1"]) == 8192)
        #expect(ModelSpec.cacheRamMiB(in: ["-np", "2"]) == 8192)
    }

    @Test func idleSlotsAreReusedOnlyWhenTheyHoldMostOfThePrompt() throws {
        let catalog = ModelCatalog.build(from: try parse(#"{"models":[{"name":"a","path":"a.gguf"},{"name":"b","path":"b.gguf","cacheRamMiB":0}]}"#))
        let a = try #require(catalog.resolve("a")).defaultArguments
        #expect(a[a.firstIndex(of: "--slot-prompt-similarity")! + 1] == "0.9")
        // A server flag: llama-fit-params would refuse it (and every plan would fall back to the estimator).
        #expect(!FitPlanner.fitArguments(a).contains("--slot-prompt-similarity") && !FitPlanner.fitArguments(a).contains("0.9"))
        // Without a prompt cache there is nothing to restore from; embedding instances keep no prompts.
        #expect(catalog.resolve("b")?.defaultArguments.contains("--slot-prompt-similarity") == false)
        #expect(catalog.resolve("a")?.embeddingCompanion?.defaultArguments.contains("--slot-prompt-similarity") == false)
        let tuned = ModelCatalog.build(from: try parse(#"{"cache":{"slotSimilarity":0.1},"models":[{"name":"a","path":"a.gguf"}]}"#))
        #expect(tuned.resolve("a")?.defaultArguments.contains("0.1") == true)
        #expect(problem(#"{"cache":{"slotSimilarity":1.5}}"#)?.key == "cache.slotSimilarity")
        #expect(problem(#"{"cache":{"slotSimilarity":true}}"#)?.key == "cache.slotSimilarity")
    }

    @Test func unknownKeysAndBadValuesNameTheKey() {
        #expect(problem(#"{"lisen":{}}"#)?.key == "lisen")
        #expect(problem(#"{"listen":{"prot":1}}"#)?.key == "listen.prot")
        #expect(problem(#"{"listen":{"port":"80"}}"#)?.key == "listen.port")
        #expect(problem(#"{"listen":{"port":70000}}"#)?.key == "listen.port")
        #expect(problem(#"{"scheduler":{"defaultTTL":"soon"}}"#)?.key == "scheduler.defaultTTL")
        #expect(problem(#"{"scheduler":{"maxLoadedModels":true}}"#)?.key == "scheduler.maxLoadedModels")
        #expect(problem(#"{"models":[{"name":"a"}]}"#)?.key == "models[0].path")
        #expect(problem(#"{"models":[{"name":"a","path":"b","pinned":"yes"}]}"#)?.key == "models[0].pinned")
        #expect(problem(#"{"upstreams":[{"name":"a","baseURL":"ftp://x"}]}"#)?.key == "upstreams[0].baseURL")
        #expect(problem(#"[1]"#)?.key == "(root)")
        #expect(problem(#"{"#)?.key == "(file)")
    }

    @Test func durations() {
        #expect(parseDuration("5m") == .seconds(300))
        #expect(parseDuration("250ms") == .milliseconds(250))
        #expect(parseDuration("2h") == .seconds(7200))
        #expect(parseDuration(NSNumber(value: 1.5)) == .milliseconds(1500))
        #expect(parseDuration("-1") == .seconds(-1))
        #expect(parseDuration("x") == nil)
    }
}
