import Foundation
import NIOCore
import Serving
import Testing


/// The filter reads usage and timings from llama-server's stream as it passes and drops the
/// usage-only chunk when Corral asked for it on the client's behalf.
struct SSEUsageFilterTests {
    static let events = [
        #"data: {"choices":[{"index":0,"delta":{"role":"assistant","content":null}}],"object":"chat.completion.chunk"}"#,
        #"data: {"choices":[{"index":0,"delta":{"content":"say \"choices\":[] and \"usage\""}}],"object":"chat.completion.chunk"}"#,
        #"data: {"choices":[{"finish_reason":"length","index":0,"delta":{}}],"timings":{"prompt_n":5,"predicted_per_second":812.5}}"#,
        #"data: {"choices":[],"usage":{"completion_tokens":2,"prompt_tokens":5,"total_tokens":7,"prompt_tokens_details":{"cached_tokens":4}}}"#,
        "data: [DONE]",
    ].map { $0 + "\n\n" }

    func run(hide: Bool, splitEvery step: Int) -> (SSEUsageFilter, String) {
        var filter = SSEUsageFilter(hideUsageChunk: hide)
        let all = Array(Self.events.joined().utf8)
        var out = ""
        for start in stride(from: 0, to: all.count, by: step) {
            out += String(buffer: filter.feed(ByteBuffer(bytes: all[start..<min(all.count, start + step)])))
        }
        out += String(buffer: filter.finish())
        return (filter, out)
    }

    @Test(arguments: [1, 7, 64, 4096]) func readsUsageAndHidesOnlyTheUsageChunk(step: Int) {
        for hide in [true, false] {
            let (filter, out) = run(hide: hide, splitEvery: step)
            #expect(filter.reported.promptTokens == 5)
            #expect(filter.reported.completionTokens == 2)
            #expect(filter.reported.cachedTokens == 4)
            #expect(filter.reported.generationTokensPerSecond == 812.5)
            #expect(filter.events == 5)
            let expected = hide ? Self.events.enumerated().filter { $0.offset != 3 }.map(\.element).joined() : Self.events.joined()
            #expect(out == expected)
        }
    }

    /// Anthropic's stream splits its usage: the input in `message_start`'s `message.usage`, the
    /// output in `message_delta`'s `usage`; both are kept.
    @Test func mergesAnthropicsSplitUsage() {
        var filter = SSEUsageFilter(hideUsageChunk: false)
        let stream = [
            #"event: message_start"#,
            #"data: {"type":"message_start","message":{"id":"m","usage":{"input_tokens":7,"cache_read_input_tokens":3,"output_tokens":1}}}"#,
            "",
            #"event: message_delta"#,
            #"data: {"type":"message_delta","usage":{"output_tokens":9}}"#,
            "", "",
        ].joined(separator: "\n")
        _ = filter.feed(ByteBuffer(string: stream))
        _ = filter.finish()
        #expect(filter.reported.promptTokens == 10)
        #expect(filter.reported.completionTokens == 9)
        #expect(filter.reported.cachedTokens == 3)
    }
}
