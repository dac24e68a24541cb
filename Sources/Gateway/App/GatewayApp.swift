import Acquisition
import CorralApp
import Foundation
import Hummingbird
import HummingbirdCore
import HummingbirdHTTP2
import HummingbirdTLS
import NIOCore
import NIOPosix
import NIOSSL
import Runtime
import Serving

/// What the HTTP layer is built from: Corral's products (see ``CorralServices``).
public typealias GatewayDependencies = CorralServices

/// Builds Corral's router, for a caller that runs no service group (tests): the start-up work
/// (saved profiles, job recovery) starts at once in the background. `corral serve` runs the
/// same work as one of ``CorralServices/services`` instead.
public func buildRouter(_ deps: GatewayDependencies) -> Router<GatewayRequestContext> {
    let built = buildRouterAndRoutes(deps)
    let startup = built.startup
    Task { await startup.work() }
    return built.router
}

/// The router over Corral's products, the OpenAI routes it serves (which the fast lane shares),
/// the description of its admin routes, and the products' start-up work (for ``buildRouter(_:)``).
func buildRouterAndRoutes(_ deps: GatewayDependencies) -> (router: Router<GatewayRequestContext>, openAI: OpenAIRoutes, admin: AdminAPITable, startup: StartupWork) {
    let router = Router(context: GatewayRequestContext.self)
    router.add(middleware: ErrorShapeMiddleware())
    router.add(middleware: CORSMiddleware(extraOrigins: Set(deps.config.corsOrigins)))
    if deps.config.listensOnLoopbackOnly { router.add(middleware: HostGuardMiddleware(allowed: Set(deps.config.allowedHosts))) }
    if let access = deps.access { router.add(middleware: AuthMiddleware(access: access, cluster: deps.cluster)) }
    let healthy = ByteBuffer(string: #"{"status":"ok"}"#)
    router.get("/health") { _, _ in Response(status: .ok, headers: [.contentType: "application/json"], body: .init(byteBuffer: healthy)) }
    let relay = deps.relay, profiles = deps.profiles
    let openAI = OpenAIRoutes(relay: relay, scheduler: deps.scheduler, access: deps.access, metrics: deps.metrics, profiles: profiles)
    openAI.register(on: router)
    AnthropicRoutes(relay: relay, scheduler: deps.scheduler).register(on: router)
    let files = deps.files
    if let files { FileRoutes(files: files).register(on: router) }
    if let fineTuning = deps.fineTuning { FineTuningRoutes(fineTuning: fineTuning).register(on: router) }
    if let evaluations = deps.evaluations { EvalRoutes(evaluations: evaluations).register(on: router) }
    OllamaRoutes(
        relay: relay, scheduler: deps.scheduler, digests: deps.digests, store: deps.libraryState,
        allowFileDeletion: deps.config.allowModelFileDeletion, access: deps.access, profiles: profiles, downloads: deps.downloads,
        creator: ModelCreator(directory: deps.config.downloads), refreshCatalog: deps.refreshCatalog
    ).register(on: router)
    let library = LibraryRoutes(library: deps.library, rescan: {
        let rescan = try await deps.rescanCatalog()
        return [
            "models": rescan.models, "filesRead": rescan.filesRead, "filesReused": rescan.filesReused,
            "problems": rescan.problems.map { ["path": $0.path, "error": $0.error] }, "ms": rescan.ms,
        ]
    })
    let admin = AdminAPIGroup(group: router.group("admin"), table: AdminAPITable())
    AdminRoutes(scheduler: deps.scheduler, access: deps.access, store: deps.libraryState, clustered: deps.cluster != nil, accounts: deps.accounts, library: library, metrics: deps.metrics).register(on: admin)
    JobRoutes(engine: deps.jobs).register(on: admin)
    ClusterRoutes(cluster: deps.cluster).register(on: admin)
    if let cluster = deps.cluster { ClusterJobRoutes(engine: deps.jobs, cluster: cluster).register(on: router) }
    DownloadRoutes(downloads: deps.downloads, library: library.library).register(on: admin)
    QuantizeRoutes(scheduler: deps.scheduler, engine: deps.jobs, downloads: deps.config.downloads).register(on: admin)
    LabRoutes(lab: deps.lab, scheduler: deps.scheduler, hardware: deps.hardware, marginMiB: deps.config.scheduler.memoryMarginMiB, files: files).register(on: admin)
    ProfileRoutes(profiles: profiles).register(on: admin)
    if let evaluations = deps.evaluations { EvaluationRoutes(evaluations: evaluations, console: deps.evalConsole).register(on: admin) }
    if let fineTuning = deps.fineTuning { FineTuningAdminRoutes(fineTuning: fineTuning).register(on: admin) }
    DashboardRoutes(deps: deps).register(on: router, admin: admin)
    return (router, openAI, admin.table, deps.startup)
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

/// The HTTP application over Corral's products: the router and the fast lane, listening per
/// config (HTTPS with HTTP/2 and HTTP/1.1 when `tls` names a certificate and key). It runs no
/// service of its own: run it after ``CorralServices/services`` (``CorralServices/run(http:)``),
/// so it drains before they stop.
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
    let (router, openAI, _, _) = buildRouterAndRoutes(deps)
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
    return Application(
        router: router,
        server: server,
        configuration: .init(address: .hostname(deps.config.listen.host, port: deps.config.listen.port), serverName: "corral"),
        eventLoopGroupProvider: .shared(group),
        logger: deps.logger)
}

