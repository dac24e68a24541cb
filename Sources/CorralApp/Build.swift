import Access
import Foundation
import Lab
import Library
import Logging
import PostgresStore
import Runtime
import ServiceLifecycle
import Serving
import Store
import Telemetry
import UnixSignals
import Usage

/// How `corral serve` was asked to run, besides the configuration itself.
public struct ServeOptions: Sendable {
    /// The `routes.json` the configuration came from (reloads and rescans reread it).
    public var configPath: String
    /// Serve without API keys while no team exists, even beyond loopback (`--allow-open`).
    public var allowOpen = false
    /// Benchmarks only: no authentication, admission or usage ledger at all.
    public var withoutAccounts = false
    /// Corral's version, for this node's entry in a cluster's registry.
    public var version: String
    /// Shows a newly created admin token (once; it is also written to `path`).
    public var showAdminToken: @Sendable (_ token: String, _ path: String) -> Void

    public init(configPath: String, allowOpen: Bool = false, withoutAccounts: Bool = false, version: String,
                showAdminToken: @escaping @Sendable (_ token: String, _ path: String) -> Void) {
        self.configPath = configPath
        self.allowOpen = allowOpen
        self.withoutAccounts = withoutAccounts
        self.version = version
        self.showAdminToken = showAdminToken
    }
}

/// Why Corral refuses to start, in words for the operator (`corral serve` prints it and exits 2).
public struct StartupRefusal: Error, CustomStringConvertible {
    public let description: String
}

extension CorralServices {
    /// Corral as `config` describes it: the stores opened and migrated, accounts loaded (and the
    /// admin token created on first start), the fleet with its saved aliases, default model and
    /// runtime profiles, the ledger, the cluster node and its RPC workers, the config reloader;
    /// then every product of ``init(config:scheduler:client:recorder:logger:store:digests:access:metrics:work:node:tools:ledger:accounts:libraryState:cluster:configPath:factsCache:)``.
    /// Throws ``StartupRefusal`` where the operator must fix something first.
    public static func build(_ cfg: CorralConfig, options: ServeOptions, logger: Logger) async throws -> CorralServices {
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
        if let problem = writeProblem(directory: cfg.dataDirectory) {
            throw StartupRefusal(description: "the data directory \(cfg.dataDirectory) is not writable (\(problem)); fix it or set dataDirectory in \(options.configPath)")
        }
        let stores: OpenedStores
        do {
            stores = try await OpenedStores.open(cfg, logger: logger, migrate: true)
        } catch {
            throw StartupRefusal(description: "\(error)")
        }
        let store = stores.local
        let shared: SharedQuota? = stores.shared.map { pg in
            SharedQuota(store: pg, node: cfg.cluster!.nodeName)
        }
        let metrics = GatewayMetrics()
        let access = try await openAccess(cfg, options: options, stores: stores, shared: shared, metrics: metrics, logger: logger)

        let factsCache = FactsCache()
        let catalog = ModelCatalog.build(from: cfg, cache: factsCache)
        // An unreadable file is skipped; a refused setting (a draft that cannot pair) leaves the model served without it.
        for problem in catalog.problems { logger.warning("model catalog problem", metadata: ["path": "\(problem.path)", "problem": "\(problem.error)"]) }
        logger.info("models", metadata: ["count": "\(catalog.models.count)", "names": "\(catalog.models.map(\.id).joined(separator: ", "))"])

        let client = makeHTTPClient(readTimeout: cfg.scheduler.readTimeout)
        let limits = Scheduler.Limits(from: cfg.scheduler, hostTotalMiB: HostMemory.read().totalMiB, devices: devices)
        let scheduler = Scheduler(
            catalog: catalog, limits: limits, tools: tools, client: client, logger: logger,
            planCache: StoreFitPlanCache(store: stores.libraryState, hardwareFingerprint: HostMemory.fingerprint(devices: devices), llamaBuild: build,
                                         writeFailed: { what, error in
                                             logger.error("a cache write failed; the next load computes it again", metadata: ["what": "\(what)", "error": "\(error)"])
                                             metrics.cacheWriteFailed()
                                         }),
            warmSwap: cfg.cacheDiskMiB > 0
                ? WarmSwapStore(root: URL(fileURLWithPath: cfg.dataDirectory + "/kv").standardizedFileURL.path,
                                maxBytes: UInt64(cfg.cacheDiskMiB) << 20, saveTimeout: cfg.cacheSaveTimeout)
                : nil)
        try await restoreFleetState(scheduler: scheduler, stores: stores, logger: logger)
        let digests = await fileDigests(store: store, metrics: metrics, logger: logger)

        let ledger = UsageLedger(store: stores.accounts, logger: logger, node: cfg.cluster?.nodeName, capacity: cfg.usage.queueBound)
        let retention = UsageRetention(store: stores.accounts, retainDays: cfg.usage.retainDays, retainRollupDays: cfg.usage.retainRollupDays, logger: logger)
        GatewayMetrics.ledgerPending = { ledger.pendingCount }
        GatewayMetrics.ledgerCounters = { (ledger.refused, retention.failureCount) }
        var cluster: ClusterNode?
        if let settings = cfg.cluster, let pg = stores.shared {
            cluster = ClusterNode(
                name: settings.nodeName, advertiseURL: settings.advertiseURL, secret: stores.clusterSecret ?? "", registry: pg, scheduler: scheduler,
                access: access, quota: shared, logger: logger, version: "\(options.version) (llama.cpp \(build))", changeVersion: { try await pg.changeVersion() },
                listen: { onChange in try await pg.listenForChanges(onChange) })
        }
        let rpc = await rpcServices(cfg, stores: stores, scheduler: scheduler, tools: tools, devices: devices, logger: logger)
        var recorder: RequestRecorder? = { ledger.record($0) }
        var admission: AccessControl? = access
        var backpressure: (any UsageBackpressure)? = ledger
        if options.withoutAccounts {
            logger.warning("--benchmark-without-accounts: no authentication, limits or usage ledger")
            (recorder, admission, backpressure) = (nil, nil, nil)
        }
        var corral = CorralServices(
            config: cfg, scheduler: scheduler, client: client, recorder: recorder, logger: logger,
            store: store, digests: digests, access: admission, metrics: metrics, work: stores.work,
            node: cfg.cluster?.nodeName, tools: tools, ledger: backpressure, accounts: stores.accounts,
            libraryState: stores.libraryState, cluster: cluster, configPath: options.configPath, factsCache: factsCache)
        let reloader = ConfigReloader(path: options.configPath, scheduler: scheduler, logger: logger, cache: factsCache)
        // Stopped in reverse, after the HTTP server and the fleet: a cluster node leaves the
        // registry before the ledger's last write; the shared store's client stops after all.
        corral.leadingServices = [reloader, ledger, retention] + (cluster.map { [$0] } ?? []) + rpc
        corral.stopStores = { stores.stop() }
        return corral
    }

