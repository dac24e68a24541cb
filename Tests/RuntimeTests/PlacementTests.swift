import Runtime
import Testing

/// The fleet's decisions as values, without a process: room for a load or a job's claim
/// (fits / evict / wait / refuse, with the reason), crash backoff and the failed mark, idle TTL.
/// Times are instants on a fake clock (`t(n)`: n seconds after a fixed origin).
@Suite struct PlacementTests {
    static let origin = ContinuousClock.now
    static func t(_ seconds: Int) -> ContinuousClock.Instant { origin + .seconds(seconds) }

    func ready(_ used: Int, mib: Int = 1000, inFlight: Int = 0, waiting: Int = 0, pinned: Bool = false, device: String = "Host") -> FleetView.Model {
        FleetView.Model(phase: .ready, inFlight: inFlight, waiting: waiting, lastUsed: Self.t(used), pinned: pinned, projection: [device: mib])
    }

    func fleet(_ models: [String: FleetView.Model], claims: [String: [String: Int]] = [:], budget: [String: Int] = ["Host": 4000], max: Int = 3) -> FleetView {
        FleetView(models: models, claims: claims, budgetMiB: budget, maxLoadedModels: max)
    }

    func decide(_ view: FleetView, _ id: String = "new", _ mib: Int = 1000, device: String = "Host", claim: Bool = false, wait: Bool = true) -> Placement {
        Placement.decide(for: id, projection: [device: mib], claim: claim, wait: wait, in: view)
    }

    // MARK: Fits

    @Test func anEmptyFleetFits() {
        #expect(decide(fleet([:])) == .fits)
    }

    @Test func fitsBesideLoadedModelsWithinCountAndMemory() {
        #expect(decide(fleet(["a": ready(1), "b": ready(2)])) == .fits)
    }

    @Test func exactlyTheBudgetFits() {
        #expect(decide(fleet(["a": ready(1, mib: 2000)]), "new", 2000) == .fits)
    }

    @Test func unloadedAndUnreservedLoadsTakeNoRoom() {
        let loading = FleetView.Model(phase: .loading(roomReserved: false), lastUsed: Self.t(1), projection: ["Host": 3500])
        let unloaded = FleetView.Model(phase: .unloaded, lastUsed: Self.t(1), projection: ["Host": 3500])
        #expect(decide(fleet(["l": loading, "u": unloaded]), "new", 3000) == .fits)
    }

    @Test func theModelsOwnOldProjectionDoesNotCount() {
        // A restart of `a` with new arguments: its old instance is not in the way of itself.
        #expect(decide(fleet(["a": ready(1, mib: 3500)]), "a", 3500) == .fits)
    }

    @Test func aModelsReplicasCountAsOneModel() {
        // Two models with two instances each and a third model: three models, not five instances.
        func instance(_ model: String, _ used: Int) -> FleetView.Model {
            FleetView.Model(phase: .ready, lastUsed: Self.t(used), projection: ["Host": 100], model: model)
        }
        let view = fleet(["a": instance("a", 1), "a (replica 1)": instance("a", 2), "b": instance("b", 3), "b (replica 1)": instance("b", 4)],
                         budget: ["Host": 4000], max: 3)
        #expect(decide(view, "c", 100) == .fits)
        // A third model beside them is the most allowed: a fourth evicts the least recently used instance.
        var full = view
        full.models["c"] = instance("c", 5)
        #expect(decide(full, "d", 100) == .evict("a"))
    }

    @Test func anotherReplicaOfALoadedModelAddsNoModel() {
        func instance(_ model: String, _ used: Int, phase: FleetView.Phase = .ready) -> FleetView.Model {
            FleetView.Model(phase: phase, lastUsed: Self.t(used), projection: ["Host": 100], model: model)
        }
        // Three models loaded (the limit); the second instance of one of them still fits.
        let view = fleet(["a": instance("a", 1), "b": instance("b", 2), "c": instance("c", 3),
                          "c (replica 1)": instance("c", 4, phase: .loading(roomReserved: false))], max: 3)
        #expect(decide(view, "c (replica 1)", 100) == .fits)
    }

    @Test func aDeviceWithoutItsOwnBudgetUsesTheHosts() {
        #expect(decide(fleet([:], budget: ["Host": 4000]), "new", 3000, device: "Vulkan0") == .fits)
        if case .refuse = decide(fleet([:], budget: ["Host": 4000]), "new", 5000, device: "Vulkan0") {} else { Issue.record("expected a refusal") }
    }

