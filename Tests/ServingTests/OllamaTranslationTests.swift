import Foundation
import Jobs
import NIOCore
import Testing

@testable import Runtime
@testable import Serving

/// A JSON document written in a test, as the value the translation reads.
func ollamaJSON(_ text: String) -> JobJSON {
    // Test input: text that is not JSON is a mistake in the test itself.
    try! JSONDecoder().decode(JobJSON.self, from: Data(text.utf8))
}

/// A request body written in a test.
func ollamaBody(_ text: String) -> OllamaBody { ollamaJSON(text).objectValue! }

/// An encoded answer read back as JSON, to check what a client would see.
func encoded(_ value: some Encodable) -> JobJSON {
    try! JSONDecoder().decode(JobJSON.self, from: JSONEncoder().encode(value))
}

/// The pure parts of the Ollama API: value formats and request/response translation.
struct OllamaTranslationTests {
    @Test func keepAliveFollowsOllamasRules() throws {
        #expect(try OllamaValues.keepAlive(.string("5m")) == .seconds(300))
        #expect(try OllamaValues.keepAlive(.string("1h30m")) == .seconds(5400))
        #expect(try OllamaValues.keepAlive(.string("250ms")) == .milliseconds(250))
        #expect(try OllamaValues.keepAlive(.number(300)) == .seconds(300))
        #expect(try OllamaValues.keepAlive(.number(0)) == .zero)
        #expect(try OllamaValues.keepAlive(.string("0")) == .zero)
        #expect(try OllamaValues.keepAlive(.number(-1)) == .seconds(-1))
        #expect(try OllamaValues.keepAlive(.string("-5m")) == .seconds(-1))
        #expect(try OllamaValues.keepAlive(nil) == nil)
        #expect(try OllamaValues.keepAlive(.null) == nil)
        for bad: JobJSON in [.string("300"), .string("5 minutes"), .string(""), .string("m"), .bool(true), .array([.string("5m")]), .number(.infinity)] {
            #expect(throws: OllamaFailure.self, "\(bad)") { try OllamaValues.keepAlive(bad) }
        }
    }

    @Test func timestampsHaveNineFractionalDigits() {
        let t = OllamaValues.timestamp(Date(timeIntervalSince1970: 1_700_000_000.123456789))
        #expect(t.hasPrefix("2023-11-14T22:13:20.123456"))
        #expect(t.wholeMatch(of: /\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z/) != nil)
    }

    @Test func namesAndSizes() {
        #expect(OllamaValues.taggedName("chat") == "chat:latest")
        #expect(OllamaValues.taggedName("tinyllama:q8") == "tinyllama:q8")
        #expect(OllamaValues.taggedName("hf.co/org/repo") == "hf.co/org/repo:latest")
        #expect(OllamaValues.parameterSize(7_241_732_096) == "7.2B")
        #expect(OllamaValues.parameterSize(135_000_000) == "135M")
        #expect(OllamaValues.parameterSize(1_000_000_000) == "1B")
    }

