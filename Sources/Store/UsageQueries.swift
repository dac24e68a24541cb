import Foundation

/// What the admin views, the dashboard's charts and budget loading read: sums and percentiles
/// computed from rollups (``AccountStore/usageRollups(from:to:)``), so their cost grows with the
/// buckets asked for, never with the rows in the ledger. The same for SQLite and PostgreSQL.
extension AccountStore {
    /// Sums grouped by `group` (team, keyPrefix or model) and a time bucket (`%Y-%m-%d` or
    /// `%Y-%m-%dT%H:00`, UTC), ordered by bucket then group. `from` and `to` are taken at minute resolution.
    public func usageSummary(from: Date, to: Date, group: String, bucketFormat: String) async throws -> [UsageBucket] {
        guard ["team", "keyPrefix", "model"].contains(group) else { return [] }
        let daily = bucketFormat == "%Y-%m-%d"
        var sums: [String: [String: (group: String?, usage: UsageRollup)]] = [:]
        for (key, rollup) in try await usageRollups(from: from, to: to) {
            let name: String? =
                switch group {
                case "team": key.team.isEmpty ? nil : key.team
                case "keyPrefix": key.keyPrefix.isEmpty ? nil : key.keyPrefix
                default: key.model
                }
            let bucket = Self.bucketLabel(key.bucket, daily: daily)
            var entry = sums[bucket]?[name ?? "\u{0}"] ?? (name, UsageRollup())
            entry.usage.requests += rollup.requests
            entry.usage.errors += rollup.errors
            entry.usage.promptTokens += rollup.promptTokens
            entry.usage.completionTokens += rollup.completionTokens
            entry.usage.cachedTokens += rollup.cachedTokens
            entry.usage.totalMsSum += rollup.totalMsSum
            sums[bucket, default: [:]][name ?? "\u{0}"] = entry
        }
        return sums.keys.sorted().flatMap { bucket in
            sums[bucket]!.keys.sorted().map { name in
                let e = sums[bucket]![name]!
                return UsageBucket(
                    group: e.group, bucket: bucket, requests: e.usage.requests, errors: e.usage.errors, promptTokens: e.usage.promptTokens,
                    completionTokens: e.usage.completionTokens, cachedTokens: e.usage.cachedTokens,
                    averageTotalMs: e.usage.requests > 0 ? e.usage.totalMsSum / Double(e.usage.requests) : 0)
            }
        }
    }

    /// Per model over `[from, to)`: sums and latency, time-to-first-token and token-rate histograms.
    public func modelStats(from: Date, to: Date) async throws -> [ModelUsageStats] {
        var models: [String: UsageRollup] = [:]
        for (key, rollup) in try await usageRollups(from: from, to: to) { models[key.model, default: UsageRollup()].merge(rollup) }
        return models.keys.sorted().map { ModelUsageStats(model: $0, usage: models[$0]!) }
    }

    /// Tokens (prompt + completion) used since `start`, per team id and per key prefix.
    public func tokensUsed(since start: Date) async throws -> (teams: [String: Int], keys: [String: Int]) {
        var teams: [String: Int] = [:]
        var keys: [String: Int] = [:]
        for (key, rollup) in try await usageRollups(from: start, to: Date().addingTimeInterval(120)) {
            let n = rollup.promptTokens + rollup.completionTokens
            if !key.team.isEmpty { teams[key.team, default: 0] += n }
            if !key.keyPrefix.isEmpty { keys[key.keyPrefix, default: 0] += n }
        }
        return (teams, keys)
    }

    /// Requests and tokens per model over every rollup kept.
    public func usageTotalsByModel() async throws -> [String: (requests: Int, promptTokens: Int, completionTokens: Int)] {
        var out: [String: (requests: Int, promptTokens: Int, completionTokens: Int)] = [:]
        for (key, r) in try await usageRollups(from: Date(timeIntervalSince1970: 0), to: .distantFuture) {
            let was = out[key.model] ?? (0, 0, 0)
            out[key.model] = (was.requests + r.requests, was.promptTokens + r.promptTokens, was.completionTokens + r.completionTokens)
        }
        return out
    }

    /// `2026-12-07` or `2026-12-07T10:00` for a bucket start (Unix seconds, UTC).
    static func bucketLabel(_ seconds: Int, daily: Bool) -> String {
        var t = time_t(seconds)
        var parts = tm()
        gmtime_r(&t, &parts)
        let day = String(format: "%04d-%02d-%02d", Int(parts.tm_year) + 1900, Int(parts.tm_mon) + 1, Int(parts.tm_mday))
        return daily ? day : day + String(format: "T%02d:00", Int(parts.tm_hour))
    }
}
