import Access
import Acquisition
import AsyncHTTPClient
import Files
import Foundation
import Jobs
import Lab
import Library
import Logging
import NIOCore
import Runtime
import ServiceLifecycle
import Serving
import Store
import Telemetry
import Usage

/// Corral's parts, built once: the stores, access, the fleet, the job engine with every kind,
/// the request path, the library and the lab, and the Services that run them. The HTTP layer
/// registers its routes over these products and builds nothing of its own.
///
/// ``build(_:logger:)`` makes them from a configuration (what `corral serve` runs); the
/// initializer makes them from parts given (tests leave out the ones they do not need).
public struct CorralServices: Sendable {
    public let config: CorralConfig
    public let scheduler: Scheduler
    /// The dedicated upstream client (see ``makeHTTPClient(readTimeout:)``).
    public let client: HTTPClient
    /// Where request records go besides the metrics (the usage ledger; nil: nowhere).
    public let recorder: RequestRecorder?
    /// The usage ledger's bound (nil: none, as in tests of other concerns).
    public let ledger: (any UsageBackpressure)?
    public let logger: Logger
    /// Database for aliases and digests (nil in tests that do not need it).
    public let store: Store?
    /// Model file digests for Ollama's `digest` fields.
    public let digests: FileDigests
    /// Teams, keys and limits; nil serves everyone without accounts (tests of other concerns).
    public let access: AccessControl?
    /// Corral's own Prometheus metrics.
    public let metrics: GatewayMetrics
    /// llama.cpp tools (hardware probing, exact projections, the jobs' tools).
    public let tools: LlamaTools
    /// The machine's devices and memory, probed once and shared by the library, the jobs and
    /// fine-tuning's fit checks.
    public let hardware: HardwareCache
    /// Rebuilds the catalog from the configuration and its sources (rescans, finished pulls).
    public let refreshCatalog: CatalogRefresh
    /// Pulls from registries and the hub, as jobs.
    public let downloads: Downloads
    /// The dashboard's sampler of `metrics` (one of ``services``).
    public let liveStats: LiveStats
    /// The job engine every kind of long-running work runs on (benchmarks, tuning, …).
    public let jobs: JobEngine
    /// Evaluation runs' live prompts and answer tokens, for their console.
    public let evalConsole: EvalConsole
    /// Uploaded files (the OpenAI Files API): nil without a store, or when its folder cannot be used.
    public let files: FileLibrary?
    /// Teams, keys and the ledger: the shared store on a cluster node, else `store`.
    public let accounts: (any AccountStore)?
    /// This node's place in a cluster (nil on a single node).
    public let cluster: ClusterNode?
    /// Sampling profiles, settings, runtime aliases, pins and the fit-plan cache: the shared store
    /// on a cluster node, else `store`.
    public let libraryState: (any LibraryStateStore)?
    /// Jobs, uploaded files, evaluations and their documents: the shared store on a cluster node
    /// (any node sees and controls every job; a file uploaded to one is read on another), else
    /// `store`.
    public let work: (any WorkStore)?
    /// The request path clients' requests take (admission, routing, the response pump, the ledger).
    public let relay: Relay
    /// Sampling profiles: built in, from `routes.json`, and saved through the admin API.
    public let profiles: SamplingProfiles
    /// The Evals API's evaluations and runs (nil without files).
    public let evaluations: Evaluations?
    /// The fine-tuning API's jobs (nil without files).
    public let fineTuning: FineTuning?
    /// Benchmarks, perplexity, tuning, the quant ladder and runtime profiles.
    public let lab: Lab
    /// The model library: facts, compatibility, recommendations, each model's benchmarks.
    public let library: ModelLibrary
    /// What is done once at start: remote job control, saved profiles, job recovery.
    public let startup: StartupWork
    /// Services that run before the HTTP server and stop after it and after ``services``' own
    /// (the config reloader, the ledger, retention, the cluster node, RPC workers); set by
    /// ``build(_:logger:)``.
    var leadingServices: [any Service] = []
    /// Stops what the stores run (the shared store's client), after every service has stopped.
    var stopStores: @Sendable () -> Void = {}

