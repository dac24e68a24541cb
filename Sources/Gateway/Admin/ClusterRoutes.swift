import Foundation
import Hummingbird
import Serving

/// `GET /admin/cluster` (the nodes, their models, memory and heartbeats) and `POST /admin/drain`.
/// On a single node the first says so and the second is the same graceful stop as SIGTERM.
struct ClusterRoutes: Sendable {
    let cluster: ClusterNode?

    func register(on admin: AdminAPIGroup) {
        admin.get("cluster", .init("The cluster's nodes: state, advertised URL, loaded models with free slots and queues, free memory, heartbeat age, whether in routing", errors: [])) { _, _ in
            guard let cluster else { return jsonResponse(["clustered": false, "nodes": [] as [Any]]) }
            return try Wire.response(await cluster.overview())
        }
        admin.post("drain", .init("Stop taking new work, finish in-flight requests, leave the cluster's registry and exit (as SIGTERM does)", status: 202, errors: [409])) { _, _ in
            guard let cluster else {
                throw OpenAIError(.conflict, "this node is not in a cluster; stop it with SIGTERM", code: "not_clustered")
            }
            Task { await cluster.drain() }
            return jsonResponse(["node": cluster.name, "state": "draining"], status: .accepted)
        }
    }
}