    @Test func optionsAreTypedMappedAndUnknownOnesIgnored() throws {
        let (sampling, load) = try OllamaRequests.options(ollamaJSON("""
            {"num_predict": 7, "temperature": 0.2, "top_k": 5, "stop": "END", "num_ctx": 4096, "tfs_z": 1.0,
             "made_up_option": "whatever", "num_keep": 4, "use_mmap": false, "num_thread": 2, "num_gpu": 0, "num_batch": 128}
            """))
        #expect(sampling["max_tokens"]?.intValue == 7)
        #expect(sampling["temperature"]?.doubleValue == 0.2)
        #expect(sampling["top_k"]?.intValue == 5)
        #expect(sampling["stop"]?.stringsValue == ["END"])
        #expect(sampling["n_keep"]?.intValue == 4)
        #expect(sampling["made_up_option"] == nil && sampling["tfs_z"] == nil)
        #expect(load == LoadOptions(minimumContext: 4096, gpuLayers: 0, threads: 2, batch: 128, useMmap: false))
        #expect(try OllamaRequests.options(ollamaJSON(#"{"temperature": 1}"#)).load == nil)
        #expect(try OllamaRequests.options(ollamaJSON(#"{"num_gpu": -1}"#)).load == nil)
        #expect(try OllamaRequests.options(ollamaJSON(#"{"num_predict": -1}"#)).sampling["max_tokens"] == nil)
        for bad in [#"{"temperature": "hot"}"#, #"{"num_ctx": 1.5}"#, #"{"top_k": true}"#, #"{"stop": [1]}"#, #"{"use_mmap": 1}"#, #"{"num_ctx": 0}"#] {
            #expect(throws: OllamaFailure.self, "\(bad)") { try OllamaRequests.options(ollamaJSON(bad)) }
        }
        #expect(throws: OllamaFailure.badRequest("options must be an object")) { try OllamaRequests.options(.string("not an object")) }
    }