    /// Corral from parts: the job engine with every kind, the request path, the library, the lab
    /// and the start-up work are built here; what is left out is off (no `store`: no files,
    /// evaluations or fine-tuning, jobs in memory; no `access`: no accounts; no `cluster`: one node).
    public init(
        config: CorralConfig, scheduler: Scheduler, client: HTTPClient, recorder: RequestRecorder? = nil, logger: Logger,
        store: Store? = nil, digests: FileDigests = FileDigests(), access: AccessControl? = nil, metrics: GatewayMetrics = GatewayMetrics(),
        work: (any WorkStore)? = nil, node: String? = nil, tools: LlamaTools? = nil,
        ledger: (any UsageBackpressure)? = nil, accounts: (any AccountStore)? = nil, libraryState: (any LibraryStateStore)? = nil,
        cluster: ClusterNode? = nil, configPath: String? = nil, factsCache: FactsCache = FactsCache()
    ) {
        let tools = tools ?? LlamaTools.discover(configured: config.llama.toolPaths)
        self.tools = tools
        let hardware = HardwareCache(tools: tools)
        self.hardware = hardware
        self.access = access
        self.metrics = metrics
        self.liveStats = LiveStats(metrics: metrics)
        self.config = config
        self.scheduler = scheduler
        self.client = client
        self.recorder = recorder
        self.ledger = ledger
        self.logger = logger
        self.store = store
        self.accounts = accounts ?? store
        let libraryState = libraryState ?? store
        self.libraryState = libraryState
        self.cluster = cluster
        let work: (any WorkStore)? = work ?? store
        self.work = work
        self.digests = digests
        let evalConsole = EvalConsole()
        self.evalConsole = evalConsole
        let refresh = CatalogRefresh(scheduler: scheduler, fallback: config, cache: factsCache)
        refresh.use(path: configPath, cache: factsCache)
        self.refreshCatalog = refresh
        let sources = ModelSources(client: client, directory: config.downloads)
        let download = DownloadJob(sources: sources, maxConcurrent: config.maxConcurrentDownloads, registered: {
            do { try await refresh() } catch { logger.error("the catalog could not be rebuilt after a pull", metadata: ["error": "\(error)"]) }
        })
        let quantize = QuantizeJob(tools: tools, creator: ModelCreator(directory: config.downloads),
                                   registered: { _ = try await refresh() })
        var files: FileLibrary?
        if let work {
            do { files = try FileLibrary(store: work, directory: config.dataDirectory + "/files", maxBytes: config.maxFileBytes) } catch {
                logger.error("the Files, Evals and fine-tuning APIs are off: the files directory cannot be used", metadata: ["error": "\(error)"])
            }
        }
        self.files = files
        // Every request is measured; the ledger (when there is one) records it too.
        let observed: RequestRecorder = { record in
            metrics.observe(record)
            recorder?(record)
        }
        let jobs = Self.makeJobEngine(scheduler: scheduler, client: client, store: work, node: node, logger: logger, metrics: metrics, recorder: observed,
                                      tools: tools, hardware: hardware, config: config, access: access, evalConsole: evalConsole, files: files, refresh: refresh,
                                      extraKinds: [download, quantize])
        self.jobs = jobs
        self.downloads = Downloads(engine: jobs, sources: sources)
        self.relay = Relay(
            scheduler: scheduler, client: client, local: LocalUpstreamClient(readTimeout: config.scheduler.readTimeout),
            recorder: observed, logger: logger, access: access, cluster: cluster, ledger: ledger)

        let profiles = SamplingProfiles(config: config.profiles, store: libraryState)
        self.profiles = profiles
        cluster?.onChange { [profiles, scheduler, libraryState, logger] in
            do { try await profiles.load() } catch { logger.error("sampling profiles changed on another node could not be read", metadata: ["error": "\(error)"]) }
            if let libraryState { await ClusterLibrarySync.apply(libraryState, to: scheduler, logger: logger) }
        }
        if let work, let files {
            self.evaluations = Evaluations(store: work, engine: jobs, files: files)
            let margin = config.scheduler.memoryMarginMiB
            self.fineTuning = FineTuning(
                engine: jobs, files: files, store: work, directory: config.fineTuningDirectory, catalog: { scheduler.currentCatalog },
                runtimeArguments: { await scheduler.runtimeArguments[$0] ?? [] },
                compatibility: { Compatibility(hardware: await hardware.get(), marginMiB: margin) })
        } else {
            self.evaluations = nil
            self.fineTuning = nil
        }
        let lab = Lab(engine: jobs, scheduler: scheduler, store: store, textDirectory: config.dataDirectory + "/perplexity", sampling: profiles)
        self.lab = lab
        self.library = ModelLibrary(
            scheduler: scheduler, store: store, ledger: self.accounts, hardware: hardware, marginMiB: config.scheduler.memoryMarginMiB, tools: tools,
            benchmarks: { model in
                let encoder = JSONEncoder()
                encoder.dateEncodingStrategy = .iso8601
                func object(_ run: some Encodable) throws -> JobJSON { try JSONDecoder().decode(JobJSON.self, from: encoder.encode(run)) }
                let speed = try await lab.benchmarks(model: model, limit: 5).map(object)
                let perplexity = try await lab.perplexityRuns(model: model, limit: 20).filter { $0.state == .succeeded }.prefix(5).map(object)
                return (speed, Array(perplexity))
            })

        var steps: [@Sendable () async -> Void] = []
        if let cluster {
            let control = ClusterJobControl(cluster: cluster, client: client)
            // First: a job recovered below may already be controlled from another node.
            steps.append { await jobs.useRemoteControl(control) }
        }
        steps.append {
            do { try await profiles.load() } catch {
                // Serving goes on with the built-in and routes.json profiles; the saved ones are missing.
                logger.error("sampling profiles saved through the admin API are not in use", metadata: ["error": "\(error)"])
            }
        }
        steps.append {
            do {
                try await lab.loadRuntimeProfiles()
                try await jobs.recover()
            } catch {
                logger.error("jobs could not be recovered", metadata: ["error": "\(error)"])
            }
        }
        self.startup = StartupWork(steps: steps)
    }

