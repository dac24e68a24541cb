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

extension Evaluations {
    /// Runs side by side (`GET /admin/evaluations/compare`): per run its pass rate and speed, per
    /// item each run's status and answer, and for each pair of runs the pass-rate difference with
    /// McNemar's p-value over the items both graded.
    public func compare(_ runIDs: [String]) async throws(EvalError) -> [String: Any] {
        guard (2...5).contains(runIDs.count) else { throw .badRequest("compare takes 2 to 5 run ids", param: "runs") }
        var outcomes: [[Int: [String: Any]]] = []
        var summaries: [[String: Any]] = []
        for id in runIDs {
            let job: JobRecord?
            do { job = try await engine.get(id) } catch { throw .storage("\(error)") }
            guard let job, job.kind == EvalRunJob.name, let spec = try? job.spec.decode(EvalRunSpec.self) else { throw .notFound("no run '\(id)'") }
            let rows: [Data]
            do { rows = try await store.evalOutputItems(run: id, status: nil, after: nil, limit: 1_000_000, descending: false) } catch { throw .storage("\(error)") }
            // An item asked several times (repetitions) counts as passing when most of its
            // repetitions passed; the first repetition's answer is shown.
            var byIndex: [Int: [String: Any]] = [:]
            var tally: [Int: (passes: Int, runs: Int)] = [:]
            for row in rows {
                guard let item = (try? JSONSerialization.jsonObject(with: row)) as? [String: Any], let index = item["datasource_item_id"] as? Int else { continue }
                if byIndex[index] == nil { byIndex[index] = item }
                tally[index, default: (0, 0)].runs += 1
                if item["status"] as? String == "pass" { tally[index, default: (0, 0)].passes += 1 }
            }
            for (index, t) in tally where t.runs > 1 {
                byIndex[index]?["status"] = 2 * t.passes > t.runs ? "pass" : "fail"
                byIndex[index]?["pass_rate"] = Double(t.passes) / Double(t.runs)
            }
            outcomes.append(byIndex)
            let passed = byIndex.values.filter { $0["status"] as? String == "pass" }.count
            let timings = byIndex.values.compactMap { (($0["sample"] as? [String: Any])?["timings"] as? [String: Any]) }
            func mean(_ key: String) -> Any {
                let values = timings.compactMap { $0[key] as? Double }
                return values.isEmpty ? NSNull() : values.reduce(0, +) / Double(values.count)
            }
            summaries.append([
                "id": id, "eval_id": spec.evalID, "model": spec.model ?? "", "status": Self.status(job.state), "items": byIndex.count,
                "pass_rate": byIndex.isEmpty ? 0 : Double(passed) / Double(byIndex.count),
                "mean_total_ms": mean("total_ms"), "mean_ttft_ms": mean("time_to_first_token_ms"),
                "mean_generation_tokens_per_second": mean("generation_tokens_per_second"),
            ])
        }
        let indices = Set(outcomes.flatMap(\.keys)).sorted()
        let items: [[String: Any]] = indices.map { index in
            [
                "index": index,
                "item": outcomes.lazy.compactMap { $0[index]?["datasource_item"] }.first ?? NSNull(),
                "runs": outcomes.map { o -> [String: Any] in
                    guard let item = o[index] else { return ["status": "missing"] }
                    let sample = item["sample"] as? [String: Any]
                    let answer = (sample?["output"] as? [[String: Any]])?.first?["content"] ?? ""
                    let timings = sample?["timings"] as? [String: Any]
                    return ["status": item["status"] ?? "", "output": answer, "total_ms": timings?["total_ms"] ?? NSNull(),
                            "ttft_ms": timings?["time_to_first_token_ms"] ?? NSNull()]
                },
            ]
        }
        var pairs: [[String: Any]] = []
        for a in 0..<outcomes.count {
            for b in (a + 1)..<outcomes.count {
                var counts = (both: 0, onlyA: 0, onlyB: 0, neither: 0)
                for index in indices {
                    guard let x = outcomes[a][index]?["status"] as? String, let y = outcomes[b][index]?["status"] as? String else { continue }
                    switch (x == "pass", y == "pass") {
                    case (true, true): counts.both += 1
                    case (true, false): counts.onlyA += 1
                    case (false, true): counts.onlyB += 1
                    case (false, false): counts.neither += 1
                    }
                }
                let paired = counts.both + counts.onlyA + counts.onlyB + counts.neither
                pairs.append([
                    "a": runIDs[a], "b": runIDs[b], "paired_items": paired, "both_pass": counts.both, "only_a_passes": counts.onlyA,
                    "only_b_passes": counts.onlyB, "neither": counts.neither,
                    "pass_rate_difference": paired == 0 ? 0 : Double(counts.onlyB - counts.onlyA) / Double(paired),
                    "mcnemar_p": McNemar.pValue(onlyA: counts.onlyA, onlyB: counts.onlyB),
                    // Speed, b minus a (null where either run has no timing).
                    "total_ms_delta": Self.delta(summaries[a]["mean_total_ms"], summaries[b]["mean_total_ms"]),
                    "ttft_ms_delta": Self.delta(summaries[a]["mean_ttft_ms"], summaries[b]["mean_ttft_ms"]),
                    "generation_tokens_per_second_delta": Self.delta(
                        summaries[a]["mean_generation_tokens_per_second"], summaries[b]["mean_generation_tokens_per_second"]),
                ])
            }
        }
        return ["runs": summaries, "items": items, "pairs": pairs]
    }

    static func delta(_ a: Any?, _ b: Any?) -> Any {
        guard let a = a as? Double, let b = b as? Double else { return NSNull() }
        return b - a
    }
}
