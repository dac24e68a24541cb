import Access
import Foundation
import Hummingbird
import Jobs
import Lab
import Store

/// The OpenAI fine-tuning API: `/v1/fine_tuning/jobs` (create, list with `after`/`limit`/
/// `metadata[k]`), retrieve, `cancel`, `pause`, `resume`, `events` and `checkpoints`, with cursor
/// paging as the SDK reads it. A team key sees its team's jobs; the admin token sees all.
struct FineTuningRoutes: Sendable {
    let fineTuning: FineTuning

    func register(on router: Router<GatewayRequestContext>) {
        router.post("/v1/fine_tuning/jobs") { request, context in
            let body = try await mapped { try await Wire.decode(FineTuningCreateRequest.self, request, context: context) }
            let team = context.isAdmin ? nil : context.caller.teamID
            let job = try await mapped { try await fineTuning.create(body, team: team, keyPrefix: context.caller.keyPrefix) }
            let (current, spec) = try await mapped { try await fineTuning.job(job.id, scope: FileRoutes.scope(context)) }
            return try Wire.response(FineTuningJobObject(current, spec))
        }
        router.get("/v1/fine_tuning/jobs") { request, context in
            let (after, limit) = try EvalRoutes.cursor(request)
            var metadata: [String: String] = [:]
            for (rawKey, value) in request.uri.queryParameters {
                // The SDK sends `metadata[KEY]=VALUE`, the brackets percent-encoded.
                let key = String(rawKey).removingPercentEncoding ?? String(rawKey)
                guard key.hasPrefix("metadata["), key.hasSuffix("]") else { continue }
                metadata[String(key.dropFirst(9).dropLast())] = String(value).removingPercentEncoding ?? String(value)
            }
            let page = try await mapped { try await fineTuning.list(scope: FileRoutes.scope(context), after: after, limit: limit, metadata: metadata) }
            return try Wire.response(ListPage(page.jobs.map { FineTuningJobObject($0.0, $0.1) }, hasMore: page.hasMore, id: \.id))
        }
        router.get("/v1/fine_tuning/jobs/:job") { _, context in
            let id = try context.parameters.require("job")
            let (job, spec) = try await mapped { try await fineTuning.job(id, scope: FileRoutes.scope(context)) }
            return try Wire.response(FineTuningJobObject(job, spec))
        }
        for action in ["cancel", "pause", "resume"] {
            router.post(RouterPath("/v1/fine_tuning/jobs/:job/" + action)) { _, context in
                let id = try context.parameters.require("job")
                let (job, spec) = try await mapped { try await fineTuning.control(id, action, scope: FileRoutes.scope(context)) }
                return try Wire.response(FineTuningJobObject(job, spec))
            }
        }
        router.get("/v1/fine_tuning/jobs/:job/events") { request, context in
            let id = try context.parameters.require("job")
            let (after, limit) = try EvalRoutes.cursor(request)
            let page = try await mapped { try await fineTuning.events(id, scope: FileRoutes.scope(context), after: after, limit: limit) }
            return try Wire.response(ListPage(page.events, hasMore: page.hasMore, id: \.id))
        }
        router.get("/v1/fine_tuning/jobs/:job/checkpoints") { request, context in
            let id = try context.parameters.require("job")
            let (after, limit) = try EvalRoutes.cursor(request)
            let page = try await mapped { try await fineTuning.checkpoints(id, scope: FileRoutes.scope(context), after: after, limit: limit) }
            return try Wire.response(ListPage(page.checkpoints, hasMore: page.hasMore, id: \.id))
        }
    }
}
