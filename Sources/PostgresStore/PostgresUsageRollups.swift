import Foundation
import Logging
import PostgresNIO
import Store

/// Usage rollups and retention in PostgreSQL, as in SQLite: written in the ledger write's
/// transaction, read by the admin views instead of the raw rows. Nodes write rollups under one
/// transaction-scoped advisory lock, so two nodes adding to the same bucket never lose a
/// histogram merge.
extension PostgresStore {
    static let rollupMigration: (String, [String]) = ("pg6-usage-rollups", [
        """
        CREATE TABLE usage_rollup (span INT NOT NULL, bucket BIGINT NOT NULL, team TEXT NOT NULL, key_prefix TEXT NOT NULL, model TEXT NOT NULL,
          status_class INT NOT NULL, requests BIGINT NOT NULL, errors BIGINT NOT NULL, prompt_tokens BIGINT NOT NULL,
          completion_tokens BIGINT NOT NULL, cached_tokens BIGINT NOT NULL, total_ms_sum DOUBLE PRECISION NOT NULL,
          total_ms_hist TEXT NOT NULL, ttft_ms_hist TEXT NOT NULL, prompt_tps_hist TEXT NOT NULL, generation_tps_hist TEXT NOT NULL,
          PRIMARY KEY (span, bucket, team, key_prefix, model, status_class))
        """,
        "CREATE INDEX usage_ts ON usage (ts)",
        // Budgets come from rollups now: nothing reads the ledger by key.
        "DROP INDEX usage_key_ts",
    ])

    /// The advisory lock every rollup write takes (for the length of its transaction).
    static let rollupLock = 7_243_002

    /// Adds `deltas` to the stored rollups inside `tx`.
    func applyRollups(_ tx: PostgresConnection, _ deltas: [UsageRollupKey: UsageRollup]) async throws {
        guard !deltas.isEmpty else { return }
        try await tx.query("SELECT pg_advisory_xact_lock(\(Self.rollupLock))", logger: logger)
        for (key, delta) in deltas {
            var merged = delta
            let rows = try await tx.query("""
                SELECT requests, errors, prompt_tokens, completion_tokens, cached_tokens, total_ms_sum, total_ms_hist, ttft_ms_hist,
                  prompt_tps_hist, generation_tps_hist FROM usage_rollup WHERE span = \(key.span) AND bucket = \(key.bucket)
                  AND team = \(key.team) AND key_prefix = \(key.keyPrefix) AND model = \(key.model) AND status_class = \(key.statusClass)
                """, logger: logger)
            for try await row in rows { merged.merge(try Self.rollup(row.makeRandomAccess())) }
            try await tx.query("""
                INSERT INTO usage_rollup VALUES (\(key.span), \(key.bucket), \(key.team), \(key.keyPrefix), \(key.model), \(key.statusClass),
                  \(merged.requests), \(merged.errors), \(merged.promptTokens), \(merged.completionTokens), \(merged.cachedTokens),
                  \(merged.totalMsSum), \(merged.totalMs.encoded), \(merged.ttftMs.encoded), \(merged.promptTPS.encoded), \(merged.generationTPS.encoded))
                ON CONFLICT (span, bucket, team, key_prefix, model, status_class) DO UPDATE SET requests = EXCLUDED.requests,
                  errors = EXCLUDED.errors, prompt_tokens = EXCLUDED.prompt_tokens, completion_tokens = EXCLUDED.completion_tokens,
                  cached_tokens = EXCLUDED.cached_tokens, total_ms_sum = EXCLUDED.total_ms_sum, total_ms_hist = EXCLUDED.total_ms_hist,
                  ttft_ms_hist = EXCLUDED.ttft_ms_hist, prompt_tps_hist = EXCLUDED.prompt_tps_hist, generation_tps_hist = EXCLUDED.generation_tps_hist
                """, logger: logger)
        }
    }

    static func rollup(_ r: PostgresRandomAccessRow) throws -> UsageRollup {
        try UsageRollup(
            requests: try r.get("requests"), errors: try r.get("errors"), promptTokens: try r.get("prompt_tokens"),
            completionTokens: try r.get("completion_tokens"), cachedTokens: try r.get("cached_tokens"), totalMsSum: try r.get("total_ms_sum"),
            histograms: (try r.get("total_ms_hist"), try r.get("ttft_ms_hist"), try r.get("prompt_tps_hist"), try r.get("generation_tps_hist")))
    }

    public func usageRollups(from: Date, to: Date, modelLevel: Bool) async throws -> [(UsageRollupKey, UsageRollup)] {
        var out: [(UsageRollupKey, UsageRollup)] = []
        for piece in UsageRollups.cover(from: from, to: to) {
            let rows = try await client.query("""
                SELECT * FROM usage_rollup WHERE span = \(piece.span) AND bucket >= \(piece.from) AND bucket < \(piece.to)
                  AND (team = \(UsageRollups.allTeams)) = \(modelLevel)
                """, logger: logger)
            for try await row in rows {
                let r = row.makeRandomAccess()
                let key = UsageRollupKey(span: piece.span, bucket: try r.get("bucket"), team: try r.get("team"), keyPrefix: try r.get("key_prefix"),
                                         model: try r.get("model"), statusClass: try r.get("status_class"))
                out.append((key, try Self.rollup(r)))
            }
        }
        return out
    }

