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
            let body = try await mapped { try await Wire.decode(EvalCreateRequest.self, request, context: context) }
            let team = context.isAdmin ? nil : context.caller.teamID
            return try Wire.response(EvalObject(try await mapped { try await evaluations.create(body, team: team) }))
        }
        router.get("/v1/evals") { request, context in
            let (after, limit, newestFirst) = try Self.paging(request, defaultOrder: "asc")
            let page = try await mapped { try await evaluations.list(scope: FileRoutes.scope(context), after: after, limit: limit, newestFirst: newestFirst) }
            return try Wire.response(ListPage(page.evals.map(EvalObject.init), hasMore: page.hasMore, id: \.id))
        }
        router.get("/v1/evals/:eval") { _, context in
            let id = try context.parameters.require("eval")
            return try Wire.response(EvalObject(try await mapped { try await evaluations.eval(id, scope: FileRoutes.scope(context)) }))
        }
        router.post("/v1/evals/:eval") { request, context in
            let id = try context.parameters.require("eval")
            let body = try await mapped { try await Wire.decode(EvalUpdateRequest.self, request, context: context) }
            return try Wire.response(EvalObject(try await mapped { try await evaluations.update(id, body, scope: FileRoutes.scope(context)) }))
        }
        router.delete("/v1/evals/:eval") { _, context in
            let id = try context.parameters.require("eval")
            try await mapped { try await evaluations.delete(id, scope: FileRoutes.scope(context)) }
            return try Wire.response(EvalDeleted.eval(id))
        }

        router.post("/v1/evals/:eval/runs") { request, context in
            let id = try context.parameters.require("eval")
            let body = try await mapped { try await Wire.decode(EvalRunRequest.self, request, context: context) }
            let team = context.isAdmin ? nil : context.caller.teamID
            let job = try await mapped {
                try await evaluations.startRun(id, body, scope: FileRoutes.scope(context), team: team, keyPrefix: context.caller.keyPrefix)
            }
            let (current, spec) = try await mapped { try await evaluations.run(job.id, evalID: id, scope: FileRoutes.scope(context)) }
            return try Wire.response(EvalRunObject(current, spec))
        }
        router.get("/v1/evals/:eval/runs") { request, context in
            let id = try context.parameters.require("eval")
            let (after, limit, newestFirst) = try Self.paging(request, defaultOrder: "asc")
            let status = request.uri.queryParameters.get("status").map { String($0) }
            let page = try await mapped {
                try await evaluations.runs(id, scope: FileRoutes.scope(context), status: status, after: after, limit: limit, newestFirst: newestFirst)
            }
            let runs = page.runs.compactMap { job in (try? job.spec.decode(EvalRunSpec.self)).map { EvalRunObject(job, $0) } }
            return try Wire.response(ListPage(runs, hasMore: page.hasMore, id: \.id))
        }
        router.get("/v1/evals/:eval/runs/:run") { _, context in
            let (id, run) = (try context.parameters.require("eval"), try context.parameters.require("run"))
            let (job, spec) = try await mapped { try await evaluations.run(run, evalID: id, scope: FileRoutes.scope(context)) }
            return try Wire.response(EvalRunObject(job, spec))
        }
        router.post("/v1/evals/:eval/runs/:run") { _, context in
            let (id, run) = (try context.parameters.require("eval"), try context.parameters.require("run"))
            let job = try await mapped { try await evaluations.cancelRun(run, evalID: id, scope: FileRoutes.scope(context)) }
            return try Wire.response(EvalRunObject(job, try job.spec.decode(EvalRunSpec.self)))
        }
        router.delete("/v1/evals/:eval/runs/:run") { _, context in
            let (id, run) = (try context.parameters.require("eval"), try context.parameters.require("run"))
            try await mapped { try await evaluations.deleteRun(run, evalID: id, scope: FileRoutes.scope(context)) }
            return try Wire.response(EvalDeleted.run(run))
        }
        router.get("/v1/evals/:eval/runs/:run/output_items") { request, context in
            let (id, run) = (try context.parameters.require("eval"), try context.parameters.require("run"))
            let (after, limit, newestFirst) = try Self.paging(request, defaultOrder: "asc")
            let status = request.uri.queryParameters.get("status").map { String($0) }
            let page = try await mapped {
                try await evaluations.outputItems(run, evalID: id, scope: FileRoutes.scope(context), status: status, after: after, limit: limit, descending: newestFirst)
            }
            return try Wire.response(ListPage(page.items, hasMore: page.hasMore) { $0["id"]?.stringValue })
        }
        router.get("/v1/evals/:eval/runs/:run/output_items/:item") { _, context in
            let (id, run, item) = (try context.parameters.require("eval"), try context.parameters.require("run"), try context.parameters.require("item"))
            return try Wire.response(try await mapped { try await evaluations.outputItem(item, runID: run, evalID: id, scope: FileRoutes.scope(context)) })
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
}
