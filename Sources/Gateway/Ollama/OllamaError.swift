import Foundation
import HTTPTypes
import Hummingbird
import NIOCore
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

    /// Ollama's wording for an unknown model.
    public static func modelNotFound(_ name: String) -> OllamaError { OllamaError(.notFound, "model '\(name)' not found") }

    /// The same failure as an OpenAI route would report it, in Ollama's shape.
    public init(_ error: OpenAIError) {
        if error.code == "model_not_found", let name = error.message.split(separator: "'").dropFirst().first {
            self = .modelNotFound(String(name))
        } else {
            self.init(error.status, error.message, retryAfter: error.retryAfter)
        }
        extraHeaders = error.extraHeaders
    }

    /// A serving failure, in Ollama's shape.
    public init(_ error: ServingError) { self.init(OpenAIError(error)) }

    /// One NDJSON line: how an error is reported after a stream has started.
    public var line: String { JSON.encode(["error": message]) + "\n" }

    public func response(from request: Request, context: some RequestContext) throws -> Response {
        var headers: HTTPFields = [.contentType: "application/json; charset=utf-8"]
        if let retryAfter { headers[.retryAfter] = String(retryAfter) }
        for (name, value) in extraHeaders { if let field = HTTPField.Name(name) { headers[field] = value } }
        return Response(status: status, headers: headers, body: .init(byteBuffer: ByteBuffer(string: JSON.encode(["error": message]))))
    }
}
