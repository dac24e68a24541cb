import Access
import Acquisition
import AsyncHTTPClient
import Files
import Foundation
import Hummingbird
import HummingbirdCore
import HummingbirdHTTP2
import HummingbirdTLS
import Jobs
import Lab
import Library
import Logging
import NIOCore
import NIOHTTP1
import NIOPosix
import NIOSSL
import Runtime
import ServiceLifecycle
import Serving
import Store
import Telemetry
import Usage

/// Everything the HTTP application needs, built once at start-up.
public struct GatewayDependencies: Sendable {
    public var config: CorralConfig
    public var scheduler: Scheduler
    public var client: HTTPClient
    public var recorder: RequestRecorder?
    /// The usage ledger's bound (nil: none, as in tests of other concerns).
    public var ledger: (any UsageBackpressure)?
    public var logger: Logger
    /// Database for aliases and digests (nil in tests that do not need it).
    public var store: Store?
    /// Model file digests for Ollama's `digest` fields.
    public var digests: FileDigests
    /// Teams, keys and limits; nil serves everyone without accounts (tests of other concerns).
    public var access: AccessControl?
    /// Corral's own Prometheus metrics.
    public let metrics: GatewayMetrics
    /// llama.cpp tools (hardware probing, exact projections, the jobs' tools).
    public let tools: LlamaTools
    /// The machine's devices and memory, probed once and shared by the library, the jobs and
    /// fine-tuning's fit checks.
    public let hardware: HardwareCache
    /// The `routes.json` the catalog came from (the library's rescan rereads it).
    public var configPath: String? { didSet { refreshCatalog.use(path: configPath, cache: factsCache) } }
    /// GGUF facts by file identity, shared by reloads and rescans.
    public var factsCache = FactsCache() { didSet { refreshCatalog.use(path: configPath, cache: factsCache) } }
    /// Rebuilds the catalog from the configuration and its sources (rescans, finished pulls).
    public let refreshCatalog: CatalogRefresh
    /// Pulls from registries and the hub, as jobs.
    public let downloads: Downloads
    /// The dashboard's sampler of `metrics` (run as a service by ``buildApplication(_:)``).
    let liveStats: LiveStats
    /// The job engine every kind of long-running work runs on (benchmarks, tuning, …).
    public let jobs: JobEngine
    /// Evaluation runs' live prompts and answer tokens, for their console.
    public let evalConsole = EvalConsole()
    /// Uploaded files (the OpenAI Files API): nil without a store, or when its folder cannot be used.
    public let files: FileLibrary?
    /// Teams, keys and the ledger: the shared store on a cluster node, else `store`.
    public var accounts: (any AccountStore)?
    /// This node's place in a cluster (nil on a single node).
    public var cluster: ClusterNode?
    /// Sampling profiles, settings, runtime aliases, pins and the fit-plan cache: the shared store
    /// on a cluster node, else `store`.
    public var libraryState: (any LibraryStateStore)?
    /// Jobs, uploaded files, evaluations and their documents: the shared store on a cluster node
    /// (any node sees and controls every job; a file uploaded to one is read on another), else
    /// `store`.
    public let work: (any WorkStore)?

    public init(
        config: CorralConfig, scheduler: Scheduler, client: HTTPClient, recorder: RequestRecorder? = nil, logger: Logger,
        store: Store? = nil, digests: FileDigests = FileDigests(), access: AccessControl? = nil, metrics: GatewayMetrics = GatewayMetrics(),
        work: (any WorkStore)? = nil, node: String? = nil, tools: LlamaTools? = nil
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
        self.logger = logger
        self.store = store
        self.accounts = store
        self.libraryState = store
        let work: (any WorkStore)? = work ?? store
        self.work = work
        self.digests = digests
        let refresh = CatalogRefresh(scheduler: scheduler, fallback: config, cache: FactsCache())
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
        self.jobs = Self.makeJobEngine(scheduler: scheduler, client: client, store: work, node: node, logger: logger, metrics: metrics, recorder: recorder,
                                       tools: tools, hardware: hardware,
                                       config: config, access: access, evalConsole: evalConsole, files: files, refresh: refresh, extraKinds: [download, quantize])
        self.downloads = Downloads(engine: jobs, sources: sources)
        refresh.use(path: nil, cache: factsCache)
    }

