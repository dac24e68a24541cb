import Hummingbird
import Library
import HTTPTypes
import NIOCore
import Runtime
import Access

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

    public static func modelNotFound(_ name: String) -> OpenAIError {
        OpenAIError(.notFound, "The model '\(name)' does not exist or is not served here.", code: "model_not_found", param: "model")
    }

    /// Maps a scheduler failure to the status a client should see.
    public init(_ error: SchedulerError) {
        switch error {
        case .unknownModel(let m): self = .modelNotFound(m)
        case .queueFull(_, let after):
            self.init(.tooManyRequests, error.description, type: "server_error", code: error.kind, retryAfter: after)
        case .insufficientMemory:
            self.init(.init(code: 507, reasonPhrase: "Insufficient Storage"), error.description, type: "server_error", code: error.kind)
        case .loadFailed:
            self.init(.serviceUnavailable, error.description, type: "server_error", code: error.kind, retryAfter: 5)
        case .modelFailed:
            self.init(.serviceUnavailable, error.description, type: "server_error", code: error.kind)
        case .instanceCrashed:
            self.init(.badGateway, error.description, type: "server_error", code: error.kind, retryAfter: 1)
        case .noCapacity:
            self.init(.serviceUnavailable, error.description, type: "server_error", code: error.kind)
        case .noLlamaServer:
            self.init(.serviceUnavailable, error.description, type: "server_error", code: error.kind)
        case .shuttingDown:
            self.init(.serviceUnavailable, error.description, type: "server_error", code: error.kind, retryAfter: 5)
        case .nameTaken:
            self.init(.conflict, error.description, code: error.kind)
        }
    }

    /// Maps an access refusal: 401, 403, 429 with `Retry-After` and `x-ratelimit-*`, 400.
    /// The library's refusals (a bad query or profile, an unknown model).
    public init(_ error: LibraryError) {
        switch error {
        case .badRequest(let message, let param): self = .badRequest(message, param: param)
        case .modelNotFound(let model): self = .modelNotFound(model)
        case .storage(let message): self.init(.internalServerError, message, type: "server_error", code: "library_store")
        }
    }

    public init(_ error: AccessError) {
        switch error {
        case .unauthenticated(let m): self.init(.unauthorized, m, code: "invalid_api_key")
        case .forbidden(let m): self.init(.forbidden, m, code: "model_not_allowed")
        case .limited(let m, let after, let headers):
            self.init(.tooManyRequests, m, type: "rate_limit_exceeded", code: "rate_limit_exceeded", retryAfter: after)
            extraHeaders = headers
        case .invalid(let m): self.init(.badRequest, m, code: "invalid_request")
        case .notFound(let m): self.init(.notFound, m, code: "not_found")
        case .conflict(let m): self.init(.conflict, m, code: "conflict")
        case .unavailable(let m): self.init(.serviceUnavailable, m, type: "server_error", code: "store_unavailable", retryAfter: 2)
        case .unreadable(let m): self.init(.internalServerError, m, type: "server_error", code: "policy_unreadable")
        }
    }

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
