/// One instance's lifecycle (a replica of a model: one llama-server) as a value. Its phases carry
/// their own data; each event changes the value and returns the actions the fleet actor
/// (``Scheduler``) carries out: it starts and stops processes, runs timers and wakes waiters, but
/// decides nothing about phases, generations or slot counts itself.
///
/// Generic over the handles the actor keeps — a load in progress, the running process, a stop in
/// progress — so unit tests drive it with plain values and no process, on instants of their own.
///
/// ```
///  unloaded ──loadStarted──▶ loading ──loadSucceeded──▶ ready ──stopStarted──▶ stopping
///      ▲                        │                         │                        │
///      └────────loadFailed──────┘      exited (a crash) ──┘        stopFinished ───┘
/// ```
///
/// A *generation* counts the instance's starts and stops: a lease, an idle timer or an exit
/// watcher carries the generation it was made for, and an event from an earlier generation does
/// nothing (a late release after a crash, the timer of a process that was since replaced).
public struct InstanceLifecycle<Loading, Running, Stopping: Equatable> {
    public enum Phase {
        case unloaded
        /// Starting: `roomReserved` once placement gave it room (count and memory); until then it
        /// occupies nothing, so loads waiting for room never wait for each other.
        case loading(Loading, roomReserved: Bool)
        case ready(Running)
        case stopping(Stopping)
    }

    /// What the actor does after an event, in order.
    public enum Action: Sendable, Equatable {
        /// The model's readiness (any instance ready) may have changed: publish it again.
        case publishReadiness
        /// Wait for the new process to exit; an exit reports ``exited(generation:)`` with this generation.
        case watchForExit(generation: Int)
        /// Start the idle timer (the actor computes the TTL and calls ``idleTimerStarted(ttl:now:)``).
        case armIdleTimer
        case cancelIdleTimer
        /// Hand free slots to queued requests.
        case dispatchQueue
        /// Stop the process: save the KV caches first when `saveCache`; `grace` nil is the configured one.
        case stop(saveCache: Bool, grace: Duration?)
        /// Count a failure of the model (crash backoff, the failed mark).
        case recordCrash(String)
        /// The instance no longer runs: forget what it cached, give back its split, fail queued
        /// requests when nothing else serves the model, hand the rest to other instances.
        case settleGone
        /// Fleet capacity changed: loads and claims waiting for room look again.
        case notifyFleet
    }

    public private(set) var phase: Phase = .unloaded
    /// Bumped when the instance becomes ready and when it is gone.
    public private(set) var generation = 0
    /// Requests holding a slot of this instance (counted through `stopping`: leases given before
    /// a stop are released after it began).
    public private(set) var inFlight = 0
    public private(set) var lastUsed: ContinuousClock.Instant
    /// When the running idle timer fires (nil: none is running).
    public private(set) var idleDeadline: ContinuousClock.Instant?

    public init(now: ContinuousClock.Instant = .now) {
        lastUsed = now
    }

    public var isReady: Bool { if case .ready = phase { true } else { false } }
    public var isLoading: Bool { if case .loading = phase { true } else { false } }
    public var isStopping: Bool { if case .stopping = phase { true } else { false } }
    public var isUnloaded: Bool { if case .unloaded = phase { true } else { false } }

    /// The running process, when ready.
    public var running: Running? { if case .ready(let r) = phase { r } else { nil } }

    /// Whether the instance takes room in the placement view: not when unloaded, nor while a
    /// load still waits for its room.
    public var takesRoom: Bool {
        switch phase {
        case .unloaded: false
        case .loading(_, let reserved): reserved
        case .ready, .stopping: true
        }
    }

    // MARK: Loading

    /// A load began. Only from `unloaded` (the actor starts one load per instance); returns
    /// false, changing nothing, otherwise.
    @discardableResult
    public mutating func loadStarted(_ load: Loading) -> Bool {
        guard case .unloaded = phase else { return false }
        phase = .loading(load, roomReserved: false)
        return true
    }

    /// Placement gave the load its room (or, with `false`, takes it back: a load that plans again).
    public mutating func roomReserved(_ reserved: Bool = true) {
        guard case .loading(let load, _) = phase else { return }
        phase = .loading(load, roomReserved: reserved)
    }

    /// The process answers: a new generation starts, idle since `now`.
    public mutating func loadSucceeded(_ running: Running, now: ContinuousClock.Instant) -> [Action] {
        guard case .loading = phase else { return [] }
        phase = .ready(running)
        generation += 1
        inFlight = 0
        lastUsed = now
        idleDeadline = nil
        return [.publishReadiness, .watchForExit(generation: generation)]
    }

