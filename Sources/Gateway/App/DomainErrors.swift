import Access
import Acquisition
import Files
import Foundation
import HTTPTypes
import Jobs
import Lab
import NIOHTTP1
import Library
import Runtime
import Serving

/// Runs a domain call (jobs, lab, library, scheduler, files, evaluations, fine-tuning, pulls,
/// accounts), turning its refusals into OpenAI-shaped errors: the one place a domain error gets
/// its HTTP status and code. The Ollama and Anthropic shapes are made from these.
func mapped<T>(_ body: () async throws -> T) async throws -> T {
    do {
        return try await body()
    } catch let error as JobEngineError {
        switch error {
        case .notFound: throw OpenAIError(.notFound, error.description, code: "not_found")
        case .wrongState, .notPausable: throw OpenAIError(.conflict, error.description, code: "conflict")
        case .unknownKind: throw OpenAIError.badRequest(error.description, param: "kind")
        case .persistence: throw OpenAIError(.internalServerError, error.description, type: "server_error", code: "persistence")
        case .shuttingDown: throw OpenAIError(.serviceUnavailable, error.description, type: "server_error", code: "shutting_down")
        case .ownerUnreachable: throw OpenAIError(.serviceUnavailable, error.description, type: "server_error", code: "job_node_unreachable", retryAfter: 2)
        }
    } catch let error as LabError {
        switch error {
        case .badRequest(let message, let param): throw OpenAIError.badRequest(message, param: param)
        case .notFound(let message): throw OpenAIError(.notFound, message, code: "not_found")
        case .conflict(let message, let code): throw OpenAIError(.conflict, message, code: code)
        case .storage(let message): throw OpenAIError(.internalServerError, message, type: "server_error", code: "lab_store")
        }
    } catch let error as LibraryError {
        throw OpenAIError(error)
    } catch let error as SchedulerError {
        throw OpenAIError(error)
    } catch let error as ServingError {
        throw OpenAIError(error)
    } catch let error as FileError {
        switch error {
        case .badRequest(let message, let param): throw OpenAIError.badRequest(message, param: param)
        case .notFound: throw OpenAIError(.notFound, error.description, code: "not_found")
        case .tooLarge: throw OpenAIError(.contentTooLarge, error.description, code: "file_too_large")
        case .storage: throw OpenAIError(.internalServerError, error.description, type: "server_error", code: "file_store")
        }
    } catch let error as AcquisitionError {
        switch error {
        case .badName, .insecure, .invalid: throw OpenAIError.badRequest(error.description, param: "model")
        case .notFound: throw OpenAIError(.notFound, error.description, code: "not_found")
        case .digestMismatch, .upstream: throw OpenAIError(.badGateway, error.description, type: "server_error", code: "upstream")
        case .insufficientSpace: throw OpenAIError(.init(code: 507, reasonPhrase: "Insufficient Storage"), error.description, type: "server_error", code: "insufficient_space")
        case .storage: throw OpenAIError(.internalServerError, error.description, type: "server_error", code: "storage")
        }
    } catch let error as FineTuningError {
        switch error {
        case .badRequest(let message, let param): throw OpenAIError.badRequest(message, param: param)
        case .notFound(let message): throw OpenAIError(.notFound, message, code: "not_found")
        case .conflict(let message): throw OpenAIError(.conflict, message, code: "conflict")
        case .storage(let message): throw OpenAIError(.internalServerError, message, type: "server_error", code: "fine_tuning_store")
        }
    } catch let error as AccessError {
        throw OpenAIError(error)
    } catch let error as EvalError {
        switch error {
        case .badRequest(let message, let param): throw OpenAIError.badRequest(message, param: param)
        case .notFound(let message): throw OpenAIError(.notFound, message, code: "not_found")
        case .conflict(let message): throw OpenAIError(.conflict, message, code: "conflict")
        case .storage(let message): throw OpenAIError(.internalServerError, message, type: "server_error", code: "eval_store")
        }
    }
}

extension OpenAIError {
    /// The serving path's refusals and failures in OpenAI's shape (the Anthropic and Ollama
    /// shapes are made from this one): its status, code, message, param and retry advice;
    /// `type` is `invalid_request_error` for the request's own faults, `rate_limit_exceeded` for
    /// a limit, `server_error` otherwise.
    public init(_ error: ServingError) {
        let status = HTTPResponse.Status(code: error.status, reasonPhrase: HTTPResponseStatus(statusCode: error.status).reasonPhrase)
        let type = error.code == .rateLimitExceeded ? "rate_limit_exceeded" : error.code.isClientError ? "invalid_request_error" : "server_error"
        self.init(status, error.message, type: type, code: error.code.rawValue, param: error.param, retryAfter: error.retryAfter)
        extraHeaders = error.headers
    }

    /// A scheduler failure, with the status a client should see.
    public init(_ error: SchedulerError) { self.init(ServingError(error)) }

    /// An access refusal: 401, 403, 429 with `Retry-After` and `x-ratelimit-*`, 400, …
    public init(_ error: AccessError) { self.init(ServingError(error)) }

    /// The library's refusals (a bad query or profile, an unknown model).
    public init(_ error: LibraryError) {
        switch error {
        case .badRequest(let message, let param): self = .badRequest(message, param: param)
        case .modelNotFound(let model): self = .modelNotFound(model)
        case .storage(let message): self.init(.internalServerError, message, type: "server_error", code: "library_store")
        }
    }
}
