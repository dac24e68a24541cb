import Acquisition
import Files
import Foundation
import HTTPTypes
import Hummingbird
import Jobs
import Lab
import Library
import NIOCore
import Runtime

/// `/admin/jobs`: every job of every kind in one place (list, one, its events, cancel, pause,
/// resume). The kind-specific routes (`/admin/benchmarks`, `/admin/tuning`) are views of the
/// same jobs.
struct JobRoutes: Sendable {
    let engine: JobEngine

    func register(on admin: AdminAPIGroup) {
        let id = ["id": "job id"]
        let states = JobState.allCases.map(\.rawValue)
        admin.get("jobs", .init("Jobs of every kind, newest first, filtered and paged", query: [
            .init("kind", .string, "benchmark, tuning, …"), .init("state", .string, "one or more of \(states.joined(separator: ", ")), comma-separated"),
            .init("model", .string), .init("after", .string, "the `next` of the previous page"), .init("limit", .integer(minimum: 1, maximum: 500)),
        ], errors: [400, 404])) { request, _ in
            let q = request.uri.queryParameters
            var wanted: [JobState]?
            if let raw = q.get("state") {
                wanted = try raw.split(separator: ",").map { word in
                    guard let state = JobState(rawValue: String(word)) else {
                        throw OpenAIError.badRequest("state must be one or more of \(states.joined(separator: ", "))", param: "state")
                    }
                    return state
                }
            }
            var limit = 50
            if let raw = q.get("limit") {
                guard let n = Int(raw), (1...500).contains(n) else { throw OpenAIError.badRequest("limit must be an integer from 1 to 500", param: "limit") }
                limit = n
            }
            let page = try await mapped { try await engine.list(kind: q.get("kind"), states: wanted, model: q.get("model"), after: q.get("after"), limit: limit) }
            return try Wire.response(page)
        }
        admin.get("jobs/{id}", .init("One job: state, progress, detail, result, error", path: id)) { _, context in
            let jobID = try context.parameters.require("id")
            guard let job = try await mapped({ try await engine.get(jobID) }) else { throw OpenAIError(.notFound, "no job '\(jobID)'", code: "not_found") }
            return try Wire.response(job)
        }
        admin.get("jobs/{id}/events", .events(
            "The job's event log as server-sent events, each with its `id:`; replays from `Last-Event-ID` (or `after`), then follows until the job ends",
            path: id, query: [.init("after", .integer(minimum: 0), "replay the events after this id (as the Last-Event-ID header does)")])
        ) { request, context in
            try await Self.events(of: try context.parameters.require("id"), in: engine, request: request)
        }
        for (action, summary) in [("cancel", "Cancel a job (cooperatively, then forced after the kind's grace period)"),
                                  ("pause", "Pause a running job at its next pause point (kinds that support it)"),
                                  ("resume", "Let a paused job go on")] {
            admin.post("jobs/{id}/\(action)", .init(summary, path: id, errors: [404, 409])) { _, context in
                let jobID = try context.parameters.require("id")
                let job = try await mapped {
                    switch action {
                    case "cancel": try await engine.cancel(jobID)
                    case "pause": try await engine.pause(jobID)
                    default: try await engine.resume(jobID)
                    }
                }
                return try Wire.response(job)
            }
        }
    }

    /// A job's event log as server-sent events (`id:`, `event:` its type, `data:` the event),
    /// from after the request's `Last-Event-ID` (or `?after=`) until the job ends.
    static func events(of id: String, in engine: JobEngine, request: Request) async throws -> Response {
        let after = try lastEventID(request)
        let events = try await mapped { try await engine.events(id, after: after) }
        return eventStream { writer in
            for await event in events {
                try await writer.write(sse(id: event.id, event: event.type, data: try JobCoding.encoder.encode(event)))
            }
        }
    }

    /// Where a follower resumes: `Last-Event-ID`, else `?after=`, else from the start.
    static func lastEventID(_ request: Request) throws -> Int64 {
        let raw = request.headers[HTTPField.Name("Last-Event-ID")!] ?? request.uri.queryParameters.get("after")
        guard let raw else { return 0 }
        guard let id = Int64(raw.trimmingCharacters(in: .whitespaces)), id >= 0 else {
            throw OpenAIError.badRequest("Last-Event-ID (or after) must be a non-negative event id", param: "after")
        }
        return id
    }

    /// One server-sent event.
    static func sse(id: Int64?, event: String?, data: some Sequence<UInt8>) -> ByteBuffer {
        var head = ""
        if let id { head += "id: \(id)\n" }
        if let event { head += "event: \(event)\n" }
        return ByteBuffer(bytes: Array((head + "data: ").utf8) + Array(data) + Array("\n\n".utf8))
    }

    /// A `text/event-stream` response written by `body`.
    static func eventStream(_ body: @escaping @Sendable (inout any ResponseBodyWriter) async throws -> Void) -> Response {
        Response(
            status: .ok, headers: [.contentType: "text/event-stream", .cacheControl: "no-cache", HTTPField.Name("X-Accel-Buffering")!: "no"],
            body: ResponseBody { writer in
                try await body(&writer)
                try await writer.finish(nil)
            })
    }
}