    /// The long-lived work, in start order; a service group stops it in reverse, so an HTTP
    /// server listed after these drains first. Then the start-up work and the jobs stop (and stay
    /// resumable) before the fleet stops every llama-server and the upstream client; a cluster
    /// node leaves the registry after that and before the ledger's last write.
    public var services: [any Service] {
        leadingServices + [FleetService(scheduler: scheduler, client: client), liveStats, JobsService(engine: jobs), startup]
    }

    /// What a rescan of the library did: ``rescanCatalog()``.
    public struct CatalogRescan: Sendable {
        /// Models in the new catalog.
        public var models: Int
        /// GGUF files read, and reused from the facts cache.
        public var filesRead: Int
        public var filesReused: Int
        /// Files that could not be used, with why.
        public var problems: [(path: String, error: String)]
        /// How long it took, in milliseconds.
        public var ms: Double
    }

    /// Rebuilds the catalog from `routes.json` (incrementally: unchanged files come from the facts
    /// cache) and says what it did.
    public func rescanCatalog() async throws -> CatalogRescan {
        let started = ContinuousClock.now
        let cache = refreshCatalog.cache
        _ = cache.takeCounts()
        let catalog = try await refreshCatalog()
        let counts = cache.takeCounts()
        return CatalogRescan(
            models: catalog.models.count, filesRead: counts.read, filesReused: counts.reused,
            problems: catalog.problems, ms: ms(ContinuousClock.now - started))
    }