    @Test func devicesAreAccountedSeparately() {
        let view = fleet(["gpu-model": ready(1, mib: 7000, device: "CUDA0")], budget: ["Host": 4000, "CUDA0": 8000])
        #expect(decide(view, "new", 3500, device: "Host") == .fits)
        #expect(decide(view, "new", 2000, device: "CUDA0") == .evict("gpu-model"))
    }

    // MARK: Evict

    @Test func theLeastRecentlyUsedIdleModelIsEvictedForMemory() {
        let view = fleet(["old": ready(1, mib: 1500), "mid": ready(5, mib: 1500), "new-ish": ready(9, mib: 500)])
        #expect(decide(view, "new", 1500) == .evict("old"))
    }

    @Test func theModelCountEvictsToo() {
        let view = fleet(["a": ready(3, mib: 10), "b": ready(1, mib: 10), "c": ready(2, mib: 10)], max: 3)
        #expect(decide(view, "new", 10) == .evict("b"))
    }

    @Test func aBusyModelIsNeverEvicted() {
        let view = fleet(["busy": ready(1, mib: 2000, inFlight: 1), "idle": ready(9, mib: 1000)])
        #expect(decide(view, "new", 2000) == .evict("idle"))
    }

    @Test func aModelWithQueuedRequestsIsNeverEvicted() {
        let view = fleet(["queued": ready(1, mib: 2000, waiting: 2), "idle": ready(9, mib: 1000)])
        #expect(decide(view, "new", 2000) == .evict("idle"))
    }

    @Test func aPinnedModelIsNeverEvicted() {
        let view = fleet(["pinned": ready(1, mib: 2000, pinned: true), "idle": ready(9, mib: 1000)])
        #expect(decide(view, "new", 2000) == .evict("idle"))
    }

    @Test func aLoadingOrStoppingModelIsNotEvictedButTakesRoom() {
        let loading = FleetView.Model(phase: .loading(roomReserved: true), lastUsed: Self.t(0), projection: ["Host": 2000])
        let stopping = FleetView.Model(phase: .stopping, lastUsed: Self.t(0), projection: ["Host": 1000])
        #expect(decide(fleet(["l": loading, "s": stopping, "idle": ready(9, mib: 500)]), "new", 2000) == .evict("idle"))
    }

    @Test func tiesAreBrokenByNameSoTheChoiceIsStable() {
        #expect(decide(fleet(["b": ready(1, mib: 1000), "a": ready(1, mib: 1000)]), "new", 3500) == .evict("a"))
    }

    // MARK: Wait versus refuse

    @Test func tooBigForTheBudgetAloneIsRefusedAtOnce() {
        #expect(decide(fleet([:]), "huge", 5000) == .refuse(.insufficientMemory("huge", neededMiB: 5000, availableMiB: 4000, device: "Host")))
    }

    @Test func busyModelsHoldingTheRoomMeanWait() {
        guard case .wait(let why) = decide(fleet(["busy": ready(1, mib: 2000, inFlight: 1)]), "new", 2500) else {
            Issue.record("expected to wait")
            return
        }
        #expect(why.contains("busy"))
    }

    @Test func aFullCountOfBusyModelsMeansWait() {
        let view = fleet(["a": ready(1, mib: 10, inFlight: 1), "b": ready(2, mib: 10, inFlight: 1)], max: 2)
        if case .wait = decide(view, "new", 10) {} else { Issue.record("expected to wait") }
    }

    @Test func onlyPinnedModelsInTheWayIsRefused() {
        let view = fleet(["p": ready(1, mib: 3000, pinned: true)])
        #expect(decide(view, "new", 2000) == .refuse(.noCapacity("new", "every loaded model is pinned")))
    }

    @Test func jobsHoldingTooMuchAreSaidRatherThanWaitedFor() {
        let view = fleet([:], claims: ["tune-1": ["Host": 3000]])
        guard case .refuse(.noCapacity(let id, let why)) = decide(view, "new", 2000) else {
            Issue.record("expected a refusal")
            return
        }
        #expect(id == "new" && why.contains("3000 MiB on Host"))
    }

    // MARK: Memory claims

    @Test func aClaimIsNotCountedAgainstTheModelCount() {
        let view = fleet(["a": ready(1, mib: 10), "b": ready(2, mib: 10)], max: 2)
        #expect(decide(view, "trial", 1000, claim: true) == .fits)
        #expect(decide(view, "model", 1000) == .evict("a"))
    }

