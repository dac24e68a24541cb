import Foundation
import Jobs
import Store

/// McNemar's test on paired pass/fail outcomes: did two runs differ on the same items by more
/// than chance?
public enum McNemar {
    /// The two-sided p-value for `onlyA` items passed by A alone and `onlyB` by B alone: the exact
    /// binomial test (each discordant item equally likely to go either way).
    public static func pValue(onlyA: Int, onlyB: Int) -> Double {
        let n = onlyA + onlyB
        guard n > 0 else { return 1 }
        let k = min(onlyA, onlyB)
        var tail = 0.0
        for i in 0...k { tail += exp(logChoose(n, i) - Double(n) * log(2)) }
        return min(1, 2 * tail)
    }

    static func logChoose(_ n: Int, _ k: Int) -> Double {
        lgamma(Double(n + 1)) - lgamma(Double(k + 1)) - lgamma(Double(n - k + 1))
    }
}

/// Wilson's score interval for a proportion: better than p ± 1.96·√(p(1−p)/n) for small n and
/// for rates near 0 or 1.
public enum Wilson {
    /// The 95 % interval for `successes` of `trials` (nil for no trials).
    public static func interval(successes: Int, trials: Int, z: Double = 1.959964) -> (low: Double, high: Double)? {
        guard trials > 0 else { return nil }
        let n = Double(trials), p = Double(successes) / n
        let denominator = 1 + z * z / n
        let center = (p + z * z / (2 * n)) / denominator
        let half = z * ((p * (1 - p) / n + z * z / (4 * n * n)).squareRoot()) / denominator
        return (max(0, center - half), min(1, center + half))
    }
}

/// Runs side by side (`GET /admin/evaluations/compare`): per run its pass rate and speed, per
/// item each run's status and answer, and per pair of runs the pass-rate difference with
/// McNemar's p-value.
public struct EvalComparison: Codable, Sendable, Equatable {
    public struct Run: Codable, Sendable, Equatable {
        public var id: String
        public var evalID: String
        public var model: String
        public var status: String
        public var items: Int
        public var passRate: Double
        public var meanTotalMs: Double?
        public var meanTTFTMs: Double?
        public var meanGenerationTokensPerSecond: Double?

        enum CodingKeys: String, CodingKey {
            case id, model, status, items
            case evalID = "eval_id", passRate = "pass_rate", meanTotalMs = "mean_total_ms", meanTTFTMs = "mean_ttft_ms"
            case meanGenerationTokensPerSecond = "mean_generation_tokens_per_second"
        }

        public func encode(to encoder: any Encoder) throws {
            var c = encoder.container(keyedBy: CodingKeys.self)
            try c.encode(id, forKey: .id)
            try c.encode(evalID, forKey: .evalID)
            try c.encode(model, forKey: .model)
            try c.encode(status, forKey: .status)
            try c.encode(items, forKey: .items)
            try c.encode(passRate, forKey: .passRate)
            // Null where the run has no timing.
            try c.encode(meanTotalMs, forKey: .meanTotalMs)
            try c.encode(meanTTFTMs, forKey: .meanTTFTMs)
            try c.encode(meanGenerationTokensPerSecond, forKey: .meanGenerationTokensPerSecond)
        }
    }

    /// One item across the runs.
    public struct Item: Codable, Sendable, Equatable {
        /// One run's outcome on the item: only `status` ("missing") where the run has no such item.
        public struct Outcome: Codable, Sendable, Equatable {
            public var status: JobJSON
            public var output: JobJSON?
            public var totalMs: JobJSON?
            public var ttftMs: JobJSON?
            enum CodingKeys: String, CodingKey { case status, output, totalMs = "total_ms", ttftMs = "ttft_ms" }
        }
        public var index: Int
        /// The item (null when no run kept it).
        public var item: JobJSON
        public var runs: [Outcome]
    }

