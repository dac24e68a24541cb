import Runtime
import Testing

/// An instance's lifecycle as a value, driven without a process: the handles are plain values (a
/// load is a string, the running server a number, a stop a string), times are instants on a fake
/// clock (`t(n)`: n seconds after a fixed origin). Each case checks the phase, the counts and the
/// actions the fleet actor would carry out.
@Suite struct InstanceLifecycleTests {
    typealias Lifecycle = InstanceLifecycle<String, Int, String>
    static let origin = ContinuousClock.now
    static func t(_ seconds: Int) -> ContinuousClock.Instant { origin + .seconds(seconds) }

    /// An instance loaded at `t(0)` (generation 1).
    func ready() -> Lifecycle {
        var instance = Lifecycle(now: Self.t(0))
        instance.loadStarted("load")
        instance.roomReserved()
        _ = instance.loadSucceeded(42, now: Self.t(0))
        return instance
    }

    /// An instance stopped at `t(1)` and loaded again at `t(2)`, the first stop being `"stop"`
    /// (generation 3, server 43).
    func replaced() -> Lifecycle {
        var instance = ready()
        _ = instance.stopStarted("stop")
        _ = instance.stopFinished("stop")
        instance.loadStarted("reload")
        _ = instance.loadSucceeded(43, now: Self.t(2))
        return instance
    }

    // MARK: Loading

    @Test func aLoadTakesNoRoomUntilPlacementGivesItSome() {
        var instance = Lifecycle(now: Self.t(0))
        #expect(!instance.takesRoom)
        let outcome = instance.loadStarted("load")
        #expect(outcome)
        #expect(instance.isLoading)
        #expect(!instance.takesRoom)
        #expect(instance.phase.fleetPhase == .loading(roomReserved: false))
        instance.roomReserved()
        #expect(instance.takesRoom)
        #expect(instance.phase.fleetPhase == .loading(roomReserved: true))
    }

    @Test func aSecondLoadOfTheSameInstanceIsRefused() {
        var instance = Lifecycle(now: Self.t(0))
        let step1 = instance.loadStarted("first")
        #expect(step1)
        let step2 = instance.loadStarted("second")
        #expect(!step2)
        guard case .loading(let load, _) = instance.phase else { Issue.record("not loading"); return }
        #expect(load == "first")
    }

    @Test func aLoadThatSucceedsStartsAGenerationAndWatchesTheProcess() {
        var instance = Lifecycle(now: Self.t(0))
        instance.loadStarted("load")
        let actions = instance.loadSucceeded(42, now: Self.t(5))
        #expect(actions == [.publishReadiness, .watchForExit(generation: 1)])
        #expect(instance.running == 42)
        #expect(instance.generation == 1)
        #expect(instance.lastUsed == Self.t(5))
        #expect(instance.phase.fleetPhase == .ready)
    }

    @Test func aLoadThatFailsIsUnloadedAgainAndCountsAsACrash() {
        var instance = Lifecycle(now: Self.t(0))
        instance.loadStarted("load")
        instance.roomReserved()
        let actions = instance.loadFailed(crash: "llama-server exited while loading")
        #expect(actions == [.recordCrash("llama-server exited while loading"), .settleGone, .notifyFleet])
        #expect(instance.isUnloaded)
        #expect(!instance.takesRoom)
        #expect(instance.generation == 0)
        // The instance can be loaded again.
        let outcome = instance.loadStarted("again")
        #expect(outcome)
    }

    @Test func aLoadRefusedForRoomIsNotACrash() {
        var instance = Lifecycle(now: Self.t(0))
        instance.loadStarted("load")
        let outcome = instance.loadFailed(crash: nil)
        #expect(outcome == [.settleGone, .notifyFleet])
        #expect(instance.isUnloaded)
    }

