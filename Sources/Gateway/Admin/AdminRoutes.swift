import Access
import Foundation
import Hummingbird
import Runtime
import Store

/// Everything under `/admin` (the admin token is checked by `AuthMiddleware`): the fleet
/// (instances, load/unload/pin, logs), the model library, hardware, compatibility,
/// recommendations, teams and keys, usage and stats.
struct AdminRoutes: Sendable {
    let scheduler: Scheduler
    let access: AccessControl?
    let store: Store?
    let metrics: GatewayMetrics
    let library: LibraryRoutes

    func register(on router: Router<GatewayRequestContext>) {
        let admin = router.group("admin")
        if let access { AccountRoutes(access: access, store: store).register(on: admin) }
        library.register(on: admin)
        admin.get("openapi.json") { _, _ in
            Response(status: .ok, headers: [.contentType: "application/json"], body: .init(byteBuffer: .init(string: AdminOpenAPI.document)))
        }
        admin.get("instances") { _, _ in
            let infos = await scheduler.instances()
            let data = try JSONEncoder.iso.encode(infos)
            return Response(status: .ok, headers: [.contentType: "application/json"], body: .init(byteBuffer: .init(bytes: data)))
        }
        // Model ids may contain '/', so these routes take the rest of the path and look at its end.
        admin.post("models/**") { _, context in
            var parts = context.parameters.getCatchAll().map(String.init)
            if parts == ["scan"] { return jsonResponse(try await library.rescan()) }
            guard parts.count >= 2, let action = parts.popLast() else { throw OpenAIError(.notFound, "unknown admin route", code: "not_found") }
            let model = parts.joined(separator: "/")
            do {
                switch action {
                case "load": try await scheduler.load(model)
                case "unload": try await scheduler.unload(model)
                case "pin": try await scheduler.setPinned(model, true)
                case "unpin": try await scheduler.setPinned(model, false)
                default: throw OpenAIError(.notFound, "unknown action '\(action)': use load, unload, pin or unpin", code: "not_found")
                }
            } catch let error as SchedulerError {
                throw OpenAIError(error)
            }
            return jsonResponse(["model": model, "action": action, "ok": true])
        }
        admin.get("models/**") { request, context in
            var parts = context.parameters.getCatchAll().map(String.init)
            if parts == ["compare"] { return try await library.compare(request) }
            switch parts.last {
            case "log" where parts.count >= 2:
                parts.removeLast()
                let model = parts.joined(separator: "/")
                guard let instance = await scheduler.instance(for: model) else {
                    throw OpenAIError(.notFound, "model '\(model)' is not loaded", code: "not_loaded")
                }
                let lines = Int(request.uri.queryParameters.get("lines") ?? "") ?? 100
                return jsonResponse(["model": model, "pid": instance.process.pid, "lines": instance.recentLog(min(max(1, lines), ModelInstance.logCapacity))])
            case "compatibility" where parts.count >= 2:
                parts.removeLast()
                return try await library.compatibility(parts.joined(separator: "/"), request)
            default:
                return try await library.detail(parts.joined(separator: "/"))
            }
        }
    }
}
