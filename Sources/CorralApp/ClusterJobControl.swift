import AsyncHTTPClient
import Foundation
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
            // An answer that is not the owner's refusal reads as an empty one.
            let refusal = (try? JSONDecoder().decode(Refusal.self, from: data)) ?? Refusal()
            if let kind = refusal.notPausable { throw JobEngineError.notPausable(kind: kind) }
            let state = refusal.state.flatMap(JobState.init(rawValue:)) ?? .running
            throw JobEngineError.wrongState(id: job, state: state, action: refusal.action ?? action.rawValue)
        default:
            throw JobEngineError.ownerUnreachable(node: node, why: "it answered \(status): \(String(decoding: data.prefix(300), as: UTF8.self))")
        }
    }

    /// The owner's 409 body (`ClusterJobRoutes`): the job's state and the refused action, or the
    /// kind that cannot pause.
    struct Refusal: Decodable {
        var state: String?
        var action: String?
        var notPausable: String?
    }
}