    @Test func aLoadOutcomeForAnInstanceNotLoadingChangesNothing() {
        var instance = ready()
        let step1 = instance.loadSucceeded(7, now: Self.t(9))
        #expect(step1.isEmpty)
        let step2 = instance.loadFailed(crash: "late")
        #expect(step2.isEmpty)
        #expect(instance.running == 42)
        #expect(instance.generation == 1)
    }

    // MARK: Serving and idling

    @Test func givingAndReleasingCountsSlotsAndIdlesAtZero() {
        var instance = ready()
        let step1 = instance.give(now: Self.t(1))
        #expect(step1.isEmpty)
        let step2 = instance.give(now: Self.t(2))
        #expect(step2.isEmpty)
        #expect(instance.inFlight == 2)
        #expect(instance.lastUsed == Self.t(2))
        let step3 = instance.release(generation: 1, now: Self.t(3))
        #expect(step3 == [.dispatchQueue, .notifyFleet])
        let step4 = instance.release(generation: 1, now: Self.t(4))
        #expect(step4 == [.dispatchQueue, .armIdleTimer, .notifyFleet])
        #expect(instance.inFlight == 0)
        #expect(instance.lastUsed == Self.t(4))
    }

    @Test func onlyAReadyInstanceTakesRequests() {
        var instance = Lifecycle(now: Self.t(0))
        instance.loadStarted("load")
        let outcome = instance.give(now: Self.t(1))
        #expect(outcome.isEmpty)
        #expect(instance.inFlight == 0)
    }

    @Test func aStaleLeaseReleasesNothing() {
        var instance = ready()
        _ = instance.give(now: Self.t(1))
        // The process crashed and a new one was loaded: generation 3.
        _ = instance.exited(generation: 1, termination: "signal 9")
        instance.loadStarted("reload")
        _ = instance.loadSucceeded(43, now: Self.t(2))
        _ = instance.give(now: Self.t(3))
        let step1 = instance.release(generation: 1, now: Self.t(4))
        #expect(step1 == nil)
        #expect(instance.inFlight == 1)
        let step2 = instance.release(generation: 3, now: Self.t(5))
        #expect(step2 != nil)
        #expect(instance.inFlight == 0)
    }

    @Test func theIdleTimerRunsOnlyOnAnIdleReadyInstanceAndARequestCancelsIt() {
        var instance = ready()
        _ = instance.give(now: Self.t(1))
        let step1 = instance.idleTimerStarted(ttl: .seconds(60), now: Self.t(1))
        #expect(!step1)
        #expect(instance.idleDeadline == nil)
        _ = instance.release(generation: 1, now: Self.t(2))
        let step2 = instance.idleTimerStarted(ttl: .seconds(60), now: Self.t(2))
        #expect(step2)
        #expect(instance.idleDeadline == Self.t(62))
        let step3 = instance.give(now: Self.t(3))
        #expect(step3 == [.cancelIdleTimer])
        #expect(instance.idleDeadline == nil)
    }

    @Test func anIdleTimerThatFiresStopsTheInstanceSavingItsCaches() {
        var instance = ready()
        let step1 = instance.idleTimerStarted(ttl: .zero, now: Self.t(1))
        #expect(step1)
        let step2 = instance.idleExpired(generation: 1)
        #expect(step2 == [.stop(saveCache: true, grace: nil)])
    }

    @Test func anIdleTimerOfAnEarlierGenerationOrABusyInstanceDoesNothing() {
        var instance = ready()
        let step1 = instance.idleExpired(generation: 0)
        #expect(step1.isEmpty)
        _ = instance.give(now: Self.t(1))
        let step2 = instance.idleExpired(generation: 1)
        #expect(step2.isEmpty)
    }

    // MARK: Stopping, crashes and exits