    /// Two runs compared over the items both graded; speed deltas are b minus a (null where
    /// either run has no timing).
    public struct Pair: Codable, Sendable, Equatable {
        public var a: String
        public var b: String
        public var pairedItems: Int
        public var bothPass: Int
        public var onlyAPasses: Int
        public var onlyBPasses: Int
        public var neither: Int
        public var passRateDifference: Double
        public var mcnemarP: Double
        public var totalMsDelta: Double?
        public var ttftMsDelta: Double?
        public var generationTokensPerSecondDelta: Double?

        enum CodingKeys: String, CodingKey {
            case a, b, neither
            case pairedItems = "paired_items", bothPass = "both_pass", onlyAPasses = "only_a_passes", onlyBPasses = "only_b_passes"
            case passRateDifference = "pass_rate_difference", mcnemarP = "mcnemar_p", totalMsDelta = "total_ms_delta", ttftMsDelta = "ttft_ms_delta"
            case generationTokensPerSecondDelta = "generation_tokens_per_second_delta"
        }

        public func encode(to encoder: any Encoder) throws {
            var c = encoder.container(keyedBy: CodingKeys.self)
            try c.encode(a, forKey: .a)
            try c.encode(b, forKey: .b)
            try c.encode(pairedItems, forKey: .pairedItems)
            try c.encode(bothPass, forKey: .bothPass)
            try c.encode(onlyAPasses, forKey: .onlyAPasses)
            try c.encode(onlyBPasses, forKey: .onlyBPasses)
            try c.encode(neither, forKey: .neither)
            try c.encode(passRateDifference, forKey: .passRateDifference)
            try c.encode(mcnemarP, forKey: .mcnemarP)
            try c.encode(totalMsDelta, forKey: .totalMsDelta)
            try c.encode(ttftMsDelta, forKey: .ttftMsDelta)
            try c.encode(generationTokensPerSecondDelta, forKey: .generationTokensPerSecondDelta)
        }
    }

    public var runs: [Run]
    public var items: [Item]
    public var pairs: [Pair]
}

extension Evaluations {
    /// One graded item of a run as compare reads it: its status (the majority over its
    /// repetitions), the item, and the first repetition's sample.
    struct ComparedItem {
        var status: JobJSON?
        var item: JobJSON?
        var sample: JobJSON?

        var passed: Bool { status?.stringValue == "pass" }
        var timings: JobJSON? { sample?["timings"].flatMap { $0.objectValue == nil ? nil : $0 } }
    }

