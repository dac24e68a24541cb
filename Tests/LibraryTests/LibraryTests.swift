import Foundation
import GGUF
import GRDB
import Runtime
import Store
import Synchronization
import Testing

@testable import Library

/// The fit-plan and allocation cache in a real SQLite store: keyed by everything that changes the
/// answer, kept across a reopen, and a failed write reported, never dropped.
@Suite struct FitPlanCacheTests {
    /// A directory with a test model `m`, its spec and a fresh store.
    func fitCacheFixture() throws -> (dir: String, spec: ModelSpec, store: Store) {
        let dir = NSTemporaryDirectory() + "corral-fitcache-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        try TestModel.write(shape: TestModelShape(), to: dir + "/m.gguf")
        var config = CorralConfig()
        config.models = [.init(name: "m", path: dir + "/m.gguf")]
        let spec = try #require(ModelCatalog.build(from: config).resolve("m"))
        return (dir, spec, try Store.open(path: dir + "/corral.sqlite"))
    }

    @Test func fitPlansAreCachedInSQLiteAndInvalidatedByFileChanges() async throws {
        let (dir, spec, store) = try fitCacheFixture()
        let cache = StoreFitPlanCache(store: store, hardwareFingerprint: "hw1", llamaBuild: "b1", writeFailed: Self.unexpected)
        let plan = FitPlan(arguments: ["-c", "2048", "-ngl", "-1"], projection: [.init(device: "Host", modelMiB: 1, contextMiB: 2, computeMiB: 3)], source: .fitParams)
        await cache.save(plan, for: spec, arguments: ["-np", "4"])
        #expect(await cache.plan(for: spec, arguments: ["-np", "4"]) == plan)
        #expect(await cache.plan(for: spec, arguments: ["-np", "2"]) == nil)
        #expect(await StoreFitPlanCache(store: store, hardwareFingerprint: "hw2", llamaBuild: "b1", writeFailed: Self.unexpected).plan(for: spec, arguments: ["-np", "4"]) == nil)
        #expect(await StoreFitPlanCache(store: store, hardwareFingerprint: "hw1", llamaBuild: "b2", writeFailed: Self.unexpected).plan(for: spec, arguments: ["-np", "4"]) == nil)
        // Survives reopening the database.
        let reopened = StoreFitPlanCache(store: try Store.open(path: dir + "/corral.sqlite"), hardwareFingerprint: "hw1", llamaBuild: "b1", writeFailed: Self.unexpected)
        #expect(await reopened.plan(for: spec, arguments: ["-np", "4"]) == plan)
        // Touching the model file changes its identity.
        try FileManager.default.setAttributes([.modificationDate: Date().addingTimeInterval(60)], ofItemAtPath: dir + "/m.gguf")
        #expect(await reopened.plan(for: spec, arguments: ["-np", "4"]) == nil)
    }

    static let unexpected: @Sendable (String, any Error) -> Void = { what, error in Issue.record("\(what): \(error)") }

    /// A cache write that fails is reported (ServeCommand logs and counts it), not dropped: here
    /// the table is gone under a second, real SQLite connection.
    @Test func aFailedCacheWriteIsReported() async throws {
        let (dir, spec, store) = try fitCacheFixture()
        let failures = Mutex<[String]>([])
        let cache = StoreFitPlanCache(store: store, hardwareFingerprint: "hw1", llamaBuild: "b1", writeFailed: { what, _ in failures.withLock { $0.append(what) } })
        try await DatabaseQueue(path: dir + "/corral.sqlite").write { try $0.execute(sql: "DROP TABLE fit_cache") }
        await cache.save(FitPlan(arguments: ["-c", "2048"], projection: [], source: .fitParams), for: spec, arguments: ["-np", "4"])
        #expect(failures.withLock { $0 } == ["the fit plan of m"])
    }

    @Test func learnedAllocationsAreKeptLikePlans() async throws {
        let (dir, spec, store) = try fitCacheFixture()
        let cache = StoreFitPlanCache(store: store, hardwareFingerprint: "hw1", llamaBuild: "b1", writeFailed: Self.unexpected)
        let learned = LearnedAllocations(allocatedMiB: ["CPU KV": 4.5, "CPU compute": 1.25], contextSize: 2048, learnedAt: Date(timeIntervalSince1970: 1_800_000_000))
        await cache.save(learned, for: spec, arguments: ["-m", "m", "-c", "2048"])
        #expect(await cache.allocations(for: spec, arguments: ["-m", "m", "-c", "2048"]) == learned)
        #expect(await cache.allocations(for: spec, arguments: ["-m", "m", "-c", "4096"]) == nil)
        #expect(await StoreFitPlanCache(store: store, hardwareFingerprint: "hw2", llamaBuild: "b1", writeFailed: Self.unexpected).allocations(for: spec, arguments: ["-m", "m", "-c", "2048"]) == nil)
        let reopened = StoreFitPlanCache(store: try Store.open(path: dir + "/corral.sqlite"), hardwareFingerprint: "hw1", llamaBuild: "b1", writeFailed: Self.unexpected)
        #expect(await reopened.allocations(for: spec, arguments: ["-m", "m", "-c", "2048"]) == learned)
        try FileManager.default.setAttributes([.modificationDate: Date().addingTimeInterval(60)], ofItemAtPath: dir + "/m.gguf")
        #expect(await reopened.allocations(for: spec, arguments: ["-m", "m", "-c", "2048"]) == nil)
    }
}

