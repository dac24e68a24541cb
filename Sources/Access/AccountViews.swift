import Foundation
import Store

// What the admin API shows of teams, keys, usage and stats. Times are RFC 3339 with
// milliseconds; a limit that is not set is null.

/// A team: its limits, today's and this month's tokens, and (for one team) its keys.
public struct TeamView: Sendable, Encodable {
    public var record: TeamRecord
    public var usage: (day: Int, month: Int, inFlight: Int)
    public var keys: [KeyView]?

    enum CodingKeys: String, CodingKey { case id, name, disabled, createdAt, limits, usage, keys }
    enum UsageKeys: String, CodingKey { case tokensToday, tokensThisMonth, inFlight }

    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(record.id, forKey: .id)
        try c.encode(record.name, forKey: .name)
        try c.encode(record.disabled, forKey: .disabled)
        try c.encode(rfc3339(record.createdAt), forKey: .createdAt)
        try c.encode(StoredLimits(json: record.policy), forKey: .limits)
        var u = c.nestedContainer(keyedBy: UsageKeys.self, forKey: .usage)
        try u.encode(usage.day, forKey: .tokensToday)
        try u.encode(usage.month, forKey: .tokensThisMonth)
        try u.encode(usage.inFlight, forKey: .inFlight)
        try c.encodeIfPresent(keys, forKey: .keys)
    }
}

/// A key, never its hash: `active`, `expired` or `revoked`, its limits and times. The key
/// itself is in the answer that creates or rotates it, and nowhere else.
public struct KeyView: Sendable, Encodable {
    public var record: KeyRecord
    public var key: String?
    /// When the state is told.
    public var now: Date

    public init(_ record: KeyRecord, key: String? = nil, now: Date = Date()) {
        (self.record, self.key, self.now) = (record, key, now)
    }

    public var state: String {
        record.revokedAt != nil ? "revoked" : (record.expiresAt.map { $0 <= now } ?? false) ? "expired" : "active"
    }

    enum CodingKeys: String, CodingKey { case prefix, team, name, createdAt, state, limits, expiresAt, revokedAt, key }

    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(record.prefix, forKey: .prefix)
        try c.encode(record.teamID, forKey: .team)
        try c.encode(record.name, forKey: .name)
        try c.encode(rfc3339(record.createdAt), forKey: .createdAt)
        try c.encode(state, forKey: .state)
        try c.encode(StoredLimits(json: record.policy), forKey: .limits)
        try c.encode(record.expiresAt.map(rfc3339), forKey: .expiresAt)
        try c.encode(record.revokedAt.map(rfc3339), forKey: .revokedAt)
        try c.encodeIfPresent(key, forKey: .key)
    }
}

/// A stored policy's limits, every field present; one that cannot be read says why
/// (`{"unreadable": …}`), and its requests are refused.
struct StoredLimits: Encodable {
    var json: String

    enum CodingKeys: String, CodingKey { case models, requestsPerMinute, tokensPerMinute, maxParallel, tokensPerDay, tokensPerMonth, unreadable }

    func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        let p: Policy
        do { p = try Policy.decode(json) } catch {
            try c.encode(error.description, forKey: .unreadable)
            return
        }
        try c.encode(p.models, forKey: .models)
        try c.encode(p.requestsPerMinute, forKey: .requestsPerMinute)
        try c.encode(p.tokensPerMinute, forKey: .tokensPerMinute)
        try c.encode(p.maxParallel, forKey: .maxParallel)
        try c.encode(p.tokensPerDay, forKey: .tokensPerDay)
        try c.encode(p.tokensPerMonth, forKey: .tokensPerMonth)
    }
}

extension AccessControl {
    /// A team as the admin API shows it, with its keys when `withKeys`.
    public func view(_ team: TeamRecord, withKeys: Bool = false) async -> TeamView {
        TeamView(record: team, usage: await usage(team: team.id), keys: withKeys ? keys(team: team.id).map { KeyView($0) } : nil)
    }
}

/// `/admin/usage`: ledger sums over `[from, to)` per bucket (day or hour) and group (team, key or
/// model); each bucket names its group under the group's own name.
public struct UsageReport: Sendable, Encodable {
    public var from: Date
    public var to: Date
    public var group: String
    public var bucket: String
    public var data: [UsageBucket]