    @Test func chatTranslationCarriesToolsImagesFormatAndThinking() throws {
        let body = ollamaBody("""
            {"model": "x", "format": {"type": "object"}, "think": true, "tools": [{"type": "function", "function": {"name": "f"}}],
             "messages": [
                {"role": "user", "content": "look", "images": ["iVBORw0KGgo="]},
                {"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "f", "arguments": {"a": 1, "b/c": "d/e"}}}]},
                {"role": "tool", "tool_name": "f", "content": "{\\"ok\\":true}"}]}
            """)
        let plan = try OllamaRequests.chat(body, model: "x")
        #expect(plan.path == "/v1/chat/completions" && plan.kind == .chat)
        #expect(plan.body["stream"] == .bool(true))
        #expect(plan.body["response_format"]?["type"] == .string("json_schema"))
        #expect(plan.body["chat_template_kwargs"]?["enable_thinking"] == .bool(true))
        let messages = try #require(plan.body["messages"]?.arrayValue)
        let parts = try #require(messages[0]["content"]?.arrayValue)
        #expect(parts[1]["image_url"]?["url"]?.stringValue?.hasPrefix("data:image/png;base64,") == true)
        let call = try #require(messages[1]["tool_calls"]?.arrayValue?.first)
        #expect(call["function"]?["arguments"] == .string(#"{"a":1,"b/c":"d/e"}"#))
        #expect(messages[2]["tool_call_id"] == call["id"])
        #expect(plan.load == nil)
        // The upstream body is JSON llama-server reads; integers stay integers.
        let upstream = String(decoding: OllamaJSON.data(try OllamaRequests.chat(ollamaBody(#"{"messages": [], "options": {"num_predict": 8}}"#), model: "x").body), as: UTF8.self)
        #expect(upstream.contains(#""max_tokens":8"#))
    }

    @Test func generateChoosesInfillRawOrChat() throws {
        let infill = try OllamaRequests.generate(ollamaBody(#"{"prompt": "def f(", "suffix": "return 1", "options": {"num_predict": 9}}"#), model: "m")
        #expect(infill.path == "/infill" && infill.body["input_suffix"] == .string("return 1") && infill.body["n_predict"]?.intValue == 9)
        let raw = try OllamaRequests.generate(ollamaBody(#"{"prompt": "<s>hi", "raw": true}"#), model: "m")
        #expect(raw.path == "/v1/completions" && raw.body["prompt"] == .string("<s>hi"))
        let chat = try OllamaRequests.generate(ollamaBody(#"{"prompt": "hi", "system": "be brief", "keep_alive": "1m"}"#), model: "m")
        #expect(chat.path == "/v1/chat/completions" && chat.body["messages"]?.arrayValue?.count == 2)
        #expect(chat.keepAlive == .seconds(60))
        #expect(throws: OllamaFailure.badRequest("prompt must be a string")) { try OllamaRequests.generate(ollamaBody(#"{"prompt": 5}"#), model: "m") }
        #expect(throws: OllamaFailure.self) { try OllamaRequests.generate(ollamaBody(#"{"prompt": "x", "format": "yaml"}"#), model: "m") }
        #expect(throws: OllamaFailure.self) { try OllamaRequests.generate(ollamaBody(#"{"prompt": "x", "think": "very"}"#), model: "m") }
    }

    @Test func modelDefaultsFillWhatTheRequestLeaves() {
        var spec = ModelSpec(
            id: "m", backend: .remote(baseURL: "http://127.0.0.1:1", apiKeyEnv: nil), aliases: [], pinnedArgs: [], contextSize: nil, ttl: nil,
            parallel: 1, pinned: false, embeddings: false, source: "config", facts: nil, fileSize: nil)
        spec.ollamaParameters = ["temperature": .number(0.3), "num_predict": .number(5), "num_ctx": .number(4096)]
        spec.systemPrompt = "be brief"
        var body = ollamaBody(#"{"temperature": 0.9, "n_predict": 3, "messages": [{"role": "user", "content": "hi"}]}"#)
        #expect(OllamaModelDefaults.apply(spec, to: &body))
        #expect(body["temperature"] == .number(0.9) && body["max_tokens"] == nil)
        #expect(body["messages"]?.arrayValue?.first?["role"] == .string("system"))
    }

    @Test func responseBuilderGathersToolCallsAndCountsInNanoseconds() {
        var b = OllamaResponseBuilder(shape: .chat, kind: .chat, model: "Chat:latest")
        let events = [
            #"{"choices":[{"delta":{"role":"assistant","content":"Hel"}}]}"#,
            #"{"choices":[{"delta":{"content":"lo","reasoning_content":"hmm"}}]}"#,
            #"{"choices":[{"delta":{"tool_calls":[{"index":0,"id":"c1","function":{"name":"get_","arguments":"{\"ci"}}]}}]}"#,
            #"{"choices":[{"delta":{"tool_calls":[{"index":0,"function":{"name":"weather","arguments":"ty\":\"Oslo\"}"}}]}}]}"#,
            #"{"choices":[{"finish_reason":"length","delta":{}}]}"#,
            #"{"choices":[],"usage":{"prompt_tokens":9,"completion_tokens":4},"timings":{"prompt_n":7,"cache_n":2,"prompt_ms":1.5,"predicted_n":4,"predicted_ms":2.25}}"#,
            "[DONE]",
        ]
        var streamed: [OllamaChunk] = []
        for e in events { streamed += b.feed(Substring(e)) }
        #expect(streamed.count == 2)
        #expect(streamed[0].message?.content == "Hel")
        #expect(streamed[1].message?.thinking == "hmm")
        #expect(streamed.allSatisfy { !$0.done && $0.model == "Chat:latest" })
        let call = b.ollamaToolCalls.first?.function
        #expect(call?.name == "get_weather")
        #expect(call?.arguments["city"] == .string("Oslo"))
        let final = encoded(b.final(whole: true, total: .milliseconds(10), load: .milliseconds(3)))
        #expect(final["done"] == .bool(true) && final["done_reason"] == .string("length"))
        #expect(final["message"]?["content"] == .string("Hello") && final["message"]?["role"] == .string("assistant"))
        #expect(final["message"]?["tool_calls"]?.arrayValue?.first?["function"]?["arguments"]?["city"] == .string("Oslo"))
        #expect(final["prompt_eval_count"] == .number(9))
        #expect(final["prompt_eval_duration"] == .number(1_500_000))
        #expect(final["eval_count"] == .number(4))
        #expect(final["eval_duration"] == .number(2_250_000))
        #expect(final["total_duration"] == .number(10_000_000))
        #expect(final["load_duration"] == .number(3_000_000))
        #expect(final["response"] == nil && final["thinking"] == nil)
    }

    @Test func chunksHaveOllamasKeys() throws {
        var b = OllamaResponseBuilder(shape: .generate, kind: .completion, model: "m")
        let chunk = try #require(b.feed(#"{"choices":[{"text":"a/b"}]}"#).first)
        let line = OllamaJSON.line(chunk)
        let text = String(buffer: line)
        #expect(text.hasSuffix("}\n") && text.contains(#""response":"a/b""#))
        #expect(Set(encoded(chunk).objectValue?.keys ?? [:].keys) == ["model", "created_at", "done", "response"])
        #expect(String(buffer: OllamaFailure(status: 500, "boom").line) == #"{"error":"boom"}"# + "\n")
    }

    @Test func infillStreamsAndStopsOnLimit() {
        var b = OllamaResponseBuilder(shape: .generate, kind: .infill, model: "m")
        #expect(b.feed(#"{"content":"ab","stop":false}"#).first?.response == "ab")
        _ = b.feed(#"{"content":"","stop":true,"stop_type":"limit","timings":{"predicted_n":3}}"#)
        #expect(b.doneReason == "length")
        #expect(b.final(whole: false, total: .zero, load: .zero).evalCount == 3)
        var e = OllamaResponseBuilder(shape: .generate, kind: .chat, model: "m")
        _ = e.feed(#"{"error":{"message":"context exceeded"}}"#)
        #expect(e.upstreamError == "context exceeded")
    }

    @Test func streamReaderEndsWithToolCallsAndTheFinalChunk() {
        var reader = OllamaStreamReader(builder: OllamaResponseBuilder(shape: .chat, kind: .chat, model: "m"), arrival: .now, load: .zero)
        var out = reader.feed(ByteBuffer(string: #"data: {"choices":[{"delta":{"content":"hi"}}]}"# + "\n\ndata: {\"choices\":[{\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"name\":\"f\",\"arguments\":\"{}\"}}]}}]}\n\n"))
        out.writeImmutableBuffer(reader.finish(failure: nil))
        let lines = String(buffer: out).split(separator: "\n").map { ollamaJSON(String($0)) }
        #expect(lines.count == 3)
        #expect(lines[1]["message"]?["tool_calls"]?.arrayValue?.count == 1 && lines[2]["done"] == .bool(true))
        #expect(reader.deliveredEvents == 1)
        var failing = OllamaStreamReader(builder: OllamaResponseBuilder(shape: .chat, kind: .chat, model: "m"), arrival: .now, load: .zero)
        #expect(String(buffer: failing.finish(failure: ServingError(status: 502, code: .upstreamCrashed, "gone"))) == #"{"error":"gone"}"# + "\n")
    }

    @Test func upstreamErrorMessages() {
        #expect(OllamaServing.upstreamMessage(ByteBuffer(string: #"{"error":{"message":"too long"}}"#)) == "too long")
        #expect(OllamaServing.upstreamMessage(ByteBuffer(string: #"{"error":"bad"}"#)) == "bad")
        #expect(OllamaServing.upstreamMessage(ByteBuffer(string: "not json")) == nil)
    }

    @Test func failuresFromServing() {
        #expect(OllamaFailure(ServingError.modelNotFound("x")) == .modelNotFound("x"))
        let limited = OllamaFailure(ServingError(status: 429, code: .rateLimitExceeded, "slow down", retryAfter: 3))
        #expect(limited.status == 429 && limited.retryAfter == 3 && limited.message == "slow down")
    }

    @Test func sseEventsSplitAcrossChunks() {
        var events = SSEEvents()
        #expect(events.feed(ByteBuffer(string: "data: {\"a\":1}\n\ndata: {\"b\"")).map(String.init) == [#"{"a":1}"#])
        #expect(events.feed(ByteBuffer(string: ":2}\r\n\r\n")).map(String.init) == [#"{"b":2}"#])
        #expect(events.feed(ByteBuffer(string: "data: [DONE]")).isEmpty)
        #expect(events.finish().map(String.init) == ["[DONE]"])
    }
}