    /// Runs ``services`` and then `http` (the HTTP server, which therefore drains first) until
    /// SIGTERM or SIGINT, or until the cluster asks this node to leave; then stops the stores.
    public func run(http: some Service) async throws {
        let group = ServiceGroup(
            configuration: .init(services: services + [http], gracefulShutdownSignals: [.sigterm, .sigint], logger: logger))
        cluster?.onShutdown { await group.triggerGracefulShutdown() }
        defer { stopStores() }
        try await group.run()
    }

    /// Accounts loaded, the admin token kept or created (and shown once), and open mode refused
    /// where it is not allowed.
    static func openAccess(_ cfg: CorralConfig, options: ServeOptions, stores: OpenedStores, shared: SharedQuota?, metrics: GatewayMetrics,
                           logger: Logger) async throws -> AccessControl {
        let access = AccessControl(store: stores.accounts, openWithoutTeams: cfg.listensOnLoopbackOnly || cfg.allowOpen || options.allowOpen, shared: shared,
                                   log: { logger.error("\($0)") }, refused: { metrics.unreadablePolicyRefused() })
        try await access.load()
        let tokenPath = cfg.dataDirectory + "/admin-token"
        if !access.hasAdminToken, let existing = AdminTokenFile.read(from: tokenPath), !existing.isEmpty {
            // A database recreated next to an existing token file: keep the operator's token.
            try await access.setAdminToken(existing)
        }
        if let token = try await access.createAdminTokenIfNeeded() {
            try AdminTokenFile.write(token, to: tokenPath)
            options.showAdminToken(token, tokenPath)
        }
        if access.isOpen {
            if !cfg.listensOnLoopbackOnly && !(cfg.allowOpen || options.allowOpen) {
                throw StartupRefusal(description: "refusing to serve without API keys on \(cfg.listen.host): no team exists yet. Start it on 127.0.0.1 first and create a team and a key (corral teams create …, corral keys create …), or set auth.allowOpen in routes.json / pass --allow-open")
            }
            logger.warning("open mode: no team exists, so every request is allowed whatever key it carries; create a team to require keys")
        }
        return access
    }

