import Access
import ArgumentParser
import Foundation
import Gateway
import Hummingbird
import Lab
import Library
import Logging
import NIOCore
import PostgresStore
import Runtime
import ServiceLifecycle
import Serving
import Store
import Telemetry
import UnixSignals
import Usage

/// `corral serve`: run the gateway.
struct ServeCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "serve", abstract: "Run the gateway.")

    @Option(help: "Configuration file.")
    var config = "routes.json"

    @Option(help: "Override the listen port.")
    var port: Int?

    @Option(help: "Override the listen host.")
    var host: String?

    @Option(help: "Log level: trace, debug, info, notice, warning, error.")
    var logLevel = "info"

    @Flag(help: "Serve without API keys while no team exists, even beyond loopback.")
    var allowOpen = false

    /// Benchmarks only: no authentication, admission or usage ledger at all.
    @Flag(help: .hidden)
    var benchmarkWithoutAccounts = false

    func run() async throws {
        var logger = Logger(label: "corral")
        logger.logLevel = Logger.Level(rawValue: logLevel) ?? .info
        var cfg: CorralConfig
        do {
            cfg = try CorralConfig.load(path: config)
        } catch {
            FileHandle.standardError.write(Data("corral: \(error)\n".utf8))
            throw ExitCode(2)
        }
        if let port { cfg.listen.port = port }
        if let host { cfg.listen.host = host }

        let tools = LlamaTools.discover(configured: cfg.llama.toolPaths)
        if tools.server == nil {
            if let configured = cfg.llama.server {
                logger.warning("llama.server in routes.json is missing or not executable; local models cannot be loaded", metadata: ["path": "\(configured)"])
            } else {
                logger.warning("llama-server not found; local models cannot be loaded (run `make llama`)")
            }
        }
        let devices = await tools.devices()
        let build = await tools.serverBuild() ?? "unknown"
        // Teams, keys and the ledger live here: refuse to start rather than serve without them.
        if let problem = Self.writeProblem(directory: cfg.dataDirectory) {
            FileHandle.standardError.write(Data("corral: the data directory \(cfg.dataDirectory) is not writable (\(problem)); fix it or set dataDirectory in \(config)\n".utf8))
            throw ExitCode(2)
        }
        let stores: OpenedStores
        do {
            stores = try await OpenedStores.open(cfg, logger: logger, migrate: true)
        } catch {
            FileHandle.standardError.write(Data("corral: \(error)\n".utf8))
            throw ExitCode(2)
        }
        let store = stores.local
        let shared: SharedQuota? = stores.shared.map { pg in
            SharedQuota(store: pg, node: cfg.cluster!.nodeName)
        }
        let metrics = GatewayMetrics()
        let problems = logger
        let access = AccessControl(store: stores.accounts, openWithoutTeams: cfg.listensOnLoopbackOnly || cfg.allowOpen || allowOpen, shared: shared,
                                   log: { problems.error("\($0)") }, refused: { metrics.unreadablePolicyRefused() })
        try await access.load()
        let tokenPath = cfg.dataDirectory + "/admin-token"
        if !access.hasAdminToken, let existing = AdminTokenFile.read(from: tokenPath), !existing.isEmpty {
            // A database recreated next to an existing token file: keep the operator's token.
            try await access.setAdminToken(existing)
        }
        if let token = try await access.createAdminTokenIfNeeded() {
            let path = tokenPath
            try AdminTokenFile.write(token, to: path)
            // Shown once (on stdout, never through the logger); also kept in a 0600 file.
            FileHandle.standardOutput.write(Data("corral: admin token (shown once; also written to \(path)):\n  \(token)\n".utf8))
        }
        if access.isOpen {
            if !cfg.listensOnLoopbackOnly && !(cfg.allowOpen || allowOpen) {
                FileHandle.standardError.write(Data("corral: refusing to serve without API keys on \(cfg.listen.host): no team exists yet. Start it on 127.0.0.1 first and create a team and a key (corral teams create …, corral keys create …), or set auth.allowOpen in routes.json / pass --allow-open\n".utf8))
                throw ExitCode(2)
            }
            logger.warning("open mode: no team exists, so every request is allowed whatever key it carries; create a team to require keys")
        }
        let factsCache = FactsCache()
        let catalog = ModelCatalog.build(from: cfg, cache: factsCache)
        // An unreadable file is skipped; a refused setting (a draft that cannot pair) leaves the model served without it.
        for problem in catalog.problems { logger.warning("model catalog problem", metadata: ["path": "\(problem.path)", "problem": "\(problem.error)"]) }
        logger.info("models", metadata: ["count": "\(catalog.models.count)", "names": "\(catalog.models.map(\.id).joined(separator: ", "))"])

        let client = GatewayDependencies.makeHTTPClient(readTimeout: cfg.scheduler.readTimeout)
        let limits = Scheduler.Limits(from: cfg.scheduler, hostTotalMiB: HostMemory.read().totalMiB, devices: devices)
        let scheduler = Scheduler(
            catalog: catalog, limits: limits, tools: tools, client: client, logger: logger,
            planCache: StoreFitPlanCache(store: stores.libraryState, hardwareFingerprint: HostMemory.fingerprint(devices: devices), llamaBuild: build,
                                         writeFailed: { what, error in
                                             problems.error("a cache write failed; the next load computes it again", metadata: ["what": "\(what)", "error": "\(error)"])
                                             metrics.cacheWriteFailed()
                                         }),
            warmSwap: cfg.cacheDiskMiB > 0
                ? WarmSwapStore(root: URL(fileURLWithPath: cfg.dataDirectory + "/kv").standardizedFileURL.path,
                                maxBytes: UInt64(cfg.cacheDiskMiB) << 20, saveTimeout: cfg.cacheSaveTimeout)
                : nil)
        try await Lab.restoreRuntimeProfiles(store: store, scheduler: scheduler)
        do {
            let legacy = try await LegacyRuns.importAll(store: store)
            if legacy.imported > 0 { logger.info("benchmark runs and tuning sessions of an older build are jobs now", metadata: ["count": "\(legacy.imported)"]) }
            for what in legacy.unreadable { logger.warning("a run saved by an older build could not be read; it stays in the database", metadata: ["what": "\(what)"]) }
        } catch {
            logger.error("runs saved by an older build could not be imported; they stay in the database", metadata: ["error": "\(error)"])
        }
        if let saved = try await stores.libraryState.document(kind: "setting", id: "defaultModel") {
            if let name = (try? JSONSerialization.jsonObject(with: saved) as? [String: Any])?["model"] as? String {
                do { try await scheduler.setDefaultModel(name) } catch {
                    logger.warning("the default model chosen by the admin is gone; using routes.json's", metadata: ["model": "\(name)"])
                }
            } else {
                logger.error("the saved default model cannot be read; using routes.json's until it is set again (corral default-model)")
            }
        }
        let aliases: [String: String]
        do { aliases = try await stores.libraryState.modelAliases() } catch {
            FileHandle.standardError.write(Data("corral: the aliases made with /api/copy cannot be read from the store: \(error)\n".utf8))
            throw ExitCode(2)
        }
        for (alias, target) in aliases {
            do { _ = try await scheduler.addRuntimeAlias(alias, for: target) } catch {
                // A cluster's alias may name a model another node has; only a node's own is dropped.
                guard stores.shared == nil else { continue }
                logger.warning("dropping alias whose model is gone", metadata: ["alias": "\(alias)", "target": "\(target)"])
                do { try await store.deleteModelAlias(alias) } catch {
                    logger.error("the alias whose model is gone could not be deleted from the store", metadata: ["alias": "\(alias)", "error": "\(error)"])
                }
            }
        }
        var known: [FileIdentity: String] = [:]
        for row in (try? await store.fileDigests()) ?? [] {
            known[FileIdentity(path: row.path, size: UInt64(row.size), modified: row.modified)] = row.digest
        }
        let digests = FileDigests(preloaded: known) { identity, digest in
            do { try await store.saveFileDigest(path: identity.path, size: Int64(identity.size), modified: identity.modified, digest: digest) } catch {
                problems.error("a cache write failed; the digest is computed again after a restart", metadata: ["what": "the digest of \(identity.path)", "error": "\(error)"])
                metrics.cacheWriteFailed()
            }
        }
        let ledger = UsageLedger(store: stores.accounts, logger: logger, node: cfg.cluster?.nodeName, capacity: cfg.usage.queueBound)
        let retention = UsageRetention(store: stores.accounts, retainDays: cfg.usage.retainDays, retainRollupDays: cfg.usage.retainRollupDays, logger: logger)
        GatewayMetrics.ledgerPending = { ledger.pendingCount }
        GatewayMetrics.ledgerCounters = { (ledger.refused, retention.failureCount) }
        var deps = GatewayDependencies(
            config: cfg, scheduler: scheduler, client: client, recorder: { ledger.record($0) }, logger: logger, store: store,
            digests: digests, access: access, metrics: metrics, work: stores.work, node: cfg.cluster?.nodeName, tools: tools)
        deps.ledger = ledger
        deps.configPath = config
        deps.factsCache = factsCache
        deps.accounts = stores.accounts
        deps.libraryState = stores.libraryState
        var cluster: ClusterNode?
        if let settings = cfg.cluster, let pg = stores.shared {
            cluster = ClusterNode(
                name: settings.nodeName, advertiseURL: settings.advertiseURL, secret: stores.clusterSecret ?? "", registry: pg, scheduler: scheduler,
                access: access, quota: shared, logger: logger, version: "\(Corral.version) (llama.cpp \(build))", changeVersion: { try await pg.changeVersion() },
                listen: { onChange in try await pg.listenForChanges(onChange) })
            deps.cluster = cluster
        }
        // Models too large for this node split over the cluster's RPC workers; this node's own
        // worker when cluster.rpc asks for one.
        var rpcServices: [any Service] = []
        if let settings = cfg.cluster, let pg = stores.shared {
            let registry = PostgresRPCRegistry(store: pg)
            let splitter = RPCSplitter(node: settings.nodeName, secret: stores.clusterSecret ?? "", registry: registry, logger: logger)
            await scheduler.setSplitter(splitter)
            rpcServices.append(splitter)
            if let rpc = settings.rpc {
                let host = URL(string: settings.advertiseURL)?.host ?? "127.0.0.1"
                if let executable = tools.rpcServer?.path {
                    rpcServices.append(RPCWorkerService(node: settings.nodeName, host: host, settings: rpc, marginMiB: cfg.scheduler.memoryMarginMiB,
                                                        executable: executable, secret: stores.clusterSecret ?? "", registry: registry, logger: logger,
                                                        devices: devices, hostAvailableMiB: HostMemory.read().availableMiB))
                } else {
                    logger.error("cluster.rpc is set but ggml-rpc-server is not found (run `make llama`); this node offers no devices")
                }
            }
        }
        if benchmarkWithoutAccounts {
            logger.warning("--benchmark-without-accounts: no authentication, limits or usage ledger")
            deps.access = nil
            deps.recorder = nil
            deps.ledger = nil
        }
        let app = try buildApplication(deps)
        let reloader = ConfigReloader(path: config, scheduler: scheduler, logger: logger, cache: factsCache)
        // Shut down in reverse: the HTTP server drains first, then the ledger writes what is left.
        // A cluster node leaves the registry after the server has finished its requests and
        // before the ledger's last write; the shared store's client stops after all of them.
        let services: [any Service] = [reloader, ledger, retention] + (cluster.map { [$0] } ?? []) + rpcServices + [app]
        let group = ServiceGroup(
            configuration: .init(services: services, gracefulShutdownSignals: [.sigterm, .sigint], logger: logger))
        cluster?.onShutdown { await group.triggerGracefulShutdown() }
        defer { stores.stop() }
        do {
            try await group.run()
        } catch let error as IOError where error.errnoCode == EADDRINUSE {
            FileHandle.standardError.write(Data("corral: cannot listen on \(cfg.listen.host):\(cfg.listen.port): the address is already in use (another Corral or Ollama?); set listen.port or pass --port\n".utf8))
            throw ExitCode(2)
        }
    }

    /// Why `directory` cannot be created or written, if it cannot.
    static func writeProblem(directory: String) -> String? {
        do {
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
            let probe = directory + "/.write-test-\(getpid())"
            guard FileManager.default.createFile(atPath: probe, contents: Data("x".utf8)) else { return String(cString: strerror(errno)) }
            try FileManager.default.removeItem(atPath: probe)
            return nil
        } catch {
            return error.localizedDescription
        }
    }
}

