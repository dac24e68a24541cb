import Foundation
import GGUF
import Jobs
import NIOCore
import Runtime
import Testing

@testable import Serving

/// Property-based fuzzing of the OpenAI ⇄ Ollama translators: random JSON shaped like real
/// requests and events must produce either a translation or an `OllamaFailure`, never a crash,
/// and every translation must encode as JSON for llama-server. Bounded in `make test` (3000 cases
/// per target, about a second); `make fuzz` or `CORRAL_FUZZ_ITERATIONS=N CORRAL_FUZZ_SEED=S` runs
/// longer or elsewhere.
struct TranslatorFuzzTests {
    static let iterations = Int(ProcessInfo.processInfo.environment["CORRAL_FUZZ_ITERATIONS"] ?? "") ?? 3000
    static let seed = UInt64(ProcessInfo.processInfo.environment["CORRAL_FUZZ_SEED"] ?? "") ?? 0

    /// A small deterministic generator of JSON values biased towards the fields translators read.
    struct Gen {
        var rng: SplitMix64
        init(seed: UInt64) { rng = SplitMix64(seed: seed) }
        mutating func next() -> UInt64 { rng.next() }
        mutating func int(_ n: Int) -> Int { Int(next() % UInt64(max(n, 1))) }
        static let keys = ["model", "messages", "role", "content", "images", "tool_calls", "function", "name", "arguments", "tool_name",
                           "options", "num_predict", "num_ctx", "temperature", "stop", "format", "think", "keep_alive", "stream", "tools",
                           "prompt", "suffix", "system", "raw", "type", "index", "id", "choices", "delta", "usage", "timings", "error"]
        static let strings = ["", "user", "assistant", "tool", "json", "5m", "300", "-1s", "iVBORw0KGgo=", "{\"a\":1}", "{", "high", "😀", "\u{0}"]

        mutating func value(_ depth: Int = 0) -> JobJSON {
            switch int(depth > 3 ? 5 : 8) {
            case 0: return .null
            case 1: return .bool(int(2) == 0)
            case 2: return .number([0, 1, -1, 7, 1_099_511_627_776, 9.2e18, -9.2e18][int(7)])
            case 3: return .number([0.5, -2.5, 1e300, -1e-300, Double.greatestFiniteMagnitude][int(5)])
            case 4: return .string(Self.strings[int(Self.strings.count)])
            case 5, 6: return .array((0..<int(4)).map { _ in value(depth + 1) })
            default:
                var o: [String: JobJSON] = [:]
                for _ in 0..<int(6) { o[Self.keys[int(Self.keys.count)]] = value(depth + 1) }
                return .object(o)
            }
        }

        mutating func request() -> OllamaBody {
            var body = value(1).objectValue ?? [:]
            if int(2) == 0 { body["messages"] = .array((0..<int(4)).map { _ in value(2).objectValue.map(JobJSON.object) ?? .object(["role": .string("user")]) }) }
            return body
        }
    }

    @Test func requestTranslationNeverCrashesAndEmitsJSON() {
        var gen = Gen(seed: Self.seed &+ 1)
        var translated = 0
        for _ in 0..<Self.iterations {
            let body = gen.request()
            for translate in [{ try OllamaRequests.chat(body, model: "m") }, { try OllamaRequests.generate(body, model: "m") }] as [() throws -> UpstreamPlan] {
                do {
                    let plan = try translate()
                    #expect((try? JSONEncoder().encode(plan.body)) != nil)
                    translated += 1
                } catch {
                    #expect(error is OllamaFailure, "\(error)")
                }
            }
            _ = try? OllamaValues.keepAlive(body["keep_alive"])
            _ = try? OllamaRequests.options(body["options"])
        }
        #expect(translated > 0)
    }

    @Test func responseBuildingNeverCrashes() {
        var gen = Gen(seed: Self.seed &+ 2)
        for i in 0..<Self.iterations {
            var builder = OllamaResponseBuilder(shape: i % 2 == 0 ? .chat : .generate, kind: [.chat, .completion, .infill][i % 3], model: "m")
            var events = SSEEvents()
            for _ in 0..<gen.int(6) {
                let text = String(decoding: (try? JSONEncoder().encode(gen.value(1))) ?? Data("{".utf8), as: UTF8.self)
                // Split an SSE event at a random byte, as the network would.
                let sse = Array(("data: " + text + "\n\n").utf8)
                let cut = gen.int(sse.count + 1)
                for payload in events.feed(ByteBuffer(bytes: sse[..<cut])) + events.feed(ByteBuffer(bytes: sse[cut...])) {
                    for chunk in builder.feed(payload) { #expect((try? JSONEncoder().encode(chunk)) != nil) }
                }
            }
            let final = builder.final(whole: i % 2 == 0, total: .milliseconds(5), load: .zero)
            #expect((try? JSONEncoder().encode(final)) != nil)
        }
    }
}