    @Test func aStopEndsReadinessAndTheFirstToSeeItFinishSettlesIt() {
        var instance = ready()
        instance.idleTimerStarted(ttl: .seconds(10), now: Self.t(1))
        let step1 = instance.stopStarted("stop")
        #expect(step1 == [.cancelIdleTimer, .publishReadiness])
        #expect(instance.isStopping)
        #expect(instance.takesRoom)
        #expect(instance.phase.fleetPhase == .stopping)
        let step2 = instance.stopFinished("stop")
        #expect(step2 == [.publishReadiness, .settleGone, .notifyFleet])
        #expect(instance.isUnloaded)
        #expect(instance.generation == 2)
        // Another party that awaited the same stop finds it settled.
        let step3 = instance.stopFinished("stop")
        #expect(step3.isEmpty)
    }

    @Test func theEndOfAnEarlierStopDoesNotSettleALaterOne() {
        var instance = replaced()
        _ = instance.stopStarted("second stop")
        let outcome = instance.stopFinished("stop")
        #expect(outcome.isEmpty)
        #expect(instance.isStopping)
    }

    @Test func onlyAReadyInstanceStops() {
        var instance = Lifecycle(now: Self.t(0))
        let step1 = instance.stopStarted("stop")
        #expect(step1.isEmpty)
        instance.loadStarted("load")
        let step2 = instance.stopStarted("stop")
        #expect(step2.isEmpty)
        #expect(instance.isLoading)
    }

    @Test func leasesGivenBeforeAStopAreReleasedDuringIt() {
        var instance = ready()
        _ = instance.give(now: Self.t(1))
        _ = instance.stopStarted("stop")
        // Released while stopping: counted, but no idle timer for an instance on its way out.
        let outcome = instance.release(generation: 1, now: Self.t(2))
        #expect(outcome == [.dispatchQueue, .notifyFleet])
        #expect(instance.inFlight == 0)
    }

    @Test func anExitWhileReadyIsACrash() {
        var instance = ready()
        _ = instance.give(now: Self.t(1))
        let actions = instance.exited(generation: 1, termination: "signal 11")
        #expect(actions == [.recordCrash("llama-server signal 11"), .publishReadiness, .settleGone, .notifyFleet])
        #expect(instance.isUnloaded)
        #expect(instance.inFlight == 0)
        #expect(instance.generation == 2)
    }

    @Test func anExitAfterAStopBeganIsExpected() {
        var instance = ready()
        _ = instance.stopStarted("stop")
        let outcome = instance.exited(generation: 1, termination: "exit 0")
        #expect(outcome.isEmpty)
        #expect(instance.isStopping)
    }

    @Test func theExitOfAReplacedProcessIsIgnored() {
        var instance = replaced()
        let outcome = instance.exited(generation: 1, termination: "exit 0")
        #expect(outcome.isEmpty)
        #expect(instance.running == 43)
    }

    @Test func anUnresponsiveServerIsKilledWithoutSavingOnce() {
        var instance = ready()
        _ = instance.give(now: Self.t(1))
        let step1 = instance.unresponsive(generation: 1, reason: "no bytes in 600 s")
        #expect(step1 == [.recordCrash("no bytes in 600 s"), .stop(saveCache: false, grace: .zero)])
        _ = instance.stopStarted("kill")
        // Another request on the same process reports it too: nothing more happens.
        let step2 = instance.unresponsive(generation: 1, reason: "no bytes in 600 s")
        #expect(step2.isEmpty)
    }

    @Test func crashesRecordedByTheLifecycleBackOffAndMarkTheModelFailed() {
        // The actor feeds each `.recordCrash` to the model's CrashHistory.
        var history = CrashHistory()
        var instance = ready()
        for n in 1...3 {
            for case .recordCrash(let reason) in instance.exited(generation: instance.generation, termination: "signal 9") {
                history.record(reason, at: Self.t(n), window: .seconds(60), maxCrashes: 3)
            }
            instance.loadStarted("reload")
            _ = instance.loadSucceeded(42 + n, now: Self.t(n))
        }
        #expect(history.times.count == 3)
        #expect(history.failure?.hasSuffix("last: llama-server signal 9") == true)
        #expect(history.restartDelay == .seconds(1))
    }
}
