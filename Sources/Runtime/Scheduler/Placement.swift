/// The fleet as a placement decision sees it: each touched model's phase, use and memory, the
/// memory jobs hold, and the limits. A value, so decisions are pure functions of it.
public struct FleetView: Sendable, Equatable {
    /// A model's phase, as far as room is concerned.
    public enum Phase: Sendable, Equatable {
        case unloaded
        /// Loading; `roomReserved` once it was given room (until then it occupies nothing, so
        /// loads waiting for room never wait for each other).
        case loading(roomReserved: Bool)
        case ready
        case stopping
    }

    public struct Model: Sendable, Equatable {
        public var phase: Phase
        public var inFlight: Int
        public var waiting: Int
        /// When a request last used it (any monotonic clock: only the order matters).
        public var lastUsed: ContinuousClock.Instant
        public var pinned: Bool
        /// MiB per device it takes while loaded.
        public var projection: [String: Int]
        /// The model this entry is an instance of, where entries are instances (a model's
        /// replicas); nil: the entry's key is the model. `maxLoadedModels` counts models, so a
        /// model's replicas count once.
        public var model: String?

        public init(phase: Phase, inFlight: Int = 0, waiting: Int = 0, lastUsed: ContinuousClock.Instant, pinned: Bool = false, projection: [String: Int] = [:],
                    model: String? = nil) {
            self.phase = phase
            self.inFlight = inFlight
            self.waiting = waiting
            self.lastUsed = lastUsed
            self.pinned = pinned
            self.projection = projection
            self.model = model
        }

        /// Whether it occupies room: loaded, stopping, or loading with room given.
        var occupiesRoom: Bool {
            switch phase {
            case .unloaded: false
            case .loading(let reserved): reserved
            case .ready, .stopping: true
            }
        }

        /// Whether unloading it now would interrupt nobody and break no promise.
        var isEvictable: Bool { phase == .ready && inFlight == 0 && waiting == 0 && !pinned }
    }

    public var models: [String: Model]
    /// MiB per device held by jobs outside the fleet, by owner.
    public var claims: [String: [String: Int]]
    /// Budget per device name (`Host` for RAM), MiB; a device without one uses `Host`'s.
    public var budgetMiB: [String: Int]
    public var maxLoadedModels: Int

    public init(models: [String: Model] = [:], claims: [String: [String: Int]] = [:], budgetMiB: [String: Int], maxLoadedModels: Int) {
        self.models = models
        self.claims = claims
        self.budgetMiB = budgetMiB
        self.maxLoadedModels = maxLoadedModels
    }

    func budget(_ device: String) -> Int { budgetMiB[device] ?? budgetMiB["Host"] ?? 0 }
}

/// What to do about room for a load (or a job's memory claim).
public enum Placement: Sendable, Equatable {
    /// It fits now.
    case fits
    /// Unload this idle model, then decide again.
    case evict(String)
    /// Nothing can be evicted yet, but a busy model may become idle (or a claim end): wait for
    /// the fleet to change, then decide again.
    case wait(String)
    /// It cannot be had: too big for the budget, pinned models hold the room, or jobs hold it.
    case refuse(SchedulerError)

    /// The decision for `id` needing `projection` (MiB per device). A claim (`claim`) is not
    /// counted against the model count; with `wait` false a claim is refused rather than waiting.
    /// Models are evicted least recently used first, only when idle and not pinned.
    public static func decide(for id: String, projection: [String: Int], claim: Bool = false, wait: Bool = true, in fleet: FleetView) -> Placement {
        for (device, need) in projection.sorted(by: { $0.key < $1.key }) where need > fleet.budget(device) {
            return .refuse(.insufficientMemory(id, neededMiB: need, availableMiB: fleet.budget(device), device: device))
        }
        let others = fleet.models.filter { $0.key != id && $0.value.occupiesRoom }
        var used: [String: Int] = [:]
        for model in others.values { for (d, m) in model.projection { used[d, default: 0] += m } }
        var claimed: [String: Int] = [:]
        for (owner, c) in fleet.claims where owner != id { for (d, m) in c { claimed[d, default: 0] += m } }
        let overMemory = projection.contains { d, need in used[d, default: 0] + claimed[d, default: 0] + need > fleet.budget(d) }
        // Models, not instances, count against the limit: another replica of the model being
        // placed adds none, and the replicas of another model count as one.
        let own = fleet.models[id]?.model ?? id
        let otherModels = Set(others.map { $0.value.model ?? $0.key }).subtracting([own]).count
        if (claim || otherModels < fleet.maxLoadedModels) && !overMemory { return .fits }
        // Even with every model unloaded, what jobs hold leaves too little: say so rather than wait.
        let overClaims = projection.contains { d, need in claimed[d, default: 0] + need > fleet.budget(d) }
        if overClaims && !(claim && wait) {
            let held = claimed.sorted { $0.key < $1.key }.map { "\($0.value) MiB on \($0.key)" }.joined(separator: ", ")
            return .refuse(.noCapacity(id, "running jobs hold \(held) of the memory budget"))
        }
        let idle = others.filter { $0.value.isEvictable }
        if let victim = idle.min(by: { ($0.value.lastUsed, $0.key) < ($1.value.lastUsed, $1.key) }) { return .evict(victim.key) }
        // Waiting only helps if some loaded model can become evictable (or a job's claim ends).
        if others.values.allSatisfy(\.pinned) && !overClaims { return .refuse(.noCapacity(id, "every loaded model is pinned")) }
        if claim && !wait { return .refuse(.noCapacity(id, "busy models hold the memory; try again when they are idle")) }
        return .wait(overMemory ? "busy models hold the memory" : "\(otherModels) models are loaded, the most allowed, and all are busy")
    }
}

/// A model's recent failures (crashes and failed loads): enough within the window mark it
/// failed until an operator unloads it.
public struct CrashHistory: Sendable, Equatable {
    public private(set) var times: [ContinuousClock.Instant] = []
    /// Why the model is marked failed, once it is.
    public private(set) var failure: String?

    public init() {}

    /// Counts a failure at `now`; those older than `window` are forgotten first.
    public mutating func record(_ reason: String, at now: ContinuousClock.Instant, window: Duration, maxCrashes: Int) {
        times = times.filter { now - $0 < window } + [now]
        if times.count >= maxCrashes { failure = "\(times.count) failures within \(window); last: \(reason)" }
    }

    /// An operator's unload forgets the failures (and the mark).
    public mutating func reset() {
        times = []
        failure = nil
    }

    /// How long a load waits after recent failures: 250 ms after one, doubling up to 4 s; nil
    /// after none.
    public var restartDelay: Duration? { times.isEmpty ? nil : .milliseconds(250 << min(times.count - 1, 4)) }
}

/// How long an idle model stays loaded: the request's keep-alive, else the model's TTL, else the
/// default; negative is forever (nil: no timer), zero unloads as soon as it is idle.
public func idleTimeToLive(keepAlive: Duration?, modelTTL: Duration?, defaultTTL: Duration) -> Duration? {
    let ttl = keepAlive ?? modelTTL ?? defaultTTL
    return ttl < .zero ? nil : ttl
}