    /// The job engine with every kind Corral runs: benchmarks, evaluations and fine-tuning ask
    /// their models through one ``RelayModelClient`` (a relay of their own, recording to the same
    /// ledger and metrics), tuning trials run llama-servers outside the fleet under memory
    /// claims. Jobs live in `store` (an in-memory database when there is none, as in tests of
    /// other concerns).
    static func makeJobEngine(scheduler: Scheduler, client: HTTPClient, store: (any WorkStore)?, node: String?, logger: Logger, metrics: GatewayMetrics,
                              recorder: @escaping RequestRecorder, tools: LlamaTools, hardware: HardwareCache, config: CorralConfig, access: AccessControl?,
                              evalConsole: EvalConsole, files: FileLibrary?, refresh: CatalogRefresh, extraKinds: [any JobKind]) -> JobEngine {
        let relay = Relay(
            scheduler: scheduler, client: client, local: LocalUpstreamClient(readTimeout: config.scheduler.readTimeout),
            recorder: recorder, logger: logger, access: access)
        // Every job asks its models through one client over the serving path: admitted under the
        // job's key, recorded in the ledger under the job's route (/v1/evals, /v1/fine_tuning/jobs:
        // background work behind client requests in a model's queue; /admin/benchmarks:
        // anonymous, at client priority, as a benchmark measures what a client sees).
        let models = RelayModelClient(relay: relay)
        let benchmark = BenchmarkJob(client: models, allocated: { model in await scheduler.instance(for: model)?.allocatedMiB })
        // A run records the arguments of the instance that answered and the machine.
        let evalRun = EvalRunJob(store: store, console: evalConsole, client: models, environment: { model in
            guard let instance = await scheduler.instance(for: model) else { return nil }
            return EvalEnvironment(arguments: instance.arguments, hardware: await hardware.get())
        })
        // A fine-tuning job renders chat data with its base model's template and counts tokens
        // with its tokenizer: llama-server's own routes.
        let fineTune = FineTuneJob(
            tools: tools, files: files, turns: TrainerTurns(limit: config.fineTuningMaxConcurrent), client: models,
            refreshCatalog: { try await refresh() })
        // Tuning trials are llama-servers outside the fleet: their load and quality probes ask
        // them directly.
        let tuning = TuningJob(tools: tools, client: client, trialClient: { LlamaServerModelClient(baseURL: $0, client: client) })
        let margin = config.scheduler.memoryMarginMiB
        let ladder = QuantLadderJob(tools: tools, directory: config.dataDirectory + "/quant-ladder", compatibility: {
            Compatibility(hardware: await hardware.get(), marginMiB: margin)
        })
        // An in-memory SQLite database cannot fail to open short of the process being out of memory.
        let jobStore: any JobStore = store ?? (try! Store.inMemory())
        return JobEngine(
            store: jobStore, node: node, claims: scheduler, logger: logger,
            kinds: [benchmark, tuning, PerplexityJob(tools: tools), evalRun, fineTune, ladder] + extraKinds,
            onPersistenceFailure: { _ in metrics.jobStoreWriteFailed() })
    }

    /// The dedicated upstream client: no redirects, no decompression, a read timeout
    /// (`scheduler.readTimeout`: generous, a long prompt pauses before the first token), a pool
    /// wide enough for every slot.
    public static func makeHTTPClient(readTimeout: Duration = .seconds(600)) -> HTTPClient {
        var configuration = HTTPClient.Configuration(
            redirectConfiguration: .disallow,
            timeout: .init(connect: .seconds(5), read: TimeAmount(readTimeout)),
            decompression: .disabled)
        configuration.connectionPool.concurrentHTTP1ConnectionsPerHostSoftLimit = 256
        // llama-server closes keep-alive connections after 5 s idle; closing ours first avoids
        // sending a request on a connection the server is closing.
        configuration.connectionPool.idleTimeout = .seconds(3)
        // No spans: with no tracer bootstrapped they are no-ops that still cost attribute work
        // on every request.
        configuration.tracing.tracer = nil
        return HTTPClient(eventLoopGroup: HTTPClient.defaultEventLoopGroup, configuration: configuration)
    }
}
