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
    /// Set on a peer's answer when it declined a relayed request (the model is not loaded there).
    public static let declinedHeader = "x-corral-declined"

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
    public func overview() async -> [String: Any] {
        let (cached, problem, relayed, draining) = state.withLock { ($0.all, $0.storeProblem, $0.relayed, $0.draining) }
        // Read now when the store answers; the last heartbeat's reading when it does not.
        let all = (try? await registry.nodes()) ?? cached
        let nodes: [[String: Any]] = all.map { n in
            let detail = (try? JSONSerialization.jsonObject(with: Data(n.detail.utf8))) as? [String: Any] ?? [:]
            var o: [String: Any] = [
                "name": n.name, "url": n.url, "version": n.version, "state": n.state, "heartbeatAgeSeconds": (n.age * 1000).rounded() / 1000,
                "inRouting": n.state == "serving" && n.age < staleAfter, "self": n.name == name,
                "startedAt": ISO8601DateFormatter().string(from: Date(timeIntervalSince1970: n.started)),
            ]
            for (k, v) in detail { o[k] = v }
            return o
        }
        var out: [String: Any] = [
            "node": name, "advertiseURL": advertiseURL, "state": draining ? "draining" : "serving", "nodes": nodes,
            "heartbeatSeconds": heartbeat.inSeconds, "staleAfterSeconds": staleAfter, "relayedFromHere": relayed,
            "pendingSettlements": quota?.pendingSettlements ?? 0, "lostRequestsRecovered": state.withLock { $0.recovered },
        ]
        if let problem { out["storeProblem"] = problem }
        return out
    }

    // MARK: Heartbeat

    /// This node as the registry shows it.
    func record() async -> NodeRecord {
        let instances = await scheduler.instances()
        let catalog = scheduler.currentCatalog
        var models: [[String: Any]] = []
        // Per model, over its loaded instances (replicas): their slots and requests add up, the
        // queue is the model's.
        let loaded = Dictionary(grouping: instances.filter { $0.state == "loaded" }, by: \.model)
        for (model, running) in loaded.sorted(by: { $0.key < $1.key }) {
            let slots = (catalog.resolve(model)?.parallel ?? 1) * running.count
            let inFlight = running.reduce(0) { $0 + $1.inFlight }
            models.append(["model": model, "slots": slots, "inFlight": inFlight, "queued": running[0].queued, "free": max(0, slots - inFlight),
                           "instances": running.count])
        }
        // Per device: the scheduler's budget and what is left of it for a new load; for the host
        // also what the system reports as available now.
        let host = HostMemory.read()
        var memory: [String: [String: Int]] = [:]
        for (device, room) in await scheduler.memoryRoom() {
            memory[device] = ["budgetMiB": room.budgetMiB, "usedMiB": room.usedMiB, "freeMiB": max(0, room.budgetMiB - room.usedMiB)]
        }
        memory["Host", default: [:]]["totalMiB"] = host.totalMiB
        memory["Host", default: [:]]["availableMiB"] = host.availableMiB
        if memory["Host"]?["freeMiB"] == nil { memory["Host"]?["freeMiB"] = host.availableMiB }
        let detail: [String: Any] = ["models": models, "memory": memory]
        let json = (try? JSONSerialization.data(withJSONObject: detail, options: [.sortedKeys])).map { String(decoding: $0, as: UTF8.self) } ?? "{}"
        return NodeRecord(name: name, url: advertiseURL, version: version, state: isDraining ? "draining" : "serving", detail: json, started: started)
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
        let peers = nodes.filter { $0.name != name }.map { n -> Peer in
            let detail = (try? JSONSerialization.jsonObject(with: Data(n.detail.utf8))) as? [String: Any] ?? [:]
            var models: [String: (Int, Int)] = [:]
            for m in detail["models"] as? [[String: Any]] ?? [] {
                if let id = m["model"] as? String { models[id] = (m["free"] as? Int ?? 0, m["queued"] as? Int ?? 0) }
            }
            return Peer(name: n.name, url: n.url, state: n.state, age: n.age, models: models)
        }
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

