import Foundation
import HTTPTypes
import Hummingbird
import Jobs
import NIOCore
import Serving

/// The owner's side: `POST /cluster/jobs/{id}/{action}` from a peer (the middleware has checked
/// the cluster secret). Answers the job's record, or 404, or 409 with the refusal's details.
struct ClusterJobRoutes: Sendable {
    let engine: JobEngine
    let cluster: ClusterNode

    func register(on router: Router<GatewayRequestContext>) {
        router.post("/cluster/jobs/:id/:action") { request, context in
            // Checked here too: a node started without accounts has no authentication middleware.
            guard cluster.trusts(request.headers[HTTPField.Name(ClusterNode.secretHeader)!]) else {
                throw OpenAIError(.unauthorized, "cluster routes are for the nodes of this cluster", code: "invalid_cluster_secret")
            }
            let id = try context.parameters.require("id")
            guard let action = JobControl(rawValue: try context.parameters.require("action")) else {
                throw OpenAIError.badRequest("action must be cancel, pause or resume", param: "action")
            }
            let record: JobRecord
            do {
                switch action {
                case .cancel: record = try await engine.cancel(id)
                case .pause: record = try await engine.pause(id)
                case .resume: record = try await engine.resume(id)
                }
            } catch JobEngineError.notFound {
                throw OpenAIError(.notFound, "no job '\(id)' on this node", code: "not_found")
            } catch JobEngineError.wrongState(_, let state, let what) {
                return try refusal(["state": state.rawValue, "action": what])
            } catch JobEngineError.notPausable(let kind) {
                return try refusal(["notPausable": kind])
            }
            return Response(status: .ok, headers: [.contentType: "application/json"],
                            body: .init(byteBuffer: ByteBuffer(bytes: try JobCoding.encoder.encode(record))))
        }
    }

    private func refusal(_ object: [String: String]) throws -> Response {
        Response(status: .conflict, headers: [.contentType: "application/json"],
                 body: .init(byteBuffer: ByteBuffer(bytes: try JSONSerialization.data(withJSONObject: object))))
    }
}