    public func usageSums(from: Date, to: Date, group: UsageGroup, unit: Int) async throws -> [(bucket: Int, group: String, sums: UsageRollup)] {
        let column = ["team": "team", "keyPrefix": "key_prefix", "model": "model"][group.rawValue]!
        var out: [(bucket: Int, group: String, sums: UsageRollup)] = []
        for piece in UsageRollups.cover(from: from, to: to) {
            var rows: [(bucket: Int, group: String, sums: UsageRollup)] = []
            let result = try await client.query("""
                SELECT (bucket / \(unit)) * \(unit), \(unescaped: column), SUM(requests)::BIGINT, SUM(errors)::BIGINT, SUM(prompt_tokens)::BIGINT,
                  SUM(completion_tokens)::BIGINT, SUM(cached_tokens)::BIGINT, SUM(total_ms_sum)::FLOAT8
                FROM usage_rollup WHERE span = \(piece.span) AND bucket >= \(piece.from) AND bucket < \(piece.to)
                  AND team <> \(UsageRollups.allTeams) GROUP BY 1, 2
                """, logger: logger)
            for try await (bucket, name, requests, errors, prompt, completion, cached, total) in result.decode((Int, String, Int, Int, Int, Int, Int, Double).self) {
                var sums = UsageRollup()
                sums.requests = requests
                sums.errors = errors
                sums.promptTokens = prompt
                sums.completionTokens = completion
                sums.cachedTokens = cached
                sums.totalMsSum = total
                rows.append((bucket, name, sums))
            }
            out.merge(rows)
        }
        return out
    }

    /// Recounts the rollups of every bucket from the hour of the oldest raw row kept; older
    /// rollups (whose rows retention removed) stay.
    public func rebuildUsageRollups() async throws {
        var oldest: Date?
        for try await ts in try await client.query("SELECT MIN(ts) FROM usage", logger: logger).decode(Date?.self) { oldest = ts }
        guard let oldest else { return }
        let hourStart = Int(oldest.timeIntervalSince1970.rounded(.down)) / UsageRollups.hour * UsageRollups.hour
        let since = Date(timeIntervalSince1970: Double(hourStart))
        var deltas: [UsageRollupKey: UsageRollup] = [:]
        // Read in pages by time so memory stays bounded whatever the ledger holds.
        var cursor = since
        var seen = Set<String>()
        while true {
            let page = try await usageRowsAscending(from: cursor, limit: 50_000)
            let fresh = page.filter { !seen.contains($0.requestID) }
            for (k, v) in UsageRollups.aggregate(fresh) { deltas[k, default: UsageRollup()].merge(v) }
            guard page.count == 50_000, let last = page.last?.ts else { break }
            // Rows at the page's last instant may continue on the next page: remember them.
            seen = Set(page.filter { $0.ts == last }.map(\.requestID))
            cursor = last
        }
        try await write { tx in
            try await tx.query("SELECT pg_advisory_xact_lock(\(Self.rollupLock))", logger: logger)
            try await tx.query("DELETE FROM usage_rollup WHERE bucket >= \(hourStart)", logger: logger)
            try await applyRollups(tx, deltas)
        }
    }

    func usageRowsAscending(from: Date, limit: Int) async throws -> [LedgerRow] {
        var out: [LedgerRow] = []
        let rows = try await client.query("""
            SELECT \(unescaped: Self.ledgerColumns) FROM usage WHERE ts >= \(from) ORDER BY ts LIMIT \(limit)
            """, logger: logger)
        for try await row in rows { out.append(try Self.ledgerRow(row.makeRandomAccess())) }
        return out
    }

    public func pruneUsage(before cutoff: Date, limit: Int) async throws -> Int {
        var n = 0
        let rows = try await client.query("""
            WITH gone AS (DELETE FROM usage WHERE ctid IN (SELECT ctid FROM usage WHERE ts < \(cutoff) LIMIT \(limit)) RETURNING 1)
            SELECT COUNT(*)::BIGINT FROM gone
            """, logger: logger)
        for try await count in rows.decode(Int.self) { n = count }
        return n
    }

    public func pruneUsageRollups(span: Int, before cutoff: Date, limit: Int) async throws -> Int {
        var n = 0
        let bucket = Int(cutoff.timeIntervalSince1970)
        let rows = try await client.query("""
            WITH gone AS (DELETE FROM usage_rollup WHERE ctid IN
              (SELECT ctid FROM usage_rollup WHERE span = \(span) AND bucket < \(bucket) LIMIT \(limit)) RETURNING 1)
            SELECT COUNT(*)::BIGINT FROM gone
            """, logger: logger)
        for try await count in rows.decode(Int.self) { n = count }
        return n
    }
}
