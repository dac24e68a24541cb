import Foundation
import GRDB
import Logging
import Store
import Synchronization
import Testing

@testable import Usage

/// Random ledger rows over a few hours: teams, keys, models, statuses and timings.
func randomRows(count: Int, start: Date, hours: Double, seed: UInt64) -> [LedgerRow] {
    var rng = SplitMix(seed)
    let teams: [String?] = [nil, "team-a", "team-b"]
    let models = ["chat", "embed", "other"]
    let statuses = [200, 200, 200, 400, 404, 429, 500, 502]
    return (0..<count).map { i in
        let team = teams[Int(rng.next() % 3)]
        let key = team.map { "ck-\($0.suffix(1))\(rng.next() % 2)" }
        let ts = start.addingTimeInterval(Double(rng.next() % UInt64(hours * 3_600_000)) / 1000)
        let ok = rng.next() % 5 != 0
        return LedgerRow(
            requestID: "r\(seed)-\(i)", ts: ts, team: team, keyPrefix: key, model: models[Int(rng.next() % 3)], route: "/v1/chat/completions",
            status: ok ? 200 : statuses[Int(rng.next() % UInt64(statuses.count))], errorKind: nil,
            promptTokens: ok ? Int(rng.next() % 500) : nil, cachedTokens: ok ? Int(rng.next() % 50) : nil, completionTokens: ok ? Int(rng.next() % 200) : nil,
            queueMs: 0, loadMs: 0, ttftMs: ok ? Double(rng.next() % 10_000) / 10 + 0.1 : nil, totalMs: Double(rng.next() % 100_000) / 10 + 0.1,
            promptTPS: ok ? Double(rng.next() % 5000) + 1 : nil, generationTPS: ok ? Double(rng.next() % 300) + 1 : nil, clientDisconnected: false)
    }
}

