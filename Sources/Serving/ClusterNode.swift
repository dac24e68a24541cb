import Access
import Foundation
import Logging
import Runtime
import ServiceLifecycle
import Store
import Synchronization

/// A peer as this node last read it from the registry.
public struct Peer: Sendable {
    public var name: String
    public var url: String
    public var state: String
    /// Seconds since its heartbeat when read.
    public var age: Double
    /// Loaded models: id → (free slots, queued requests).
    public var models: [String: (free: Int, queued: Int)]
    /// Free MiB per device (`Host` for RAM), as its scheduler counts it: budget less what loaded
    /// models and jobs hold.
    public var freeMiB: [String: Int] = [:]
    /// Requests in flight and queued there, all models together.
    public var load = 0
    /// The local models it can load (its catalog); nil when its heartbeat does not say.
    public var serves: Set<String>? = nil
    /// Models it is loading now.
    public var loading: Set<String> = []

    /// A peer from its registry record.
    init(_ n: NodeRecord) {
        let detail = NodeDetail.parse(n.detail)
        name = n.name
        url = n.url
        state = n.state
        age = n.age
        models = Dictionary(detail.models.map { ($0.model, (free: $0.free, queued: $0.queued)) }, uniquingKeysWith: { a, _ in a })
        freeMiB = detail.memory.compactMapValues(\.freeMiB)
        load = detail.models.reduce(0) { $0 + $1.inFlight + $1.queued }
        serves = detail.serves.map(Set.init)
        loading = Set(detail.loading ?? [])
    }

    init(name: String, url: String, state: String, age: Double, models: [String: (free: Int, queued: Int)], freeMiB: [String: Int] = [:], load: Int = 0,
         serves: Set<String>? = nil, loading: Set<String> = []) {
        self.name = name
        self.url = url
        self.state = state
        self.age = age
        self.models = models
        self.freeMiB = freeMiB
        self.load = load
        self.serves = serves
        self.loading = loading
    }
}

/// This node's place in a cluster of Corral nodes sharing one PostgreSQL: it heartbeats its
/// state (loaded models with free slots and queues, free memory, version) into the registry,
/// reads its peers' for routing, renews the leases of its quota reservations, reloads cached
/// teams and keys when another node changes them (a notice at once; a poll of the change version
/// every ``heartbeat`` when a notice is lost), and on drain or shutdown stops taking new work and
/// leaves the registry once in-flight requests are done.
public final class ClusterNode: Service, Sendable {
    public let name: String
    public let advertiseURL: String
    /// The shared secret peers present to each other (`cluster.secretEnv`), and its SHA-256.
    let secret: String
    let secretHash: String
    let registry: any NodeRegistryStore
    let scheduler: Scheduler
    let access: AccessControl?
    let quota: SharedQuota?
    let logger: Logger
    let version: String
    /// How often this node heartbeats (and polls for changes).
    public let heartbeat: Duration
    /// A peer whose heartbeat is older than this is out of routing.
    public let staleAfter: Double
    let changeVersion: @Sendable () async throws -> Int64
    let listen: @Sendable (@escaping @Sendable () async -> Void) async throws -> Void
    let started = Date().timeIntervalSince1970

    struct State {
        var peers: [Peer] = []
        /// Prefix affinity among the peers that have a model loaded.
        var peerRouting = PeerRouting()
        var all: [NodeRecord] = []
        var draining = false
        var storeProblem: String?
        var seenVersion: Int64?
        var relayed = 0
        var recovered = 0
    }
    private let state = Mutex(State())
    /// What else to reload when another node changes something (profiles, settings, pins).
    private let changeHandlers = Mutex<[@Sendable () async -> Void]>([])

    public func onChange(_ handler: @escaping @Sendable () async -> Void) { changeHandlers.withLock { $0.append(handler) } }

    /// Starts the process's graceful shutdown (set by `corral serve`).
    private let shutdown = Mutex<(@Sendable () async -> Void)?>(nil)

    public func onShutdown(_ trigger: @escaping @Sendable () async -> Void) { shutdown.withLock { $0 = trigger } }

    /// `corral drain`: out of routing at once (a heartbeat now says so), then the same graceful
    /// shutdown as SIGTERM: no new connections, in-flight requests finish, the node leaves the
    /// registry, the ledger is written.
    public func drain() async {
        startDraining()
        try? await registry.heartbeat(await record())
        await shutdown.withLock { $0 }?()
    }

