import Foundation
import Logging
import Runtime
import ServiceLifecycle
import Synchronization

/// An RPC worker as the shared registry lists it.
public struct RPCWorkerOffer: Sendable, Equatable {
    /// The node offering it (one worker per node).
    public var node: String
    /// Its gate, `host:port` on the node's cluster address.
    public var endpoint: String
    /// Its devices as llama.cpp names them.
    public var devices: [String]
    /// MiB it offers in all.
    public var memoryMiB: Int
    /// MiB live reservations hold of it.
    public var reservedMiB: Int
    /// Seconds since its last heartbeat, by the store's clock.
    public var age: Double

    public init(node: String, endpoint: String, devices: [String], memoryMiB: Int, reservedMiB: Int, age: Double) {
        self.node = node
        self.endpoint = endpoint
        self.devices = devices
        self.memoryMiB = memoryMiB
        self.reservedMiB = reservedMiB
        self.age = age
    }
}

/// The shared registry of RPC workers and of the memory reserved on them (PostgreSQL on a
/// cluster). A reservation is all or nothing, and a worker's reservations never add up to more
/// than it offers, however many nodes reserve at once (``RPCReservationBook`` is the rule).
public protocol RPCWorkerRegistry: Sendable {
    /// Registers (or refreshes) this node's worker with its heartbeat.
    func offerRPCWorker(node: String, endpoint: String, devices: [String], memoryMiB: Int) async throws
    /// Takes this node's worker out (it stopped).
    func withdrawRPCWorker(node: String) async throws
    /// Every registered worker with what live reservations hold of it.
    func rpcWorkers() async throws -> [RPCWorkerOffer]
    /// Reserves `parts` (worker node → MiB) for `holder`'s `instance`, all or none, among
    /// workers whose heartbeat is younger than `liveWithin` seconds; returns the first worker
    /// that lacked room (or is gone), nil when reserved.
    func reserveRPCWorkers(holder: String, instance: String, parts: [String: Int], liveWithin: Double) async throws -> String?
    /// Gives back `holder`'s reservation for `instance`.
    func releaseRPCWorkers(holder: String, instance: String) async throws
    /// Keeps `holder`'s reservations alive (they lapse after a lease unless renewed).
    func renewRPCReservations(holder: String) async throws
}

/// `cluster.rpc`: runs this node's `ggml-rpc-server` on loopback behind an ``RPCGate`` on the
/// node's cluster address, and keeps it in the registry with its memory while it runs. A worker
/// that exits is withdrawn at once and started again after a pause.
public final class RPCWorkerService: Service, Sendable {
    let node: String
    let host: String
    let settings: CorralConfig.RPCWorker
    let marginMiB: Int
    let executable: String
    let secret: String
    let registry: any RPCWorkerRegistry
    let logger: Logger
    let heartbeat: Duration
    /// The devices it offers as llama.cpp lists them on this node (`CPU` with the host's
    /// available memory when there is no accelerator).
    let devices: [Device]

    struct Running {
        var child: ChildProcess?
        var gate: RPCGate?
        var devices: [String] = []
        var memoryMiB = 0
    }
    private let running = Mutex(Running())

    /// The worker's `ggml-rpc-server` process id while it runs (for tests and the log).
    public var pid: Int32? { running.withLock { $0.child?.pid } }
    /// Connections the gate refused since start.
    public var refused: Int { running.withLock { $0.gate?.refused ?? 0 } }

    /// A worker for node `node` on `host` (the host of its `cluster.advertiseURL`) offering
    /// `devices` (llama.cpp's list on this node; `CPU` with the host's memory when empty).
    public init(node: String, host: String, settings: CorralConfig.RPCWorker, marginMiB: Int, executable: String, secret: String,
                registry: any RPCWorkerRegistry, logger: Logger, devices: [Device], hostAvailableMiB: Int, heartbeat: Duration = .seconds(1)) {
        self.devices = devices.isEmpty ? [Device(name: "CPU", description: "host", totalMiB: hostAvailableMiB, freeMiB: hostAvailableMiB)] : devices
        self.node = node
        self.host = host
        self.settings = settings
        self.marginMiB = marginMiB
        self.executable = executable
        self.secret = secret
        self.registry = registry
        self.logger = logger
        self.heartbeat = heartbeat
    }

