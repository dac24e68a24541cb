import Foundation

/// A histogram over positive values in logarithmic buckets: eight per doubling (each about 9 %
/// wide), from 2⁻²⁰ to 2³⁰. Good for p50/p95/p99 of durations (ms) and token rates within a
/// bucket's width; merging two is adding counts, so rollups of any span can be combined.
public struct LogHistogram: Sendable, Equatable {
    static let perDoubling = 8.0
    static let offset = 160
    static let bucketCount = 400

    /// Count per bucket index (sparse).
    public private(set) var counts: [Int: Int] = [:]
    public private(set) var total = 0

    public init() {}

    static func index(_ value: Double) -> Int {
        guard value > 0, value.isFinite else { return 0 }
        let i = Int((log2(value) * perDoubling).rounded(.down)) + offset
        return min(max(i, 0), bucketCount - 1)
    }

    /// The value a bucket stands for (its geometric middle).
    static func value(_ index: Int) -> Double { exp2((Double(index - offset) + 0.5) / perDoubling) }

    public mutating func add(_ value: Double?) {
        guard let value else { return }
        counts[Self.index(value), default: 0] += 1
        total += 1
    }

    public mutating func merge(_ other: LogHistogram) {
        for (i, n) in other.counts { counts[i, default: 0] += n }
        total += other.total
    }

    /// The value at quantile `q` (the same rank rule as over raw values: `round(q·(n−1))`).
    public func quantile(_ q: Double) -> Double? {
        guard total > 0 else { return nil }
        let rank = Int((q * Double(total - 1)).rounded())
        var seen = 0
        for i in counts.keys.sorted() {
            seen += counts[i]!
            if seen > rank { return Self.value(i) }
        }
        return nil
    }

    /// `index:count,…` in index order ("" when empty): small, and readable in SQL.
    public var encoded: String {
        counts.keys.sorted().map { "\($0):\(counts[$0]!)" }.joined(separator: ",")
    }

    /// Reads ``encoded``; nil when the text is not a histogram (a damaged row fails loudly).
    /// A byte loop: statistics over a day read tens of thousands of these.
    public init?(encoded text: String) {
        var index = 0, count = 0, digits = 0
        var readingCount = false
        func close() -> Bool {
            guard readingCount, digits > 0, (0..<Self.bucketCount).contains(index) else { return false }
            counts[index, default: 0] += count
            total += count
            index = 0; count = 0; digits = 0; readingCount = false
            return true
        }
        var any = false
        for byte in text.utf8 {
            switch byte {
            case UInt8(ascii: "0")...UInt8(ascii: "9"):
                let d = Int(byte - UInt8(ascii: "0"))
                if readingCount { count = count * 10 + d } else { index = index * 10 + d }
                digits += 1
                guard digits <= 18 else { return nil }
            case UInt8(ascii: ":"):
                guard !readingCount, digits > 0 else { return nil }
                readingCount = true
                digits = 0
            case UInt8(ascii: ","):
                guard close() else { return nil }
            default:
                return nil
            }
            any = true
        }
        if any { guard close() else { return nil } }
    }
}

/// The group one rollup row counts: a time bucket of a span, a team, a key, a model and a status
/// class (2 for 2xx, 4 for 4xx, 5 for 5xx …). Team and key are "" in open mode.
public struct UsageRollupKey: Sendable, Hashable {
    public var span: Int
    public var bucket: Int
    public var team: String
    public var keyPrefix: String
    public var model: String
    public var statusClass: Int

    public init(span: Int, bucket: Int, team: String, keyPrefix: String, model: String, statusClass: Int) {
        self.span = span
        self.bucket = bucket
        self.team = team
        self.keyPrefix = keyPrefix
        self.model = model
        self.statusClass = statusClass
    }
}

/// Sums and histograms of the ledger rows in one group.
public struct UsageRollup: Sendable, Equatable {
    public var requests = 0
    public var errors = 0
    public var promptTokens = 0
    public var completionTokens = 0
    public var cachedTokens = 0
    public var totalMsSum = 0.0
    public var totalMs = LogHistogram()
    public var ttftMs = LogHistogram()
    public var promptTPS = LogHistogram()
    public var generationTPS = LogHistogram()

    public init() {}

    /// A stored rollup: its sums and its four histograms as ``LogHistogram/encoded`` text
    /// (duration, TTFT, prompt and generation tokens/s); a damaged histogram fails the read.
    public init(requests: Int, errors: Int, promptTokens: Int, completionTokens: Int, cachedTokens: Int, totalMsSum: Double,
                histograms: (totalMs: String, ttftMs: String, promptTPS: String, generationTPS: String)) throws(UsageRollupDamaged) {
        self.requests = requests
        self.errors = errors
        self.promptTokens = promptTokens
        self.completionTokens = completionTokens
        self.cachedTokens = cachedTokens
        self.totalMsSum = totalMsSum
        func read(_ text: String, _ what: String) throws(UsageRollupDamaged) -> LogHistogram {
            guard let h = LogHistogram(encoded: text) else { throw UsageRollupDamaged("a usage rollup's \(what) histogram cannot be read: '\(text.prefix(80))'") }
            return h
        }
        totalMs = try read(histograms.totalMs, "duration")
        ttftMs = try read(histograms.ttftMs, "time to first token")
        promptTPS = try read(histograms.promptTPS, "prompt tokens/s")
        generationTPS = try read(histograms.generationTPS, "generation tokens/s")
    }

