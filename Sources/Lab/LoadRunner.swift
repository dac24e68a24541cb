import Foundation
import Runtime
import Serving
import Synchronization

/// What a benchmark measured, in the units operators read.
public struct LoadResult: Sendable, Codable, Equatable {
    public struct Percentiles: Sendable, Codable, Equatable {
        public var p50: Double?
        public var p95: Double?

        public init(_ values: [Double]) {
            let v = values.sorted()
            func p(_ q: Double) -> Double? { v.isEmpty ? nil : v[min(v.count - 1, Int((q * Double(v.count - 1)).rounded()))] }
            p50 = p(0.5)
            p95 = p(0.95)
        }
    }

    public var requests: Int
    public var errors: Int
    public var wallSeconds: Double
    public var timeToFirstTokenMs: Percentiles
    public var interTokenLatencyMs: Percentiles
    public var generationTokensPerSecond: Percentiles
    public var promptTokensPerSecond: Percentiles
    /// Generated tokens per second of wall time, all requests together.
    public var throughputTokensPerSecond: Double
    public var promptTokens: Int
    public var completionTokens: Int
    public var firstError: String?
}

/// Sends streamed chat requests at a fixed concurrency and measures each from the client side
/// (first content event, gaps between events) and from llama-server's `timings`.
public struct LoadRunner: Sendable {
    /// How many requests, how many at once, and how long each prompt and answer.
    public var load: BenchmarkParameters

    public init(_ load: BenchmarkParameters) { self.load = load }

    /// A prompt of about `load.promptWords` words (each a token or two), different per request so
    /// the prompt cache does not hide prompt processing.
    func prompt(_ i: Int) -> String {
        let words = ["the", "model", "gateway", "runs", "fast", "and", "slow", "tokens", "flow", "through", "every", "layer"]
        return "Request \(i): " + (0..<max(1, load.promptWords)).map { words[($0 * 7 + i) % words.count] }.joined(separator: " ")
    }

    /// Runs the load through `client` (its requests recorded under `origin`). `beforeEach` runs
    /// before every request (a job's pause point): when it throws, that worker stops sending.
    public func run(model: String, client: any ModelClient, origin: ModelCallOrigin, progress: @escaping @Sendable (Int, Int) async -> Void = { _, _ in },
                    beforeEach: @escaping @Sendable () async throws -> Void = {}) async -> LoadResult {
        struct One: Sendable {
            var ok: Bool
            var error: String?
            var ttft: Double?
            var gaps: [Double]
            var genTPS: Double?
            var promptTPS: Double?
            var prompt: Int
            var completion: Int
        }
        /// The client-side timing of one streamed answer: its first content event and the gaps after it.
        struct Timing {
            var ttft: Double?
            var gaps: [Double] = []
            var last: ContinuousClock.Instant?
        }
        let started = ContinuousClock.now
        let next = NextIndex()
        var all: [One] = []
        await withTaskGroup(of: [One].self) { group in
            for _ in 0..<max(1, min(load.concurrency, load.requests)) {
                group.addTask {
                    var mine: [One] = []
                    while (try? await beforeEach()) != nil, let i = await next.take(below: load.requests) {
                        let request = ModelRequest(
                            model: model, input: .messages([ModelMessage(role: "user", content: prompt(i))]), sampling: load.sampling ?? [:],
                            maxTokens: load.maxTokens, stream: true, cachePrompt: false, origin: origin)
                        let t0 = ContinuousClock.now
                        let timing = Mutex(Timing())
                        var one = One(ok: false, gaps: [], prompt: 0, completion: 0)
                        do throws(ModelClientError) {
                            let answer = try await client.stream(request) { chunk in
                                guard !chunk.text.isEmpty else { return }
                                let now = ContinuousClock.now
                                timing.withLock { t in
                                    if let last = t.last { t.gaps.append(seconds(now - last) * 1000) } else { t.ttft = seconds(now - t0) * 1000 }
                                    t.last = now
                                }
                            }
                            (one.ttft, one.gaps) = timing.withLock { ($0.ttft, $0.gaps) }
                            one.ok = true
                            one.genTPS = answer.timings?.predictedPerSecond
                            one.promptTPS = answer.timings?.promptPerSecond
                            one.prompt = answer.usage?.promptTokens ?? 0
                            one.completion = answer.usage?.completionTokens ?? 0
                        } catch {
                            one.error = error.kind == .answeredError ? "status \(error.status ?? 0)" : error.description
                        }
                        mine.append(one)
                        await progress(await next.finished(), load.requests)
                    }
                    return mine
                }
            }
            for await part in group { all += part }
        }
        let wall = seconds(ContinuousClock.now - started)
        let ok = all.filter(\.ok)
        let completion = ok.reduce(0) { $0 + $1.completion }
        return LoadResult(
            requests: all.count, errors: all.count - ok.count, wallSeconds: wall,
            timeToFirstTokenMs: .init(ok.compactMap(\.ttft)), interTokenLatencyMs: .init(ok.flatMap(\.gaps)),
            generationTokensPerSecond: .init(ok.compactMap(\.genTPS)), promptTokensPerSecond: .init(ok.compactMap(\.promptTPS)),
            throughputTokensPerSecond: wall > 0 ? Double(completion) / wall : 0, promptTokens: ok.reduce(0) { $0 + $1.prompt },
            completionTokens: completion, firstError: all.first { $0.error != nil }?.error)
    }
}

/// Hands out request indexes to the workers and counts finished ones.
actor NextIndex {
    var next = 0
    var done = 0
    func take(below limit: Int) -> Int? {
        guard next < limit else { return nil }
        defer { next += 1 }
        return next
    }
    func finished() -> Int {
        done += 1
        return done
    }
}

func seconds(_ d: Duration) -> Double { d.inSeconds }
