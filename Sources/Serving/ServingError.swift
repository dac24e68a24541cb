import Access
import Runtime

/// Why the serving path refused or failed a request: the status a client sees, a stable code,
/// a message for people, and what retrying needs. Each API gives it its own shape in the HTTP
/// layer (`DomainErrors.swift`); the ledger records ``kind``, never the message.
public struct ServingError: Error, Sendable, CustomStringConvertible {
    /// The stable codes the serving path reports (the OpenAI error's `code`).
    public enum Code: String, Sendable {
        // The request's fault.
        case invalidRequest = "invalid_request"
        case requestTooLarge = "request_too_large"
        case modelNotFound = "model_not_found"
        case nameTaken = "name_taken"
        case invalidAPIKey = "invalid_api_key"
        case modelNotAllowed = "model_not_allowed"
        case notFound = "not_found"
        case conflict
        case rateLimitExceeded = "rate_limit_exceeded"
        // Corral's, the model's or the store's.
        case ledgerFull = "ledger_full"
        case queueFull = "queue_full"
        case insufficientMemory = "insufficient_memory"
        case modelLoadFailed = "model_load_failed"
        case modelFailed = "model_failed"
        case upstreamCrashed = "upstream_crashed"
        case noCapacity = "no_capacity"
        case llamaServerMissing = "llama_server_missing"
        case shuttingDown = "shutting_down"
        case storeUnavailable = "store_unavailable"
        case policyUnreadable = "policy_unreadable"
        case upstreamTimeout = "upstream_timeout"
        case upstreamError = "upstream_error"
        // A request a cluster peer relayed here, declined so that the sending node serves it.
        case notInCatalogHere = "not_in_catalog_here"
        case notLoadedHere = "not_loaded_here"
        case cannotLoadHere = "cannot_load_here"

        /// Whether the request itself is at fault (OpenAI's `invalid_request_error`).
        public var isClientError: Bool {
            switch self {
            case .invalidRequest, .requestTooLarge, .modelNotFound, .nameTaken, .invalidAPIKey, .modelNotAllowed, .notFound, .conflict: true
            default: false
            }
        }
    }

    /// The HTTP status.
    public var status: Int
    public var code: Code
    public var message: String
    /// The request field at fault, if one is.
    public var param: String?
    /// Seconds after which retrying may succeed (`Retry-After`); nil when retrying cannot help soon.
    public var retryAfter: Int?
    /// The ledger's `errorKind`: the code, except where the ledger has its own name for a refusal
    /// (an access refusal's ``AccessError/kind``, an upstream that could not be reached).
    public var kind: String
    /// More response headers (`x-ratelimit-*`, a peer's decline).
    public var headers: [String: String] = [:]

    public init(status: Int, code: Code, _ message: String, param: String? = nil, retryAfter: Int? = nil, kind: String? = nil) {
        self.status = status
        self.code = code
        self.message = message
        self.param = param
        self.retryAfter = retryAfter
        self.kind = kind ?? code.rawValue
    }

    public var description: String { "\(code.rawValue): \(message)" }

    /// A request the serving path cannot take as it is (400, `invalid_request`).
    public static func badRequest(_ message: String, param: String? = nil) -> ServingError {
        ServingError(status: 400, code: .invalidRequest, message, param: param)
    }

    public static func modelNotFound(_ name: String) -> ServingError {
        ServingError(status: 404, code: .modelNotFound, "The model '\(name)' does not exist or is not served here.", param: "model")
    }

    /// A scheduler failure, with the status a client should see.
    public init(_ error: SchedulerError) {
        let code = Code(rawValue: error.kind) ?? .upstreamError
        switch error {
        case .unknownModel(let model): self = .modelNotFound(model)
        case .queueFull(_, let after): self.init(status: 429, code: code, error.description, retryAfter: after)
        case .insufficientMemory: self.init(status: 507, code: code, error.description)
        case .loadFailed: self.init(status: 503, code: code, error.description, retryAfter: 5)
        case .modelFailed, .noCapacity, .noLlamaServer: self.init(status: 503, code: code, error.description)
        case .instanceCrashed: self.init(status: 502, code: code, error.description, retryAfter: 1)
        case .shuttingDown: self.init(status: 503, code: code, error.description, retryAfter: 5)
        case .nameTaken: self.init(status: 409, code: code, error.description)
        }
    }

    /// An access refusal: 401, 403, 429 with `Retry-After` and `x-ratelimit-*`, 400, …
    public init(_ error: AccessError) {
        switch error {
        case .unauthenticated(let m): self.init(status: 401, code: .invalidAPIKey, m, kind: error.kind)
        case .forbidden(let m): self.init(status: 403, code: .modelNotAllowed, m, kind: error.kind)
        case .limited(let m, let after, let headers):
            self.init(status: 429, code: .rateLimitExceeded, m, retryAfter: after, kind: error.kind)
            self.headers = headers
        case .invalid(let m): self.init(status: 400, code: .invalidRequest, m, kind: error.kind)
        case .badField(let m, let param): self.init(status: 400, code: .invalidRequest, m, param: param, kind: error.kind)
        case .notFound(let m): self.init(status: 404, code: .notFound, m, kind: error.kind)
        case .conflict(let m): self.init(status: 409, code: .conflict, m, kind: error.kind)
        case .unavailable(let m): self.init(status: 503, code: .storeUnavailable, m, retryAfter: 2, kind: error.kind)
        case .unreadable(let m): self.init(status: 500, code: .policyUnreadable, m, kind: error.kind)
        }
    }
}
