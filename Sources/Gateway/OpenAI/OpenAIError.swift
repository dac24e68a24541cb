import HTTPTypes
import Hummingbird
import NIOCore
import Serving

/// An error in OpenAI's shape: `{"error":{"message","type","param","code"}}` with the right
/// status, `Retry-After` where retrying helps and `x-should-retry: false` where it cannot.
public struct OpenAIError: HTTPResponseError, Sendable {
    public var status: HTTPResponse.Status
    public var message: String
    public var type: String
    public var code: String?
    public var param: String?
    public var retryAfter: Int?
    /// More headers to send (e.g. `x-ratelimit-*`).
    public var extraHeaders: [String: String] = [:]

    public init(_ status: HTTPResponse.Status, _ message: String, type: String = "invalid_request_error",
                code: String? = nil, param: String? = nil, retryAfter: Int? = nil) {
        self.status = status
        self.message = message
        self.type = type
        self.code = code
        self.param = param
        self.retryAfter = retryAfter
    }

    public static func badRequest(_ message: String, param: String? = nil) -> OpenAIError {
        OpenAIError(.badRequest, message, code: "invalid_request", param: param)
    }

    public static func modelNotFound(_ name: String) -> OpenAIError { OpenAIError(ServingError.modelNotFound(name)) }

    /// Permanent failures that retrying the same request cannot fix.
    var isPermanent: Bool { retryAfter == nil && status.code != 502 && status.code != 429 }

    public var jsonBody: String {
        var error: [String: Any] = ["message": message, "type": type]
        error["code"] = code ?? NSNullish.null
        error["param"] = param ?? NSNullish.null
        return JSON.encode(["error": error])
    }

    /// The response's header fields: content type, `Retry-After`, `x-should-retry`, extras.
    var headerFields: HTTPFields {
        var headers: HTTPFields = [.contentType: "application/json"]
        if let retryAfter { headers[.retryAfter] = String(retryAfter) }
        if isPermanent { headers[HTTPField.Name("x-should-retry")!] = "false" }
        for (name, value) in extraHeaders { if let field = HTTPField.Name(name) { headers[field] = value } }
        return headers
    }

    public func response(from request: Request, context: some RequestContext) throws -> Response {
        Response(status: status, headers: headerFields, body: .init(byteBuffer: ByteBuffer(string: jsonBody)))
    }
}