struct SplitMix {
    var state: UInt64
    init(_ seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

/// Sums over raw rows, the way the old SQL did: by group and bucket label.
func rawSums(_ rows: [LedgerRow], group: (LedgerRow) -> String?, daily: Bool) -> [String: (requests: Int, errors: Int, prompt: Int, completion: Int, cached: Int)] {
    var out: [String: (Int, Int, Int, Int, Int)] = [:]
    let f = DateFormatter()
    f.timeZone = TimeZone(identifier: "UTC")
    f.locale = Locale(identifier: "en_US_POSIX")
    f.dateFormat = daily ? "yyyy-MM-dd" : "yyyy-MM-dd'T'HH:00"
    for r in rows {
        let k = f.string(from: r.ts) + "|" + (group(r) ?? "-")
        let was = out[k] ?? (0, 0, 0, 0, 0)
        out[k] = (was.0 + 1, was.1 + (r.status >= 400 ? 1 : 0), was.2 + (r.promptTokens ?? 0), was.3 + (r.completionTokens ?? 0), was.4 + (r.cachedTokens ?? 0))
    }
    return out
}

struct UsageRollupTests {
    /// 2026-11-30 21:17:43 UTC: not on an hour, so every range has minute ends.
    static let start = Date(timeIntervalSince1970: 1_796_073_463)

    @Test(arguments: [1, 2, 3])
    func rollupsEqualSumsOverRawRows(seed: UInt64) async throws {
        let store = try Store.inMemory()
        let rows = randomRows(count: 3000, start: Self.start, hours: 30, seed: seed)
        // Written in uneven batches, with some rows written twice (a retried batch): counted once.
        var i = 0
        var rng = SplitMix(seed)
        while i < rows.count {
            let n = Int(rng.next() % 400) + 1
            let batch = Array(rows[i..<min(rows.count, i + n)])
            try await store.appendUsage(batch)
            if rng.next() % 3 == 0 { try await store.appendUsage(Array(batch.prefix(20))) }
            i += n
        }
        let from = Self.start.addingTimeInterval(-60), to = Self.start.addingTimeInterval(31 * 3600)
        for (group, column) in [("model", { (r: LedgerRow) in Optional(r.model) }), ("team", { $0.team }), ("keyPrefix", { $0.keyPrefix })] {
            for daily in [true, false] {
                let expected = rawSums(rows, group: column, daily: daily)
                let got = try await store.usageSummary(from: from, to: to, group: group, bucketFormat: daily ? "%Y-%m-%d" : "%Y-%m-%dT%H:00")
                #expect(got.count == expected.count, "\(group) daily=\(daily)")
                for b in got {
                    let e = try #require(expected[b.bucket + "|" + (b.group ?? "-")], "\(b.bucket) \(b.group ?? "-")")
                    #expect(b.requests == e.requests && b.errors == e.errors && b.promptTokens == e.prompt && b.completionTokens == e.completion
                            && b.cachedTokens == e.cached, "\(group) \(b.bucket) \(b.group ?? "-")")
                }
                // Ordered by bucket, then group.
                #expect(got.map(\.bucket) == got.map(\.bucket).sorted())
            }
        }
        // Budgets read at start come from rollups too: tokens per team and key since a moment.
        let since = Self.start.addingTimeInterval(5 * 3600 - Self.start.timeIntervalSince1970.truncatingRemainder(dividingBy: 3600))
        let used = try await store.tokensUsed(since: since)
        var teams: [String: Int] = [:]
        for r in rows where r.ts >= since { if let t = r.team { teams[t, default: 0] += (r.promptTokens ?? 0) + (r.completionTokens ?? 0) } }
        #expect(used.teams == teams)
        #expect(try await store.usageCount() == rows.count)
    }

    @Test func statsPercentilesAreWithinAHistogramBucketOfExact() async throws {
        let store = try Store.inMemory()
        let rows = randomRows(count: 2000, start: Self.start, hours: 2, seed: 9)
        try await store.appendUsage(rows)
        let stats = try await store.modelStats(from: Self.start, to: Self.start.addingTimeInterval(3 * 3600))
        for m in stats {
            let mine = rows.filter { $0.model == m.model }
            #expect(m.usage.requests == mine.count)
            let sorted = mine.map(\.totalMs).sorted()
            for q in [0.5, 0.95, 0.99] {
                let exact = sorted[Int((q * Double(sorted.count - 1)).rounded())]
                let approximate = try #require(m.usage.totalMs.quantile(q))
                #expect(abs(approximate - exact) / exact < 0.1, "\(m.model) p\(q): \(approximate) vs \(exact)")
            }
        }
    }

    @Test func rebuildingCountsTheRowsKeptOnce() async throws {
        let store = try Store.inMemory()
        let rows = randomRows(count: 500, start: Self.start, hours: 3, seed: 4)
        try await store.appendUsage(rows)
        let window = (from: Self.start, to: Self.start.addingTimeInterval(4 * 3600))
        let before = try await store.usageRollups(from: window.from, to: window.to, modelLevel: false)
            + store.usageRollups(from: window.from, to: window.to, modelLevel: true)
        try await store.rebuildUsageRollups()
        let after = try await store.usageRollups(from: window.from, to: window.to, modelLevel: false)
            + store.usageRollups(from: window.from, to: window.to, modelLevel: true)
        // Each row counted once per level.
        #expect(before.map(\.1.requests).reduce(0, +) == 1000)
        #expect(after.map(\.1.requests).reduce(0, +) == 1000)
        // The same rollups, but for the order floating-point sums were added in.
        func comparable(_ list: [(UsageRollupKey, UsageRollup)]) -> [UsageRollupKey: UsageRollup] {
            Dictionary(uniqueKeysWithValues: list.map { key, r in
                var r = r
                r.totalMsSum = (r.totalMsSum * 1000).rounded() / 1000
                return (key, r)
            })
        }
        #expect(comparable(before) == comparable(after))
    }

    @Test func retentionPrunesOnlyWhatIsPastItsAge() async throws {
        let store = try Store.inMemory()
        let now = Self.start.addingTimeInterval(40 * 86_400)
        // Rows 45 to 31 days old (past 30), and 29 to 1 days old (kept).
        let old = randomRows(count: 300, start: now.addingTimeInterval(-45 * 86_400), hours: 14 * 24, seed: 5)
        let recent = randomRows(count: 300, start: now.addingTimeInterval(-29 * 86_400), hours: 28 * 24, seed: 6)
        try await store.appendUsage(old + recent)
        let retention = UsageRetention(store: store, retainDays: 30, retainRollupDays: 400, logger: Logger(label: "test"), batch: 7, now: { now })
        let removed = try await retention.pruneOnce()
        #expect(removed.rows == 300)
        #expect(try await store.usageCount() == 300)
        let kept = try await store.usageRows(from: .distantPast, to: .distantFuture, team: nil, model: nil, limit: 1000)
        #expect(Set(kept.map(\.requestID)) == Set(recent.map(\.requestID)))
        // Hourly rollups of the pruned rows stay (inside their own 400 days): totals still count them.
        let totals = try await store.usageTotalsByModel()
        #expect(totals.values.map(\.requests).reduce(0, +) == 600)
        // Past the rollups' own age they go too.
        let late = UsageRetention(store: store, retainDays: 30, retainRollupDays: 31, logger: Logger(label: "test"), now: { now })
        try await late.pruneOnce()
        #expect(try await store.usageTotalsByModel().values.map(\.requests).reduce(0, +) == 300)
    }

    @Test func histogramRoundTripsAndRefusesDamagedText() throws {
        var h = LogHistogram()
        for v in [0.5, 1, 2, 2, 1000, 1e9] { h.add(v) }
        #expect(LogHistogram(encoded: h.encoded) == h)
        #expect(LogHistogram(encoded: "") == LogHistogram())
        #expect(LogHistogram(encoded: "12:x") == nil && LogHistogram(encoded: "999:1") == nil)
    }
}

struct LedgerBoundTests {
    @Test func aFullQueueRefusesAndLosesNothing() async throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("ledger-\(UInt64.random(in: 0 ... .max))").path
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let path = directory + "/ledger.sqlite"
        let file = try Store.open(path: path)
        let ledger = UsageLedger(store: file, logger: Logger(label: "test"), capacity: 5)
        func record(_ i: Int) {
            ledger.record(RequestRecord(requestID: "q\(i)", route: "/v1/chat/completions", model: "m", status: 200, queueMs: 0, loadMs: 0,
                                        timeToFirstByteMs: 1, totalMs: 2, clientDisconnected: false))
        }
        // Another connection holds the database's write lock: the ledger's writes fail for real.
        var configuration = Configuration()
        configuration.allowsUnsafeTransactions = true
        configuration.busyMode = .immediateError
        let blocker = try DatabaseQueue(path: path, configuration: configuration)
        try await blocker.writeWithoutTransaction { db in try db.execute(sql: "BEGIN EXCLUSIVE") }
        for i in 0..<5 {
            #expect(ledger.hasRoom)
            record(i)
        }
        #expect(!ledger.hasRoom)
        await ledger.flush()
        #expect(!ledger.hasRoom && ledger.pendingCount == 5 && ledger.problem != nil)
        // An admitted request still records its row past the bound: nothing is dropped.
        record(5)
        #expect(ledger.pendingCount == 6)
        try await blocker.writeWithoutTransaction { db in try db.execute(sql: "COMMIT") }
        await ledger.flush()
        #expect(ledger.hasRoom && ledger.pendingCount == 0 && ledger.problem == nil)
        #expect(try await file.usageCount() == 6)
        let rollups = try await file.usageRollups(from: Date().addingTimeInterval(-120), to: Date().addingTimeInterval(120), modelLevel: false)
        #expect(rollups.filter { $0.0.span == 60 }.map(\.1.requests).reduce(0, +) == 6)
    }
}
