import Foundation
import ServiceLifecycle
import Synchronization

/// Rates and latency percentiles for the dashboard, from differences of `GatewayMetrics.Totals`
/// sampled every `interval`: the last minute now, and one point per `pointTicks` ticks for the
/// last hour, so a page opened later still has history to draw. A `Service` of the application.
public final class LiveStats: Service, Sendable {
    /// Numbers over one span of time; percentiles are nil when nothing finished in it.
    public struct Window: Sendable, Encodable, Equatable {
        /// The span's end, in milliseconds since 1970.
        public var t: Int64
        public var seconds: Double
        public var requests: Int
        public var errors: Int
        public var requestsPerSecond: Double
        public var tokensPerSecond: Double
        public var latencyP50Ms: Double?
        public var latencyP95Ms: Double?
        public var ttftP50Ms: Double?
        public var ttftP95Ms: Double?

        enum CodingKeys: String, CodingKey {
            case t, seconds, requests, errors, requestsPerSecond, tokensPerSecond, latencyP50Ms, latencyP95Ms, ttftP50Ms, ttftP95Ms
        }

        /// Percentiles are written as `null` when absent, so every message has every field.
        public func encode(to encoder: any Encoder) throws {
            var c = encoder.container(keyedBy: CodingKeys.self)
            try c.encode(t, forKey: .t)
            try c.encode(seconds, forKey: .seconds)
            try c.encode(requests, forKey: .requests)
            try c.encode(errors, forKey: .errors)
            try c.encode(requestsPerSecond, forKey: .requestsPerSecond)
            try c.encode(tokensPerSecond, forKey: .tokensPerSecond)
            for (key, value) in [(CodingKeys.latencyP50Ms, latencyP50Ms), (.latencyP95Ms, latencyP95Ms), (.ttftP50Ms, ttftP50Ms), (.ttftP95Ms, ttftP95Ms)] {
                try c.encode(value, forKey: key)
            }
        }
    }

    /// A history point and its sequence number (a client asks for the points after the last it has).
    public struct Point: Sendable {
        public var seq: Int
        public var window: Window
    }

    private struct State {
        /// The most recent samples, oldest first: enough to span the live window.
        var samples: [(at: Date, totals: GatewayMetrics.Totals)] = []
        var points: [Point] = []
        var ticks = 0
    }

    public let interval: Duration
    /// Seconds the live numbers cover.
    let liveSeconds: Int
    /// Ticks per history point, and how many points are kept.
    let pointTicks: Int
    let pointCapacity: Int
    private let metrics: GatewayMetrics
    private let state = Mutex(State())

    public init(metrics: GatewayMetrics, interval: Duration = .seconds(2), liveSeconds: Int = 60, pointSeconds: Int = 10, historySeconds: Int = 3600) {
        self.metrics = metrics
        self.interval = interval
        let step = max(1, Int(interval.components.seconds))
        self.liveSeconds = liveSeconds
        self.pointTicks = max(1, pointSeconds / step)
        self.pointCapacity = historySeconds / (pointTicks * step)
        tick()
    }

    /// Samples the metrics' totals; every `pointTicks` ticks closes a history point.
    func tick(now: Date = Date()) {
        let totals = metrics.totals()
        let step = max(1, Int(interval.components.seconds))
        state.withLock { s in
            s.samples.append((now, totals))
            let keep = max(liveSeconds / step, pointTicks) + 1
            if s.samples.count > keep { s.samples.removeFirst(s.samples.count - keep) }
            s.ticks += 1
            guard s.ticks % pointTicks == 0, s.samples.count > pointTicks else { return }
            let from = s.samples[s.samples.count - 1 - pointTicks]
            let window = Self.window(from: from, to: (now, totals))
            s.points.append(Point(seq: s.ticks / pointTicks, window: window))
            if s.points.count > pointCapacity { s.points.removeFirst(s.points.count - pointCapacity) }
        }
    }

    /// The live numbers (over up to `liveSeconds`) and the history points after `seq`.
    public func snapshot(pointsAfter seq: Int) -> (live: Window, points: [Point]) {
        state.withLock { s in
            let last = s.samples.last!
            let first = s.samples.first { last.at.timeIntervalSince($0.at) <= Double(liveSeconds) + 0.5 } ?? last
            return (Self.window(from: first, to: last), s.points.filter { $0.seq > seq })
        }
    }

    static func window(from a: (at: Date, totals: GatewayMetrics.Totals), to b: (at: Date, totals: GatewayMetrics.Totals)) -> Window {
        let seconds = max(b.at.timeIntervalSince(a.at), 0.001)
        let duration = zip(b.totals.duration, a.totals.duration).map { $0 - $1 }
        let ttft = zip(b.totals.timeToFirstToken, a.totals.timeToFirstToken).map { $0 - $1 }
        let requests = b.totals.requests - a.totals.requests
        let ms = { (q: Double?) in q.map { ($0 * 1000 * 10).rounded() / 10 } }
        return Window(
            t: Int64(b.at.timeIntervalSince1970 * 1000), seconds: seconds.rounded(), requests: requests, errors: b.totals.errors - a.totals.errors,
            requestsPerSecond: Double(requests) / seconds, tokensPerSecond: Double(b.totals.completionTokens - a.totals.completionTokens) / seconds,
            latencyP50Ms: ms(quantile(0.5, duration)), latencyP95Ms: ms(quantile(0.95, duration)),
            ttftP50Ms: ms(quantile(0.5, ttft)), ttftP95Ms: ms(quantile(0.95, ttft)))
    }

    /// A quantile in seconds from cumulative bucket counts (the last is the total), interpolated
    /// linearly inside the bucket it falls in, as Prometheus' `histogram_quantile` does.
    static func quantile(_ q: Double, _ cumulative: [Int], bounds: [Double] = GatewayMetrics.latencyBuckets) -> Double? {
        guard let total = cumulative.last, total > 0 else { return nil }
        let rank = q * Double(total)
        guard let i = cumulative.firstIndex(where: { Double($0) >= rank }), i < bounds.count else { return bounds.last }
        let lower = i == 0 ? 0 : bounds[i - 1]
        let below = i == 0 ? 0 : cumulative[i - 1]
        let inBucket = cumulative[i] - below
        guard inBucket > 0 else { return bounds[i] }
        return lower + (bounds[i] - lower) * (rank - Double(below)) / Double(inBucket)
    }

    /// Ticks every `interval` until Corral shuts down.
    public func run() async throws {
        while !Task.isShuttingDownGracefully && !Task.isCancelled {
            try? await cancelWhenGracefulShutdown { try await Task.sleep(for: self.interval) }
            tick()
        }
    }
}