    /// The header a relayed request carries: the node it came from (a node never relays a
    /// request that has it, so a request makes one hop at most).
    public static let hopHeader = "x-corral-relayed-by"
    /// The header carrying the cluster secret between nodes.
    public static let secretHeader = "x-corral-cluster-secret"
    /// The caller a relayed request was admitted for (trusted only with the secret).
    public static let teamHeader = "x-corral-team"
    public static let keyHeader = "x-corral-key-prefix"
    /// Set on a peer's answer when it declined a relayed request (the model is not loaded there,
    /// not in its catalog, or a cold load placed there could not be had).
    public static let declinedHeader = "x-corral-declined"
    /// Set on a relayed request for a model no node has loaded, placed on that peer for its free
    /// memory: the peer loads it rather than declining.
    public static let placeHeader = "x-corral-place-cold"

    public init(
        name: String, advertiseURL: String, secret: String, registry: any NodeRegistryStore, scheduler: Scheduler, access: AccessControl?,
        quota: SharedQuota?, logger: Logger, version: String, heartbeat: Duration = .seconds(1), staleAfter: Double = 3.5,
        changeVersion: @escaping @Sendable () async throws -> Int64,
        listen: @escaping @Sendable (@escaping @Sendable () async -> Void) async throws -> Void
    ) {
        self.name = name
        self.advertiseURL = advertiseURL.hasSuffix("/") ? String(advertiseURL.dropLast()) : advertiseURL
        self.secret = secret
        self.secretHash = Secrets.sha256(secret)
        self.registry = registry
        self.scheduler = scheduler
        self.access = access
        self.quota = quota
        self.logger = logger
        self.version = version
        self.heartbeat = heartbeat
        self.staleAfter = staleAfter
        self.changeVersion = changeVersion
        self.listen = listen
    }

    // MARK: Routing

    /// Whether `presented` is the cluster secret (constant time).
    public func trusts(_ presented: String?) -> Bool {
        guard let presented, !secret.isEmpty else { return false }
        return Secrets.constantTimeEqual(Secrets.sha256(presented), secretHash)
    }

    public var secretValue: String { secret }

    /// The peer named `name` if its heartbeat is recent (in routing or draining).
    public func livePeer(named name: String) -> Peer? {
        state.withLock { s in s.peers.first { $0.name == name && $0.age < staleAfter } }
    }

    /// A live peer serving `model` with a free slot and nothing queued: the one this node last
    /// sent the prompt's prefix or session to (`affinity`), else the one with most free slots;
    /// nil when none.
    public func peer(for model: String, affinity: PromptAffinity? = nil) -> Peer? {
        state.withLock { s in
            let live = s.peers.filter { $0.state == "serving" && $0.age < staleAfter }
            return Self.choosePeer(for: model, among: live, affinity: affinity, routing: &s.peerRouting)
        }
    }

    /// Which peer this node sent which prompt prefixes of each model to, peers numbered once by
    /// name so the table's entries outlive heartbeats.
    public struct PeerRouting: Sendable {
        var tables: [String: AffinityTable] = [:]
        var numbers: [String] = []

        public init() {}
    }

    /// The peer for a request among `peers` (live ones): those with `model` loaded, a free slot
    /// and nothing queued; the one `routing` last gave the prompt's prefix or session, else the one
    /// with most free slots. The choice is recorded for the next turn.
    public static func choosePeer(for model: String, among peers: [Peer], affinity: PromptAffinity?, routing: inout PeerRouting) -> Peer? {
        let candidates = peers.filter { ($0.models[model]?.free ?? 0) > 0 && $0.models[model]?.queued == 0 }
        guard var chosen = candidates.max(by: { ($0.models[model]?.free ?? 0) < ($1.models[model]?.free ?? 0) }) else { return nil }
        guard let affinity, !affinity.isEmpty else { return chosen }
        if let preferred = routing.tables[model]?.preferred(affinity), preferred.replica < routing.numbers.count,
            let peer = candidates.first(where: { $0.name == routing.numbers[preferred.replica] })
        {
            chosen = peer
        }
        let number: Int
        if let known = routing.numbers.firstIndex(of: chosen.name) {
            number = known
        } else {
            routing.numbers.append(chosen.name)
            number = routing.numbers.count - 1
        }
        routing.tables[model, default: AffinityTable(capacity: 16_384)].record(affinity, replica: number)
        return chosen
    }

