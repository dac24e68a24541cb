import AsyncHTTPClient
import Foundation
import GGUF
import Logging
import Synchronization

/// A granted right to send one request to a model.
/// Whose turn comes first when a model's slots are all busy: a client's request before
/// background work (evaluation runs), so a long run never makes users wait behind its queue.
public enum RequestPriority: Sendable, Equatable {
    case interactive
    case background
}

public struct Lease: Sendable {
    public let modelID: String
    /// Where to send the request (`http://127.0.0.1:PORT` or a remote base URL).
    public let baseURL: String
    /// API key for a remote upstream.
    public let apiKey: String?
    /// Time spent waiting for a slot, excluding loading.
    public let queueDuration: Duration
    /// Time spent loading the model for this request (zero when it was ready).
    public let loadDuration: Duration
    let generation: Int
    /// Whether the model is served by a remote upstream (not a local llama-server).
    public let isRemote: Bool
    /// The loopback port of the local llama-server (nil for a remote upstream).
    public var localPort: Int? = nil
    /// The cluster peer serving the request (its Corral at `baseURL`), nil when served here.
    public var peer: String? = nil
    /// Which of the model's instances serves it (0 for the first, and for remote leases).
    public var replica = 0

    /// A lease on a cluster peer's Corral: nothing is held here (release does nothing).
    public static func onPeer(_ peer: String, url: String, model: String) -> Lease {
        Lease(modelID: model, baseURL: url, apiKey: nil, queueDuration: .zero, loadDuration: .zero, generation: -1, isRemote: true, peer: peer)
    }
}

/// A read-only view of one model's state, for admin routes and tests.
public struct InstanceInfo: Sendable, Codable {
    public var model: String
    /// Which of the model's instances this is (0 for the first; see `models[].replicas`).
    public var replica = 0
    public var state: String
    public var pid: Int32?
    public var port: Int?
    public var arguments: [String]
    public var uptimeSeconds: Double?
    public var inFlight: Int
    public var queued: Int
    public var pinned: Bool
    public var projectedMiB: Int?
    public var allocatedMiB: [String: Double]
    /// `log`: from this instance's own log lines; `learned`: from an earlier load with the same
    /// file, arguments, hardware and llama.cpp build (this one runs at `-lv 3`, which prints none).
    public var allocationSource: String?
    public var planSource: String?
    public var planNote: String?
    public var expiresInSeconds: Double?
    public var crashes: Int
    /// The context the running instance has (llama-server's `n_ctx`).
    public var contextSize: Int?
    /// When a request last used the model.
    public var lastUsed: Date?
    public var lastError: String?
    /// The last log lines of the most recent crash.
    public var lastCrashLog: [String]
    /// How much of the prompts llama-server found in its cache, for this model since Corral
    /// started (filled in from the metrics by the routes that show instances; nil until a
    /// request reported it).
    public var promptCache: PromptCacheUse?
    /// Where each part of a model split over cluster RPC workers runs (this node's `Host` part
    /// first); nil for a model loaded whole.
    public var split: [SplitPart]?
}

/// Prompt tokens llama-server took from its prompt cache (`cache_n`) against every prompt token
/// of the requests (`cache_n` + `prompt_n`).
public struct PromptCacheUse: Sendable, Codable, Equatable {
    public var cachedTokens: Int
    public var promptTokens: Int
    /// cachedTokens / promptTokens (0 when no prompt token was counted).
    public var hitRate: Double

    public init(cachedTokens: Int, promptTokens: Int) {
        self.cachedTokens = cachedTokens
        self.promptTokens = promptTokens
        self.hitRate = promptTokens > 0 ? Double(cachedTokens) / Double(promptTokens) : 0
    }
}