    /// The job engine with every kind Corral runs: benchmarks, evaluations and fine-tuning ask
    /// their models through one ``RelayModelClient`` (a relay of their own, recording to the same
    /// ledger and metrics), tuning trials run llama-servers outside the fleet under memory
    /// claims. Jobs live in `store` (an in-memory database when there is none, as in tests of
    /// other concerns).
    static func makeJobEngine(scheduler: Scheduler, client: HTTPClient, store: (any WorkStore)?, node: String? = nil, logger: Logger, metrics: GatewayMetrics,
                              recorder: RequestRecorder?, tools: LlamaTools, hardware: HardwareCache, config: CorralConfig, access: AccessControl?, evalConsole: EvalConsole,
                              files: FileLibrary? = nil, refresh: CatalogRefresh? = nil, extraKinds: [any JobKind] = []) -> JobEngine {
        let relay = Relay(
            scheduler: scheduler, client: client, local: LocalUpstreamClient(readTimeout: config.scheduler.readTimeout),
            recorder: { record in
                metrics.observe(record)
                recorder?(record)
            }, logger: logger, access: access)
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
            refreshCatalog: { if let refresh { try await refresh() } })
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

/// Builds Corral's router, for a caller that runs no service group (tests): its start-up work
/// (saved profiles, job recovery) starts at once in the background. ``buildApplication(_:)``
/// runs the same work as a `Service` instead.
public func buildRouter(_ deps: GatewayDependencies) -> Router<GatewayRequestContext> {
    let built = buildRouterAndRoutes(deps)
    let startup = built.startup
    Task { await startup.work() }
    return built.router
}

/// What the routes need done once when Corral starts: the remote job control of a cluster node,
/// the sampling profiles and runtime profiles saved through the admin API, and the recovery of
/// jobs a stop interrupted. A `Service` that does it, then waits for shutdown.
struct StartupWork: Service {
    let steps: [@Sendable () async -> Void]

    func work() async {
        for step in steps { await step() }
    }

