import Access
import Foundation
import GGUF
import Hummingbird
import Jobs
import Library
import NIOCore
import Runtime
import Store
import Telemetry

/// Everything under `/admin` (the admin token is checked by `AuthMiddleware`): the fleet
/// (instances, load/unload/pin, logs), the model library, hardware, compatibility,
/// recommendations, teams and keys, usage and stats, jobs. Every route is registered through
/// ``AdminAPIGroup`` with its description, and `/admin/openapi.json` is built from them.
struct AdminRoutes: Sendable {
    let scheduler: Scheduler
    let access: AccessControl?
    /// Settings and pins (the shared store on a cluster node).
    let store: (any LibraryStateStore)?
    /// Whether this node is in a cluster (pins are then kept in the shared store for every node).
    let clustered: Bool
    /// Teams, keys and the ledger (the shared store on a cluster node).
    let accounts: (any AccountStore)?
    let library: LibraryRoutes
    /// Fills in each instance's prompt-cache use.
    let metrics: GatewayMetrics

    func register(on admin: AdminAPIGroup) {
        if let access { AccountRoutes(access: access, store: accounts).register(on: admin) }
        library.register(on: admin)
        let table = admin.table
        admin.get("openapi.json", .init("This document", errors: [])) { _, _ in
            Response(status: .ok, headers: [.contentType: "application/json"], body: .init(byteBuffer: ByteBuffer(bytes: try JobCoding.encoder.encode(table.document()))))
        }
        let metrics = self.metrics
        admin.get("instances", .init("Every touched model: state, pid, args, memory, in-flight, queue, prompt-cache use", response: .array(.object), errors: [])) { _, _ in
            let data = try JSONEncoder.iso.encode(metrics.withPromptCache(await scheduler.instances()))
            return Response(status: .ok, headers: [.contentType: "application/json"], body: .init(byteBuffer: .init(bytes: data)))
        }
        admin.get("default-model", .init("The model requests that name none are served by: the admin's choice, else routes.json's defaultModel, else the only model", errors: [])) { _, _ in
            try Wire.response(["model": scheduler.currentCatalog.defaultModel])
        }
        admin.put("default-model", .init("Choose the default model, kept across restarts (model null: back to routes.json's)",
                                         body: .object(["model": .string], required: ["model"]), errors: [400, 404])) { request, context in
            let body = try await mapped { try await Wire.decode(DefaultModelRequest.self, request, context: context) }
            return try Wire.response(["model": try await mapped { try await library.library.setDefaultModel(body.model, store: store) }])
        }
        admin.get("memory/claims", .init("Memory held by jobs outside the fleet (MiB per device, by job), counted against the fleet's budget", errors: [])) { _, _ in
            try Wire.response(["claims": await scheduler.claimedMemory])
        }
        let model = ["id": "model id or alias (ids containing '/' are written as is)"]
        // Model ids may contain '/', so these routes take the rest of the path and look at its end.
        admin.on(.post, route: "models/**", serving: [("models/scan", .init("Rescan sources and routes.json (unchanged files are not reread)", errors: [400]))]
            + ["load", "unload", "pin", "unpin"].map { action in
                ("models/{id}/\(action)", AdminOperation("\(action.prefix(1).uppercased() + action.dropFirst()) a model", path: model, errors: [400, 404, 503, 507]))
            }
        ) { _, context in
            var parts = context.parameters.getCatchAll().map(String.init)
            if parts == ["scan"] { return jsonResponse(try await library.rescan()) }
            guard parts.count >= 2, let action = parts.popLast() else { throw OpenAIError(.notFound, "unknown admin route", code: "not_found") }
            let model = parts.joined(separator: "/")
            try await mapped {
                switch action {
                case "load": try await scheduler.load(model)
                case "unload": try await scheduler.unload(model)
                case "pin", "unpin": try await library.library.setPinned(model, action == "pin", shared: clustered ? store : nil)
                default: throw OpenAIError(.notFound, "unknown action '\(action)': use load, unload, pin or unpin", code: "not_found")
                }
            }
            return jsonResponse(["model": model, "action": action, "ok": true])
        }
        admin.on(.get, route: "models/**", serving: [
            ("models/compare", .init("Models side by side", query: [.init("ids", .string, "comma-separated ids, at least two", required: true)])),
            ("models/{id}", .init("One model: GGUF facts, state, usage, fit, benchmarks", path: model)),
            ("models/{id}/compatibility", .init(
                "Estimator per device, verdict, largest context, suggestions, table; exact=true adds llama-fit-params", path: model, query: [
                    .init("ctx", .integer(minimum: 0, maximum: 4_194_304)), .init("kv", .enumeration(MemoryEstimator.CacheType.allCases.map(\.rawValue))),
                    .init("parallel", .integer(minimum: 1, maximum: 256)), .init("ubatch", .integer(minimum: 1, maximum: 65536)),
                    .init("ngl", .integer(minimum: 0)), .init("fa", .enumeration(["on", "off"])), .init("exact", .boolean),
                ])),
            ("models/{id}/log", .init("The last log lines of a loaded model", path: model, query: [.init("lines", .integer(minimum: 1))])),
        ]) { request, context in
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