    /// The memory a worker offers: `memoryMiB` when configured, else what its devices report
    /// free less the margin (at least 1).
    static func offered(configured: Int?, devices: [Device], marginMiB: Int) -> Int {
        configured ?? max(1, devices.reduce(0) { $0 + $1.freeMiB } - marginMiB)
    }

    public func run() async throws {
        let gate: RPCGate
        let backendPort = RPCGate.freeBackendPort() ?? 0
        do {
            let logger = logger
            gate = try await RPCGate.start(host: host, port: settings.port, backendPort: backendPort, secret: secret) { remote in
                logger.warning("refused a connection to the RPC worker: it did not present the cluster secret", metadata: ["remote": "\(remote)"])
            }
        } catch {
            logger.error("the RPC worker cannot listen; this node offers no devices", metadata: ["address": "\(host):\(settings.port)", "error": "\(error)"])
            try? await gracefulShutdown()
            return
        }
        running.withLock { $0.gate = gate }
        logger.info("RPC worker listening for cluster members", metadata: ["address": "\(host):\(gate.port)"])
        await cancelWhenGracefulShutdown {
            while !Task.isCancelled {
                await self.serve(backendPort: backendPort, endpoint: "\(self.host):\(gate.port)")
                // Exited on its own: out of the registry already; again after a pause.
                try? await Task.sleep(for: .seconds(1))
            }
        }
        await gate.close()
        do { try await registry.withdrawRPCWorker(node: node) } catch {
            logger.warning("could not take the RPC worker out of the registry; peers drop it when its heartbeat is stale", metadata: ["error": "\(error)"])
        }
    }

    /// Runs `ggml-rpc-server` until it exits or the service stops, heartbeating its offer.
    private func serve(backendPort: Int, endpoint: String) async {
        var arguments = ["-H", "127.0.0.1", "-p", String(backendPort)]
        if !settings.devices.isEmpty { arguments += ["-d", settings.devices.joined(separator: ",")] }
        let child: ChildProcess
        do {
            // Its output is block-buffered in a pipe (nothing arrives until it exits): not read.
            child = try ChildProcess(executable: executable, arguments: arguments, onLine: { _ in })
        } catch {
            logger.error("cannot start the RPC worker", metadata: ["error": "\(error)"])
            return
        }
        running.withLock { $0.child = child }
        defer { running.withLock { $0.child = nil } }
        let offered = settings.devices.isEmpty ? devices : devices.filter { settings.devices.contains($0.name) }
        let names = settings.devices.isEmpty ? (devices.isEmpty ? ["CPU"] : devices.map(\.name)) : settings.devices
        let memory = Self.offered(configured: settings.memoryMiB, devices: offered, marginMiB: marginMiB)
        running.withLock {
            $0.devices = names
            $0.memoryMiB = memory
        }
        logger.info("RPC worker started", metadata: ["pid": "\(child.pid)", "devices": "\(names.joined(separator: ","))", "memoryMiB": "\(memory)"])
        let exited = Atomic<Bool>(false)
        let watcher = Task { _ = await child.wait(); exited.store(true, ordering: .relaxed) }
        _ = watcher
        await withTaskCancellationHandler {
            while !Task.isCancelled && !exited.load(ordering: .relaxed) {
                do { try await registry.offerRPCWorker(node: node, endpoint: endpoint, devices: names, memoryMiB: memory) } catch {
                    logger.warning("could not register the RPC worker", metadata: ["error": "\(error)"])
                }
                // Checked every 50 ms, so an exit is out of the registry at once.
                var waited = Duration.zero
                while waited < heartbeat && !exited.load(ordering: .relaxed) && !Task.isCancelled {
                    try? await Task.sleep(for: .milliseconds(50))
                    waited += .milliseconds(50)
                }
            }
        } onCancel: {
            child.signalGroup(SIGTERM)
        }
        let termination = await child.wait()
        if !Task.isCancelled {
            logger.error("the RPC worker exited; it is out of the registry and starts again", metadata: ["termination": "\(termination)"])
        }
        do { try await registry.withdrawRPCWorker(node: node) } catch {
            logger.warning("could not take the RPC worker out of the registry", metadata: ["error": "\(error)"])
        }
    }
}