    /// What the fleet keeps across restarts: runtime profiles, runs of older builds as jobs, the
    /// default model chosen by the admin, and the aliases made with `/api/copy`.
    static func restoreFleetState(scheduler: Scheduler, stores: OpenedStores, logger: Logger) async throws {
        let store = stores.local
        try await Lab.restoreRuntimeProfiles(store: store, scheduler: scheduler)
        do {
            let legacy = try await LegacyRuns.importAll(store: store)
            if legacy.imported > 0 { logger.info("benchmark runs and tuning sessions of an older build are jobs now", metadata: ["count": "\(legacy.imported)"]) }
            for what in legacy.unreadable { logger.warning("a run saved by an older build could not be read; it stays in the database", metadata: ["what": "\(what)"]) }
        } catch {
            logger.error("runs saved by an older build could not be imported; they stay in the database", metadata: ["error": "\(error)"])
        }
        if let saved = try await stores.libraryState.document(kind: "setting", id: "defaultModel") {
            struct DefaultModel: Decodable { var model: String }
            if let name = (try? JSONDecoder().decode(DefaultModel.self, from: saved))?.model {
                do { try await scheduler.setDefaultModel(name) } catch {
                    logger.warning("the default model chosen by the admin is gone; using routes.json's", metadata: ["model": "\(name)"])
                }
            } else {
                logger.error("the saved default model cannot be read; using routes.json's until it is set again (corral default-model)")
            }
        }
        let aliases: [String: String]
        do { aliases = try await stores.libraryState.modelAliases() } catch {
            throw StartupRefusal(description: "the aliases made with /api/copy cannot be read from the store: \(error)")
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
    }

    /// Model file digests, preloaded from the store and written back as they are computed.
    static func fileDigests(store: Store, metrics: GatewayMetrics, logger: Logger) async -> FileDigests {
        var known: [FileIdentity: String] = [:]
        do {
            for row in try await store.fileDigests() {
                known[FileIdentity(path: row.path, size: UInt64(row.size), modified: row.modified)] = row.digest
            }
        } catch {
            // A cache: every digest is computed again.
            logger.error("the saved file digests cannot be read; they are computed again", metadata: ["error": "\(error)"])
        }
        return FileDigests(preloaded: known) { identity, digest in
            do { try await store.saveFileDigest(path: identity.path, size: Int64(identity.size), modified: identity.modified, digest: digest) } catch {
                logger.error("a cache write failed; the digest is computed again after a restart", metadata: ["what": "the digest of \(identity.path)", "error": "\(error)"])
                metrics.cacheWriteFailed()
            }
        }
    }

    /// Models too large for this node split over the cluster's RPC workers; this node's own
    /// worker when `cluster.rpc` asks for one.
    static func rpcServices(_ cfg: CorralConfig, stores: OpenedStores, scheduler: Scheduler, tools: LlamaTools, devices: [Device],
                            logger: Logger) async -> [any Service] {
        guard let settings = cfg.cluster, let pg = stores.shared else { return [] }
        var services: [any Service] = []
        let registry = PostgresRPCRegistry(store: pg)
        let splitter = RPCSplitter(node: settings.nodeName, secret: stores.clusterSecret ?? "", registry: registry, logger: logger)
        await scheduler.setSplitter(splitter)
        services.append(splitter)
        if let rpc = settings.rpc {
            let host = URL(string: settings.advertiseURL)?.host ?? "127.0.0.1"
            if let executable = tools.rpcServer?.path {
                services.append(RPCWorkerService(node: settings.nodeName, host: host, settings: rpc, marginMiB: cfg.scheduler.memoryMarginMiB,
                                                 executable: executable, secret: stores.clusterSecret ?? "", registry: registry, logger: logger,
                                                 devices: devices, hostAvailableMiB: HostMemory.read().availableMiB))
            } else {
                logger.error("cluster.rpc is set but ggml-rpc-server is not found (run `make llama`); this node offers no devices")
            }
        }
        return services
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