    // MARK: Cold loads

    /// Where a cold load of `spec` goes: a live serving peer that is loading it already (the load
    /// is shared), else ``ColdPlacement/decide(needMiB:here:peers:tieFraction:)`` among this
    /// node and the live serving peers that list it in their catalog. Nil when it is not cold:
    /// loaded or loading here, or loaded on a peer (the ordinary routing decides then). Every
    /// decision to load elsewhere is logged with its reason (a local one at debug level).
    public func coldPlacement(for spec: ModelSpec) async -> ColdPlacement.Decision? {
        let instances = await scheduler.instances()
        if instances.contains(where: { $0.model == spec.id && ($0.state == "loaded" || $0.state == "loading") }) { return nil }
        let id = Self.catalogID(spec.id)
        let live = state.withLock { s in s.peers.filter { $0.state == "serving" && $0.age < staleAfter } }
        if live.contains(where: { $0.models[spec.id] != nil }) { return nil }
        if let loading = live.filter({ $0.loading.contains(spec.id) }).min(by: { $0.load < $1.load }) {
            let decision = ColdPlacement.Decision.peer(loading.name, reason: "\(loading.name) is loading it already")
            logger.info("placing a cold load", metadata: ["model": "\(spec.id)", "node": "\(loading.name)", "reason": "\(decision.reason)"])
            return decision
        }
        let need = Self.projectedNeedMiB(spec, known: instances.first { $0.model == spec.id }?.projectedMiB)
        let room = await scheduler.memoryRoom()
        let here = ColdPlacement.Candidate(
            name: name, freeMiB: room.mapValues { max(0, $0.budgetMiB - $0.usedMiB) }, load: Self.load(instances.map { ($0.model, $0.inFlight, $0.queued) }))
        let peers = live.filter { $0.serves?.contains(id) == true }.map { ColdPlacement.Candidate(name: $0.name, freeMiB: $0.freeMiB, load: $0.load) }
        let decision = ColdPlacement.decide(needMiB: need, here: here, peers: peers)
        switch decision {
        case .peer(let peer, let reason):
            logger.info("placing a cold load", metadata: ["model": "\(spec.id)", "node": "\(peer)", "needMiB": "\(need)", "reason": "\(reason)"])
        case .here(let reason):
            logger.debug("placing a cold load", metadata: ["model": "\(spec.id)", "node": "\(name)", "needMiB": "\(need)", "reason": "\(reason)"])
        }
        return decision
    }

    /// What a load of `spec` is expected to take, MiB, all devices together: the projection of
    /// its last load here when there was one (`known`: the fit's, with its prompt cache), else
    /// the estimate from its GGUF header (weights, KV cache at its context, a compute buffer)
    /// plus its prompt cache (`--cache-ram`), as the scheduler counts it.
    static func projectedNeedMiB(_ spec: ModelSpec, known: Int?) -> Int {
        if let known, known > 0 { return known }
        let plan = FitPlanner(fitParamsPath: nil, marginMiB: 0).estimate(spec, baseArguments: spec.fitInputArguments, note: "cold placement")
        return max(1, plan.totalMiB + ModelSpec.cacheRamMiB(in: spec.defaultArguments + spec.pinnedArgs))
    }

    /// Requests in flight and queued on this node (a model's queue counted once).
    static func load(_ instances: [(model: String, inFlight: Int, queued: Int)]) -> Int {
        var queued: [String: Int] = [:]
        var inFlight = 0
        for i in instances {
            inFlight += i.inFlight
            queued[i.model] = max(queued[i.model] ?? 0, i.queued)
        }
        return inFlight + queued.values.reduce(0, +)
    }

    /// The id a catalog lists for `id` (an embedding companion is its model's).
    static func catalogID(_ id: String) -> String {
        id.hasSuffix(ModelSpec.embeddingsSuffix) ? String(id.dropLast(ModelSpec.embeddingsSuffix.count)) : id
    }

    /// Takes a peer out of routing at once (a request to it failed before any byte).
    public func markUnreachable(_ name: String) {
        state.withLock { s in s.peers.removeAll { $0.name == name } }
    }