    @Test func aClaimEvictsIdleModelsForMemory() {
        #expect(decide(fleet(["a": ready(1, mib: 1000)]), "trial", 3500, claim: true) == .evict("a"))
    }

    @Test func claimsOfOtherOwnersCountAsUsed() {
        let view = fleet(["a": ready(1, mib: 1000)], claims: ["job-1": ["Host": 2000]])
        #expect(decide(view, "new", 1000) == .fits)
        #expect(decide(view, "new", 1500) == .evict("a"))
    }

    @Test func anOwnersEarlierClaimIsNotCountedTwice() {
        // A second claim of one owner is decided on its total, which replaces the first.
        #expect(decide(fleet([:], claims: ["job-1": ["Host": 2000]]), "job-1", 3000, claim: true) == .fits)
    }

    @Test func aClaimThatMayNotWaitIsRefusedWhileModelsAreBusy() {
        let view = fleet(["busy": ready(1, mib: 3000, inFlight: 1)])
        #expect(decide(view, "trial", 2000, claim: true, wait: false)
                == .refuse(.noCapacity("trial", "busy models hold the memory; try again when they are idle")))
        if case .wait = decide(view, "trial", 2000, claim: true, wait: true) {} else { Issue.record("a claim that may wait waits") }
    }

    @Test func aClaimThatMayWaitWaitsForOtherJobsClaims() {
        if case .wait = decide(fleet([:], claims: ["job-1": ["Host": 3000]]), "trial", 2000, claim: true, wait: true) {} else {
            Issue.record("expected to wait for the other job")
        }
    }

    // MARK: Crash backoff and the failed mark

    @Test func noFailureNoDelay() {
        #expect(CrashHistory().restartDelay == nil)
    }

    @Test func theRestartDelayDoublesUpToFourSeconds() {
        var h = CrashHistory()
        var delays: [Duration] = []
        for i in 0..<7 {
            h.record("crash", at: Self.t(i), window: .seconds(3600), maxCrashes: 100)
            delays.append(h.restartDelay!)
        }
        #expect(delays == [.milliseconds(250), .milliseconds(500), .seconds(1), .seconds(2), .seconds(4), .seconds(4), .seconds(4)])
    }

    @Test func enoughFailuresWithinTheWindowMarkTheModelFailed() {
        var h = CrashHistory()
        h.record("a", at: Self.t(0), window: .seconds(60), maxCrashes: 3)
        h.record("b", at: Self.t(10), window: .seconds(60), maxCrashes: 3)
        #expect(h.failure == nil)
        h.record("exit 1", at: Self.t(20), window: .seconds(60), maxCrashes: 3)
        #expect(h.failure?.contains("3 failures") == true && h.failure?.contains("exit 1") == true)
    }

    @Test func failuresOutsideTheWindowAreForgotten() {
        var h = CrashHistory()
        h.record("a", at: Self.t(0), window: .seconds(60), maxCrashes: 3)
        h.record("b", at: Self.t(40), window: .seconds(60), maxCrashes: 3)
        h.record("c", at: Self.t(90), window: .seconds(60), maxCrashes: 3)
        #expect(h.failure == nil && h.times == [Self.t(40), Self.t(90)])
    }

    @Test func anOperatorsUnloadClearsTheMarkAndTheBackoff() {
        var h = CrashHistory()
        for i in 0..<3 { h.record("x", at: Self.t(i), window: .seconds(60), maxCrashes: 3) }
        h.reset()
        #expect(h.failure == nil && h.restartDelay == nil)
    }

    // MARK: Idle TTL

    @Test func keepAliveWinsOverTheModelAndTheDefault() {
        #expect(idleTimeToLive(keepAlive: .seconds(10), modelTTL: .seconds(60), defaultTTL: .seconds(300)) == .seconds(10))
        #expect(idleTimeToLive(keepAlive: nil, modelTTL: .seconds(60), defaultTTL: .seconds(300)) == .seconds(60))
        #expect(idleTimeToLive(keepAlive: nil, modelTTL: nil, defaultTTL: .seconds(300)) == .seconds(300))
    }

    @Test func negativeIsForeverAndZeroIsAtOnce() {
        #expect(idleTimeToLive(keepAlive: .seconds(-1), modelTTL: .seconds(60), defaultTTL: .seconds(300)) == nil)
        #expect(idleTimeToLive(keepAlive: .zero, modelTTL: nil, defaultTTL: .seconds(300)) == .zero)
    }
}