/// Splits models too large for this node over the cluster's RPC workers (``SplitProvider``):
/// reads the live workers from the registry, plans with ``SplitPlanner``, reserves the workers'
/// memory there (planning again when another node took it first), and opens an ``RPCTunnel``
/// per worker for llama-server. Keeps this node's reservations alive while it runs.
public final class RPCSplitter: SplitProvider, Service, Sendable {
    let node: String
    let secret: String
    let registry: any RPCWorkerRegistry
    let logger: Logger
    /// A worker whose heartbeat is older than this is not used.
    let staleAfter: Double
    let heartbeat: Duration

    public init(node: String, secret: String, registry: any RPCWorkerRegistry, logger: Logger, staleAfter: Double = 3.5, heartbeat: Duration = .seconds(1)) {
        self.node = node
        self.secret = secret
        self.registry = registry
        self.logger = logger
        self.staleAfter = staleAfter
        self.heartbeat = heartbeat
    }

    public func split(model: String, instance: String, need: SplitPlanner.Need, hostBudgetMiB: Int,
                      onLost: @escaping @Sendable (String) -> Void) async throws(SplitPlanner.Refusal) -> SplitLease {
        var lastConflict = ""
        for _ in 0..<3 {
            let offers: [RPCWorkerOffer]
            do { offers = try await registry.rpcWorkers() } catch {
                throw SplitPlanner.Refusal(description: "the registry of RPC workers cannot be read: \(error)")
            }
            // This node's own worker offers the memory this node's budget already counts.
            let workers = offers.filter { $0.node != node && $0.age < staleAfter }.map {
                SplitPlanner.Worker(node: $0.node, endpoint: $0.endpoint, devices: $0.devices, freeMiB: max(0, $0.memoryMiB - $0.reservedMiB))
            }
            let plan: SplitPlanner.Plan
            switch SplitPlanner.plan(need, hostFreeMiB: hostBudgetMiB, workers: workers) {
            case .failure(let refusal): throw refusal
            case .success(let p): plan = p
            }
            let conflict: String?
            do {
                conflict = try await registry.reserveRPCWorkers(holder: node, instance: instance, parts: plan.reservations, liveWithin: staleAfter)
            } catch {
                throw SplitPlanner.Refusal(description: "the workers' memory could not be reserved: \(error)")
            }
            if let conflict {
                lastConflict = conflict
                continue
            }
            // Reserved: a tunnel per worker, in --rpc order.
            var tunnels: [RPCTunnel] = []
            for worker in plan.workers {
                let (host, port) = Self.hostAndPort(worker.endpoint)
                do {
                    tunnels.append(try await RPCTunnel.start(toHost: host, port: port, secret: secret, onLost: onLost))
                } catch {
                    for t in tunnels { await t.close() }
                    await release(instance)
                    throw SplitPlanner.Refusal(description: "no local port for the way to \(worker.node): \(error)")
                }
            }
            let arguments = plan.arguments(endpoints: tunnels.map { "127.0.0.1:\($0.port)" })
            let opened = tunnels
            return SplitLease(arguments: arguments, hostMiB: plan.hostMiB, parts: plan.parts) { [self] in
                for t in opened { await t.close() }
                await release(instance)
            }
        }
        throw SplitPlanner.Refusal(description: "other nodes reserved the memory of \(lastConflict) first, three times")
    }

    private func release(_ instance: String) async {
        do { try await registry.releaseRPCWorkers(holder: node, instance: instance) } catch {
            logger.error("an RPC workers' reservation could not be released; it lapses when its lease ends", metadata: ["instance": "\(instance)", "error": "\(error)"])
        }
    }

    static func hostAndPort(_ endpoint: String) -> (String, Int) {
        guard let colon = endpoint.lastIndex(of: ":") else { return (endpoint, 0) }
        var host = String(endpoint[..<colon])
        if host.hasPrefix("["), host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
        return (host, Int(endpoint[endpoint.index(after: colon)...]) ?? 0)
    }

    /// Renews this node's reservations every heartbeat.
    public func run() async throws {
        await cancelWhenGracefulShutdown {
            while !Task.isCancelled {
                do { try await self.registry.renewRPCReservations(holder: self.node) } catch {
                    self.logger.warning("could not renew the RPC workers' reservations", metadata: ["error": "\(error)"])
                }
                try? await Task.sleep(for: self.heartbeat)
            }
        }
    }
}