    /// Runs side by side (`GET /admin/evaluations/compare`), 2 to 5 of them.
    public func compare(_ runIDs: [String]) async throws(EvalError) -> EvalComparison {
        guard (2...5).contains(runIDs.count) else { throw .badRequest("compare takes 2 to 5 run ids", param: "runs") }
        var outcomes: [[Int: ComparedItem]] = []
        var summaries: [EvalComparison.Run] = []
        for id in runIDs {
            let job: JobRecord?
            do { job = try await engine.get(id) } catch { throw .storage("\(error)") }
            guard let job, job.kind == EvalRunJob.name, let spec = try? job.spec.decode(EvalRunSpec.self) else { throw .notFound("no run '\(id)'") }
            let rows: [Data]
            do { rows = try await store.evalOutputItems(run: id, status: nil, after: nil, limit: 1_000_000, descending: false) } catch { throw .storage("\(error)") }
            // An item asked several times (repetitions) counts as passing when most of its
            // repetitions passed; the first repetition's answer is shown.
            var byIndex: [Int: ComparedItem] = [:]
            var tally: [Int: (passes: Int, runs: Int)] = [:]
            for row in rows {
                guard let item = try? JobCoding.decoder.decode(JobJSON.self, from: row), item.objectValue != nil,
                    let index = item["datasource_item_id"]?.intValue
                else { continue }
                if byIndex[index] == nil { byIndex[index] = ComparedItem(status: item["status"], item: item["datasource_item"], sample: item["sample"]) }
                tally[index, default: (0, 0)].runs += 1
                if item["status"]?.stringValue == "pass" { tally[index, default: (0, 0)].passes += 1 }
            }
            for (index, t) in tally where t.runs > 1 {
                byIndex[index]?.status = .string(2 * t.passes > t.runs ? "pass" : "fail")
            }
            outcomes.append(byIndex)
            let passed = byIndex.values.filter(\.passed).count
            let timings = byIndex.values.compactMap(\.timings)
            func mean(_ key: String) -> Double? {
                let values = timings.compactMap { $0[key]?.doubleValue }
                return values.isEmpty ? nil : values.reduce(0, +) / Double(values.count)
            }
            summaries.append(EvalComparison.Run(
                id: id, evalID: spec.evalID, model: spec.model ?? "", status: Self.status(job.state), items: byIndex.count,
                passRate: byIndex.isEmpty ? 0 : Double(passed) / Double(byIndex.count), meanTotalMs: mean("total_ms"),
                meanTTFTMs: mean("time_to_first_token_ms"), meanGenerationTokensPerSecond: mean("generation_tokens_per_second")))
        }
        let indices = Set(outcomes.flatMap(\.keys)).sorted()
        let items = indices.map { index in
            EvalComparison.Item(
                index: index, item: outcomes.lazy.compactMap { $0[index]?.item }.first ?? .null,
                runs: outcomes.map { o in
                    guard let item = o[index] else { return .init(status: .string("missing")) }
                    return .init(status: item.status ?? .string(""), output: Self.answer(item.sample), totalMs: item.timings?["total_ms"] ?? .null,
                                 ttftMs: item.timings?["time_to_first_token_ms"] ?? .null)
                })
        }
        var pairs: [EvalComparison.Pair] = []
        for a in 0..<outcomes.count {
            for b in (a + 1)..<outcomes.count {
                var counts = (both: 0, onlyA: 0, onlyB: 0, neither: 0)
                for index in indices {
                    guard let x = outcomes[a][index]?.status?.stringValue, let y = outcomes[b][index]?.status?.stringValue else { continue }
                    switch (x == "pass", y == "pass") {
                    case (true, true): counts.both += 1
                    case (true, false): counts.onlyA += 1
                    case (false, true): counts.onlyB += 1
                    case (false, false): counts.neither += 1
                    }
                }
                let paired = counts.both + counts.onlyA + counts.onlyB + counts.neither
                let (x, y) = (summaries[a], summaries[b])
                pairs.append(EvalComparison.Pair(
                    a: runIDs[a], b: runIDs[b], pairedItems: paired, bothPass: counts.both, onlyAPasses: counts.onlyA, onlyBPasses: counts.onlyB,
                    neither: counts.neither, passRateDifference: paired == 0 ? 0 : Double(counts.onlyB - counts.onlyA) / Double(paired),
                    mcnemarP: McNemar.pValue(onlyA: counts.onlyA, onlyB: counts.onlyB),
                    totalMsDelta: Self.delta(x.meanTotalMs, y.meanTotalMs), ttftMsDelta: Self.delta(x.meanTTFTMs, y.meanTTFTMs),
                    generationTokensPerSecondDelta: Self.delta(x.meanGenerationTokensPerSecond, y.meanGenerationTokensPerSecond)))
            }
        }
        return EvalComparison(runs: summaries, items: items, pairs: pairs)
    }

    /// The first output message's content ("" when the sample has none).
    static func answer(_ sample: JobJSON?) -> JobJSON {
        guard let output = sample?["output"]?.arrayValue, output.allSatisfy({ $0.objectValue != nil }) else { return .string("") }
        return output.first?["content"] ?? .string("")
    }

    static func delta(_ a: Double?, _ b: Double?) -> Double? {
        guard let a, let b else { return nil }
        return b - a
    }
}
