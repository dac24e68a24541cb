import Foundation
import Store

/// The body of an admin request that makes or changes a team or a key, checked field by field
/// with the messages the admin API has always given: `name`, `disabled`, the expiry and the
/// limits. A `name` of another type reads as absent, as it always has; any other field of the
/// wrong type is refused with its name in `param`.
public struct AccountRequest: Sendable, Decodable {
    public var name: String?
    public var disabled: Bool?
    public var limits: PolicyChange
    /// `expiresIn` as sent, a number of seconds written as text: the caller reads it as a
    /// duration ("30d", "12h" or seconds) from now. It wins over `expiresAt`.
    public var expiresIn: String?
    /// `expiresAt`: absent (`.none`), null (the key never expires) or a time.
    public var expiresAt: Date??

    /// What `expiresIn` must be.
    public static let expiresInProblem = "expiresIn must be a duration like \"30d\", \"12h\" or seconds"

    public init(name: String? = nil, disabled: Bool? = nil, limits: PolicyChange = PolicyChange(), expiresIn: String? = nil, expiresAt: Date?? = .none) {
        (self.name, self.disabled, self.limits, self.expiresIn, self.expiresAt) = (name, disabled, limits, expiresIn, expiresAt)
    }

    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: AnyKey.self)
        name = try c.ifType(String.self, "name")
        if c.contains(AnyKey("disabled")) {
            guard let disabled = try c.ifType(Bool.self, "disabled") else {
                throw AccessError.badField("disabled must be a boolean", param: "disabled")
            }
            self.disabled = disabled
        }
        if c.contains(AnyKey("expiresIn")) {
            if let text = try c.ifType(String.self, "expiresIn") {
                expiresIn = text
            } else if let seconds = try c.ifType(Double.self, "expiresIn") {
                expiresIn = String(seconds)
            } else {
                throw AccessError.badField(Self.expiresInProblem, param: "expiresIn")
            }
        } else if c.contains(AnyKey("expiresAt")) {
            if try c.decodeNil(forKey: AnyKey("expiresAt")) {
                expiresAt = .some(nil)
            } else {
                guard let text = try c.ifType(String.self, "expiresAt"), let date = rfc3339Date(text) else {
                    throw AccessError.badField("expiresAt must be an RFC 3339 time or null", param: "expiresAt")
                }
                expiresAt = .some(date)
            }
        }
        limits = try PolicyChange(from: decoder)
    }
}

extension KeyedDecodingContainer where K == AnyKey {
    /// The value at `key` when it is a `T`; nil when it is absent, null or of another type (the
    /// caller refuses that with the field's own message). Any other failure throws.
    func ifType<T: Decodable>(_ type: T.Type, _ key: String) throws -> T? {
        do {
            return try decodeIfPresent(T.self, forKey: AnyKey(key))
        } catch DecodingError.typeMismatch {
            return nil
        } catch DecodingError.valueNotFound {
            return nil
        }
    }
}

/// The limit fields an admin body sets (``Policy``'s), each absent (unchanged), null (no
/// limit, or every model) or a value.
public struct PolicyChange: Sendable, Equatable, Decodable {
    public var models: [String]??
    public var requestsPerMinute: Int??
    public var tokensPerMinute: Int??
    public var maxParallel: Int??
    public var tokensPerDay: Int??
    public var tokensPerMonth: Int??

    public init() {}

    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: AnyKey.self)
        func count(_ key: String) throws -> Int?? {
            guard c.contains(AnyKey(key)) else { return .none }
            if try c.decodeNil(forKey: AnyKey(key)) { return .some(nil) }
            // A JSON number only (a boolean is not one), whole and not negative.
            guard let n = try c.ifType(Double.self, key), let i = Int(exactly: n), i >= 0 else {
                throw AccessError.invalid("\(key) must be a non-negative integer or null")
            }
            return .some(i)
        }
        requestsPerMinute = try count("requestsPerMinute")
        tokensPerMinute = try count("tokensPerMinute")
        maxParallel = try count("maxParallel")
        tokensPerDay = try count("tokensPerDay")
        tokensPerMonth = try count("tokensPerMonth")
        if c.contains(AnyKey("models")) {
            if try c.decodeNil(forKey: AnyKey("models")) {
                models = .some(nil)
            } else if let list = try c.ifType([String].self, "models") {
                models = .some(list)
            } else {
                throw AccessError.invalid("models must be a list of names or globs, or null")
            }
        }
    }

    /// `base` with the fields this change sets.
    public func applied(to base: Policy) -> Policy {
        var p = base
        if let v = requestsPerMinute { p.requestsPerMinute = v }
        if let v = tokensPerMinute { p.tokensPerMinute = v }
        if let v = maxParallel { p.maxParallel = v }
        if let v = tokensPerDay { p.tokensPerDay = v }
        if let v = tokensPerMonth { p.tokensPerMonth = v }
        if let v = models { p.models = v }
        return p
    }
}

extension AccessControl {
    /// Creates a team from an admin body (`name` required; the limits it sets).
    public func createTeam(_ request: AccountRequest) async throws(AccessError) -> TeamRecord {
        guard let name = request.name else { throw .badField("name is required", param: "name") }
        return try await createTeam(name: name, policy: request.limits.applied(to: Policy()))
    }

    /// Renames, changes the limits of, disables or enables a team. The limits change the stored
    /// policy, or no model allowed when it cannot be read (the change names the models again).
    public func updateTeam(_ idOrName: String, _ request: AccountRequest) async throws(AccessError) -> TeamRecord {
        guard let current = team(idOrName) else { throw .notFound("no team '\(idOrName)'") }
        return try await updateTeam(
            idOrName, name: request.name, policy: request.limits.applied(to: Self.updatable(current.policy)), disabled: request.disabled)
    }

    /// Changes a key's limits (as ``updateTeam(_:_:)`` changes a team's) and its expiry.
    public func updateKey(_ prefix: String, _ request: AccountRequest, expiresAt: Date??) async throws(AccessError) -> KeyRecord {
        guard let current = key(prefix) else { throw .notFound("no key '\(prefix)'") }
        return try await updateKey(prefix, policy: request.limits.applied(to: Self.updatable(current.policy)), expiresAt: expiresAt)
    }

    /// What a change of a stored policy starts from: the policy, or no model allowed when it
    /// cannot be read.
    static func updatable(_ json: String) -> Policy {
        do { return try Policy.decode(json) } catch { return Policy.refuseAll }
    }
}

/// A member name of a JSON object.
struct AnyKey: CodingKey {
    var stringValue: String
    var intValue: Int? { nil }
    init(_ name: String) { stringValue = name }
    init(stringValue: String) { self.stringValue = stringValue }
    init?(intValue: Int) { nil }
}

/// RFC 3339 with or without fractional seconds.
public func rfc3339Date(_ text: String) -> Date? {
    let f = ISO8601DateFormatter()
    f.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
    if let d = f.date(from: text) { return d }
    f.formatOptions = [.withInternetDateTime]
    return f.date(from: text)
}