    public func noteRelayed() { state.withLock { $0.relayed += 1 } }

    public var isDraining: Bool { state.withLock { $0.draining } }

    /// Stops taking new work from now on (the next heartbeat tells the peers).
    public func startDraining() { state.withLock { $0.draining = true } }

    // MARK: Admin view

    /// Every registered node with its state, for `GET /admin/cluster`.
    public func overview() async -> ClusterOverview {
        let (cached, problem, relayed, draining, recovered) = state.withLock { ($0.all, $0.storeProblem, $0.relayed, $0.draining, $0.recovered) }
        // Read now when the store answers; the last heartbeat's reading when it does not.
        let all = (try? await registry.nodes()) ?? cached
        let nodes = all.map { n in
            ClusterOverview.Node(
                name: n.name, url: n.url, version: n.version, state: n.state, heartbeatAgeSeconds: (n.age * 1000).rounded() / 1000,
                inRouting: n.state == "serving" && n.age < staleAfter, isSelf: n.name == name,
                startedAt: ISO8601DateFormatter().string(from: Date(timeIntervalSince1970: n.started)), detail: NodeDetail.parse(n.detail))
        }
        return ClusterOverview(
            node: name, advertiseURL: advertiseURL, state: draining ? "draining" : "serving", nodes: nodes,
            heartbeatSeconds: heartbeat.inSeconds, staleAfterSeconds: staleAfter, relayedFromHere: relayed,
            pendingSettlements: quota?.pendingSettlements ?? 0, lostRequestsRecovered: recovered, storeProblem: problem)
    }

    // MARK: Heartbeat

    /// This node as the registry shows it.
    func record() async -> NodeRecord {
        let instances = await scheduler.instances()
        let catalog = scheduler.currentCatalog
        var detail = NodeDetail()
        // Per model, over its loaded instances (replicas): their slots and requests add up, the
        // queue is the model's.
        let loaded = Dictionary(grouping: instances.filter { $0.state == "loaded" }, by: \.model)
        for (model, running) in loaded.sorted(by: { $0.key < $1.key }) {
            let slots = (catalog.resolve(model)?.parallel ?? 1) * running.count
            let inFlight = running.reduce(0) { $0 + $1.inFlight }
            detail.models.append(.init(model: model, slots: slots, inFlight: inFlight, queued: running[0].queued, free: max(0, slots - inFlight),
                                       instances: running.count))
        }
        // Per device: the scheduler's budget and what is left of it for a new load; for the host
        // also what the system reports as available now.
        let host = HostMemory.read()
        for (device, room) in await scheduler.memoryRoom() {
            detail.memory[device] = .init(budgetMiB: room.budgetMiB, usedMiB: room.usedMiB, freeMiB: max(0, room.budgetMiB - room.usedMiB))
        }
        detail.memory["Host", default: .init()].totalMiB = host.totalMiB
        detail.memory["Host", default: .init()].availableMiB = host.availableMiB
        if detail.memory["Host"]?.freeMiB == nil { detail.memory["Host"]?.freeMiB = host.availableMiB }
        // For cold loads placed by free memory: what this node can load, and what it is loading.
        detail.serves = catalog.models.filter { $0.path != nil }.map(\.id).sorted()
        detail.loading = Set(instances.filter { $0.state == "loading" }.map(\.model)).sorted()
        return NodeRecord(name: name, url: advertiseURL, version: version, state: isDraining ? "draining" : "serving", detail: detail.json, started: started)
    }

    /// One heartbeat: this node's state in, leases renewed, peers read, changes noticed.
    func beat() async {
        do {
            // Bounded, so that a store that hangs shows as a problem instead of stalling the loop.
            try await withDeadline(heartbeat * 3) { try await self.beatOnce() }
        } catch {
            let first = state.withLock { s in
                defer { s.storeProblem = "\(error)" }
                return s.storeProblem == nil
            }
            if first { logger.error("cannot reach the shared store; peers and limits wait for it", metadata: ["error": "\(error)"]) }
        }
    }

