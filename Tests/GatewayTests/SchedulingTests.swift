import AsyncHTTPClient
import Foundation
import Gateway
import Logging
import NIOCore
import NIOHTTP1
import Runtime
import Testing

/// The scheduler through the real HTTP path, with real llama-server children.
@Suite(.serialized) struct SchedulingTests {
    @Test func twentyConcurrentFirstRequestsSpawnOnce() async throws {
        guard let f = try Fixture.make(models: ["alpha"], parallel: 4) else { return }
        try await f.run { port in
            let statuses = try await withThrowingTaskGroup(of: Int.self) { group in
                for _ in 0..<20 { group.addTask { try await send(port, "/v1/chat/completions", json: chat("alpha")).status } }
                return try await group.reduce(into: []) { $0.append($1) }
            }
            #expect(statuses == Array(repeating: 200, count: 20))
            #expect(await f.scheduler.spawnCount == 1)
            // What llama-server really allocated is recorded next to the projection.
            let info = try #require(await f.scheduler.instances().first)
            #expect(info.planSource == "llama-fit-params")
            #expect(info.projectedMiB != nil)
            #expect((info.allocatedMiB["CPU KV"] ?? 0) > 0, "\(info.allocatedMiB)")
        }
    }

    /// llama-server prints its allocations only at `-lv 4`, which also costs every request ~20
    /// log lines: the first load learns them, a reload with the same arguments runs at `-lv 3`
    /// and reports what was learned.
    @Test func reloadsRunQuietWithTheAllocationsTheFirstLoadReported() async throws {
        guard let f = try Fixture.make(models: ["alpha"]) else { return }
        try await f.run { port in
            #expect(try await send(port, "/v1/chat/completions", json: chat("alpha")).status == 200)
            let first = try #require(await f.scheduler.instances().first)
            #expect(first.arguments.contains("-lv") && first.arguments[first.arguments.firstIndex(of: "-lv")! + 1] == "4")
            #expect(first.allocationSource == "log")
            #expect((first.allocatedMiB["CPU KV"] ?? 0) > 0, "\(first.allocatedMiB)")
            try await f.scheduler.unload("alpha")
            #expect(try await send(port, "/v1/chat/completions", json: chat("alpha")).status == 200)
            let second = try #require(await f.scheduler.instances().first)
            #expect(second.arguments[second.arguments.firstIndex(of: "-lv")! + 1] == "3")
            #expect(second.allocationSource == "learned")
            #expect(second.allocatedMiB == first.allocatedMiB)
            #expect(second.contextSize == first.contextSize)
            // The quiet server really printed no allocation lines of its own.
            let log = try #require(await f.scheduler.instance(for: "alpha")).recentLog()
            #expect(!log.isEmpty && !log.contains { $0.contains(" buffer size") })
        }
    }

    /// Evaluation runs queue behind clients: when a slot frees, a waiting interactive request
    /// gets it before background requests that were queued earlier.
    @Test func aFreedSlotGoesToAWaitingClientBeforeBackgroundWork() async throws {
        guard let f = try Fixture.make(models: ["alpha"], parallel: 1) else { return }
        let scheduler = f.scheduler
        let held = try await scheduler.acquire("alpha")
        let order = Order()
        func queued() async -> Int { await scheduler.instances().first?.queued ?? 0 }
        var waiting: [Task<Void, any Error>] = []
        for (name, priority) in [("background 1", RequestPriority.background), ("background 2", .background), ("client", .interactive)] {
            let before = await queued()
            waiting.append(Task {
                let lease = try await scheduler.acquire("alpha", priority: priority)
                await order.append(name)
                await scheduler.release(lease)
            })
            #expect(await eventually { await queued() == before + 1 })
        }
        await scheduler.release(held)
        for task in waiting { try await task.value }
        #expect(await order.names == ["client", "background 1", "background 2"])
        await scheduler.shutdown()
    }

    actor Order {
        var names: [String] = []
        func append(_ name: String) { names.append(name) }
    }

    @Test func maxLoadedOneSwapsModels() async throws {
        guard let f = try Fixture.make(models: ["alpha", "beta"], configure: { $0.maxLoadedModels = 1 }) else { return }
        try await f.run { port in
            for model in ["alpha", "beta", "alpha", "beta"] {
                let reply = try await send(port, "/v1/chat/completions", json: chat(model))
                #expect(reply.status == 200)
                #expect(reply.json?["model"] as? String == model)
                let loaded = await f.scheduler.instances().filter { $0.state == "loaded" }.map(\.model)
                #expect(loaded == [model])
            }
            #expect(await f.scheduler.spawnCount == 4)
        }
    }

    /// Sixty concurrent first requests across three models with room for two. Three loads once
    /// waited for each other forever (a load still waiting for room counted as occupying it);
    /// evictions also overlap with requests for the model being stopped, which once spun on the
    /// scheduler actor (found by the soak).
    @Test(.timeLimit(.minutes(2))) func concurrentSwapsNeverWedgeTheScheduler() async throws {
        guard let f = try Fixture.make(models: ["alpha", "beta", "gamma"], parallel: 2, configure: { $0.maxLoadedModels = 2 }) else { return }
        try await f.run { port in
            let statuses = try await withThrowingTaskGroup(of: Int.self) { group in
                for i in 0..<60 {
                    group.addTask { try await send(port, "/v1/chat/completions", json: chat(["alpha", "beta", "gamma"][i % 3], maxTokens: 2)).status }
                }
                return try await group.reduce(into: []) { $0.append($1) }
            }
            #expect(statuses == Array(repeating: 200, count: 60))
            #expect(await f.scheduler.spawnCount >= 3)
            #expect(await f.scheduler.instances().filter { $0.state == "loaded" }.count <= 2)
        }
    }