/// The cluster's registry of RPC workers in PostgreSQL, as Serving sees it.
private struct PostgresRPCRegistry: RPCWorkerRegistry {
    let store: PostgresStore

    func offerRPCWorker(node: String, endpoint: String, devices: [String], memoryMiB: Int) async throws {
        try await store.offerRPCWorker(node: node, endpoint: endpoint, devices: devices, memoryMiB: memoryMiB)
    }

    func withdrawRPCWorker(node: String) async throws { try await store.withdrawRPCWorker(node: node) }

    func rpcWorkers() async throws -> [RPCWorkerOffer] {
        try await store.rpcWorkerRows().map {
            RPCWorkerOffer(node: $0.node, endpoint: $0.endpoint, devices: $0.devices, memoryMiB: $0.memoryMiB, reservedMiB: $0.reservedMiB, age: $0.age)
        }
    }

    func reserveRPCWorkers(holder: String, instance: String, parts: [String: Int], liveWithin: Double) async throws -> String? {
        try await store.reserveRPCWorkers(holder: holder, instance: instance, parts: parts, liveWithin: liveWithin)
    }

    func releaseRPCWorkers(holder: String, instance: String) async throws { try await store.releaseRPCWorkers(holder: holder, instance: instance) }

    func renewRPCReservations(holder: String) async throws { try await store.renewRPCReservations(holder: holder) }
}
