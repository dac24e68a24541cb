import Foundation
import Hummingbird
import Runtime
import Access
import Store

/// Operating the fleet: instances, load/unload/pin, and an instance's recent log.
/// Every route needs the admin token when accounts are configured (`AuthMiddleware`).
struct AdminRoutes: Sendable {
    let scheduler: Scheduler
    let access: AccessControl?
    let store: Store?
    let metrics: GatewayMetrics

    func register(on router: Router<GatewayRequestContext>) {
        let admin = router.group("admin")
        if let access { AccountRoutes(access: access, store: store).register(on: admin) }
        admin.get("instances") { _, _ in
            let infos = await scheduler.instances()
            let data = try JSONEncoder().encode(infos)
            return Response(status: .ok, headers: [.contentType: "application/json"], body: .init(byteBuffer: .init(bytes: data)))
        }
        admin.post("models/**") { _, context in
            var parts = context.parameters.getCatchAll().map(String.init)
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
            guard parts.count >= 2, parts.popLast() == "log" else { throw OpenAIError(.notFound, "unknown admin route", code: "not_found") }
            let model = parts.joined(separator: "/")
            guard let instance = await scheduler.instance(for: model) else {
                throw OpenAIError(.notFound, "model '\(model)' is not loaded", code: "not_loaded")
            }
            let lines = Int(request.uri.queryParameters.get("lines") ?? "") ?? 100
            return jsonResponse(["model": model, "pid": instance.process.pid, "lines": instance.recentLog(max(1, lines))])
        }
    }
}