    @Test func pinnedModelsAreNeverEvicted() async throws {
        guard let f = try Fixture.make(models: ["alpha", "beta", "gamma"], pinned: ["alpha"], configure: { $0.maxLoadedModels = 2 }) else { return }
        try await f.run { port in
            for model in ["alpha", "beta", "gamma", "beta"] {
                let status1 = try await send(port, "/v1/chat/completions", json: chat(model)).status
                #expect(status1 == 200)
                let loaded = await f.scheduler.instances().filter { $0.state == "loaded" }.map(\.model)
                #expect(loaded.contains("alpha"), "pinned alpha evicted while loading \(model)")
            }
        }
    }

    @Test func allPinnedAnswers503InsteadOfWaitingForever() async throws {
        guard let f = try Fixture.make(models: ["alpha", "beta"], pinned: ["alpha"], configure: { $0.maxLoadedModels = 1 }) else { return }
        try await f.run { port in
            let status2 = try await send(port, "/v1/chat/completions", json: chat("alpha")).status
            #expect(status2 == 200)
            let reply = try await send(port, "/v1/chat/completions", json: chat("beta"))
            #expect(reply.status == 503)
            #expect((reply.json?["error"] as? [String: Any])?["code"] as? String == "no_capacity")
        }
    }

    @Test func memoryBudgetKeepsOnlyOneLoaded() async throws {
        // Each tiny model projects at least 1 MiB (llama-fit-params rounds to MiB); a 1 MiB
        // budget therefore holds one of them, never both.
        guard let f = try Fixture.make(models: ["alpha", "beta"], configure: { $0.memoryBudgetMiB = ["Host": 1] }) else { return }
        try await f.run { port in
            for model in ["alpha", "beta", "alpha"] {
                let status3 = try await send(port, "/v1/chat/completions", json: chat(model)).status
                #expect(status3 == 200)
                let loaded = await f.scheduler.instances().filter { $0.state == "loaded" }
                #expect(loaded.map(\.model) == [model])
                #expect(loaded.allSatisfy { ($0.projectedMiB ?? 0) >= 1 })
            }
        }
    }

    @Test func thePromptCacheCountsAgainstTheBudget() async throws {
        // Two tiny models fit a 1,500 MiB budget by their weights, not with 1,024 MiB of prompt
        // cache each: loading the second evicts the first.
        guard let f = try Fixture.make(models: ["alpha", "beta"], cacheRamMiB: 1024, configure: { $0.memoryBudgetMiB = ["Host": 1500] }) else { return }
        try await f.run { port in
            for model in ["alpha", "beta"] {
                let status = try await send(port, "/v1/chat/completions", json: chat(model)).status
                #expect(status == 200)
                let loaded = await f.scheduler.instances().filter { $0.state == "loaded" }
                #expect(loaded.map(\.model) == [model])
                #expect(loaded.allSatisfy { ($0.projectedMiB ?? 0) >= 1024 })
            }
        }
    }

    @Test func modelTooBigForTheBudgetGets507WithNumbers() async throws {
        guard let f = try Fixture.make(models: ["alpha"], configure: { $0.memoryBudgetMiB = ["Host": 0] }) else { return }
        try await f.run { port in
            let reply = try await send(port, "/v1/chat/completions", json: chat("alpha"))
            #expect(reply.status == 507)
            let message = (reply.json?["error"] as? [String: Any])?["message"] as? String ?? ""
            #expect(message.contains("needs") && message.contains("MiB"))
            #expect(await f.scheduler.spawnCount == 0)
        }
    }

    @Test func idleTTLUnloads() async throws {
        guard let f = try Fixture.make(models: ["alpha"], ttl: .milliseconds(300)) else { return }
        try await f.run { port in
            let status4 = try await send(port, "/v1/chat/completions", json: chat("alpha")).status
            #expect(status4 == 200)
            let pid = try #require(await f.scheduler.instances().first?.pid)
            let unloaded = await eventually(10) { await f.scheduler.instances().first?.state == "unloaded" }
            #expect(unloaded)
            #expect(await eventually(5) { !processExists(pid) })
            // And it comes back on the next request.
            let status5 = try await send(port, "/v1/chat/completions", json: chat("alpha")).status
            #expect(status5 == 200)
        }
    }

    @Test func modelNamesNeverBecomePathsOrCommands() async throws {
        guard let f = try Fixture.make(models: ["alpha"]) else { return }
        try await f.run { port in
            let hostile = [
                "../alpha", "../../etc/passwd", "/etc/passwd", f.directory + "/alpha.gguf", "alpha; rm -rf /",
                "$(touch /tmp/corral-pwned)", "`id`", "alpha\u{0}", "alpha/../alpha", "~/alpha", "alpha.gguf", "",
            ]
            for name in hostile {
                let reply = try await send(port, "/v1/chat/completions", json: chat(name))
                #expect(reply.status == (name.isEmpty ? 400 : 404), "\(name)")
                #expect(reply.json?["error"] != nil)
            }
            #expect(await f.scheduler.spawnCount == 0)
            #expect(!FileManager.default.fileExists(atPath: "/tmp/corral-pwned"))
        }
    }
}
