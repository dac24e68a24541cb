import Access
import Foundation
import Hummingbird
import Jobs
import Lab
import Store

/// The OpenAI Evals API: `/v1/evals` (create, list, retrieve, update, delete), their runs
/// (create, list, retrieve, cancel, delete) and the runs' output items, with cursor paging as
/// the SDK expects. A team key sees its team's evaluations; the admin token sees all.
struct EvalRoutes: Sendable {
    let evaluations: Evaluations

    func register(on router: Router<GatewayRequestContext>) {
        router.post("/v1/evals") { request, context in
            let body = try await Relay.readJSON(request, context: context).1
            let team = context.isAdmin ? nil : context.caller.teamID
            return jsonResponse(Evaluations.object(try await mapped { try await evaluations.create(body, team: team) }))
        }
        router.get("/v1/evals") { request, context in
            let (after, limit, newestFirst) = try Self.paging(request, defaultOrder: "asc")
            let page = try await mapped { try await evaluations.list(scope: FileRoutes.scope(context), after: after, limit: limit, newestFirst: newestFirst) }
            return Self.list(page.evals.map(Evaluations.object), hasMore: page.hasMore)
        }
        router.get("/v1/evals/:eval") { _, context in
            let id = try context.parameters.require("eval")
            return jsonResponse(Evaluations.object(try await mapped { try await evaluations.eval(id, scope: FileRoutes.scope(context)) }))
        }
        router.post("/v1/evals/:eval") { request, context in
            let id = try context.parameters.require("eval")
            let body = try await Relay.readJSON(request, context: context).1
            return jsonResponse(Evaluations.object(try await mapped { try await evaluations.update(id, body, scope: FileRoutes.scope(context)) }))
        }
        router.delete("/v1/evals/:eval") { _, context in
            let id = try context.parameters.require("eval")
            try await mapped { try await evaluations.delete(id, scope: FileRoutes.scope(context)) }
            return jsonResponse(["object": "eval.deleted", "deleted": true, "eval_id": id] as [String: Any])
        }

        router.post("/v1/evals/:eval/runs") { request, context in
            let id = try context.parameters.require("eval")
            let body = try await Relay.readJSON(request, context: context).1
            let team = context.isAdmin ? nil : context.caller.teamID
            let job = try await mapped {
                try await evaluations.startRun(id, body, scope: FileRoutes.scope(context), team: team, keyPrefix: context.caller.keyPrefix)
            }
            let (current, spec) = try await mapped { try await evaluations.run(job.id, evalID: id, scope: FileRoutes.scope(context)) }
            return jsonResponse(Evaluations.runObject(current, spec))
        }
        router.get("/v1/evals/:eval/runs") { request, context in
            let id = try context.parameters.require("eval")
            let (after, limit, newestFirst) = try Self.paging(request, defaultOrder: "asc")
            let status = request.uri.queryParameters.get("status").map { String($0) }
            let page = try await mapped {
                try await evaluations.runs(id, scope: FileRoutes.scope(context), status: status, after: after, limit: limit, newestFirst: newestFirst)
            }
            var objects: [[String: Any]] = []
            for job in page.runs { if let spec = try? job.spec.decode(EvalRunSpec.self) { objects.append(Evaluations.runObject(job, spec)) } }
            return Self.list(objects, hasMore: page.hasMore)
        }
        router.get("/v1/evals/:eval/runs/:run") { _, context in
            let (id, run) = (try context.parameters.require("eval"), try context.parameters.require("run"))
            let (job, spec) = try await mapped { try await evaluations.run(run, evalID: id, scope: FileRoutes.scope(context)) }
            return jsonResponse(Evaluations.runObject(job, spec))
        }
        router.post("/v1/evals/:eval/runs/:run") { _, context in
            let (id, run) = (try context.parameters.require("eval"), try context.parameters.require("run"))
            let job = try await mapped { try await evaluations.cancelRun(run, evalID: id, scope: FileRoutes.scope(context)) }
            let spec = try job.spec.decode(EvalRunSpec.self)
            return jsonResponse(Evaluations.runObject(job, spec))
        }
        router.delete("/v1/evals/:eval/runs/:run") { _, context in
            let (id, run) = (try context.parameters.require("eval"), try context.parameters.require("run"))
            try await mapped { try await evaluations.deleteRun(run, evalID: id, scope: FileRoutes.scope(context)) }
            return jsonResponse(["object": "eval.run.deleted", "deleted": true, "run_id": run] as [String: Any])
        }
        router.get("/v1/evals/:eval/runs/:run/output_items") { request, context in
            let (id, run) = (try context.parameters.require("eval"), try context.parameters.require("run"))
            let (after, limit, newestFirst) = try Self.paging(request, defaultOrder: "asc")
            let status = request.uri.queryParameters.get("status").map { String($0) }
            let page = try await mapped {
                try await evaluations.outputItems(run, evalID: id, scope: FileRoutes.scope(context), status: status, after: after, limit: limit, descending: newestFirst)
            }
            return Self.list(page.items, hasMore: page.hasMore)
        }
        router.get("/v1/evals/:eval/runs/:run/output_items/:item") { _, context in
            let (id, run, item) = (try context.parameters.require("eval"), try context.parameters.require("run"), try context.parameters.require("item"))
            return jsonResponse(try await mapped { try await evaluations.outputItem(item, runID: run, evalID: id, scope: FileRoutes.scope(context)) })
        }
    }

    /// `after`, `limit` (1–100, default 20) and `order` (asc or desc).
    static func paging(_ request: Request, defaultOrder: String) throws -> (after: String?, limit: Int, newestFirst: Bool) {
        let (after, limit) = try cursor(request)
        let order = request.uri.queryParameters.get("order").map { String($0) } ?? defaultOrder
        guard order == "asc" || order == "desc" else { throw OpenAIError.badRequest("order must be asc or desc", param: "order") }
        return (after, limit, order == "desc")
    }

    /// `after` and `limit` (1–100, default 20): OpenAI's cursor paging.
    static func cursor(_ request: Request) throws -> (after: String?, limit: Int) {
        let q = request.uri.queryParameters
        var limit = 20
        if let raw = q.get("limit") {
            guard let n = Int(raw), (1...100).contains(n) else { throw OpenAIError.badRequest("limit must be an integer from 1 to 100", param: "limit") }
            limit = n
        }
        return (q.get("after").map { String($0) }, limit)
    }

    static func list(_ data: [[String: Any]], hasMore: Bool) -> Response {
        jsonResponse([
            "object": "list", "data": data, "has_more": hasMore,
            "first_id": data.first?["id"] ?? NSNull(), "last_id": data.last?["id"] ?? NSNull(),
        ] as [String: Any])
    }
}