    func run() async throws {
        await work()
        try? await gracefulShutdown()
    }
}

/// The router, the OpenAI routes it serves (which the fast lane shares), the description of its
/// admin routes, and the work to do once at start (see ``StartupWork``).
func buildRouterAndRoutes(_ deps: GatewayDependencies) -> (router: Router<GatewayRequestContext>, openAI: OpenAIRoutes, admin: AdminAPITable, startup: StartupWork) {
    let router = Router(context: GatewayRequestContext.self)
    var startup: [@Sendable () async -> Void] = []
    router.add(middleware: ErrorShapeMiddleware())
    router.add(middleware: CORSMiddleware(extraOrigins: Set(deps.config.corsOrigins)))
    if deps.config.listensOnLoopbackOnly { router.add(middleware: HostGuardMiddleware(allowed: Set(deps.config.allowedHosts))) }
    if let access = deps.access { router.add(middleware: AuthMiddleware(access: access, cluster: deps.cluster)) }
    let healthy = ByteBuffer(string: #"{"status":"ok"}"#)
    router.get("/health") { _, _ in Response(status: .ok, headers: [.contentType: "application/json"], body: .init(byteBuffer: healthy)) }
    let metrics = deps.metrics
    let upstreamRecorder = deps.recorder
    let relay = Relay(
        scheduler: deps.scheduler, client: deps.client, local: LocalUpstreamClient(readTimeout: deps.config.scheduler.readTimeout),
        recorder: { record in
            metrics.observe(record)
            upstreamRecorder?(record)
        }, logger: deps.logger, access: deps.access, cluster: deps.cluster, ledger: deps.ledger)
    let profiles = SamplingProfiles(config: deps.config.profiles, store: deps.libraryState)
    deps.cluster?.onChange { [profiles, scheduler = deps.scheduler, state = deps.libraryState, logger = deps.logger] in
        do { try await profiles.load() } catch { logger.error("sampling profiles changed on another node could not be read", metadata: ["error": "\(error)"]) }
        if let state { await ClusterLibrarySync.apply(state, to: scheduler, logger: logger) }
    }
    startup.append {
        do { try await profiles.load() } catch {
            // Serving goes on with the built-in and routes.json profiles; the saved ones are missing.
            deps.logger.error("sampling profiles saved through the admin API are not in use", metadata: ["error": "\(error)"])
        }
    }
    let openAI = OpenAIRoutes(relay: relay, scheduler: deps.scheduler, access: deps.access, metrics: metrics, profiles: profiles)
    openAI.register(on: router)
    AnthropicRoutes(relay: relay, scheduler: deps.scheduler).register(on: router)
    var evaluations: Evaluations?
    var fineTuning: FineTuning?
    let files = deps.files
    if let store = deps.work, let files {
        FileRoutes(files: files).register(on: router)
        evaluations = Evaluations(store: store, engine: deps.jobs, files: files)
        let hardware = deps.hardware
        let scheduler = deps.scheduler, margin = deps.config.scheduler.memoryMarginMiB
        fineTuning = FineTuning(
            engine: deps.jobs, files: files, store: store, directory: deps.config.fineTuningDirectory, catalog: { scheduler.currentCatalog },
            runtimeArguments: { await scheduler.runtimeArguments[$0] ?? [] },
            compatibility: { Compatibility(hardware: await hardware.get(), marginMiB: margin) })
        FineTuningRoutes(fineTuning: fineTuning!).register(on: router)
    }
    if let evaluations { EvalRoutes(evaluations: evaluations).register(on: router) }
    OllamaRoutes(
        relay: relay, scheduler: deps.scheduler, digests: deps.digests, store: deps.libraryState,
        allowFileDeletion: deps.config.allowModelFileDeletion, access: deps.access, profiles: profiles, downloads: deps.downloads,
        creator: ModelCreator(directory: deps.config.downloads), refreshCatalog: deps.refreshCatalog
    ).register(on: router)
    let tools = deps.tools
    let lab = Lab(engine: deps.jobs, scheduler: deps.scheduler, store: deps.store, textDirectory: deps.config.dataDirectory + "/perplexity", sampling: profiles)
    startup.append {
        do {
            try await lab.loadRuntimeProfiles()
            try await deps.jobs.recover()
        } catch {
            deps.logger.error("jobs could not be recovered", metadata: ["error": "\(error)"])
        }
    }
    let hardware = deps.hardware
    let library = LibraryRoutes(
        library: ModelLibrary(
            scheduler: deps.scheduler, store: deps.store, ledger: deps.accounts, hardware: hardware, marginMiB: deps.config.scheduler.memoryMarginMiB, tools: tools,
            benchmarks: { model in
                func object(_ run: some Encodable) throws -> JobJSON { try JSONDecoder().decode(JobJSON.self, from: JSONEncoder.iso.encode(run)) }
                let speed = try await lab.benchmarks(model: model, limit: 5).map(object)
                let perplexity = try await lab.perplexityRuns(model: model, limit: 20).filter { $0.state == .succeeded }.prefix(5).map(object)
                return (speed, Array(perplexity))
            }),
        rescan: {
            let started = ContinuousClock.now
            let cache = deps.refreshCatalog.cache
            _ = cache.takeCounts()
            let catalog = try await deps.refreshCatalog()
            let counts = cache.takeCounts()
            return [
                "models": catalog.models.count, "filesRead": counts.read, "filesReused": counts.reused,
                "problems": catalog.problems.map { ["path": $0.path, "error": $0.error] }, "ms": ms(ContinuousClock.now - started),
            ]
        })
    let admin = AdminAPIGroup(group: router.group("admin"), table: AdminAPITable())
    AdminRoutes(scheduler: deps.scheduler, access: deps.access, store: deps.libraryState, clustered: deps.cluster != nil, accounts: deps.accounts, library: library, metrics: deps.metrics).register(on: admin)
    JobRoutes(engine: deps.jobs).register(on: admin)
    ClusterRoutes(cluster: deps.cluster).register(on: admin)
    if let cluster = deps.cluster {
        ClusterJobRoutes(engine: deps.jobs, cluster: cluster).register(on: router)
        let control = ClusterJobControl(cluster: cluster, client: deps.client)
        // First: a job recovered below may already be controlled from another node.
        startup.insert({ await deps.jobs.useRemoteControl(control) }, at: 0)
    }
    DownloadRoutes(downloads: deps.downloads, library: library.library).register(on: admin)
    QuantizeRoutes(scheduler: deps.scheduler, engine: deps.jobs, downloads: deps.config.downloads).register(on: admin)
    LabRoutes(lab: lab, scheduler: deps.scheduler, hardware: hardware, marginMiB: deps.config.scheduler.memoryMarginMiB, files: files).register(on: admin)
    ProfileRoutes(profiles: profiles).register(on: admin)
    if let evaluations { EvaluationRoutes(evaluations: evaluations, console: deps.evalConsole).register(on: admin) }
    if let fineTuning { FineTuningAdminRoutes(fineTuning: fineTuning).register(on: admin) }
    DashboardRoutes(deps: deps).register(on: router, admin: admin)
    return (router, openAI, admin.table, StartupWork(steps: startup))
}

/// Gives every error the shape of the API it was asked through: Ollama's `{"error":"…"}` under
/// `/api/`, Anthropic's `{"type":"error","error":{…}}` under `/v1/messages`, OpenAI's
/// `{"error":{…}}` elsewhere (Hummingbird's own 404 and 413 included).
struct ErrorShapeMiddleware: RouterMiddleware {
    typealias Context = GatewayRequestContext
    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        let path = request.uri.path
        let ollama = path.hasPrefix("/api/")
        let anthropic = path == AnthropicRoutes.messages || path.hasPrefix(AnthropicRoutes.messages + "/")
        do {
            return try await next(request, context)
        } catch let error as OllamaError {
            throw error
        } catch let error as AnthropicError {
            throw error
        } catch let error as OpenAIError {
            if ollama { throw OllamaError(error) }
            if anthropic { throw AnthropicError(error) }
            throw error
        } catch let error as ServingError {
            // Routes convert serving errors themselves; one that gets past them keeps its status.
            let shaped = OpenAIError(error)
            if ollama { throw OllamaError(shaped) }
            if anthropic { throw AnthropicError(shaped) }
            throw shaped
        } catch let error as HTTPError {
            if ollama { throw OllamaError(error.status, error.body ?? error.status.reasonPhrase.lowercased()) }
            if anthropic { throw AnthropicError(error.status, error.body ?? error.status.reasonPhrase) }
            let code = error.status.code == 404 ? "not_found" : error.status.code == 413 ? "request_too_large" : nil
            throw OpenAIError(error.status, error.body ?? error.status.reasonPhrase, code: code)
        }
    }
}

/// Stops every llama-server when the service group shuts down (after the HTTP server drained).
public struct FleetService: Service {
    let scheduler: Scheduler
    let client: HTTPClient

