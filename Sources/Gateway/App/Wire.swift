import Foundation
import HTTPTypes
import Hummingbird
import NIOCore

/// The HTTP edge of the typed APIs: a request body decoded into its request value (Lab's
/// `EvalRunRequest`, say, which checks its fields) and an Encodable answer written as JSON.
enum Wire {
    /// The body decoded as `T`, refused as a dictionary body always was (too large, empty, not
    /// JSON, not an object); `T`'s own refusals (an `EvalError`, say) pass through for `mapped`.
    static func decode<T: Decodable>(_ type: T.Type, _ request: Request, context: GatewayRequestContext) async throws -> T {
        let buffer: ByteBuffer
        do { buffer = try await request.body.collect(upTo: context.maxUploadSize) } catch {
            throw OpenAIError(.contentTooLarge, "request body exceeds \(context.maxUploadSize) bytes", code: "request_too_large")
        }
        let data = Data(buffer.readableBytesView)
        guard !data.isEmpty else { throw OpenAIError.badRequest("request body is empty; expected a JSON object") }
        // A bare scalar is not a JSON document to Foundation's parser, which these bodies went through.
        let first = data.first { ![UInt8(ascii: " "), UInt8(ascii: "\t"), UInt8(ascii: "\r"), UInt8(ascii: "\n")].contains($0) }
        guard first == UInt8(ascii: "{") || first == UInt8(ascii: "[") else { throw OpenAIError.badRequest("request body is not valid JSON") }
        do {
            return try JSONDecoder().decode(T.self, from: data)
        } catch DecodingError.typeMismatch {
            throw OpenAIError.badRequest("request body must be a JSON object")
        } catch is DecodingError {
            throw OpenAIError.badRequest("request body is not valid JSON")
        }
    }

    /// `value` as a JSON response (keys sorted, slashes unescaped, as the dictionaries were
    /// written; dates as RFC 3339).
    static func response(_ value: some Encodable, status: HTTPResponse.Status = .ok) throws -> Response {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        encoder.dateEncodingStrategy = .iso8601
        return Response(status: status, headers: [.contentType: "application/json"], body: .init(byteBuffer: ByteBuffer(bytes: try encoder.encode(value))))
    }
}

/// OpenAI's cursor page: `{"object":"list","data":[…],"has_more":…,"first_id":…,"last_id":…}`
/// (the ids null on an empty page).
struct ListPage<Item: Encodable>: Encodable {
    var data: [Item]
    var hasMore: Bool
    var firstID: String?
    var lastID: String?

    init(_ data: [Item], hasMore: Bool, id: (Item) -> String?) {
        self.data = data
        self.hasMore = hasMore
        firstID = data.first.flatMap(id)
        lastID = data.last.flatMap(id)
    }

    enum CodingKeys: String, CodingKey { case object, data, hasMore = "has_more", firstID = "first_id", lastID = "last_id" }

    func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode("list", forKey: .object)
        try c.encode(data, forKey: .data)
        try c.encode(hasMore, forKey: .hasMore)
        try c.encode(firstID, forKey: .firstID)
        try c.encode(lastID, forKey: .lastID)
    }
}