/// Sampling profiles: built-ins, then routes.json, then the admin API, kept in the store; what a
/// profile fills into a request and what it leaves to the request.
@Suite struct SamplingProfilesTests {
    @Test func laterSourcesOverrideEarlierOnesAndADeleteBringsTheConfigBack() async throws {
        let store = try Store.inMemory()
        let profiles = SamplingProfiles(config: ["precise": ["temperature": .number(0.3)], "house": ["top_k": .number(7)]], store: store)
        #expect(profiles.get("precise")?.source == "config")
        #expect(profiles.get("balanced")?.source == "builtin")
        try await profiles.put("precise", fields: ["temperature": .number(0.05)])
        #expect(profiles.get("precise")?.source == "admin")
        // Another node's view: the saved profile is read back from the store.
        let elsewhere = SamplingProfiles(config: ["precise": ["temperature": .number(0.3)]], store: store)
        try await elsewhere.load()
        #expect(elsewhere.get("precise")?.fields["temperature"] == .number(0.05))
        // Only an admin profile can be deleted; then the configured one is back (it used to be
        // gone on the deleting node until the next load).
        #expect(try await profiles.delete("balanced") == false)
        #expect(try await profiles.delete("precise") == true)
        #expect(profiles.get("precise")?.fields["temperature"] == .number(0.3))
        try await elsewhere.load()
        #expect(elsewhere.get("precise")?.source == "config")
    }

    @Test func aSavedProfileThatCannotBeReadIsAnErrorNotAnEmptyList() async throws {
        let store = try Store.inMemory()
        try await store.putDocument(kind: "sampling-profile", id: "broken", model: nil, body: Data("{not json".utf8))
        let profiles = SamplingProfiles(config: [:], store: store)
        await #expect(throws: LibraryError.self) { try await profiles.load() }
    }

    @Test func aProfileFillsOnlyWhatTheRequestLeavesOpen() throws {
        let profiles = SamplingProfiles(config: ["house": ["temperature": .number(0.2), "max_tokens": .number(64), "top_k": .number(5)]], store: nil)
        let sets: Set<String> = ["temperature", "max_completion_tokens"]
        // The request set its own limit under another name: the profile's max_tokens stays out.
        #expect(try profiles.fields(named: "house", modelDefault: "precise", requestSets: sets.contains) == ["top_k": .number(5)])
        let plain = try profiles.fields(named: nil, modelDefault: "precise") { _ in false }
        #expect(plain["top_k"] == .number(20))
        #expect(try profiles.fields(named: nil, modelDefault: nil) { _ in false }.isEmpty)
        #expect(throws: LibraryError.self) { try profiles.fields(named: "nope", modelDefault: nil) { _ in false } }
    }

    @Test func modelAtProfileSplitsOnlyOnAKnownProfile() {
        let profiles = SamplingProfiles(config: [:], store: nil)
        #expect(profiles.split("qwen@code") == ("qwen", "code"))
        #expect(profiles.split("user@host/model") == ("user@host/model", nil))
        #expect(profiles.split("plain") == ("plain", nil))
    }
}

/// Verdicts from the header estimator against a machine's memory.
@Suite struct CompatibilityTests {
    func hardware(ramMiB: Int, gpuFreeMiB: Int?) throws -> HardwareInfo {
        let gpu = gpuFreeMiB.map { #"[{"name":"CUDA0","description":"test GPU","totalMiB":\#($0),"freeMiB":\#($0)}]"# } ?? "[]"
        let json = #"{"cpuModel":"test","logicalCores":2,"cpuFlags":[],"ramTotalMiB":\#(ramMiB),"ramAvailableMiB":\#(ramMiB),"devices":\#(gpu),"nvidia":[],"backend":"CPU","readAt":0}"#
        return try JSONDecoder().decode(HardwareInfo.self, from: Data(json.utf8))
    }

    func facts() throws -> ModelFacts {
        let dir = NSTemporaryDirectory() + "corral-compat-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        var shape = TestModelShape()
        shape.layers = 4
        try TestModel.write(shape: shape, to: dir + "/m.gguf")
        return try ModelFacts.read(path: dir + "/m.gguf")
    }

    @Test func theVerdictFollowsTheRoomThereIs() throws {
        let facts = try facts()
        var settings = MemoryEstimator.Settings()
        settings.contextSize = 512
        let needed = MemoryEstimator.estimate(facts, { var s = settings; s.gpuLayers = 0; return s }(), gpu: nil)
        let hostMiB = Int(needed.devices.first { $0.name == "Host" }!.total >> 20) + 1
        #expect(Compatibility(hardware: try hardware(ramMiB: 64_000, gpuFreeMiB: 64_000), marginMiB: 0).assess(facts, settings).verdict == .fitsGPU)
        #expect(Compatibility(hardware: try hardware(ramMiB: 64_000, gpuFreeMiB: nil), marginMiB: 0).assess(facts, settings).verdict == .cpuOnly)
        #expect(Compatibility(hardware: try hardware(ramMiB: hostMiB, gpuFreeMiB: nil), marginMiB: 0).assess(facts, settings).verdict == .cpuOnly)
        // The margin is kept free: the same machine no longer fits it.
        #expect(Compatibility(hardware: try hardware(ramMiB: hostMiB, gpuFreeMiB: nil), marginMiB: hostMiB).assess(facts, settings).verdict == .doesNotFit)
        // A GPU with no room: CPU only, with every layer on the host.
        let (verdict, estimate) = Compatibility(hardware: try hardware(ramMiB: 64_000, gpuFreeMiB: 0), marginMiB: 0).assess(facts, settings)
        #expect(verdict == .cpuOnly)
        #expect(estimate.devices.allSatisfy { $0.name == "Host" || $0.total == 0 })
    }
}