/// Owns the fleet of llama-server processes: loads on first use (single-flight), hands out
/// leases up to each model's parallel slots, queues the rest (bounded), evicts least-recently
/// used idle models when the model count or memory budget requires it, unloads after the idle
/// TTL, and restarts crashed models with backoff.
public actor Scheduler {
    public struct Limits: Sendable {
        public var maxLoadedModels: Int
        /// Budget per device name (`Host` for RAM), MiB.
        public var memoryBudgetMiB: [String: Int]
        /// Free memory llama-fit-params must leave per device (`--fit-target`).
        public var memoryMarginMiB: Int
        public var defaultTTL: Duration
        public var queueDepth: Int
        public var loadTimeout: Duration
        public var fit: Bool
        public var stopGrace: Duration = .seconds(5)
        /// Crashes within `crashWindow` that mark a model failed.
        public var maxCrashes = 3
        public var crashWindow: Duration = .seconds(60)
        /// Accelerators by name (llama.cpp's `--device` names): a model's replicas take one each
        /// in turn when there are several.
        public var accelerators: [String] = []
        /// CPU cores, divided among a model's replicas when there is no accelerator to give each.
        public var cores = ProcessInfo.processInfo.activeProcessorCount

        public init(from config: CorralConfig.Scheduler, hostTotalMiB: Int, devices: [Device] = []) {
            accelerators = devices.map(\.name)
            maxLoadedModels = config.maxLoadedModels
            var budget = ["Host": config.memoryBudgetMiB ?? max(0, hostTotalMiB - config.memoryMarginMiB)]
            for d in devices { budget[d.name] = max(0, d.totalMiB - config.memoryMarginMiB) }
            memoryBudgetMiB = budget
            memoryMarginMiB = config.memoryMarginMiB
            defaultTTL = config.defaultTTL
            queueDepth = config.queueDepth
            loadTimeout = config.loadTimeout
            fit = config.fit
        }
    }

    /// An instance's lifecycle, over the handles this actor keeps: a load's task, the running
    /// server, a stop's task.
    typealias Lifecycle = InstanceLifecycle<Task<ModelInstance, any Error>, ModelInstance, Task<Void, Never>>

    /// A request waiting for a slot of one of a model's instances.
    struct Waiter {
        /// Resumed with the replica whose slot it was given (its `inFlight` already counts it).
        var continuation: CheckedContinuation<Int, any Error>
        var priority: RequestPriority
        /// The instance its prompt's prefix points at (prefix affinity), if any.
        var preferred: Int?
        var affinity: PromptAffinity?
        var since: ContinuousClock.Instant
    }

    /// One llama-server of a model (a replica), numbered from 0: its lifecycle (phase,
    /// generation, slots in flight, idle deadline: changed only through its events) and what this
    /// actor keeps beside it.
    struct Instance {
        var lifecycle = Lifecycle()
        var projection: [String: Int] = [:]
        var idleTimer: Task<Void, Never>?
        /// The load-time options the running instance was started with.
        var instanceOptions = LoadOptions()
        /// Where the running instance's KV caches are saved before it stops (nil: no warm swaps).
        var warmFolder: String?
        /// The cluster RPC workers this instance is split over (reserved until it stops), and
        /// which reservation it is (a lost worker's report names it).
        var split: SplitLease?
        var splitID: UUID?

        var phase: Lifecycle.Phase { lifecycle.phase }
        var inFlight: Int { lifecycle.inFlight }
        var lastUsed: ContinuousClock.Instant { lifecycle.lastUsed }
        var generation: Int { lifecycle.generation }
        var isReady: Bool { lifecycle.isReady }
        var isLoading: Bool { lifecycle.isLoading }
        var isUnloaded: Bool { lifecycle.isUnloaded }
    }

    /// A model: its instances, its queue, and what applies to all of them.
    struct Slot {
        /// Its instances by replica number (an entry stays, unloaded, after its instance stops).
        var instances: [Int: Instance] = [:]
        /// Requests waiting for a free slot on any instance (interactive ones are served first).
        var waiters: [Waiter] = []
        var lastUsed = ContinuousClock.now
        var ttlOverride: Duration?
        var crashes = CrashHistory()
        var lastError: String?
        /// The last log lines of the instance that crashed most recently.
        var lastCrashLog: [String] = []
        var pinnedAtRuntime = false
        /// A larger context than configured, asked for by a request; used from the next load on.
        var contextOverride: Int?
        /// Load-time options the last request that set any asked for; used from the next load on.
        var loadOptions = LoadOptions()
        /// Which instance served which prompt prefixes and sessions.
        var affinity = AffinityTable()
        /// The replica round-robin routing gave the last request.
        var lastGiven = -1
        /// A pending check whether the queue has waited long enough for another instance.
        var scaleCheck: Task<Void, Never>?
        /// A pending second look at the queue once a request waiting for a busy preferred
        /// instance has waited its limit.
        var dispatchCheck: Task<Void, Never>?

        /// Ready instances, lowest replica first.
        var ready: [(replica: Int, instance: ModelInstance)] {
            instances.keys.sorted().compactMap { r in
                if case .ready(let i) = instances[r]!.phase { (r, i) } else { nil }
            }
        }

        /// Nothing in flight on any instance and nothing queued.
        var isIdle: Bool { waiters.isEmpty && instances.values.allSatisfy { $0.inFlight == 0 } }

        /// Instances loaded, loading or stopping.
        var running: Int { instances.values.filter { !$0.isUnloaded }.count }

        /// The lowest replica number with no instance running.
        var freeReplica: Int { (0...).first { instances[$0]?.isUnloaded ?? true }! }
    }

    public private(set) var catalog: ModelCatalog {
        didSet { published.withLock { $0 = catalog } }
    }
    /// A copy of `catalog` readable without a hop onto the actor (name lookups on the request
    /// path); replaced whenever the catalog changes.
    private nonisolated let published: Mutex<ModelCatalog>
    let limits: Limits
    let tools: LlamaTools
    let planner: FitPlanner
    let client: HTTPClient
    let logger: Logger
    var slots: [String: Slot] = [:]
    var fleetWaiters: [CheckedContinuation<Void, Never>] = []
    var isShuttingDown = false
    /// Children started but not ready yet, so shutdown can stop a load that hangs.
    var loadingChildren: [String: ChildProcess] = [:]
    /// Number of llama-server processes started, for tests and metrics.
    public private(set) var spawnCount = 0
    /// Cached plans by model id (the persistent cache lives in Store).
    var plans: [String: FitPlan] = [:]
    /// What loads allocated, by model file and launch arguments (see ``LearnedAllocations``).
    private var learnedByLaunch: [LaunchKey: LearnedAllocations] = [:]

    /// A model file as it is now (a replaced file is learned again) and the launch arguments.
    private struct LaunchKey: Hashable {
        let file: FileIdentity?
        let arguments: [String]

        init(_ spec: ModelSpec, _ arguments: [String]) {
            file = spec.path.flatMap(FileIdentity.of)
            self.arguments = arguments
        }
    }
    /// Looks up and saves plans across restarts; set by the app.
    var planCache: (any FitPlanCache)?

    /// Saved KV caches across stops (nil: none are kept).
    let warmSwap: WarmSwapStore?
    /// Splits a model larger than this node's budget over cluster RPC workers (a cluster node
    /// sets it; nil: such a model is refused as too large).
    var splitter: (any SplitProvider)?

    /// Lets models larger than this node's budget load split over RPC workers.
    public func setSplitter(_ splitter: (any SplitProvider)?) { self.splitter = splitter }
    /// What warm swaps did since start (for /metrics).
    public nonisolated let warmSwapCounts = WarmSwapCounter()

    public init(catalog: ModelCatalog, limits: Limits, tools: LlamaTools, client: HTTPClient, logger: Logger,
                planCache: (any FitPlanCache)? = nil, warmSwap: WarmSwapStore? = nil) {
        self.warmSwap = warmSwap
        self.catalog = catalog
        self.published = Mutex(catalog)
        self.configuredDefault = catalog.defaultModel
        self.limits = limits
        self.tools = tools
        self.planner = FitPlanner(fitParamsPath: limits.fit ? tools.fitParams?.path : nil, marginMiB: limits.memoryMarginMiB)
        self.client = client
        self.logger = logger
        self.planCache = planCache
    }

    /// Tuned llama-server arguments per model id (a tuning session's applied winner), used from
    /// the model's next spawn on.
    public private(set) var runtimeArguments: [String: [String]] = [:]

    /// Sets (or with nil clears) a model's runtime arguments.
    public func setRuntimeArguments(_ modelName: String, _ arguments: [String]?) throws(SchedulerError) {
        guard let spec = catalog.resolve(modelName) else { throw .unknownModel(modelName) }
        runtimeArguments[spec.id] = arguments
    }

    /// Aliases created at runtime (Ollama's `/api/copy`), alias → model id; kept across reloads.
    public private(set) var runtimeAliases: [String: String] = [:]

    /// The current catalog without waiting for the actor (it may be a moment behind a reload).
    public nonisolated var currentCatalog: ModelCatalog { published.withLock { $0 } }

    /// Which models have a ready instance and which are loading (since when, expected for how
    /// long), readable without a hop onto the actor: the fast lane leaves requests for a model
    /// that is not ready to the router, which keeps a waiting stream alive with load progress.
    private nonisolated let readiness = Mutex(Readiness())

    struct Readiness {
        var ready: Set<String> = []
        var loading: [String: (started: ContinuousClock.Instant, expected: Duration)] = [:]
        /// How long each model's last load took.
        var lastLoad: [String: Duration] = [:]
    }

    /// Whether `id` (a model id, not an alias) has a ready instance.
    public nonisolated func isReady(_ id: String) -> Bool { readiness.withLock { $0.ready.contains(id) } }

    /// How far a load of `id` in progress has come, estimated from the time since it began
    /// against the model's last load (else half a second plus its file read at 1 GiB/s); never
    /// above 0.95 until the instance is ready. Nil when it is not loading.
    public nonisolated func loadProgress(_ id: String) -> Double? {
        readiness.withLock { state in
            guard let load = state.loading[id] else { return nil }
            let fraction = (ContinuousClock.now - load.started) / max(load.expected, .milliseconds(1))
            return min(0.95, max(0, fraction))
        }
    }

    /// Swaps the catalog (configuration reload); runtime aliases are applied to the new one.
    public func replaceCatalog(_ catalog: ModelCatalog) {
        var catalog = catalog
        configuredDefault = catalog.defaultModel
        for (alias, target) in runtimeAliases.sorted(by: { $0.key < $1.key }) { _ = catalog.addAlias(alias, for: target) }
        if let chosen = runtimeDefault, catalog.resolve(chosen) != nil { catalog.defaultModel = chosen }
        self.catalog = catalog
    }

    /// The admin's choice of default model, kept over catalog reloads (nil: routes.json's).
    private var runtimeDefault: String?
    /// The default the catalog was built with (routes.json's, or the only model).
    private var configuredDefault: String?

    /// Makes `name` the model requests without one are served by (nil: back to routes.json's
    /// `defaultModel`, or the only model). Returns the default now in force.
    @discardableResult
    public func setDefaultModel(_ name: String?) throws(SchedulerError) -> String? {
        if let name {
            guard let spec = catalog.resolve(name) else { throw .unknownModel(name) }
            runtimeDefault = spec.id
            catalog.defaultModel = spec.id
        } else {
            runtimeDefault = nil
            catalog.defaultModel = configuredDefault
        }
        return catalog.defaultModel
    }

    /// Adds a runtime alias; returns the model id it points at.
    public func addRuntimeAlias(_ alias: String, for modelName: String) throws(SchedulerError) -> String {
        guard let spec = catalog.resolve(modelName) else { throw .unknownModel(modelName) }
        let name = ModelCatalog.normalize(alias)
        if let existing = catalog.resolve(name) {
            guard existing.id == spec.id else { throw .nameTaken(name) }
            return spec.id
        }
        _ = catalog.addAlias(name, for: spec.id)
        runtimeAliases[name] = spec.id
        return spec.id
    }

    /// Removes a runtime alias; false when `alias` is not one.
    public func removeRuntimeAlias(_ alias: String) -> Bool {
        let name = ModelCatalog.normalize(alias)
        guard runtimeAliases.removeValue(forKey: name) != nil else { return false }
        catalog.removeAlias(name)
        return true
    }

    // MARK: Leases

    /// Waits for a slot on `modelName`, loading the model if needed.
    /// - Parameter keepAlive: overrides the idle TTL from now on (negative = never unload, zero = unload after use).
    /// - Parameter load: what the request asks of the instance (see ``LoadOptions``): a running
    ///   instance that satisfies it serves the request; an idle one that does not is restarted
    ///   with it; a busy one serves it (never interrupting others) and the next load uses it.
    /// - Parameter affinity: the prompt's leading blocks and session, which pick among a model's
    ///   replicas (see ``ReplicaPolicy/Routing``); nil picks the least busy.
    public func acquire(_ modelName: String, keepAlive: Duration? = nil, load: LoadOptions? = nil,
                        priority: RequestPriority = .interactive, affinity: PromptAffinity? = nil) async throws(SchedulerError) -> Lease {
        // A request may not make a model's context larger than it was trained for.
        let minimumContext = load?.minimumContext.map { min($0, catalog.resolve(modelName)?.facts?.contextLength ?? (1 << 20)) }
        guard !isShuttingDown else { throw .shuttingDown }
        guard let spec = catalog.resolve(modelName) else { throw .unknownModel(modelName) }
        if case .remote(let baseURL, let keyEnv) = spec.backend {
            let key = keyEnv.flatMap { ProcessInfo.processInfo.environment[$0] }
            return Lease(modelID: spec.id, baseURL: baseURL, apiKey: key, queueDuration: .zero, loadDuration: .zero, generation: 0, isRemote: true)
        }
        let id = spec.id
        if let keepAlive { slots[id, default: Slot()].ttlOverride = keepAlive }
        if let minimumContext, minimumContext > (slots[id]?.contextOverride ?? 0), minimumContext > (spec.contextSize ?? 0) {
            slots[id, default: Slot()].contextOverride = minimumContext
        }
        // The instance a restart would start: the request's exact options, for this and later loads.
        let wanted = load.map { $0.exact }
        if let wanted, load?.hasExact == true { slots[id, default: Slot()].loadOptions = wanted }
        let start = ContinuousClock.now
        var loadDuration = Duration.zero
        while true {
            guard !isShuttingDown else { throw .shuttingDown }
            let slot = slots[id, default: Slot()]
            let ready = slot.ready
            if !ready.isEmpty {
                if let needed = minimumContext, slot.isIdle, ready.contains(where: { ($0.instance.contextSize ?? .max) < needed }) {
                    logger.info("restarting model with a larger context", metadata: ["model": "\(id)", "to": "\(needed)"])
                    await stop(id)
                    continue
                }
                if let load, load.hasExact, slot.isIdle, ready.contains(where: { !load.isSatisfied(by: slot.instances[$0.replica]!.instanceOptions) }) {
                    logger.info("restarting model with the requested load options", metadata: ["model": "\(id)", "options": "\(load.arguments.joined(separator: " "))"])
                    await stop(id)
                    continue
                }
                let preferred = affinity.flatMap { slot.affinity.preferred($0)?.replica }
                var waitFor: Int?
                switch ReplicaChoice.decide(among: candidates(slot, spec), preferred: preferred, routing: spec.replicas.routing, after: slot.lastGiven,
                                            queued: slot.waiters.count) {
                case .instance(let replica) where slot.waiters.isEmpty || slot.instances.count > 1:
                    give(id, replica, affinity: affinity)
                    return lease(id, replica, start: start, load: loadDuration)
                case .instance:
                    waitFor = nil  // one instance: first come, first served behind those waiting
                case .queue(let preferring):
                    waitFor = preferring
                }
                guard slot.waiters.count < limits.queueDepth else {
                    throw .queueFull(id, retryAfter: 1)
                }
                scheduleScaleCheck(id, after: spec.replicas.scaleUpAfter)
                let replica: Int
                do {
                    replica = try await withCheckedThrowingContinuation { (c: CheckedContinuation<Int, any Error>) in
                        slots[id]!.waiters.append(Waiter(continuation: c, priority: priority, preferred: waitFor, affinity: affinity, since: .now))
                    }
                } catch let error as SchedulerError {
                    throw error
                } catch {
                    throw .instanceCrashed(id)
                }
                // The releaser handed its slot over (inFlight already counts us).
                guard slots[id]?.instances[replica]?.isReady == true else { throw .instanceCrashed(id) }
                return lease(id, replica, start: start, load: loadDuration)
            }
            if let (_, instance) = slot.instances.first(where: { $0.value.isLoading }), case .loading(let task, _) = instance.phase {
                let loadStart = ContinuousClock.now
                do { _ = try await task.value } catch let error as SchedulerError { throw error } catch {
                    throw .loadFailed(id, "\(error)")
                }
                loadDuration += ContinuousClock.now - loadStart
                continue
            }
            if let (replica, instance) = slot.instances.first(where: { $0.value.lifecycle.isStopping }),
                case .stopping(let task) = instance.phase
            {
                await awaitStop(id, replica, task)
                continue
            }
            if let failure = slot.crashes.failure { throw .modelFailed(id, failure) }
            let loadStart = ContinuousClock.now
            readiness.withLock { state in
                let guess = Duration.milliseconds(500) + .milliseconds(Int64((spec.fileSize ?? 0) / 1_048_576))
                state.loading[id] = (loadStart, state.lastLoad[id] ?? guess)
            }
            defer { readiness.withLock { _ = $0.loading.removeValue(forKey: id) } }
            _ = try await loadReplica(spec, slot.freeReplica, waitForRoom: true)
            readiness.withLock { $0.lastLoad[id] = ContinuousClock.now - loadStart }
            loadDuration += ContinuousClock.now - loadStart
            // The rest of `replicas.min` follow in the background.
            if spec.replicas.min > 1 { Task { await self.scaleUp(id, reason: "replicas.min is \(spec.replicas.min)") } }
        }
    }

    /// The model's ready instances as routing sees them.
    private func candidates(_ slot: Slot, _ spec: ModelSpec) -> [ReplicaChoice.Candidate] {
        slot.ready.map { ready in
            ReplicaChoice.Candidate(replica: ready.replica, inFlight: slot.instances[ready.replica]!.inFlight, slots: spec.parallel,
                                    waiting: slot.waiters.count { $0.preferred == ready.replica })
        }
    }

    /// Gives a slot of `replica` to a request.
    private func give(_ id: String, _ replica: Int, affinity: PromptAffinity?) {
        perform(slots[id]!.instances[replica]!.lifecycle.give(now: .now), id, replica)
        slots[id]!.lastUsed = .now
        slots[id]!.lastGiven = replica
        if let affinity, !affinity.isEmpty { slots[id]!.affinity.record(affinity, replica: replica) }
    }

    private func lease(_ id: String, _ replica: Int, start: ContinuousClock.Instant, load: Duration) -> Lease {
        let total = ContinuousClock.now - start
        let instance = slots[id]!.instances[replica]!
        guard case .ready(let running) = instance.phase else { preconditionFailure("a lease on an instance that is not ready") }
        return Lease(modelID: id, baseURL: running.baseURL, apiKey: nil, queueDuration: total - load, loadDuration: load,
                     generation: instance.generation, isRemote: false, localPort: running.port, replica: replica)
    }

    /// Returns a lease's slot: to the next queued request, or to the idle pool.
    public func release(_ lease: Lease) {
        let id = lease.modelID
        guard !lease.isRemote, slots[id]?.instances[lease.replica] != nil,
              let actions = slots[id]!.instances[lease.replica]!.lifecycle.release(generation: lease.generation, now: .now)
        else { return }
        slots[id]!.lastUsed = .now
        perform(actions, id, lease.replica)
    }

    /// Hands free slots of ready instances to queued requests: on each free instance, the oldest
    /// interactive request waiting for it, else the oldest interactive one waiting for no
    /// instance in particular (or for one that is not ready, or for longer than
    /// `replicas.scaleUpAfter`); background work (evaluations) only when no interactive request
    /// waits. A request waits for its preferred instance only within the load bound (see
    /// ``ReplicaChoice/decide(among:preferred:routing:after:queued:)``) and only so long.
    private func dispatch(_ id: String) {
        guard let spec = catalog.resolve(id) else { return }
        var resumed: [(CheckedContinuation<Int, any Error>, Int)] = []
        let now = ContinuousClock.now
        while let slot = slots[id], !slot.waiters.isEmpty {
            let ready = Set(slot.ready.map(\.replica))
            let free = candidates(slot, spec).filter { $0.inFlight < $0.slots }.map(\.replica)
            guard !free.isEmpty else { break }
            let interactive = slot.waiters.indices.filter { slot.waiters[$0].priority == .interactive }
            let eligible = interactive.isEmpty ? Array(slot.waiters.indices) : interactive
            func takesAny(_ w: Waiter) -> Bool {
                guard let preferred = w.preferred else { return true }
                return !ready.contains(preferred) || now - w.since >= spec.replicas.scaleUpAfter
            }
            var pick: (waiter: Int, replica: Int)?
            for replica in free {
                if let w = eligible.first(where: { slot.waiters[$0].preferred == replica }) ?? eligible.first(where: { takesAny(slot.waiters[$0]) }) {
                    pick = (w, replica)
                    break
                }
            }
            guard let pick else {
                // Every waiter waits for a busy instance of its own; look again when the first of them has waited its limit.
                scheduleDispatch(id, after: spec.replicas.scaleUpAfter - (now - (slot.waiters.map(\.since).min() ?? now)))
                break
            }
            let replica = spec.replicas.routing == .roundRobin
                ? (free.first { $0 > slot.lastGiven } ?? free[0])
                : pick.replica
            let waiter = slots[id]!.waiters.remove(at: pick.waiter)
            give(id, replica, affinity: waiter.affinity)
            resumed.append((waiter.continuation, replica))
        }
        for (continuation, replica) in resumed { continuation.resume(returning: replica) }
    }

    /// Runs ``dispatch(_:)`` again after `delay` (a waiter's wait for its preferred instance ends).
    private func scheduleDispatch(_ id: String, after delay: Duration) {
        guard slots[id]?.dispatchCheck == nil else { return }
        slots[id]!.dispatchCheck = Task { [weak self] in
            do { try await Task.sleep(for: max(delay, .milliseconds(1))) } catch { return }
            await self?.dispatchCheckFired(id)
        }
    }

    private func dispatchCheckFired(_ id: String) {
        slots[id]?.dispatchCheck = nil
        dispatch(id)
    }

    // MARK: Replicas

    /// Checks after `delay` whether the model's queue has waited long enough for another instance.
    private func scheduleScaleCheck(_ id: String, after delay: Duration) {
        guard let spec = catalog.resolve(id), spec.replicas.max > 1, slots[id]?.scaleCheck == nil else { return }
        slots[id]!.scaleCheck = Task { [weak self] in
            do { try await Task.sleep(for: delay) } catch { return }
            await self?.scaleCheckFired(id)
        }
    }

    private func scaleCheckFired(_ id: String) async {
        slots[id]?.scaleCheck = nil
        guard let spec = catalog.resolve(id), let slot = slots[id], let oldest = slot.waiters.map(\.since).min() else { return }
        let waited = ContinuousClock.now - oldest
        if waited < spec.replicas.scaleUpAfter {
            scheduleScaleCheck(id, after: spec.replicas.scaleUpAfter - waited)
            return
        }
        await scaleUp(id, reason: "a request waited \(waited.formatted(.units(allowed: [.seconds, .milliseconds], width: .narrow)))")
        // Still waiting with room for more: look again.
        if let slot = slots[id], !slot.waiters.isEmpty, slot.running < spec.replicas.max { scheduleScaleCheck(id, after: spec.replicas.scaleUpAfter) }
    }

    /// Starts one more instance of `id` (up to `replicas.max`, and `replicas.min` when fewer run),
    /// if the memory budget has room for it without waiting for a busy model; then hands it
    /// queued requests. One start at a time per model.
    private func scaleUp(_ id: String, reason: String) async {
        while let spec = catalog.resolve(id), let slot = slots[id], !isShuttingDown, slot.crashes.failure == nil,
            slot.running < spec.replicas.max, !slot.instances.values.contains(where: \.isLoading), !slot.ready.isEmpty
        {
            let replica = slot.freeReplica
            logger.info("starting another instance", metadata: ["model": "\(id)", "replica": "\(replica)", "reason": "\(reason)"])
            do {
                _ = try await loadReplica(spec, replica, waitForRoom: false)
            } catch {
                logger.info("no other instance for now", metadata: ["model": "\(id)", "replica": "\(replica)", "reason": "\(error)"])
                return
            }
            dispatch(id)
            if let slot = slots[id], slot.instances[replica]?.inFlight == 0 { scheduleIdleUnload(id, replica) }
            // Past `min`, one instance per look: the queue decides whether another is needed.
            if (slots[id]?.running ?? 0) >= spec.replicas.min { return }
        }
    }

    /// How the fleet names an instance (placement, eviction, loading children): the model id for
    /// its first replica, `id (replica N)` for the others.
    static func instanceKey(_ id: String, _ replica: Int) -> String { replica == 0 ? id : "\(id) (replica \(replica))" }

    // MARK: Loading and eviction

    private func plan(for spec: ModelSpec, base: [String]) async -> FitPlan {
        let key = ([spec.id] + base).joined(separator: "\u{0}")
        if let p = plans[key] { return p }
        if let cached = await planCache?.plan(for: spec, arguments: base) {
            plans[key] = cached
            return cached
        }
        let p = await planner.plan(model: spec, baseArguments: base)
        if p.source == .estimator { logger.warning("fit planning fell back to the header estimator", metadata: ["model": "\(spec.id)", "reason": "\(p.note ?? "")"]) }
        plans[key] = p
        if p.source == .fitParams { await planCache?.save(p, for: spec, arguments: base) }
        return p
    }

    /// Loads `replica` of a model and waits for it: its phase is `.loading` meanwhile, and on a
    /// failure back to `.unloaded` with the reason kept (a process that dies while loading counts
    /// like a crash). Without `waitForRoom` it fails rather than wait for busy models to idle.
    private func loadReplica(_ spec: ModelSpec, _ replica: Int, waitForRoom: Bool) async throws(SchedulerError) -> ModelInstance {
        let id = spec.id
        guard slots[id]?.instances[replica]?.isUnloaded ?? true else { throw .loadFailed(id, "replica \(replica) is already running") }
        let task = Task { try await self.load(spec, replica: replica, waitForRoom: waitForRoom) }
        slots[id, default: Slot()].instances[replica, default: Instance()].lifecycle.loadStarted(task)
        do {
            return try await task.value
        } catch let error as SchedulerError {
            slots[id]?.lastError = error.description
            var crash: String?
            if case .loadFailed(_, let why) = error { crash = why }
            perform(slots[id]?.instances[replica]?.lifecycle.loadFailed(crash: crash) ?? [], id, replica)
            throw error
        } catch {
            perform(slots[id]?.instances[replica]?.lifecycle.loadFailed(crash: nil) ?? [], id, replica)
            throw .loadFailed(id, "\(error)")
        }
    }

    private func load(_ spec: ModelSpec, replica: Int, waitForRoom: Bool) async throws -> ModelInstance {
        guard let server = tools.server?.path else { throw SchedulerError.noLlamaServer }
        guard let path = spec.path else { throw SchedulerError.unknownModel(spec.id) }
        // The file may have been deleted or truncated since the catalog read it: check its header
        // and tensor extents again rather than let llama-server find out (or crash on it later).
        do { _ = try ModelFacts.read(path: path) } catch {
            logger.error("model file is unusable", metadata: ["model": "\(spec.id)", "error": "\(error)"])
            throw SchedulerError.loadFailed(spec.id, "the model file is missing or damaged (\(error.message))")
        }
        // Back off after a crash: 250 ms, 500 ms, 1 s …
        if let delay = slots[spec.id]?.crashes.restartDelay { try? await Task.sleep(for: delay) }

        // Precedence: pinned args > fit result > defaults (llama.cpp keeps the last value of a flag,
        // and llama-fit-params only fills in what its input left unset).
        var spec = spec
        let id = spec.id
        let key = Self.instanceKey(id, replica)
        if let larger = slots[id]?.contextOverride, larger > (spec.contextSize ?? 0) { spec.contextSize = larger }
        let placement = replicaArguments(spec, replica)
        let base = spec.defaultArguments + placement.device
        let contextArgs = spec.contextArguments
        let plan = await plan(for: spec, base: spec.fitInputArguments + placement.device)
        var projection: [String: Int] = [:]
        for d in plan.projection { projection[d.device == "CPU" ? "Host" : d.device, default: 0] += d.totalMiB }
        // The prompt cache lives in host RAM beside the model (llama-fit-params does not count it).
        let cacheRam = ModelSpec.cacheRamMiB(in: base + (runtimeArguments[id] ?? []) + (slots[id]?.loadOptions.arguments ?? []) + spec.pinnedArgs)
        if cacheRam > 0 { projection["Host", default: 0] += cacheRam }
        slots[id, default: Slot()].instances[replica, default: Instance()].projection = projection
        slots[id]!.instances[replica]!.lifecycle.roomReserved(false)
        // Larger than this node's budget: split over the cluster's RPC workers when they have room
        // (else the budget check below refuses it as before).
        dropSplit(id, replica)
        if let split = await splitIfTooLarge(spec, key: key, replica: replica, plan: plan, projection: projection, cacheRam: cacheRam) {
            projection = ["Host": split.hostMiB]
            slots[id]!.instances[replica]!.projection = projection
        }
        let splitArguments = slots[id]?.instances[replica]?.split?.arguments ?? []
        // Another instance of a running model never makes room by stopping one of its siblings.
        try await makeRoom(for: key, projection: projection, wait: waitForRoom, sparing: replica == 0 ? nil : id)
        slots[id]!.instances[replica]!.lifecycle.roomReserved()

        guard let port = freeLoopbackPort() else { throw SchedulerError.loadFailed(id, "no free port") }
        // Precedence (llama.cpp keeps a flag's last value): pinned > runtime profile > fit > replica threads > defaults.
        // A split's `--rpc`, `-ngl` and `--tensor-split` come last: they are what makes it fit.
        let settings = base + (plan.arguments.isEmpty ? contextArgs : plan.arguments) + placement.threads + (runtimeArguments[id] ?? [])
            + (slots[id]?.loadOptions.arguments ?? []) + spec.pinnedArgs + splitArguments
        // Everything that decides what llama-server allocates (not its port or log level).
        let identity = ["-m", path, "--alias", id] + settings
        let learned = await learnedAllocations(spec, identity: identity)
        // Warm swaps: a folder per cache shape (and per replica), given to llama-server to save slots into.
        var warmFolder: String?
        let folderIdentity = ["--alias", id] + settings + (replica == 0 ? [] : ["#replica", String(replica)])
        if let warmSwap, spec.keepsWarmCaches, splitArguments.isEmpty, let folder = warmSwap.folder(modelPath: path, arguments: folderIdentity, serverPath: server) {
            do {
                try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
                warmFolder = folder
            } catch {
                logger.warning("no warm swaps for this load: the KV cache folder cannot be made", metadata: ["model": "\(id)", "error": "\(error)"])
            }
        }
        let arguments = ["-m", path, "--host", "127.0.0.1", "--port", String(port), "--alias", id, "--no-webui", "--metrics", "--slots", "--props",
                         "-lv", learned == nil ? "4" : "3"] + settings + (warmFolder.map { ["--slot-save-path", $0] } ?? [])
        slots[id]!.instances[replica]!.instanceOptions = slots[id]?.loadOptions ?? LoadOptions()
        let child: ChildProcess
        let log = InstanceLog(learned: learned)
        do {
            child = try ChildProcess(executable: server, arguments: arguments, onLine: { log.record($0) })
        } catch {
            throw SchedulerError.loadFailed(id, error.description)
        }
        spawnCount += 1
        loadingChildren[key] = child
        defer { loadingChildren[key] = nil }
        if isShuttingDown { child.signalGroup(SIGTERM) }
        logger.info("starting llama-server", metadata: ["model": "\(id)", "replica": "\(replica)", "pid": "\(child.pid)", "port": "\(port)"])
        let instance = ModelInstance(modelID: id, process: child, log: log, port: port, arguments: arguments, plan: plan)
        do {
            try await instance.waitUntilReady(client: client, timeout: limits.loadTimeout)
        } catch {
            await child.stop(grace: .seconds(1))
            throw error
        }
        if learned == nil, let allocations = log.observedAllocations {
            learnAllocations(allocations, spec, identity: identity)
        }
        if let warmFolder, let warmSwap {
            let slotCount = Int(settings.lastIndex(of: "-np").flatMap { settings.indices.contains($0 + 1) ? settings[$0 + 1] : nil } ?? "") ?? spec.parallel
            let (restored, refused) = await warmSwap.restore(folder: warmFolder, port: port, slotCount: slotCount, client: client)
            if restored > 0 {
                warmSwapCounts.add { $0.slotsRestored += restored }
                logger.info("restored saved KV caches", metadata: ["model": "\(id)", "replica": "\(replica)", "slots": "\(restored)"])
            }
            if !refused.isEmpty { logger.warning("llama-server refused saved KV caches; they are deleted", metadata: ["model": "\(id)", "files": "\(refused)"]) }
        }
        guard slots[id]?.instances[replica]?.isLoading == true else {
            // Nothing tracks this load any more: its process must not outlive it.
            await child.stop(grace: .seconds(1))
            throw SchedulerError.loadFailed(id, "the load was abandoned")
        }
        slots[id]!.instances[replica]!.warmFolder = warmFolder
        let started = slots[id]!.instances[replica]!.lifecycle.loadSucceeded(instance, now: .now)
        slots[id]!.lastUsed = .now
        slots[id]!.lastError = nil
        perform(started, id, replica)
        return instance
    }

    /// A split over RPC workers for an instance whose projection is larger than this node's
    /// budget on some device, kept on the instance until it stops; nil when it fits, when no
    /// splitter is set, or when no split can be had (logged with the reason).
    private func splitIfTooLarge(_ spec: ModelSpec, key: String, replica: Int, plan: FitPlan, projection: [String: Int], cacheRam: Int) async -> SplitLease? {
        guard let splitter, projection.contains(where: { $0.value > (limits.memoryBudgetMiB[$0.key] ?? limits.memoryBudgetMiB["Host"] ?? 0) }) else { return nil }
        let id = spec.id
        let layers = spec.facts?.blockCount ?? spec.facts?.layerBytes.count ?? 0
        guard layers > 0 else { return nil }
        let need = SplitPlanner.Need.from(plan: plan, layers: layers, layerBytes: spec.facts?.layerBytes ?? [], extraHostMiB: cacheRam)
        let splitID = UUID()
        let lease: SplitLease
        do {
            lease = try await splitter.split(model: id, instance: "\(key)#\(splitID.uuidString.prefix(8))", need: need, hostBudgetMiB: limits.memoryBudgetMiB["Host"] ?? 0,
                                             onLost: { [weak self] why in Task { await self?.workerLost(id, replica, splitID, why) } })
        } catch {
            logger.warning("the model does not fit this node and cannot be split over RPC workers", metadata: ["model": "\(id)", "reason": "\(error)"])
            return nil
        }
        guard slots[id]?.instances[replica]?.isLoading == true else {
            await lease.release()
            return nil
        }
        slots[id]!.instances[replica]!.split = lease
        slots[id]!.instances[replica]!.splitID = splitID
        logger.info("splitting the model over RPC workers", metadata: [
            "model": "\(id)", "replica": "\(replica)",
            "parts": "\(lease.parts.map { "\($0.node): \($0.layers) layers, \($0.memoryMiB) MiB" }.joined(separator: "; "))",
        ])
        return lease
    }

    /// Gives back an instance's split (its workers' reservations and the ways to them).
    private func dropSplit(_ id: String, _ replica: Int) {
        guard let lease = slots[id]?.instances[replica]?.split else { return }
        slots[id]!.instances[replica]!.split = nil
        slots[id]!.instances[replica]!.splitID = nil
        Task { await lease.release() }
    }

    /// A worker of a split instance went away: the instance cannot compute without it, so it is
    /// stopped (a load in progress is killed) and counted like a crash; the next request plans
    /// the model again with the workers there are then.
    private func workerLost(_ id: String, _ replica: Int, _ splitID: UUID, _ why: String) async {
        guard let current = slots[id]?.instances[replica], current.splitID == splitID else { return }
        switch current.phase {
        case .ready(let instance):
            logger.error("an RPC worker of a split model went away; stopping the instance", metadata: ["model": "\(id)", "replica": "\(replica)", "reason": "\(why)"])
            slots[id]!.lastCrashLog = instance.recentLog(20)
            recordCrash(id, "RPC worker lost: \(why)")
            await stopInstance(id, replica, grace: .zero, saveCache: false)
        case .loading:
            logger.error("an RPC worker of a split model went away while it loaded", metadata: ["model": "\(id)", "replica": "\(replica)", "reason": "\(why)"])
            loadingChildren[Self.instanceKey(id, replica)]?.signalGroup(SIGKILL)
        default:
            break
        }
    }

    /// What a replica of a model that may run several gets of the machine: with several
    /// accelerators one of them in turn (`--device`, also given to the fit), without any a share
    /// of the CPU cores (`-t`, `-tb`). Nothing for a model with one instance.
    func replicaArguments(_ spec: ModelSpec, _ replica: Int) -> (device: [String], threads: [String]) {
        guard spec.replicas.max > 1 else { return ([], []) }
        if limits.accelerators.count > 1 { return (["--device", limits.accelerators[replica % limits.accelerators.count]], []) }
        if limits.accelerators.isEmpty {
            let threads = String(max(1, limits.cores / spec.replicas.max))
            return ([], ["-t", threads, "-tb", threads])
        }
        return ([], [])
    }

    /// What an earlier load with the same file and arguments allocated: from memory, else from
    /// the persistent cache (which also keys on hardware and llama.cpp build).
    private func learnedAllocations(_ spec: ModelSpec, identity: [String]) async -> LearnedAllocations? {
        let key = LaunchKey(spec, identity)
        if let known = learnedByLaunch[key] { return known }
        guard let cached = await planCache?.allocations(for: spec, arguments: identity) else { return nil }
        learnedByLaunch[key] = cached
        return cached
    }

    private func learnAllocations(_ allocations: LearnedAllocations, _ spec: ModelSpec, identity: [String]) {
        learnedByLaunch[LaunchKey(spec, identity)] = allocations
        if let planCache { Task { await planCache.save(allocations, for: spec, arguments: identity) } }
    }

    // MARK: Memory claimed by jobs

    /// MiB per device held by jobs outside the fleet (tuning trials, trainers), by owner.
    private var memoryClaims: [String: [String: Int]] = [:]

    /// Claims memory for work outside the fleet, under the same budget as the fleet: evicts
    /// idle models for it, waits for busy ones when `wait`, and throws `insufficientMemory` when
    /// the claim exceeds the budget even with nothing loaded (or `noCapacity` when it cannot be
    /// had without waiting, or pinned models hold the rest). Several claims of one owner add up.
    public func claimMemory(owner: String, mib: [String: Int], wait: Bool) async throws(SchedulerError) {
        let need = mib.filter { $0.value > 0 }
        guard !need.isEmpty else { return }
        var total = memoryClaims[owner] ?? [:]
        for (d, m) in need { total[d, default: 0] += m }
        do {
            try await makeRoom(for: owner, projection: total, claim: true, wait: wait)
        } catch let error as SchedulerError {
            throw error
        } catch {
            throw .noCapacity(owner, "\(error)")
        }
        memoryClaims[owner] = total
    }

    /// Gives back all memory `owner` claimed; models waiting for room try again.
    public func releaseMemoryClaims(owner: String) {
        guard memoryClaims.removeValue(forKey: owner) != nil else { return }
        notifyFleetChanged()
    }

    /// Memory claimed by jobs, by owner (for /admin/instances and tests).
    public var claimedMemory: [String: [String: Int]] { memoryClaims }

    /// Each device's budget and what loaded (and loading) instances and job claims take of it,
    /// MiB: the room a new load would find (a cluster node's heartbeat carries it).
    public func memoryRoom() -> [String: (budgetMiB: Int, usedMiB: Int)] {
        var used: [String: Int] = [:]
        for slot in slots.values {
            for instance in slot.instances.values {
                guard instance.lifecycle.takesRoom else { continue }
                for (d, m) in instance.projection { used[d, default: 0] += m }
            }
        }
        for claim in memoryClaims.values { for (d, m) in claim { used[d, default: 0] += m } }
        var out: [String: (Int, Int)] = [:]
        for (device, budget) in limits.memoryBudgetMiB { out[device] = (budget, used[device] ?? 0) }
        return out
    }

    /// Evicts LRU idle unpinned instances until `key` fits by count and by memory on every device
    /// (memory claimed by jobs counts as used); waits for busy models to go idle when nothing
    /// can be evicted yet, or with `wait` false throws `noCapacity` instead. For a claim
    /// (`claim`), the model count does not apply.
    private func makeRoom(for key: String, projection: [String: Int], claim: Bool = false, wait: Bool = true, sparing: String? = nil) async throws {
        while true {
            if isShuttingDown { throw SchedulerError.shuttingDown }
            let (fleet, owners) = fleetView(sparing: sparing)
            switch Placement.decide(for: key, projection: projection, claim: claim, wait: wait, in: fleet) {
            case .fits:
                return
            case .evict(let victim):
                guard let (id, replica) = owners[victim] else { return }
                logger.info("evicting model", metadata: ["model": "\(id)", "replica": "\(replica)", "for": "\(key)"])
                await stopInstance(id, replica)
            case .refuse(let error):
                throw error
            case .wait(let why):
                guard wait else { throw SchedulerError.noCapacity(key, why) }
                await withCheckedContinuation { fleetWaiters.append($0) }
            }
        }
    }

    /// The fleet as ``Placement`` sees it, one entry per instance (see ``instanceKey(_:_:)``),
    /// with the model and replica behind each entry's key. The instances of `sparing` count as
    /// pinned: they are not evicted.
    private func fleetView(sparing: String? = nil) -> (FleetView, [String: (String, Int)]) {
        var models: [String: FleetView.Model] = [:]
        var owners: [String: (String, Int)] = [:]
        for (id, slot) in slots {
            let keep = catalog.resolve(id)?.replicas.min ?? 1
            for (replica, instance) in slot.instances {
                let phase = instance.phase.fleetPhase
                let key = Self.instanceKey(id, replica)
                owners[key] = (id, replica)
                // Replicas beyond `min` are never pinned: they exist for a queue, not a promise.
                models[key] = FleetView.Model(phase: phase, inFlight: instance.inFlight, waiting: slot.waiters.count, lastUsed: instance.lastUsed,
                                              pinned: (replica < keep && isPinned(id)) || id == sparing, projection: instance.projection, model: id)
            }
        }
        return (FleetView(models: models, claims: memoryClaims, budgetMiB: limits.memoryBudgetMiB, maxLoadedModels: limits.maxLoadedModels), owners)
    }

    private func isPinned(_ id: String) -> Bool {
        (catalog.resolve(id)?.pinned ?? false) || (slots[id]?.pinnedAtRuntime ?? false)
    }

    private func notifyFleetChanged() {
        let waiters = fleetWaiters
        fleetWaiters = []
        for w in waiters { w.resume() }
    }

    private nonisolated func publishReadiness(_ id: String, ready: Bool) {
        readiness.withLock { state in
            if ready { state.ready.insert(id) } else { state.ready.remove(id) }
        }
    }

    /// Marks `id` not ready once none of its instances is.
    private func republishReadiness(_ id: String) {
        publishReadiness(id, ready: !(slots[id]?.ready.isEmpty ?? true))
    }

    /// Reports that the instance behind `lease` stopped answering (no bytes within the read
    /// timeout): counted like a crash and killed at once, so the next request starts a fresh one.
    /// Later reports for the same instance do nothing.
    public func reportUnresponsive(_ lease: Lease, reason: String) async {
        guard !lease.isRemote, let instance = slots[lease.modelID]?.instances[lease.replica]?.lifecycle.running else { return }
        let actions = slots[lease.modelID]!.instances[lease.replica]!.lifecycle.unresponsive(generation: lease.generation, reason: reason)
        guard !actions.isEmpty else { return }
        logger.error("llama-server stopped answering; killing it", metadata: ["model": "\(lease.modelID)", "pid": "\(instance.process.pid)", "reason": "\(reason)"])
        slots[lease.modelID]!.lastCrashLog = instance.recentLog(20)
        if let stop = perform(actions, lease.modelID, lease.replica) {
            await stopInstance(lease.modelID, lease.replica, grace: stop.grace, saveCache: stop.saveCache)
        }
    }

    /// Stops every instance of a model and waits until they are reaped.
    private func stop(_ id: String) async {
        let replicas = slots[id]?.instances.keys.sorted() ?? []
        await withTaskGroup(of: Void.self) { group in
            for replica in replicas { group.addTask { await self.stopInstance(id, replica) } }
        }
    }

    /// Stops one instance's process (SIGTERM, then SIGKILL after `grace`, by default the
    /// configured one) and waits until it has been reaped.
    /// With `saveCache` (and warm swaps on for the model), the slots' KV caches are saved first,
    /// for at most `cache.saveTimeout`; a save that fails or takes longer is logged and counted
    /// and the stop goes on.
    private func stopInstance(_ id: String, _ replica: Int, grace: Duration? = nil, saveCache: Bool = true) async {
        guard let current = slots[id]?.instances[replica], case .ready(let instance) = current.phase else {
            if case .stopping(let t) = slots[id]?.instances[replica]?.phase { await awaitStop(id, replica, t) }
            return
        }
        let grace = grace ?? limits.stopGrace
        let save = saveCache && current.warmFolder != nil ? warmSwap : nil
        let (client, logger, counts) = (client, logger, warmSwapCounts)
        let task = Task {
            if let save {
                do {
                    let saved = try await save.save(port: instance.port, client: client)
                    counts.add { $0.slotsSaved += saved }
                    let dropped = save.trim()
                    if !dropped.isEmpty { logger.info("dropped the least recently used saved KV caches (cache.diskMiB)", metadata: ["files": "\(dropped.count)"]) }
                } catch {
                    counts.add { $0.saveFailures += 1 }
                    logger.warning("the KV caches were not saved; the model stops without them", metadata: ["model": "\(id)", "error": "\(error)"])
                }
            }
            _ = await instance.process.stop(grace: grace)
        }
        perform(slots[id]!.instances[replica]!.lifecycle.stopStarted(task), id, replica)
        await awaitStop(id, replica, task)
    }

    /// Waits for a stop task, then moves the instance to `.unloaded`, unless whoever else
    /// awaited the same task did so first. Every party that awaits a stop settles it itself:
    /// awaiting a finished task does not suspend, so a caller that looped until the phase changed
    /// would hold the actor and never let the stopper back on (a livelock the soak found).
    private func awaitStop(_ id: String, _ replica: Int, _ task: Task<Void, Never>) async {
        await task.value
        guard slots[id]?.instances[replica] != nil else { return }
        perform(slots[id]!.instances[replica]!.lifecycle.stopFinished(task), id, replica)
    }

    /// The instance no longer runs (its lifecycle is `unloaded` again): its slots, cache and
    /// leases are gone; queued requests fail when no other instance of the model is ready or
    /// loading (else they wait for those).
    private func settleGone(_ id: String, _ replica: Int) {
        guard slots[id] != nil else { return }
        slots[id]!.affinity.forget(replica: replica)
        dropSplit(id, replica)
        failWaitersIfNothingServes(id)
        dispatch(id)
    }

    /// Carries out what an instance's lifecycle asked for, in order. A stop is returned for the
    /// caller to await (only async callers get one: see ``InstanceLifecycle/Action/stop(saveCache:grace:)``).
    @discardableResult
    private func perform(_ actions: [Lifecycle.Action], _ id: String, _ replica: Int) -> (saveCache: Bool, grace: Duration?)? {
        var stop: (saveCache: Bool, grace: Duration?)?
        for action in actions {
            switch action {
            case .publishReadiness:
                republishReadiness(id)
            case .watchForExit(let generation):
                guard let process = slots[id]?.instances[replica]?.lifecycle.running?.process else { continue }
                Task { [weak self] in
                    let termination = await process.wait()
                    await self?.instanceExited(id, replica: replica, generation: generation, termination: termination)
                }
            case .armIdleTimer:
                scheduleIdleUnload(id, replica)
            case .cancelIdleTimer:
                slots[id]?.instances[replica]?.idleTimer?.cancel()
                slots[id]?.instances[replica]?.idleTimer = nil
            case .dispatchQueue:
                dispatch(id)
            case .stop(let saveCache, let grace):
                stop = (saveCache, grace)
            case .recordCrash(let reason):
                recordCrash(id, reason)
            case .settleGone:
                settleGone(id, replica)
            case .notifyFleet:
                notifyFleetChanged()
            }
        }
        return stop
    }

    /// Fails a model's queued requests when none of its instances is ready or loading.
    private func failWaitersIfNothingServes(_ id: String) {
        guard let slot = slots[id], !slot.waiters.isEmpty,
            !slot.instances.values.contains(where: { $0.isReady || $0.isLoading })
        else { return }
        slots[id]!.waiters = []
        for w in slot.waiters { w.continuation.resume(throwing: SchedulerError.instanceCrashed(id)) }
    }

    private func instanceExited(_ id: String, replica: Int, generation: Int, termination: Termination) {
        guard let instance = slots[id]?.instances[replica]?.lifecycle.running else { return }
        let actions = slots[id]!.instances[replica]!.lifecycle.exited(generation: generation, termination: "\(termination)")
        // Stopped by us, or an earlier process: nothing to do.
        guard !actions.isEmpty else { return }
        let lastLines = instance.recentLog(10).joined(separator: "\n")
        slots[id]!.lastCrashLog = instance.recentLog(20)
        logger.error("llama-server exited unexpectedly", metadata: ["model": "\(id)", "replica": "\(replica)", "termination": "\(termination)", "log": "\(lastLines)"])
        perform(actions, id, replica)
    }

    /// Counts a crash (or a failed load); enough of them within the window mark the model failed
    /// until an operator unloads it (which clears the mark).
    private func recordCrash(_ id: String, _ reason: String) {
        let now = ContinuousClock.now
        var slot = slots[id, default: Slot()]
        slot.crashes.record(reason, at: now, window: limits.crashWindow, maxCrashes: limits.maxCrashes)
        slot.lastError = reason
        slots[id] = slot
    }

    // MARK: Idle TTL

    /// Starts the idle timer of an instance with nothing in flight: the model's TTL for its first
    /// `replicas.min` instances, `replicas.scaleDownAfter` (or the TTL when shorter) for the rest.
    private func scheduleIdleUnload(_ id: String, _ replica: Int) {
        guard let slot = slots[id], let instance = slot.instances[replica], instance.isReady, instance.inFlight == 0 else { return }
        slots[id]!.instances[replica]!.idleTimer?.cancel()
        let spec = catalog.resolve(id)
        var ttl = idleTimeToLive(keepAlive: slot.ttlOverride, modelTTL: spec?.ttl, defaultTTL: limits.defaultTTL)
        if let policy = spec?.replicas, replica >= policy.min { ttl = min(ttl ?? policy.scaleDownAfter, policy.scaleDownAfter) }
        guard let ttl else { return }
        let generation = instance.generation
        slots[id]!.instances[replica]!.lifecycle.idleTimerStarted(ttl: ttl, now: .now)
        slots[id]!.instances[replica]!.idleTimer = Task { [weak self] in
            if ttl > .zero {
                do { try await Task.sleep(for: ttl) } catch { return }
            }
            await self?.idleExpired(id, replica: replica, generation: generation)
        }
    }

    private func idleExpired(_ id: String, replica: Int, generation: Int) async {
        guard let slot = slots[id], slot.instances[replica] != nil, slot.waiters.isEmpty, replica >= (catalog.resolve(id)?.replicas.min ?? 1) || !isPinned(id),
              let stop = perform(slots[id]!.instances[replica]!.lifecycle.idleExpired(generation: generation), id, replica)
        else { return }
        logger.info(replica == 0 ? "unloading idle model" : "stopping an idle instance", metadata: ["model": "\(id)", "replica": "\(replica)"])
        await stopInstance(id, replica, grace: stop.grace, saveCache: stop.saveCache)
    }

    // MARK: Operations

    /// Loads a model without sending a request.
    public func load(_ modelName: String) async throws(SchedulerError) {
        let lease = try await acquire(modelName)
        release(lease)
    }

    /// Unloads a model now, every instance (waits for its in-flight requests' slots to be dropped
    /// by the process).
    public func unload(_ modelName: String) async throws(SchedulerError) {
        guard let spec = catalog.resolve(modelName) else { throw .unknownModel(modelName) }
        for instance in slots[spec.id]?.instances.values ?? [:].values {
            if case .loading(let task, _) = instance.phase { _ = try? await task.value }
        }
        await stop(spec.id)
        slots[spec.id]?.crashes.reset()
    }

    /// Stops a model and removes it from the catalog (its file was deleted).
    public func removeModel(_ id: String) async {
        await stop(id)
        catalog.remove(id)
        runtimeAliases = runtimeAliases.filter { $0.value != id }
        slots[id]?.scaleCheck?.cancel()
        slots[id]?.dispatchCheck?.cancel()
        slots[id] = nil
    }

    /// Pins or unpins a model at runtime (pinned models are never evicted or idle-unloaded).
    public func setPinned(_ modelName: String, _ pinned: Bool) throws(SchedulerError) {
        guard let spec = catalog.resolve(modelName) else { throw .unknownModel(modelName) }
        slots[spec.id, default: Slot()].pinnedAtRuntime = pinned
    }

    /// An instance serving `modelName` (its first ready replica), if loaded.
    public func instance(for modelName: String) -> ModelInstance? {
        guard let spec = catalog.resolve(modelName) else { return nil }
        return slots[spec.id]?.ready.first?.instance
    }

    /// State of every instance of every model that has been touched (a model with none yet
    /// shows as one unloaded entry).
    public func instances() -> [InstanceInfo] {
        slots.keys.sorted().flatMap { id in
            let slot = slots[id]!
            let replicas = slot.instances.isEmpty ? [0] : slot.instances.keys.sorted()
            return replicas.map { replica in
                let instance = slot.instances[replica] ?? Instance()
                let keep = catalog.resolve(id)?.replicas.min ?? 1
                var info = InstanceInfo(
                    model: id, state: "unloaded", arguments: [], inFlight: instance.inFlight, queued: slot.waiters.count,
                    pinned: replica < keep && isPinned(id), projectedMiB: instance.projection.isEmpty ? nil : instance.projection.values.reduce(0, +),
                    allocatedMiB: [:], crashes: slot.crashes.times.count, lastError: slot.crashes.failure ?? slot.lastError,
                    lastCrashLog: slot.lastCrashLog)
                info.replica = replica
                info.split = instance.split?.parts
                let idle = ContinuousClock.now - instance.lastUsed
                info.lastUsed = Date().addingTimeInterval(-idle.inSeconds)
                switch instance.phase {
                case .unloaded: info.state = slot.crashes.failure == nil ? "unloaded" : "failed"
                case .loading: info.state = "loading"
                case .stopping: info.state = "stopping"
                case .ready(let i):
                    info.state = "loaded"
                    info.pid = i.process.pid
                    info.port = i.port
                    info.arguments = i.arguments
                    info.uptimeSeconds = Date().timeIntervalSince(i.startedAt)
                    info.allocatedMiB = i.allocatedMiB
                    info.allocationSource = i.allocationSource
                    info.contextSize = i.contextSize
                    info.planSource = i.plan.source.rawValue
                    info.planNote = i.plan.note
                    if let d = instance.lifecycle.idleDeadline {
                        let left = d - .now
                        info.expiresInSeconds = left.inSeconds
                    }
                }
                return info
            }
        }
    }

    /// Stops every child; new acquires fail from now on.
    public func shutdown() async {
        isShuttingDown = true
        notifyFleetChanged()
        // Loads still in progress end now: their process exits, so readiness fails at once.
        for child in loadingChildren.values { child.signalGroup(SIGTERM) }
        for slot in slots.values {
            slot.scaleCheck?.cancel()
            slot.dispatchCheck?.cancel()
            for instance in slot.instances.values {
                if case .loading(let t, _) = instance.phase { _ = try? await t.value }
            }
        }
        await withTaskGroup(of: Void.self) { group in
            for id in slots.keys { group.addTask { await self.stop(id) } }
        }
    }
}

