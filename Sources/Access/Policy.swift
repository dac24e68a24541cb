import Foundation
import Store

/// Limits for a team or a key. Nil means unlimited; a key's limits apply on top of its team's,
/// so the effective limit is the smaller one.
public struct Policy: Codable, Sendable, Equatable {
    /// Model names, aliases or globs (`*`, `?`), case-insensitive; nil allows every model.
    public var models: [String]?
    public var requestsPerMinute: Int?
    public var tokensPerMinute: Int?
    public var maxParallel: Int?
    /// Tokens (prompt + completion) per UTC calendar day and month.
    public var tokensPerDay: Int?
    public var tokensPerMonth: Int?

    public init(models: [String]? = nil, requestsPerMinute: Int? = nil, tokensPerMinute: Int? = nil, maxParallel: Int? = nil,
                tokensPerDay: Int? = nil, tokensPerMonth: Int? = nil) {
        self.models = models
        self.requestsPerMinute = requestsPerMinute
        self.tokensPerMinute = tokensPerMinute
        self.maxParallel = maxParallel
        self.tokensPerDay = tokensPerDay
        self.tokensPerMonth = tokensPerMonth
    }

    /// The limits the shared store checks (a cluster's admission).
    public var quotaLimits: QuotaLimits {
        QuotaLimits(requestsPerMinute: requestsPerMinute, tokensPerMinute: tokensPerMinute, maxParallel: maxParallel,
                    tokensPerDay: tokensPerDay, tokensPerMonth: tokensPerMonth)
    }

    /// Whether a model known by `names` (its id and aliases) is allowed.
    public func allows(_ names: [String]) -> Bool {
        guard let models else { return true }
        return models.contains { pattern in names.contains { Self.glob(pattern.lowercased(), $0.lowercased()) } }
    }

    /// `*` matches any run of characters, `?` one character; everything else literally.
    static func glob(_ pattern: String, _ text: String) -> Bool {
        let p = Array(pattern), t = Array(text)
        var (pi, ti, star, mark) = (0, 0, -1, 0)
        while ti < t.count {
            if pi < p.count && (p[pi] == "?" || p[pi] == t[ti]) {
                pi += 1; ti += 1
            } else if pi < p.count && p[pi] == "*" {
                star = pi; mark = ti; pi += 1
            } else if star >= 0 {
                pi = star + 1; mark += 1; ti = mark
            } else {
                return false
            }
        }
        while pi < p.count && p[pi] == "*" { pi += 1 }
        return pi == p.count
    }

    public var json: String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = .sortedKeys
        return String(decoding: (try? encoder.encode(self)) ?? Data("{}".utf8), as: UTF8.self)
    }

    /// The policy stored as `json`. Throws when it cannot be read: an unreadable policy refuses
    /// requests, it never means "every model, no limits".
    public static func decode(_ json: String) throws(AccessError) -> Policy {
        do { return try JSONDecoder().decode(Policy.self, from: Data(json.utf8)) } catch {
            throw .unreadable("the stored policy cannot be read (\(error)); requests are refused until it is set again")
        }
    }

    /// What an unreadable policy is held as: no model allowed (and what an update of one starts from).
    public static var refuseAll: Policy {
        var p = Policy()
        p.models = []
        return p
    }
}

/// Why access was refused, with the status each maps to.
public enum AccessError: Error, Sendable, Equatable, CustomStringConvertible {
    /// 401: no key, unknown key, revoked or expired key.
    case unauthenticated(String)
    /// 403: model not allowed, team disabled.
    case forbidden(String)
    /// 429: a limit is reached; retry after the given seconds.
    case limited(String, retryAfter: Int, headers: [String: String])
    /// 400: the request alone exceeds a limit, or bad admin input.
    case invalid(String)
    /// 400: a field of an admin request is wrong (named by `param`).
    case badField(String, param: String)
    /// 404 in the admin API.
    case notFound(String)
    /// 409 in the admin API.
    case conflict(String)
    /// 503: the shared store (a cluster's PostgreSQL) cannot be reached; retry shortly.
    case unavailable(String)
    /// 500: a stored team or key policy cannot be read, so its limits are unknown: refused.
    case unreadable(String)

    public var description: String {
        switch self {
        case .unauthenticated(let m), .forbidden(let m), .invalid(let m), .notFound(let m), .conflict(let m), .unavailable(let m), .unreadable(let m): m
        case .limited(let m, _, _): m
        case .badField(let m, _): m
        }
    }

    public var status: Int {
        switch self {
        case .unauthenticated: 401
        case .forbidden: 403
        case .limited: 429
        case .invalid, .badField: 400
        case .notFound: 404
        case .conflict: 409
        case .unavailable: 503
        case .unreadable: 500
        }
    }
}
