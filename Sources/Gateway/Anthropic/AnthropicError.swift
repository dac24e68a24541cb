import Foundation
import HTTPTypes
import Hummingbird
import NIOCore

/// An error in Anthropic's shape, `{"type":"error","error":{"type":…,"message":…}}`, with the
/// type the `anthropic` SDK expects for the status (`anthropic/types/shared/*_error.py`).
public struct AnthropicError: HTTPResponseError, Sendable {
    public var status: HTTPResponse.Status
    public var type: String
    public var message: String
    public var retryAfter: Int?
    public var extraHeaders: [String: String] = [:]

    public init(_ status: HTTPResponse.Status, _ message: String, type: String? = nil, retryAfter: Int? = nil) {
        self.status = status
        self.type = type ?? Self.type(for: Int(status.code))
        self.message = message
        self.retryAfter = retryAfter
    }

    /// The same failure as an OpenAI route reports it. A full queue, no room for the model and a
    /// shutdown are Anthropic's `overloaded_error` (529), which the SDK retries after `retry-after`.
    public init(_ error: OpenAIError) {
        switch error.code {
        case "queue_full", "no_capacity", "shutting_down":
            self.init(.init(code: 529, reasonPhrase: "Overloaded"), error.message, type: "overloaded_error", retryAfter: error.retryAfter ?? 1)
        default:
            self.init(error.status, error.message, retryAfter: error.retryAfter)
        }
        extraHeaders = error.extraHeaders
    }

    /// Anthropic's error type for an HTTP status.
    public static func type(for status: Int) -> String {
        switch status {
        case 400, 422: "invalid_request_error"
        case 401: "authentication_error"
        case 402: "billing_error"
        case 403: "permission_error"
        case 404: "not_found_error"
        case 408, 504: "timeout_error"
        case 413: "request_too_large"
        case 429: "rate_limit_error"
        case 503, 529: "overloaded_error"
        default: status >= 500 ? "api_error" : "invalid_request_error"
        }
    }

    public var body: String { JSON.encode(["type": "error", "error": ["type": type, "message": message]]) }

    /// How an error is reported after a stream has started: an `error` event.
    public var event: String { "event: error\ndata: \(body)\n\n" }

    /// An upstream's error answer (llama-server's `{"error":{"message",…}}`, or any text) in
    /// Anthropic's shape, keeping its status and message.
    public static func reshaping(status: Int, body: ByteBuffer) -> AnthropicError {
        let object = try? JSONSerialization.jsonObject(with: Data(body.readableBytesView)) as? [String: Any]
        if object?["type"] as? String == "error", let inner = object?["error"] as? [String: Any], let message = inner["message"] as? String {
            return AnthropicError(HTTPResponse.Status(code: status), message, type: inner["type"] as? String)
        }
        let message = ((object?["error"] as? [String: Any])?["message"] as? String)
            ?? (object?["error"] as? String)
            ?? String(buffer: body).trimmingCharacters(in: .whitespacesAndNewlines)
        return AnthropicError(HTTPResponse.Status(code: status), message.isEmpty ? "upstream answered \(status)" : message)
    }

    public func response(from request: Request, context: some RequestContext) throws -> Response {
        var headers: HTTPFields = [.contentType: "application/json"]
        if let retryAfter { headers[.retryAfter] = String(retryAfter) }
        for (name, value) in extraHeaders { if let field = HTTPField.Name(name) { headers[field] = value } }
        return Response(status: status, headers: headers, body: .init(byteBuffer: ByteBuffer(string: body)))
    }
}
