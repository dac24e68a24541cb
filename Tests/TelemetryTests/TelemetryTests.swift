import Foundation
import Testing
import Runtime
import Usage

@testable import Telemetry

/// The Prometheus exposition built from request records, and the dashboard's live windows and
/// quantiles read as differences of the running totals.
struct GatewayMetricsTests {
    func record(_ model: String, status: Int = 200, team: String? = "t1", totalMs: Double, ttftMs: Double? = nil, completion: Int? = nil) -> RequestRecord {
        var r = RequestRecord(
            requestID: "r", route: "/v1/chat/completions", model: model, status: status, queueMs: 1, loadMs: 0,
            timeToFirstByteMs: ttftMs, totalMs: totalMs, promptTokens: 3, completionTokens: completion, clientDisconnected: false)
        r.team = team
        return r
    }

    @Test func countersAndHistogramsFollowTheRecords() {
        let m = GatewayMetrics()
        m.observe(record("a", totalMs: 2, completion: 4))
        m.observe(record("a", totalMs: 40, completion: 6))
        m.observe(record("b", status: 500, team: nil, totalMs: 700))
        let text = m.render(instances: [])
        #expect(text.contains(#"corral_requests_total{model="a",team="t1",route="/v1/chat/completions",status="200"} 2"#))
        #expect(text.contains(#"corral_requests_total{model="b",team="",route="/v1/chat/completions",status="500"} 1"#))
        #expect(text.contains(#"corral_completion_tokens_total{model="a",team="t1"} 10"#))
        // Cumulative buckets: 2 ms is under 2.5 ms; 40 ms is not, but is under 50 ms.
        #expect(text.contains(#"corral_request_duration_seconds_bucket{model="a",team="t1",le="0.0025"} 1"#))
        #expect(text.contains(#"corral_request_duration_seconds_bucket{model="a",team="t1",le="0.05"} 2"#))
        #expect(text.contains(#"corral_request_duration_seconds_count{model="a",team="t1"} 2"#))
        let totals = m.totals()
        #expect(totals.requests == 3 && totals.errors == 1 && totals.completionTokens == 10)
    }

    @Test func aNameNobodyServesIsOneSeries() {
        let m = GatewayMetrics()
        for name in ["x1", "x2", "x3"] { m.observe(record(name, status: 404, totalMs: 1)) }
        let text = m.render(instances: [])
        #expect(text.contains(#"model="_unknown""#))
        #expect(!text.contains(#"model="x1""#))
    }

    @Test func labelValuesAreEscaped() {
        let m = GatewayMetrics()
        m.observe(record("we\"ird\\name\nx", totalMs: 1))
        #expect(m.render(instances: []).contains(#"model="we\"ird\\name\nx""#))
    }

    @Test func promptCacheUseIsSummedPerModelServedHere() throws {
        let m = GatewayMetrics()
        var hit = record("a", totalMs: 1)
        hit.promptTokens = 100
        hit.cachedTokens = 90
        var miss = record("a", totalMs: 1)
        miss.promptTokens = 100
        miss.cachedTokens = 0
        // Served by a peer node: its cache is not this node's instance's.
        var remote = record("a", totalMs: 1)
        remote.promptTokens = 50
        remote.cachedTokens = 50
        remote.node = "node-b"
        // Served by the model's second instance: its own hit rate.
        var second = record("a", totalMs: 1)
        second.promptTokens = 40
        second.cachedTokens = 30
        second.replica = 1
        for r in [hit, miss, remote, second] { m.observe(r) }
        let info = try JSONDecoder().decode(InstanceInfo.self, from: Data(#"{"model":"a","replica":0,"state":"loaded","arguments":[],"inFlight":0,"queued":0,"pinned":false,"allocatedMiB":{},"crashes":0,"lastCrashLog":[]}"#.utf8))
        var other = info
        other.model = "b"
        var replica = info
        replica.replica = 1
        let filled = m.withPromptCache([info, other, replica])
        #expect(filled[0].promptCache == PromptCacheUse(cachedTokens: 90, promptTokens: 200))
        #expect(filled[0].promptCache?.hitRate == 0.45)
        #expect(filled[1].promptCache == nil)
        #expect(filled[2].promptCache == PromptCacheUse(cachedTokens: 30, promptTokens: 40))
        let text = m.render(instances: [info])
        #expect(text.contains(#"corral_instance_prompt_cache_hit_ratio{model="a",replica="0"} 0.45"#))
        #expect(text.contains(#"corral_prompt_cached_tokens_total{model="a",team="t1"} 170"#))
    }

    @Test func failureCountersAreRendered() {
        let m = GatewayMetrics()
        m.cacheWriteFailed()
        m.cacheWriteFailed()
        m.unreadablePolicyRefused()
        m.jobStoreWriteFailed()
        let text = m.render(instances: [])
        #expect(text.contains("corral_cache_write_failures_total 2\n"))
        #expect(text.contains("corral_policy_unreadable_refusals_total 1\n"))
        #expect(text.contains("corral_job_store_failures_total 1\n"))
    }
}

struct LiveStatsTests {
    @Test func quantilesInterpolateInsideTheirBucket() throws {
        let bounds = [1.0, 2.0, 4.0]
        // 10 observations: 2 ≤ 1 s, 8 ≤ 2 s, all 10 ≤ 4 s.
        let cumulative = [2, 8, 10, 10]
        // The median's rank, 5, is the third of the six observations in (1 s, 2 s].
        let median: Double = 1.0 + 3.0 / 6.0
        #expect(LiveStats.quantile(0.5, cumulative, bounds: bounds) == median)
        #expect(LiveStats.quantile(0.1, cumulative, bounds: bounds) == 0.5)
        // Rank 9.5 is 1.5 of the two observations in (2 s, 4 s].
        let p95: Double = 2.0 + 2.0 * 1.5 / 2.0
        #expect(LiveStats.quantile(0.95, cumulative, bounds: bounds) == p95)
        #expect(LiveStats.quantile(0.5, [0, 0, 0, 0], bounds: bounds) == nil)
    }

    @Test func aWindowIsTheDifferenceOfTwoSamples() throws {
        let m = GatewayMetrics()
        let start = Date()
        // Ticks: one at init, then every second by the clock given here; a point closes every second tick.
        let live = LiveStats(metrics: m, interval: .seconds(1), liveSeconds: 60, pointSeconds: 2, historySeconds: 60)
        live.tick(now: start.addingTimeInterval(1))
        for _ in 0..<10 { m.observe(GatewayMetricsTests().record("a", totalMs: 3, ttftMs: 1, completion: 5)) }
        m.observe(GatewayMetricsTests().record("a", status: 503, totalMs: 3))
        live.tick(now: start.addingTimeInterval(2))
        live.tick(now: start.addingTimeInterval(3))
        let (window, points) = live.snapshot(pointsAfter: 0)
        #expect(window.requests == 11)
        #expect(window.errors == 1)
        #expect(abs(window.tokensPerSecond - 50.0 / 3) < 0.01)
        // Every request took 3 ms: the median is inside the (2.5 ms, 5 ms] bucket.
        let p50 = try #require(window.latencyP50Ms)
        #expect(p50 > 2.5 && p50 <= 5)
        // The point closed at the fourth tick spans the ticks at 1 s and 3 s: all 11 requests.
        let point = try #require(points.last)
        #expect(point.window.requests == 11)
        #expect(live.snapshot(pointsAfter: point.seq).points.isEmpty)
    }
}
