import CorralApp
import Foundation
import HTTPTypes
import Hummingbird
import NIOCore
import Runtime
import ServiceLifecycle
import Telemetry

/// The operator dashboard: static files under `/ui` (public; every data call the page makes
/// goes to the admin API with the token the operator typed in) and `GET /admin/events`, the
/// live overview as server-sent events.
struct DashboardRoutes: Sendable {
    let deps: GatewayDependencies

    /// One `/admin/events` message: the fleet, the last minute's numbers, and the history points
    /// this connection has not had yet (all of them in the first message).
    struct Snapshot: Encodable {
        var time: Date
        var instances: [InstanceInfo]
        var live: LiveStats.Window
        var points: [LiveStats.Window]
    }

    func register(on router: Router<GatewayRequestContext>, admin: AdminAPIGroup) {
        let files = StaticFiles(directory: Bundle.module.resourceURL!.appendingPathComponent("ui"))
        let index: @Sendable (Request, GatewayRequestContext) async throws -> Response = { request, _ in
            guard let response = files.response("index.html", request: request) else { throw HTTPError(.notFound) }
            return response
        }
        router.get("ui", use: index)
        router.get("ui/**") { request, context in
            let path = context.parameters.getCatchAll().joined(separator: "/")
            guard let response = files.response(path.isEmpty ? "index.html" : path, request: request) else {
                throw HTTPError(.notFound, message: "no dashboard file '\(path)'")
            }
            return response
        }

        let stats = deps.liveStats
        let metrics = deps.metrics
        let scheduler = deps.scheduler
        admin.get("events", .events(
            "Live overview as server-sent events (the dashboard's): every 2 s a `snapshot` event with the instances, the last minute's request rate, "
                + "latency and time-to-first-token p50/p95, tokens/s and errors, and the last hour's 10-second history points not sent yet on this "
                + "connection (all of them first)",
            query: [.init("once", .boolean, "send one snapshot and end the stream")], errors: [])
        ) { request, _ in
            let once = request.uri.queryParameters.get("once") == "true"
            return Response(
                status: .ok, headers: [.contentType: "text/event-stream", .cacheControl: "no-cache", HTTPField.Name("X-Accel-Buffering")!: "no"],
                body: ResponseBody { writer in
                    // Ends when the client goes away (a write fails) or Corral shuts down.
                    var seen = -1
                    while !Task.isShuttingDownGracefully, !Task.isCancelled {
                        let (live, points) = stats.snapshot(pointsAfter: seen)
                        seen = points.last?.seq ?? seen
                        let snapshot = Snapshot(time: Date(), instances: metrics.withPromptCache(await scheduler.instances()), live: live, points: points.map(\.window))
                        let data = try JSONEncoder.iso.encode(snapshot)
                        try await writer.write(ByteBuffer(bytes: Array("event: snapshot\ndata: ".utf8) + data + Array("\n\n".utf8)))
                        if once { break }
                        try? await Task.sleep(for: stats.interval)
                    }
                    try await writer.finish(nil)
                })
        }
    }
}
