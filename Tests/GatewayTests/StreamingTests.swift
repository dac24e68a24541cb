import AsyncHTTPClient
import Foundation
import Gateway
import Logging
import NIOCore
import NIOHTTP1
import Runtime
import Testing

/// Reads an SSE response incrementally.
struct EventReader {
    var iterator: HTTPClientResponse.Body.AsyncIterator
    var buffer = ""

    /// The next complete event's data, or nil at the end of the stream.
    mutating func next() async throws -> String? {
        while true {
            if let range = buffer.range(of: "\n\n") {
                let event = String(buffer[..<range.lowerBound])
                buffer.removeSubrange(..<range.upperBound)
                return event
            }
            guard let chunk = try await iterator.next() else { return buffer.isEmpty ? nil : buffer }
            buffer += String(buffer: chunk)
        }
    }
}

func openStream(_ port: Int, _ body: [String: Any]) async throws -> (Int, HTTPClientResponse) {
    var request = HTTPClientRequest(url: "http://127.0.0.1:\(port)/v1/chat/completions")
    request.method = .POST
    request.headers.add(name: "content-type", value: "application/json")
    request.body = .bytes(ByteBuffer(bytes: try JSONSerialization.data(withJSONObject: body)))
    let response = try await sharedClient.execute(request, timeout: .seconds(180))  // a hang guard, not a timing check
    return (Int(response.status.code), response)
}

/// Long generations: a model with a big context so a stream lasts a second or more.
func longChat(_ model: String, tokens: Int = 6000) -> [String: Any] {
    ["model": model, "messages": [["role": "user", "content": "go"]], "max_tokens": tokens, "stream": true]
}

@Suite(.serialized) struct StreamingTests {
    /// One slot per model and a context large enough for long streams.
    static func bigContextFixture(_ names: [String], configure: (inout Scheduler.Limits) -> Void = { _ in }) throws -> Fixture? {
        try Fixture.make(models: names, parallel: 1, contextSize: 8192, configure: configure)
    }

    @Test func streamUsageChunkIsHiddenUnlessAskedFor() async throws {
        guard let f = try Fixture.make(models: ["alpha"]) else { return }
        try await f.run { port in
            let plain = try await send(port, "/v1/chat/completions", json: chat("alpha", maxTokens: 3, stream: true))
            #expect(plain.status == 200)
            #expect(plain.headers.first(name: "x-accel-buffering") == "no")
            #expect(plain.body.contains("data: [DONE]"))
            #expect(!plain.body.contains("\"usage\""))
            var asked = chat("alpha", maxTokens: 3, stream: true)
            asked["stream_options"] = ["include_usage": true]
            let withUsage = try await send(port, "/v1/chat/completions", json: asked)
            #expect(withUsage.body.contains("\"usage\""))
        }
    }

    @Test func busyModelIsNotEvictedTheOtherRequestWaits() async throws {
        guard let f = try Self.bigContextFixture(["alpha", "beta"], configure: { $0.maxLoadedModels = 1 }) else { return }
        try await f.run { port in
            let (status, response) = try await openStream(port, longChat("alpha"))
            #expect(status == 200)
            var reader = EventReader(iterator: response.body.makeAsyncIterator())
            _ = try await reader.next()
            let other = Task { try await send(port, "/v1/chat/completions", json: chat("beta")) }
            try await Task.sleep(for: .milliseconds(300))
            let states = await f.scheduler.instances()
            #expect(states.first { $0.model == "alpha" }?.state == "loaded")
            #expect(states.first { $0.model == "alpha" }?.inFlight == 1)
            var events = 1
            var sawError = false
            var done = false
            while let event = try await reader.next() {
                events += 1
                if event.contains("\"error\"") { sawError = true }
                if event.contains("[DONE]") { done = true }
            }
            #expect(done && !sawError, "the long stream must finish cleanly")
            #expect(events > 100)
            let reply = try await other.value
            #expect(reply.status == 200)
            #expect(reply.json?["model"] as? String == "beta")
        }
    }

    @Test func queueOverflowGives429WithRetryAfter() async throws {
        guard let f = try Self.bigContextFixture(["alpha"], configure: { $0.queueDepth = 1 }) else { return }
        try await f.run { port in
            let (_, response) = try await openStream(port, longChat("alpha", tokens: 3000))
            var reader = EventReader(iterator: response.body.makeAsyncIterator())
            _ = try await reader.next()
            let queued = Task { try await send(port, "/v1/chat/completions", json: chat("alpha")) }
            #expect(await eventually(5) { await f.scheduler.instances().first?.queued == 1 })
            let rejected = try await send(port, "/v1/chat/completions", json: chat("alpha"))
            #expect(rejected.status == 429)
            #expect(rejected.headers.first(name: "retry-after") != nil)
            #expect((rejected.json?["error"] as? [String: Any])?["code"] as? String == "queue_full")
            while try await reader.next() != nil {}
            let queuedReply = try await queued.value
            #expect(queuedReply.status == 200, "\(queuedReply.body.prefix(300))")
        }
    }

    @Test func childKilledMidStreamGivesErrorEventThenRecovers() async throws {
        guard let f = try Self.bigContextFixture(["alpha"]) else { return }
        try await f.run { port in
            let (_, response) = try await openStream(port, longChat("alpha"))
            var reader = EventReader(iterator: response.body.makeAsyncIterator())
            _ = try await reader.next()
            let pid = try #require(await f.scheduler.instances().first?.pid)
            kill(pid, SIGKILL)
            var last = ""
            while let event = try await reader.next() { last = event }
            #expect(last.contains("\"error\"") && last.contains("upstream_crashed"), "last event: \(last.prefix(200))")
            #expect(await eventually(5) { await f.scheduler.instances().first?.lastError?.contains("signal 9") == true })
            let next = try await send(port, "/v1/chat/completions", json: chat("alpha"))
            #expect(next.status == 200)
            let info = await f.scheduler.instances().first
            #expect(info?.crashes == 1)
            #expect(info?.lastCrashLog.isEmpty == false)
            #expect(info?.pid != pid)
        }
    }

    @Test func clientDisconnectFreesTheSlot() async throws {
        guard let f = try Self.bigContextFixture(["alpha"]) else { return }
        try await f.run { port in
            do {
                let (_, response) = try await openStream(port, longChat("alpha"))
                var reader = EventReader(iterator: response.body.makeAsyncIterator())
                _ = try await reader.next()
                #expect(await f.scheduler.instances().first?.inFlight == 1)
            }
            // Dropping the response cancels the stream; the slot must come back, and llama-server
            // must stop generating (its own /slots shows no slot processing).
            #expect(await eventually(10) { await f.scheduler.instances().first?.inFlight == 0 })
            let idle = await eventually(10) {
                guard let reply = try? await send(port, "/slots?model=alpha", method: .GET),
                    let slots = try? JSONSerialization.jsonObject(with: Data(reply.body.utf8)) as? [[String: Any]]
                else { return false }
                return slots.allSatisfy { ($0["is_processing"] as? Bool) == false }
            }
            #expect(idle)
            let status1 = try await send(port, "/v1/chat/completions", json: chat("alpha")).status
            #expect(status1 == 200)
        }
    }
}