/// Persistent storage for fit plans and for what loads with them allocated (implemented by
/// Store), keyed by file identity, hardware, arguments and llama.cpp build.
public protocol FitPlanCache: Sendable {
    func plan(for spec: ModelSpec, arguments: [String]) async -> FitPlan?
    func save(_ plan: FitPlan, for spec: ModelSpec, arguments: [String]) async
    /// What an earlier llama-server with exactly these launch arguments allocated.
    func allocations(for spec: ModelSpec, arguments: [String]) async -> LearnedAllocations?
    func save(_ allocations: LearnedAllocations, for spec: ModelSpec, arguments: [String]) async
}

extension FitPlanCache {
    public func allocations(for spec: ModelSpec, arguments: [String]) async -> LearnedAllocations? { nil }
    public func save(_ allocations: LearnedAllocations, for spec: ModelSpec, arguments: [String]) async {}
}

/// What a llama-server reported allocating while it loaded (its `buffer size` and `n_ctx` log
/// lines). llama-server prints those lines only at `-lv 4`, which also costs every request about
/// 20 more log lines; so the first load of a model with given arguments runs at `-lv 4` and
/// records this, and later loads with the same file, arguments, hardware and build run at
/// `-lv 3` and report the recorded values.
public struct LearnedAllocations: Sendable, Codable, Equatable {
    /// MiB per `DEVICE kind` (e.g. `CPU KV`).
    public var allocatedMiB: [String: Double]
    public var contextSize: Int?
    public var learnedAt: Date

    public init(allocatedMiB: [String: Double], contextSize: Int?, learnedAt: Date = Date()) {
        self.allocatedMiB = allocatedMiB
        self.contextSize = contextSize
        self.learnedAt = learnedAt
    }
}
