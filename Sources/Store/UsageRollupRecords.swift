import Foundation
import GRDB

/// Usage rollups and retention in SQLite: rollup rows are written in the same transaction as the
/// ledger rows they count, so they always equal sums over the raw rows; reads for charts and
/// statistics cost what the buckets asked for, not what the ledger holds.
extension Store {
    static func registerUsageRollupMigrations(_ m: inout DatabaseMigrator) {
        m.registerMigration("v9-usage-rollups") { db in
            try db.execute(sql: """
                CREATE TABLE usage_rollup (
                  span INTEGER NOT NULL, bucket INTEGER NOT NULL, team TEXT NOT NULL, keyPrefix TEXT NOT NULL, model TEXT NOT NULL,
                  statusClass INTEGER NOT NULL, requests INTEGER NOT NULL, errors INTEGER NOT NULL, promptTokens INTEGER NOT NULL,
                  completionTokens INTEGER NOT NULL, cachedTokens INTEGER NOT NULL, totalMsSum REAL NOT NULL,
                  totalMsHist TEXT NOT NULL, ttftMsHist TEXT NOT NULL, promptTPSHist TEXT NOT NULL, generationTPSHist TEXT NOT NULL,
                  PRIMARY KEY (span, bucket, team, keyPrefix, model, statusClass)
                ) WITHOUT ROWID
                """)
            // Retention deletes and time-range pages read the ledger by time alone; nothing reads
            // it by key any more (budgets come from rollups), so that index goes: one b-tree
            // less to update per row.
            try db.create(index: "usage_ts", on: "usage", columns: ["ts"])
            try db.drop(index: "usage_key_ts")
            // What the ledger held before rollups existed is counted once, here.
            try rebuildRollups(db, since: nil)
        }
    }

    /// Adds `deltas` to the stored rollups (inside the ledger write's transaction).
    static func applyRollups(_ db: Database, _ deltas: [UsageRollupKey: UsageRollup]) throws {
        guard !deltas.isEmpty else { return }
        let select = try db.cachedStatement(sql: """
            SELECT requests, errors, promptTokens, completionTokens, cachedTokens, totalMsSum, totalMsHist, ttftMsHist, promptTPSHist,
              generationTPSHist FROM usage_rollup WHERE span = ? AND bucket = ? AND team = ? AND keyPrefix = ? AND model = ? AND statusClass = ?
            """)
        let upsert = try db.cachedStatement(sql: """
            INSERT OR REPLACE INTO usage_rollup (span, bucket, team, keyPrefix, model, statusClass, requests, errors, promptTokens,
              completionTokens, cachedTokens, totalMsSum, totalMsHist, ttftMsHist, promptTPSHist, generationTPSHist)
            VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
            """)
        for (key, delta) in deltas {
            var merged = delta
            let pk: StatementArguments = [key.span, key.bucket, key.team, key.keyPrefix, key.model, key.statusClass]
            if let row = try Row.fetchOne(select, arguments: pk) { merged.merge(try rollup(row)) }
            try upsert.execute(arguments: pk + [
                merged.requests, merged.errors, merged.promptTokens, merged.completionTokens, merged.cachedTokens, merged.totalMsSum,
                merged.totalMs.encoded, merged.ttftMs.encoded, merged.promptTPS.encoded, merged.generationTPS.encoded,
            ])
        }
    }

    static func rollup(_ row: Row) throws -> UsageRollup {
        try UsageRollup(
            requests: row["requests"], errors: row["errors"], promptTokens: row["promptTokens"], completionTokens: row["completionTokens"],
            cachedTokens: row["cachedTokens"], totalMsSum: row["totalMsSum"],
            histograms: (row["totalMsHist"], row["ttftMsHist"], row["promptTPSHist"], row["generationTPSHist"]))
    }

    /// Recounts the rollups of every bucket from the hour of the oldest raw row kept (or of all
    /// of them when `since` is nil); older rollups, whose raw rows retention removed, stay.
    static func rebuildRollups(_ db: Database, since: Date?) throws {
        guard let oldest = try Date.fetchOne(db, sql: "SELECT MIN(ts) FROM usage") else { return }
        let from = max(since ?? oldest, oldest)
        let hourStart = Int(from.timeIntervalSince1970.rounded(.down)) / UsageRollups.hour * UsageRollups.hour
        try db.execute(sql: "DELETE FROM usage_rollup WHERE bucket >= ?", arguments: [hourStart])
        // Only the columns rollups count, read by position (decoding whole rows through Codable
        // made a 10-million-row rebuild several times slower).
        let cursor = try Row.fetchCursor(db, sql: """
            SELECT ts, team, keyPrefix, model, status, promptTokens, cachedTokens, completionTokens, totalMs, ttftMs, promptTPS, generationTPS
            FROM usage WHERE ts >= ?
            """, arguments: [Date(timeIntervalSince1970: Double(hourStart))])
        var batch: [LedgerRow] = []
        batch.reserveCapacity(50_000)
        var deltas: [UsageRollupKey: UsageRollup] = [:]
        func fold() {
            for (k, v) in UsageRollups.aggregate(batch) { deltas[k, default: UsageRollup()].merge(v) }
            batch.removeAll(keepingCapacity: true)
        }
        while let row = try cursor.next() {
            batch.append(LedgerRow(
                requestID: "", ts: row[0], team: row[1], keyPrefix: row[2], model: row[3], route: "", status: row[4], errorKind: nil,
                promptTokens: row[5], cachedTokens: row[6], completionTokens: row[7], queueMs: 0, loadMs: 0, ttftMs: row[9], totalMs: row[8],
                promptTPS: row[10], generationTPS: row[11], clientDisconnected: false))
            if batch.count == 50_000 { fold() }
        }
        fold()
        try applyRollups(db, deltas)
    }