    func beatOnce() async throws {
        try await registry.heartbeat(await record())
        try await quota?.renew()
        if let quota {
            let lost = try await quota.recoverLostRequests(staleAfter: quota.lease)
            if lost > 0 {
                state.withLock { $0.recovered += lost }
                logger.warning("wrote ledger rows for requests of a lost node", metadata: ["rows": "\(lost)"])
            }
        }
        let nodes = try await registry.nodes()
        let peers = nodes.filter { $0.name != name }.map(Peer.init)
        let version = try await changeVersion()
        let (changed, recovered) = state.withLock { s in
            defer {
                s.peers = peers
                s.all = nodes
                s.seenVersion = version
                s.storeProblem = nil
            }
            return (s.seenVersion != nil && s.seenVersion != version, s.storeProblem != nil)
        }
        if recovered { logger.notice("the shared store answers again") }
        if changed { await reloadAccounts(reason: "change version") }
    }

    /// Another node changed something: teams and keys, then the library state, read again.
    func reloadAccounts(reason: String) async {
        do { try await access?.reloadAccounts() } catch {
            logger.warning("could not reload teams and keys", metadata: ["reason": "\(reason)", "error": "\(error)"])
        }
        for handler in changeHandlers.withLock({ $0 }) { await handler() }
    }

    public func run() async throws {
        // Pins and the rest of the library state other nodes set before this one started.
        for handler in changeHandlers.withLock({ $0 }) { await handler() }
        await withTaskGroup(of: Void.self) { group in
            group.addTask {
                // Change notices: reload at once; reconnect after a pause when the connection drops.
                while !Task.isCancelled && !Task.isShuttingDownGracefully {
                    // Ended or failed alike: the heartbeat's version check covers the gap.
                    try? await self.listen { await self.reloadAccounts(reason: "notice") }
                    try? await Task.sleep(for: .seconds(1))
                }
            }
            group.addTask {
                await cancelWhenGracefulShutdown {
                    while !Task.isCancelled {
                        await self.beat()
                        try? await Task.sleep(for: self.heartbeat)
                    }
                }
            }
            // Both loops end with the service group's shutdown; the listener has no other way out.
            try? await gracefulShutdown()
            group.cancelAll()
        }
        // The HTTP server has finished its in-flight requests by now (it stops first): leave.
        startDraining()
        await quota?.writePending()
        do { try await quota?.renew() } catch {
            logger.error("settlements could not be written before leaving; the reservations are released when their lease ends",
                         metadata: ["pending": "\(quota?.pendingSettlements ?? 0)", "error": "\(error)"])
        }
        do { try await registry.removeNode(name) } catch {
            logger.warning("could not leave the registry; peers drop this node when its heartbeat is stale", metadata: ["error": "\(error)"])
        }
    }
}


/// The cluster as `GET /admin/cluster` shows it: this node, every registered node with its
/// state and heartbeat (and what its last heartbeat said: models, memory), and the counters.
public struct ClusterOverview: Encodable, Sendable {
    /// One registered node; its heartbeat's detail is written among its own fields.
    public struct Node: Encodable, Sendable {
        public var name: String
        public var url: String
        public var version: String
        public var state: String
        public var heartbeatAgeSeconds: Double
        public var inRouting: Bool
        public var isSelf: Bool
        public var startedAt: String
        public var detail: NodeDetail

        enum CodingKeys: String, CodingKey {
            case name, url, version, state, heartbeatAgeSeconds, inRouting, isSelf = "self", startedAt
        }

        public func encode(to encoder: any Encoder) throws {
            try detail.encode(to: encoder)
            var container = encoder.container(keyedBy: CodingKeys.self)
            try container.encode(name, forKey: .name)
            try container.encode(url, forKey: .url)
            try container.encode(version, forKey: .version)
            try container.encode(state, forKey: .state)
            try container.encode(heartbeatAgeSeconds, forKey: .heartbeatAgeSeconds)
            try container.encode(inRouting, forKey: .inRouting)
            try container.encode(isSelf, forKey: .isSelf)
            try container.encode(startedAt, forKey: .startedAt)
        }
    }

    public var clustered = true
    public var node: String
    public var advertiseURL: String
    public var state: String
    public var nodes: [Node]
    public var heartbeatSeconds: Double
    public var staleAfterSeconds: Double
    public var relayedFromHere: Int
    public var pendingSettlements: Int
    public var lostRequestsRecovered: Int
    /// Why the shared store could not be read, while it cannot.
    public var storeProblem: String?
}
