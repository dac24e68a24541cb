import Access
import Foundation
import HTTPTypes
import Hummingbird
import Serving

/// Authenticates every request before routing: `/admin/*` needs the admin token; model routes
/// need a team key (any key in open mode); `/health`, `/`, `/api/version` and the dashboard's files under `/ui` are public.
/// The admin token is never a team key and a team key never opens `/admin`.
struct AuthMiddleware: RouterMiddleware {
    typealias Context = GatewayRequestContext
    let access: AccessControl
    /// This node's cluster: a request relayed by a peer that presents the cluster secret is
    /// served for the caller that peer admitted.
    var cluster: ClusterNode? = nil

    static let publicPaths: Set<String> = ["/health", "/", "/api/version"]

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        // The router ignores empty and repeated slashes (`//admin/teams` reaches `/admin/teams`),
        // so decisions are made on the path's components, not its text.
        let components = request.uri.path.split(separator: "/").map { $0.lowercased() }
        let path = "/" + components.joined(separator: "/")
        // The dashboard's files are public; the data it shows comes from /admin with the token.
        if Self.publicPaths.contains(path) || components.first == "ui" { return try await next(request, context) }
        // A peer's control of a job this node runs: the cluster secret, nothing else, opens it.
        if components.first == "cluster" {
            guard let cluster, cluster.trusts(request.headers[HTTPField.Name(ClusterNode.secretHeader)!]) else {
                throw OpenAIError(.unauthorized, "cluster routes are for the nodes of this cluster", code: "invalid_cluster_secret")
            }
            return try await next(request, context)
        }
        let key = AccessControl.presentedKey(
            authorization: request.headers[.authorization], apiKey: request.headers[HTTPField.Name("x-api-key")!])
        // Corral's own /metrics (no ?model=), llama-server's /slots (prompts of in-flight
        // requests) and its POST /props and /lora-adapters (they change the server for everyone)
        // are operator routes, like /admin.
        let ownMetrics = path == "/metrics" && request.uri.queryParameters.get("model") == nil
        let serverSettings = request.method == .post && (path == "/props" || path == "/lora-adapters")
        if components.first == "admin" || ownMetrics || path == "/slots" || serverSettings {
            guard access.isAdmin(key) else {
                let what = serverSettings ? "\(path) changes llama-server's settings for every caller, so it" : "this operator route"
                throw OpenAIError(.unauthorized, key == nil ? "\(what) needs the admin token (Authorization: Bearer TOKEN)" : "invalid admin token: \(what) needs the admin token",
                                  code: "invalid_admin_token")
            }
            return try await next(request, context)
        }
        var context = context
        if let cluster, let from = request.headers[HTTPField.Name(ClusterNode.hopHeader)!],
            cluster.trusts(request.headers[HTTPField.Name(ClusterNode.secretHeader)!])
        {
            context.caller = Caller(
                teamID: request.headers[HTTPField.Name(ClusterNode.teamHeader)!], keyPrefix: request.headers[HTTPField.Name(ClusterNode.keyHeader)!],
                admittedBy: from)
            return try await next(request, context)
        }
        // The admin token also opens the team routes whose data it may see whole (`/v1/files`,
        // `/v1/evals`, `/v1/fine_tuning`).
        if components.starts(with: ["v1", "files"]) || components.starts(with: ["v1", "evals"]) || components.starts(with: ["v1", "fine_tuning"]), access.isAdmin(key) {
            context.isAdmin = true
            return try await next(request, context)
        }
        context.caller = try await caller(for: key)
        return try await next(request, context)
    }

    /// The caller presenting `key`; refusals become OpenAI errors, which the error middleware
    /// reshapes for Ollama routes.
    func caller(for key: String?) async throws(OpenAIError) -> Caller {
        do { return try await access.authenticateLookingUp(key) } catch { throw OpenAIError(error) }
    }
}
