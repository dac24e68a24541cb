import Foundation

/// What the admin views, the dashboard's charts and budget loading read: sums and percentiles
/// computed from rollups (``AccountStore/usageRollups(from:to:modelLevel:)``), so their cost grows with the
/// buckets asked for, never with the rows in the ledger. The same for SQLite and PostgreSQL.
extension AccountStore {
    /// Sums grouped by `group` (team, keyPrefix or model) and a time bucket (`%Y-%m-%d` or
    /// `%Y-%m-%dT%H:00`, UTC), ordered by bucket then group. `from` and `to` are taken at minute resolution.
    public func usageSummary(from: Date, to: Date, group: String, bucketFormat: String) async throws -> [UsageBucket] {
        guard let grouping = UsageGroup(rawValue: group) else { return [] }
        let daily = bucketFormat == "%Y-%m-%d"
        let rows = try await usageSums(from: from, to: to, group: grouping, unit: daily ? 86_400 : 3600)
        return rows.sorted { ($0.bucket, $0.group) < ($1.bucket, $1.group) }.map { r in
            let name: String? = grouping == .model || !r.group.isEmpty ? r.group : nil
            return UsageBucket(
                group: name, bucket: Self.bucketLabel(r.bucket, daily: daily), requests: r.sums.requests, errors: r.sums.errors,
                promptTokens: r.sums.promptTokens, completionTokens: r.sums.completionTokens, cachedTokens: r.sums.cachedTokens,
                averageTotalMs: r.sums.requests > 0 ? r.sums.totalMsSum / Double(r.sums.requests) : 0)
        }
    }

    /// Per model over `[from, to)`: sums and latency, time-to-first-token and token-rate histograms.
    public func modelStats(from: Date, to: Date) async throws -> [ModelUsageStats] {
        var models: [String: UsageRollup] = [:]
        for (key, rollup) in try await usageRollups(from: from, to: to, modelLevel: true) { models[key.model, default: UsageRollup()].merge(rollup) }
        return models.keys.sorted().map { ModelUsageStats(model: $0, usage: models[$0]!) }
    }

    /// Tokens (prompt + completion) used since `start`, per team id and per key prefix.
    public func tokensUsed(since start: Date) async throws -> (teams: [String: Int], keys: [String: Int]) {
        var teams: [String: Int] = [:]
        var keys: [String: Int] = [:]
        for (key, rollup) in try await usageRollups(from: start, to: Date().addingTimeInterval(120), modelLevel: false) {
            let n = rollup.promptTokens + rollup.completionTokens
            if !key.team.isEmpty { teams[key.team, default: 0] += n }
            if !key.keyPrefix.isEmpty { keys[key.keyPrefix, default: 0] += n }
        }
        return (teams, keys)
    }

    /// Requests and tokens per model over every rollup kept.
    public func usageTotalsByModel() async throws -> [String: (requests: Int, promptTokens: Int, completionTokens: Int)] {
        var out: [String: (requests: Int, promptTokens: Int, completionTokens: Int)] = [:]
        for (key, r) in try await usageRollups(from: Date(timeIntervalSince1970: 0), to: .distantFuture, modelLevel: true) {
            let was = out[key.model] ?? (0, 0, 0)
            out[key.model] = (was.requests + r.requests, was.promptTokens + r.promptTokens, was.completionTokens + r.completionTokens)
        }
        return out
    }

    /// `2026-12-07` or `2026-12-07T10:00` for a bucket start (Unix seconds, UTC). Digits by
    /// hand: `String(format:)` is slow on Linux, and a week by hour is a thousand labels.
    static func bucketLabel(_ seconds: Int, daily: Bool) -> String {
        var t = time_t(seconds)
        var parts = tm()
        gmtime_r(&t, &parts)
        var out = [UInt8]()
        out.reserveCapacity(16)
        func digits(_ value: Int32, _ width: Int) {
            var v = Int(value)
            var buffer = [UInt8](repeating: 0x30, count: width)
            for i in stride(from: width - 1, through: 0, by: -1) {
                buffer[i] = 0x30 + UInt8(v % 10)
                v /= 10
            }
            out += buffer
        }
        digits(parts.tm_year + 1900, 4)
        out.append(0x2D)
        digits(parts.tm_mon + 1, 2)
        out.append(0x2D)
        digits(parts.tm_mday, 2)
        if !daily {
            out.append(0x54)
            digits(parts.tm_hour, 2)
            out += Array(":00".utf8)
        }
        return String(decoding: out, as: UTF8.self)
    }
}
