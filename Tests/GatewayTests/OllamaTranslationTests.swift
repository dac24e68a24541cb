import Foundation
import NIOCore
import NIOHTTP1
import Runtime
import Testing

@testable import Gateway
@testable import Runtime

/// The pure parts of the Ollama API: value formats and request/response translation.
struct OllamaTranslationTests {
    @Test func keepAliveFollowsOllamasRules() throws {
        #expect(try OllamaValues.keepAlive("5m") == .seconds(300))
        #expect(try OllamaValues.keepAlive("1h30m") == .seconds(5400))
        #expect(try OllamaValues.keepAlive("250ms") == .milliseconds(250))
        #expect(try OllamaValues.keepAlive(300) == .seconds(300))
        #expect(try OllamaValues.keepAlive(0.0) == .zero)
        #expect(try OllamaValues.keepAlive("0") == .zero)
        #expect(try OllamaValues.keepAlive(-1) == .seconds(-1))
        #expect(try OllamaValues.keepAlive("-5m") == .seconds(-1))
        #expect(try OllamaValues.keepAlive(nil) == nil)
        #expect(try OllamaValues.keepAlive(NSNull()) == nil)
        for bad: Any in ["300", "5 minutes", "", "m", true, ["5m"], Double.infinity] {
            #expect(throws: OllamaError.self, "\(bad)") { try OllamaValues.keepAlive(bad) }
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
        let (sampling, load) = try OllamaRequests.options([
            "num_predict": 7, "temperature": 0.2, "top_k": 5, "stop": "END", "num_ctx": 4096, "tfs_z": 1.0,
            "made_up_option": "whatever", "num_keep": 4, "use_mmap": false, "num_thread": 2, "num_gpu": 0, "num_batch": 128,
        ])
        #expect(sampling["max_tokens"] as? Int == 7)
        #expect(sampling["temperature"] as? Double == 0.2)
        #expect(sampling["top_k"] as? Int == 5)
        #expect(sampling["stop"] as? [String] == ["END"])
        #expect(sampling["n_keep"] as? Int == 4)
        #expect(sampling["made_up_option"] == nil && sampling["tfs_z"] == nil)
        #expect(load == LoadOptions(minimumContext: 4096, gpuLayers: 0, threads: 2, batch: 128, useMmap: false))
        #expect(try OllamaRequests.options(["temperature": 1]).load == nil)
        #expect(try OllamaRequests.options(["num_gpu": -1]).load == nil)
        #expect(try OllamaRequests.options(["num_predict": -1]).sampling["max_tokens"] == nil)
        for bad: [String: Any] in [["temperature": "hot"], ["num_ctx": 1.5], ["top_k": true], ["stop": [1]], ["use_mmap": 1], ["num_ctx": 0]] {
            #expect(throws: OllamaError.self, "\(bad)") { try OllamaRequests.options(bad) }
        }
        #expect(throws: OllamaError.self) { try OllamaRequests.options("not an object") }
    }

    @Test func chatTranslationCarriesToolsImagesFormatAndThinking() throws {
        let body: [String: Any] = [
            "model": "x", "format": ["type": "object"], "think": true, "tools": [["type": "function", "function": ["name": "f"]]],
            "messages": [
                ["role": "user", "content": "look", "images": ["iVBORw0KGgo="]],
                ["role": "assistant", "content": "", "tool_calls": [["function": ["name": "f", "arguments": ["a": 1]]]]],
                ["role": "tool", "tool_name": "f", "content": "{\"ok\":true}"],
            ],
        ]
        let plan = try OllamaRequests.chat(body, model: "x")
        #expect(plan.path == "/v1/chat/completions" && plan.kind == .chat)
        #expect(plan.body["stream"] as? Bool == true)
        #expect((plan.body["response_format"] as? [String: Any])?["type"] as? String == "json_schema")
        #expect((plan.body["chat_template_kwargs"] as? [String: Any])?["enable_thinking"] as? Bool == true)
        let messages = try #require(plan.body["messages"] as? [[String: Any]])
        let parts = try #require(messages[0]["content"] as? [[String: Any]])
        #expect(((parts[1]["image_url"] as? [String: Any])?["url"] as? String)?.hasPrefix("data:image/png;base64,") == true)
        let call = try #require((messages[1]["tool_calls"] as? [[String: Any]])?.first)
        #expect((call["function"] as? [String: Any])?["arguments"] as? String == #"{"a":1}"#)
        #expect(messages[2]["tool_call_id"] as? String == call["id"] as? String)
        #expect(plan.load == nil)
    }

    @Test func generateChoosesInfillRawOrChat() throws {
        let infill = try OllamaRequests.generate(["prompt": "def f(", "suffix": "return 1", "options": ["num_predict": 9]], model: "m")
        #expect(infill.path == "/infill" && infill.body["input_suffix"] as? String == "return 1" && infill.body["n_predict"] as? Int == 9)
        let raw = try OllamaRequests.generate(["prompt": "<s>hi", "raw": true], model: "m")
        #expect(raw.path == "/v1/completions" && raw.body["prompt"] as? String == "<s>hi")
        let chat = try OllamaRequests.generate(["prompt": "hi", "system": "be brief", "keep_alive": "1m"], model: "m")
        #expect(chat.path == "/v1/chat/completions" && (chat.body["messages"] as? [Any])?.count == 2)
        #expect(chat.keepAlive == .seconds(60))
        #expect(throws: OllamaError.self) { try OllamaRequests.generate(["prompt": 5], model: "m") }
        #expect(throws: OllamaError.self) { try OllamaRequests.generate(["prompt": "x", "format": "yaml"], model: "m") }
        #expect(throws: OllamaError.self) { try OllamaRequests.generate(["prompt": "x", "think": "very"], model: "m") }
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
        var streamed: [[String: Any]] = []
        for e in events { streamed += b.feed(Substring(e)) }
        #expect(streamed.count == 2)
        #expect((streamed[0]["message"] as? [String: Any])?["content"] as? String == "Hel")
        #expect((streamed[1]["message"] as? [String: Any])?["thinking"] as? String == "hmm")
        #expect(streamed.allSatisfy { $0["done"] as? Bool == false && $0["model"] as? String == "Chat:latest" })
        let call = b.ollamaToolCalls.first?["function"] as? [String: Any]
        #expect(call?["name"] as? String == "get_weather")
        #expect((call?["arguments"] as? [String: Any])?["city"] as? String == "Oslo")
        let final = b.final(whole: true, total: .milliseconds(10), load: .milliseconds(3))
        #expect(final["done_reason"] as? String == "length")
        #expect((final["message"] as? [String: Any])?["content"] as? String == "Hello")
        #expect(final["prompt_eval_count"] as? Int == 9)
        #expect(final["prompt_eval_duration"] as? Int64 == 1_500_000)
        #expect(final["eval_count"] as? Int == 4)
        #expect(final["eval_duration"] as? Int64 == 2_250_000)
        #expect(final["total_duration"] as? Int64 == 10_000_000)
        #expect(final["load_duration"] as? Int64 == 3_000_000)
    }

    @Test func infillStreamsAndStopsOnLimit() {
        var b = OllamaResponseBuilder(shape: .generate, kind: .infill, model: "m")
        #expect(b.feed(#"{"content":"ab","stop":false}"#).first?["response"] as? String == "ab")
        _ = b.feed(#"{"content":"","stop":true,"stop_type":"limit","timings":{"predicted_n":3}}"#)
        #expect(b.doneReason == "length")
        #expect(b.final(whole: false, total: .zero, load: .zero)["eval_count"] as? Int == 3)
        var e = OllamaResponseBuilder(shape: .generate, kind: .chat, model: "m")
        _ = e.feed(#"{"error":{"message":"context exceeded"}}"#)
        #expect(e.upstreamError == "context exceeded")
    }

    @Test func sseEventsSplitAcrossChunks() {
        var events = SSEEvents()
        #expect(events.feed(ByteBuffer(string: "data: {\"a\":1}\n\ndata: {\"b\"")).map(String.init) == [#"{"a":1}"#])
        #expect(events.feed(ByteBuffer(string: ":2}\r\n\r\n")).map(String.init) == [#"{"b":2}"#])
        #expect(events.feed(ByteBuffer(string: "data: [DONE]")).isEmpty)
        #expect(events.finish().map(String.init) == ["[DONE]"])
    }
}

/// Bad input on the Ollama routes gets Ollama's `{"error":"…"}` with the right status and spawns nothing.
@Suite(.serialized) struct OllamaErrorShapeTests {
    @Test func badRequestsAreOllamaShaped() async throws {
        guard let f = try Fixture.make(models: ["alpha"]) else { return }
        try await f.run { port in
            let cases: [(String, String, Int)] = [
                ("/api/chat", "{not json", 400),
                ("/api/chat", "[1]", 400),
                ("/api/chat", #"{"messages":[]}"#, 400),
                ("/api/chat", #"{"model":"alpha","messages":"hi"}"#, 400),
                ("/api/chat", #"{"model":"alpha","messages":[{"role":"user","content":"x"}],"keep_alive":"300"}"#, 400),
                ("/api/chat", #"{"model":"alpha","messages":[{"role":"user","content":"x"}],"options":{"temperature":"hot"}}"#, 400),
                ("/api/chat", #"{"model":"alpha","messages":[{"role":"user","content":"x"}],"stream":"no"}"#, 400),
                ("/api/chat", #"{"model":"alpha","messages":[{"content":"x"}]}"#, 400),
                ("/api/generate", #"{"model":"alpha","prompt":["x"]}"#, 400),
                ("/api/generate", #"{"model":"../../etc/passwd","prompt":"x"}"#, 404),
                ("/api/generate", #"{"model":"a; rm -rf /","prompt":"x"}"#, 404),
                ("/api/embed", #"{"model":"alpha","input":[1,2]}"#, 400),
                ("/api/embed", #"{"model":"alpha","input":"x","dimensions":-3}"#, 400),
                ("/api/show", #"{"model":"nope"}"#, 404),
                ("/api/copy", #"{"source":"nope","destination":"x"}"#, 404),
                ("/api/copy", #"{"source":"alpha"}"#, 400),
                ("/api/pull", #"{"model":"../../etc/passwd"}"#, 400),
                ("/api/create", #"{"model":"x","files":{"a.gguf":"sha256:nothex"}}"#, 400),
                ("/api/push", #"{"model":"alpha"}"#, 501),
                ("/api/nothing", "{}", 404),
            ]
            for (path, body, status) in cases {
                let reply = try await send(port, path, raw: body)
                #expect(reply.status == status, "\(path) \(body)")
                #expect(reply.json?["error"] is String, "\(path) \(body): \(reply.body)")
            }
            let missing = try await send(port, "/api/delete", method: .DELETE, raw: #"{"model":"nope"}"#)
            #expect(missing.status == 404)
            #expect(missing.json?["error"] as? String == "model 'nope' not found")
            #expect(await f.scheduler.spawnCount == 0)
        }
    }
}