    /// The load failed (or was cancelled): back to `unloaded`. A failure that counts against the
    /// model (`crash`: the process died or never answered) is recorded; queued requests fail when
    /// nothing else serves the model.
    public mutating func loadFailed(crash: String?) -> [Action] {
        guard case .loading = phase else { return [] }
        phase = .unloaded
        return (crash.map { [Action.recordCrash($0)] } ?? []) + [.settleGone, .notifyFleet]
    }

    // MARK: Serving

    /// A request got a slot. Only a ready instance takes requests.
    public mutating func give(now: ContinuousClock.Instant) -> [Action] {
        guard case .ready = phase else { return [] }
        inFlight += 1
        lastUsed = now
        let wasIdle = idleDeadline != nil
        idleDeadline = nil
        return wasIdle ? [.cancelIdleTimer] : []
    }

    /// A request of `generation` gave its slot back. Nil when the lease is stale (the instance it
    /// was given on is gone): nothing changes. Otherwise the queue takes the slot; an instance
    /// left with nothing in flight arms its idle timer.
    public mutating func release(generation leased: Int, now: ContinuousClock.Instant) -> [Action]? {
        guard leased == generation, !isUnloaded else { return nil }
        inFlight = max(0, inFlight - 1)
        lastUsed = now
        return inFlight == 0 && isReady ? [.dispatchQueue, .armIdleTimer, .notifyFleet] : [.dispatchQueue, .notifyFleet]
    }

    /// The actor started the idle timer for `ttl`; false (nothing changes) unless the instance
    /// is ready with nothing in flight.
    @discardableResult
    public mutating func idleTimerStarted(ttl: Duration, now: ContinuousClock.Instant) -> Bool {
        guard isReady, inFlight == 0 else { return false }
        idleDeadline = now + ttl
        return true
    }

    /// The idle timer of `generation` fired. Stops the instance (saving its caches) when it is
    /// still that generation, ready and idle; the model's own conditions (nothing queued, not
    /// pinned) are the actor's to check.
    public mutating func idleExpired(generation fired: Int) -> [Action] {
        guard fired == generation, isReady, inFlight == 0 else { return [] }
        return [.stop(saveCache: true, grace: nil)]
    }

    /// The process of `generation` stopped answering: a failure; it is killed at once, without
    /// saving caches it may no longer hold. A second report for the same generation does nothing.
    public mutating func unresponsive(generation reported: Int, reason: String) -> [Action] {
        guard reported == generation, isReady else { return [] }
        return [.recordCrash(reason), .stop(saveCache: false, grace: .zero)]
    }

    // MARK: Stopping and exits

    /// A stop began (eviction, idle TTL, an operator's unload, a restart with other options).
    /// Only a ready instance stops this way.
    public mutating func stopStarted(_ stop: Stopping) -> [Action] {
        guard case .ready = phase else { return [] }
        phase = .stopping(stop)
        let hadTimer = idleDeadline != nil
        idleDeadline = nil
        return (hadTimer ? [.cancelIdleTimer] : []) + [.publishReadiness]
    }

    /// The stop `stop` finished: the instance is gone. Whoever awaited that stop may report it;
    /// the first report settles it and later ones (or a report of an older stop) do nothing.
    public mutating func stopFinished(_ stop: Stopping) -> [Action] {
        guard case .stopping(let current) = phase, current == stop else { return [] }
        gone()
        return [.publishReadiness, .settleGone, .notifyFleet]
    }

    /// The process of `generation` exited. While ready that is a crash; after a stop began, or for
    /// an earlier generation, it is expected and does nothing.
    public mutating func exited(generation exitedGeneration: Int, termination: String) -> [Action] {
        guard exitedGeneration == generation, isReady else { return [] }
        let hadTimer = idleDeadline != nil
        gone()
        return (hadTimer ? [.cancelIdleTimer] : []) + [.recordCrash("llama-server \(termination)"), .publishReadiness, .settleGone, .notifyFleet]
    }

    private mutating func gone() {
        phase = .unloaded
        inFlight = 0
        generation += 1
        idleDeadline = nil
    }
}

extension InstanceLifecycle.Phase {
    /// The phase as placement sees it.
    public var fleetPhase: FleetView.Phase {
        switch self {
        case .unloaded: .unloaded
        case .loading(_, let reserved): .loading(roomReserved: reserved)
        case .ready: .ready
        case .stopping: .stopping
        }
    }
}
