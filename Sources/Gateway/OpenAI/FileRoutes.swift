import Access
import Files
import Foundation
import HTTPTypes
import Hummingbird
import NIOCore
import Serving
import Store

/// The OpenAI Files API: `POST /v1/files` (multipart `file` and `purpose`), `GET /v1/files`
/// (`purpose`, `limit`, `after`, `order`), `GET /v1/files/{id}`, `GET /v1/files/{id}/content`,
/// `DELETE /v1/files/{id}`. A team key sees its team's files; the admin token sees every file.
struct FileRoutes: Sendable {
    let files: FileLibrary

    func register(on router: Router<GatewayRequestContext>) {
        router.post("/v1/files") { request, context in
            let body: ByteBuffer
            do { body = try await request.body.collect(upTo: files.maxBytes + (1 << 20)) } catch {
                throw OpenAIError(.contentTooLarge, FileError.tooLarge(limit: files.maxBytes).description, code: "file_too_large")
            }
            guard let contentType = request.headers[.contentType], let boundary = Multipart.boundary(contentType) else {
                throw OpenAIError.badRequest("the body must be multipart/form-data with 'file' and 'purpose'", param: "file")
            }
            let parts = Multipart.parts(in: Array(body.readableBytesView), boundary: boundary)
            guard let file = parts.first(where: { $0.name == "file" && $0.filename != nil }) else {
                throw OpenAIError.badRequest("missing required field 'file' (a file part)", param: "file")
            }
            guard let purpose = parts.first(where: { $0.name == "purpose" && $0.filename == nil })?.text, !purpose.isEmpty else {
                throw OpenAIError.badRequest("missing required field 'purpose'", param: "purpose")
            }
            let team = context.isAdmin ? nil : context.caller.teamID
            let stored = try await mapped { try await files.create(Data(file.body), filename: file.filename ?? "", purpose: purpose, team: team) }
            return try Wire.response(FileObject(stored))
        }
        router.get("/v1/files") { request, context in
            let q = request.uri.queryParameters
            var limit = 10_000
            if let raw = q.get("limit") {
                guard let n = Int(raw), (1...10_000).contains(n) else { throw OpenAIError.badRequest("limit must be an integer from 1 to 10000", param: "limit") }
                limit = n
            }
            let order = q.get("order").map { String($0) } ?? "desc"
            guard order == "asc" || order == "desc" else { throw OpenAIError.badRequest("order must be asc or desc", param: "order") }
            let purpose = q.get("purpose").map { String($0) }
            let page = try await mapped {
                try await files.list(scope: Self.scope(context), purpose: purpose, after: q.get("after").map { String($0) }, limit: limit, newestFirst: order == "desc")
            }
            return try Wire.response(ListPage(page.files.map(FileObject.init), hasMore: page.hasMore, id: \.id))
        }
        router.get("/v1/files/:id") { _, context in
            let id = try context.parameters.require("id")
            return try Wire.response(FileObject(try await mapped { try await files.file(id, scope: Self.scope(context)) }))
        }
        router.get("/v1/files/:id/content") { _, context in
            let id = try context.parameters.require("id")
            let (_, data) = try await mapped { try await files.contents(id, scope: Self.scope(context)) }
            return Response(status: .ok, headers: [.contentType: "application/octet-stream"], body: .init(byteBuffer: ByteBuffer(bytes: data)))
        }
        router.delete("/v1/files/:id") { _, context in
            let id = try context.parameters.require("id")
            try await mapped { try await files.delete(id, scope: Self.scope(context)) }
            return try Wire.response(FileDeleted(id: id))
        }
    }

    static func scope(_ context: GatewayRequestContext) -> TeamScope {
        context.isAdmin ? .all : .team(context.caller.teamID)
    }
}

/// OpenAI's `FileObject`, plus the SHA-256 Corral recorded.
struct FileObject: Codable {
    var id: String
    var object = "file"
    var bytes: Int
    var createdAt: Int
    var filename: String
    var purpose: String
    var status = "processed"
    var sha256: String

    enum CodingKeys: String, CodingKey { case id, object, bytes, filename, purpose, status, sha256, createdAt = "created_at" }

    init(_ file: StoredFile) {
        (id, bytes, createdAt) = (file.id, Int(file.bytes), Int(file.createdAt.timeIntervalSince1970))
        (filename, purpose, sha256) = (file.filename, file.purpose, file.sha256)
    }
}

/// `{"id": …, "object": "file", "deleted": true}`.
struct FileDeleted: Codable {
    var id: String
    var object = "file"
    var deleted = true
}