    public mutating func add(_ r: LedgerRow) {
        requests += 1
        if r.status >= 400 { errors += 1 }
        promptTokens += r.promptTokens ?? 0
        completionTokens += r.completionTokens ?? 0
        cachedTokens += r.cachedTokens ?? 0
        totalMsSum += r.totalMs
        totalMs.add(r.totalMs)
        ttftMs.add(r.ttftMs)
        promptTPS.add(r.promptTPS)
        generationTPS.add(r.generationTPS)
    }

    public mutating func merge(_ o: UsageRollup) {
        requests += o.requests
        errors += o.errors
        promptTokens += o.promptTokens
        completionTokens += o.completionTokens
        cachedTokens += o.cachedTokens
        totalMsSum += o.totalMsSum
        totalMs.merge(o.totalMs)
        ttftMs.merge(o.ttftMs)
        promptTPS.merge(o.promptTPS)
        generationTPS.merge(o.generationTPS)
    }
}

/// How ledger rows become rollups: per minute and per hour, by team, key, model and status class.
public enum UsageRollups {
    public static let minute = 60
    public static let hour = 3600
    public static let spans = [minute, hour]
    /// The team and key of model-level rollups (every team and key together). Never a team id
    /// (`team-…`) nor a key prefix (`ck-…`); every read says which level it wants.
    public static let allTeams = "*"

    /// The rollup deltas of `rows` (rows already written once must not be passed again): one per
    /// team, key, model and status class, and one per model and status class (``allTeams``).
    public static func aggregate(_ rows: [LedgerRow]) -> [UsageRollupKey: UsageRollup] {
        var out: [UsageRollupKey: UsageRollup] = [:]
        for r in rows {
            let t = Int(r.ts.timeIntervalSince1970.rounded(.down))
            for span in spans {
                let bucket = t - ((t % span) + span) % span
                let key = UsageRollupKey(span: span, bucket: bucket, team: r.team ?? "", keyPrefix: r.keyPrefix ?? "", model: r.model, statusClass: r.status / 100)
                out[key, default: UsageRollup()].add(r)
                // The same row at the model level, for statistics per model without reading
                // every team's and key's rollups.
                let all = UsageRollupKey(span: span, bucket: bucket, team: allTeams, keyPrefix: allTeams, model: r.model, statusClass: r.status / 100)
                out[all, default: UsageRollup()].add(r)
            }
        }
        return out
    }

    /// The pieces that cover `[from, to)` at minute resolution: whole hours from hour rollups,
    /// the minutes at either end from minute rollups. `from` is taken down and `to` up to the minute.
    public static func cover(from: Date, to: Date) -> [(span: Int, from: Int, to: Int)] {
        let start = Int(from.timeIntervalSince1970.rounded(.down)) / minute * minute
        let endSeconds = Int(to.timeIntervalSince1970.rounded(.up))
        let end = (endSeconds + minute - 1) / minute * minute
        guard end > start else { return [] }
        let firstHour = (start + hour - 1) / hour * hour
        let lastHour = end / hour * hour
        guard firstHour < lastHour else { return [(minute, start, end)] }
        var pieces: [(Int, Int, Int)] = []
        if start < firstHour { pieces.append((minute, start, firstHour)) }
        pieces.append((hour, firstHour, lastHour))
        if lastHour < end { pieces.append((minute, lastHour, end)) }
        return pieces
    }
}

/// What `/admin/usage` sums by.
public enum UsageGroup: String, Sendable, CaseIterable {
    case team
    case keyPrefix
    case model
}

extension [(bucket: Int, group: String, sums: UsageRollup)] {
    /// Adds rows of one rollup piece into `self`, merging equal (bucket, group) pairs.
    public mutating func merge(_ rows: [(bucket: Int, group: String, sums: UsageRollup)]) {
        var index: [String: Int] = [:]
        for (i, r) in enumerated() { index["\(r.bucket)|\(r.group)"] = i }
        for r in rows {
            if let i = index["\(r.bucket)|\(r.group)"] { self[i].sums.merge(r.sums) } else {
                index["\(r.bucket)|\(r.group)"] = count
                append(r)
            }
        }
    }
}

/// Usage statistics for one model over a window, from rollups.
public struct ModelUsageStats: Sendable {
    public var model: String
    public var usage: UsageRollup

    public init(model: String, usage: UsageRollup) {
        self.model = model
        self.usage = usage
    }
}

/// A stored rollup that cannot be read (a damaged histogram): reads fail rather than guess.
public struct UsageRollupDamaged: Error, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}