    /// Recounts the rollups from the raw rows kept (after `store copy`, or rows written by hand).
    public func rebuildUsageRollups() async throws {
        try await writer.write { db in try Self.rebuildRollups(db, since: nil) }
    }

    /// Rollups of one span whose buckets start in `[from, to)`, with their keys.
    func rollups(_ db: Database, span: Int, from: Int, to: Int, modelLevel: Bool) throws -> [(UsageRollupKey, UsageRollup)] {
        let rows = try Row.fetchAll(db, sql: """
            SELECT * FROM usage_rollup WHERE span = ? AND bucket >= ? AND bucket < ? AND (team = ?) = ?
            """, arguments: [span, from, to, UsageRollups.allTeams, modelLevel])
        return try rows.map { row in
            (UsageRollupKey(span: span, bucket: row["bucket"], team: row["team"], keyPrefix: row["keyPrefix"], model: row["model"], statusClass: row["statusClass"]),
             try Self.rollup(row))
        }
    }

    /// Rollups covering `[from, to)` at minute resolution (see ``UsageRollups/cover(from:to:)``), at one level.
    public func usageRollups(from: Date, to: Date, modelLevel: Bool) async throws -> [(UsageRollupKey, UsageRollup)] {
        try await writer.read { db in
            try UsageRollups.cover(from: from, to: to).flatMap { piece in
                try self.rollups(db, span: piece.span, from: piece.from, to: piece.to, modelLevel: modelLevel)
            }
        }
    }

    public func usageSums(from: Date, to: Date, group: UsageGroup, unit: Int) async throws -> [(bucket: Int, group: String, sums: UsageRollup)] {
        try await writer.read { db in
            var out: [(bucket: Int, group: String, sums: UsageRollup)] = []
            for piece in UsageRollups.cover(from: from, to: to) {
                let rows = try Row.fetchAll(db, sql: """
                    SELECT (bucket / ?) * ? AS b, \(group.rawValue) AS g, SUM(requests), SUM(errors), SUM(promptTokens), SUM(completionTokens),
                      SUM(cachedTokens), SUM(totalMsSum)
                    FROM usage_rollup WHERE span = ? AND bucket >= ? AND bucket < ? AND team <> ? GROUP BY b, g
                    """, arguments: [unit, unit, piece.span, piece.from, piece.to, UsageRollups.allTeams])
                out.merge(rows.map { row in
                    var sums = UsageRollup()
                    sums.requests = row[2]
                    sums.errors = row[3]
                    sums.promptTokens = row[4]
                    sums.completionTokens = row[5]
                    sums.cachedTokens = row[6]
                    sums.totalMsSum = row[7]
                    return (row[0], row[1], sums)
                })
            }
            return out
        }
    }

    /// Deletes at most `limit` ledger rows older than `cutoff`; returns how many went.
    public func pruneUsage(before cutoff: Date, limit: Int) async throws -> Int {
        try await writer.write { db in
            try db.execute(sql: "DELETE FROM usage WHERE rowid IN (SELECT rowid FROM usage WHERE ts < ? LIMIT ?)", arguments: [cutoff, limit])
            return db.changesCount
        }
    }

    /// Deletes at most `limit` rollups of `span` whose bucket started before `cutoff`.
    public func pruneUsageRollups(span: Int, before cutoff: Date, limit: Int) async throws -> Int {
        try await writer.write { db in
            try db.execute(sql: """
                DELETE FROM usage_rollup WHERE (span, bucket, team, keyPrefix, model, statusClass) IN
                  (SELECT span, bucket, team, keyPrefix, model, statusClass FROM usage_rollup WHERE span = ? AND bucket < ? LIMIT ?)
                """, arguments: [span, Int(cutoff.timeIntervalSince1970), limit])
            return db.changesCount
        }
    }
}
