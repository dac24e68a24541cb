import AsyncHTTPClient
import Foundation
import HTTPTypes
import Hummingbird
import Jobs
import NIOCore
import NIOHTTP1
import Serving

/// Cancel, pause and resume of a job another node runs: sent to that node's
/// `POST /cluster/jobs/{id}/{action}` with the cluster secret, carried out by its engine, its
/// answer (the job's record, or why not) returned as this node's own.
struct ClusterJobControl: RemoteJobControl {
    let cluster: ClusterNode
    let client: HTTPClient

    /// The path a node's control route answers on (outside `/admin`: peers do not hold the admin
    /// token, they present the cluster secret).
    static func path(job: String, action: JobControl) -> String { "/cluster/jobs/\(job)/\(action.rawValue)" }

    func control(_ action: JobControl, job: String, on node: String) async throws -> JobRecord {
        guard let peer = cluster.livePeer(named: node) else {
            throw JobEngineError.ownerUnreachable(node: node, why: "it has no heartbeat in the last \(cluster.staleAfter) s")
        }
        var request = HTTPClientRequest(url: peer.url + Self.path(job: job, action: action))
        request.method = .POST
        request.headers.add(name: ClusterNode.secretHeader, value: cluster.secretValue)
        request.headers.add(name: ClusterNode.hopHeader, value: cluster.name)
        let status: UInt
        let body: ByteBuffer
        do {
            let response = try await client.execute(request, timeout: .seconds(10))
            status = response.status.code
            body = try await response.body.collect(upTo: 4 << 20)
        } catch {
            throw JobEngineError.ownerUnreachable(node: node, why: "\(error)")
        }
        let data = Data(body.readableBytesView)
        switch status {
        case 200:
            do { return try JobCoding.decoder.decode(JobRecord.self, from: data) } catch {
                throw JobEngineError.ownerUnreachable(node: node, why: "its answer is not a job record: \(error)")
            }
        case 404:
            throw JobEngineError.notFound(job)
        case 409:
            let refusal = (try? JSONSerialization.jsonObject(with: data)) as? [String: Any] ?? [:]
            if let kind = refusal["notPausable"] as? String { throw JobEngineError.notPausable(kind: kind) }
            let state = (refusal["state"] as? String).flatMap(JobState.init(rawValue:)) ?? .running
            throw JobEngineError.wrongState(id: job, state: state, action: refusal["action"] as? String ?? action.rawValue)
        default:
            throw JobEngineError.ownerUnreachable(node: node, why: "it answered \(status): \(String(decoding: data.prefix(300), as: UTF8.self))")
        }
    }
}

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