    public init(scheduler: Scheduler, client: HTTPClient) {
        self.scheduler = scheduler
        self.client = client
    }

    public func run() async throws {
        try? await gracefulShutdown()
        await scheduler.shutdown()
        try await client.shutdown()
    }
}

/// The complete application: router plus the fleet service, listening per config (HTTPS with
/// HTTP/2 and HTTP/1.1 when `tls` names a certificate and key).
public func buildApplication(_ deps: GatewayDependencies) throws -> some ApplicationProtocol {
    GatewayLimits.maxBodyBytes = deps.config.maxBodyBytes
    // A connection with no request in progress is closed after the idle timeout; a request head
    // that never completes counts as idle, so slow clients cannot hold connections forever.
    let idle = deps.config.listen.idleTimeout
    let http1 = HTTP1Channel.Configuration(idleTimeout: TimeAmount(idle))
    // Each connection's task runs on its socket's event loop (see EventLoopExecutor); the upstream
    // client shares the group, so its connections' answers arrive on the same threads.
    let group = MultiThreadedEventLoopGroup.singleton
    let executors = EventLoopExecutors(group: group)
    let (router, openAI, _, startup) = buildRouterAndRoutes(deps)
    let fastLane = FastLane.isEnabled
        ? FastLane(
            routes: openAI, access: deps.access, cluster: deps.cluster, allowedHosts: deps.config.listensOnLoopbackOnly ? Set(deps.config.allowedHosts) : nil,
            maxBodyBytes: deps.config.maxBodyBytes, executors: executors)
        : nil
    var server = HTTPServerBuilder { responder in
        EventLoopPinnedChannel(base: HTTP1Channel(responder: responder, configuration: http1), executors: executors, fastLane: fastLane)
    }
    if let tls = deps.config.tls {
        let chain = try NIOSSLCertificate.fromPEMFile(tls.certificate).map { NIOSSLCertificateSource.certificate($0) }
        let key = try NIOSSLPrivateKey(file: tls.key, format: .pem)
        let tlsConfiguration = TLSConfiguration.makeServerConfiguration(certificateChain: chain, privateKey: .privateKey(key))
        // HTTP/1.1 and HTTP/2, chosen per connection by ALPN.
        server = HTTPServerBuilder { responder in
            EventLoopPinnedChannel(
                base: try HTTP2UpgradeChannel(
                    tlsConfiguration: tlsConfiguration, configuration: .init(idleTimeout: idle, streamConfiguration: http1), responder: responder),
                executors: executors)
        }
    }
    var app = Application(
        router: router,
        server: server,
        configuration: .init(address: .hostname(deps.config.listen.host, port: deps.config.listen.port), serverName: "corral"),
        eventLoopGroupProvider: .shared(group),
        logger: deps.logger)
    // Shut down in reverse order: jobs stop (and stay resumable) before the fleet stops.
    app.addServices(FleetService(scheduler: deps.scheduler, client: deps.client), deps.liveStats, JobsService(engine: deps.jobs), startup)
    return app
}