    public func encode(to encoder: any Encoder) throws {
        var top = encoder.container(keyedBy: AnyKey.self)
        try top.encode(rfc3339(from), forKey: AnyKey("from"))
        try top.encode(rfc3339(to), forKey: AnyKey("to"))
        try top.encode(group, forKey: AnyKey("group"))
        try top.encode(bucket, forKey: AnyKey("bucket"))
        var list = top.nestedUnkeyedContainer(forKey: AnyKey("data"))
        for b in data {
            var o = list.nestedContainer(keyedBy: AnyKey.self)
            try o.encode(b.group, forKey: AnyKey(group))
            try o.encode(b.bucket, forKey: AnyKey("bucket"))
            try o.encode(b.requests, forKey: AnyKey("requests"))
            try o.encode(b.errors, forKey: AnyKey("errors"))
            try o.encode(b.promptTokens, forKey: AnyKey("promptTokens"))
            try o.encode(b.completionTokens, forKey: AnyKey("completionTokens"))
            try o.encode(b.cachedTokens, forKey: AnyKey("cachedTokens"))
            try o.encode(b.averageTotalMs, forKey: AnyKey("averageTotalMs"))
        }
    }
}

/// `/admin/stats`: per model latency, time to first token and tokens/s percentiles over a window
/// (null where nothing was measured).
public struct StatsReport: Sendable, Encodable {
    public var window: Duration
    public var from: Date
    public var to: Date
    public var models: [ModelUsageStats]

    enum CodingKeys: String, CodingKey { case window, from, to, models }
    enum ModelKeys: String, CodingKey {
        case model, requests, errors, promptTokens, completionTokens, latencyMs, timeToFirstTokenMs, generationTokensPerSecond, promptTokensPerSecond
    }
    enum PercentileKeys: String, CodingKey { case p50, p95, p99 }

    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode("\(window)", forKey: .window)
        try c.encode(rfc3339(from), forKey: .from)
        try c.encode(rfc3339(to), forKey: .to)
        var list = c.nestedUnkeyedContainer(forKey: .models)
        for m in models {
            var o = list.nestedContainer(keyedBy: ModelKeys.self)
            let u = m.usage
            try o.encode(m.model, forKey: .model)
            try o.encode(u.requests, forKey: .requests)
            try o.encode(u.errors, forKey: .errors)
            try o.encode(u.promptTokens, forKey: .promptTokens)
            try o.encode(u.completionTokens, forKey: .completionTokens)
            for (histogram, key) in [(u.totalMs, ModelKeys.latencyMs), (u.ttftMs, .timeToFirstTokenMs), (u.generationTPS, .generationTokensPerSecond),
                                     (u.promptTPS, .promptTokensPerSecond)] {
                var p = o.nestedContainer(keyedBy: PercentileKeys.self, forKey: key)
                try p.encode(histogram.quantile(0.5), forKey: .p50)
                try p.encode(histogram.quantile(0.95), forKey: .p95)
                try p.encode(histogram.quantile(0.99), forKey: .p99)
            }
        }
    }
}

extension AccountStore {
    /// Ledger sums over `[from, to)` by `group` (`team`, the default, `key` or `model`) and
    /// `bucket` (`day`, the default, or `hour`).
    public func usageReport(from: Date, to: Date, group: String?, bucket: String?) async throws -> UsageReport {
        let column = ["team": "team", "key": "keyPrefix", "model": "model"][group ?? "team"]
        let format = ["day": "%Y-%m-%d", "hour": "%Y-%m-%dT%H:00"][bucket ?? "day"]
        guard let column, let format else { throw AccessError.invalid("group must be team, key or model; bucket day or hour") }
        let rows = try await usageSummary(from: from, to: to, group: column, bucketFormat: format)
        return UsageReport(from: from, to: to, group: group ?? "team", bucket: bucket ?? "day", data: rows)
    }

    /// Percentiles per model over the `window` up to now, from rollups (minute resolution; each
    /// value within its histogram bucket's width, about 9 %), so the cost follows the window,
    /// not the ledger.
    public func statsReport(window: Duration) async throws -> StatsReport {
        let to = Date().addingTimeInterval(1)
        let from = to.addingTimeInterval(-Double(window.components.seconds))
        return StatsReport(window: window, from: from, to: to, models: try await modelStats(from: from, to: to))
    }
}

/// RFC 3339 with milliseconds, as the admin API writes times.
public func rfc3339(_ date: Date) -> String {
    let f = ISO8601DateFormatter()
    f.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
    return f.string(from: date)
}
