import Foundation
import HTTPTypes
import Hummingbird
import NIOCore
import NIOHTTP1
import Serving

/// An error in Ollama's shape, `{"error":"…"}`, with the status Ollama would use.
public struct OllamaError: HTTPResponseError, Sendable {
    public var status: HTTPResponse.Status
    public var message: String
    public var retryAfter: Int?
    public var extraHeaders: [String: String] = [:]

    public init(_ status: HTTPResponse.Status, _ message: String, retryAfter: Int? = nil) {
        self.status = status
        self.message = message
        self.retryAfter = retryAfter
    }

    public static func badRequest(_ message: String) -> OllamaError { OllamaError(.badRequest, message) }

    /// A failure of Ollama's API below the HTTP layer: the one place it gets its HTTP status.
    public init(_ failure: OllamaFailure) {
        let status = HTTPResponse.Status(code: failure.status, reasonPhrase: HTTPResponseStatus(statusCode: failure.status).reasonPhrase)
        self.init(status, failure.message, retryAfter: failure.retryAfter)
        extraHeaders = failure.headers
    }

    /// The same failure as an OpenAI route would report it, in Ollama's shape.
    public init(_ error: OpenAIError) {
        if error.code == "model_not_found", let name = error.message.split(separator: "'").dropFirst().first {
            self.init(OllamaFailure.modelNotFound(String(name)))
        } else {
            self.init(error.status, error.message, retryAfter: error.retryAfter)
        }
        extraHeaders = error.extraHeaders
    }

    /// A serving failure, in Ollama's shape.
    public init(_ error: ServingError) { self.init(OllamaFailure(error)) }

    /// One NDJSON line: how an error is reported after a stream has started.
    public var line: ByteBuffer { OllamaFailure(status: Int(status.code), message).line }

    public func response(from request: Request, context: some RequestContext) throws -> Response {
        var headers: HTTPFields = [.contentType: "application/json; charset=utf-8"]
        if let retryAfter { headers[.retryAfter] = String(retryAfter) }
        for (name, value) in extraHeaders { if let field = HTTPField.Name(name) { headers[field] = value } }
        return Response(status: status, headers: headers, body: .init(byteBuffer: OllamaFailure(status: Int(status.code), message).body))
    }
}
