import Foundation
import GRDB
import Synchronization
import GGUF
import Gateway
import Library
import Logging
import NIOCore
import NIOHTTP1
import Runtime
import Store
import Testing

/// Admin basics and failure marking (the fit-plan cache's tests are LibraryTests').
@Suite(.serialized) struct OperationsTests {
    @Test func repeatedLoadFailuresMarkTheModelFailed() async throws {
        guard var f = try Fixture.make(models: ["alpha"]) else { return }
        // A file whose tensor data is cut off: refused before any spawn (a llama-server that
        // exits while loading is covered by test_faults.py).
        let broken = f.directory + "/broken.gguf"
        let bytes = try Data(contentsOf: URL(fileURLWithPath: f.directory + "/alpha.gguf"))
        try bytes.prefix(bytes.count / 2).write(to: URL(fileURLWithPath: broken))
        var config = f.config
        config.models.append(.init(name: "broken", path: broken))
        var limits = Scheduler.Limits(from: config.scheduler, hostTotalMiB: HostMemory.read().totalMiB)
        limits.fit = false
        let scheduler = Scheduler(catalog: ModelCatalog.build(from: config), limits: limits, tools: f.tools, client: sharedClient, logger: Logger(label: "test"))
        f = Fixture(directory: f.directory, scheduler: scheduler, config: config, tools: f.tools)
        try await f.run { port in
            var codes: [String] = []
            for _ in 0..<4 {
                let reply = try await send(port, "/v1/chat/completions", json: chat("broken"))
                #expect(reply.status == 503)
                codes.append((reply.json?["error"] as? [String: Any])?["code"] as? String ?? "")
            }
            #expect(codes == ["model_load_failed", "model_load_failed", "model_load_failed", "model_failed"])
            let info = await scheduler.instances().first { $0.model == "broken" }
            #expect(info?.state == "failed")
            #expect(info?.lastError?.contains("failures") == true)
            // The healthy model is unaffected; an operator unload clears the mark.
            let healthy = try await send(port, "/v1/chat/completions", json: chat("alpha"))
            #expect(healthy.status == 200)
            _ = try await send(port, "/admin/models/broken/unload")
            #expect(await scheduler.instances().first { $0.model == "broken" }?.state == "unloaded")
        }
    }

    /// The hanging server's `sleep` argument, unique to the fixture (600 s and a fraction), so a
    /// test finds its own child among those of suites running beside it.
    static func hangArgument(_ f: Fixture) -> String { "600.\(UInt(bitPattern: f.directory.hashValue) % 1_000_000)" }

    /// A scheduler whose "llama-server" starts, prints nothing useful and hangs.
    static func hangingScheduler(_ f: Fixture, loadTimeout: Duration) throws -> (Scheduler, LlamaTools) {
        let script = f.directory + "/hang.sh"
        try "#!/bin/sh\necho loading forever\nexec sleep \(hangArgument(f))\n".write(toFile: script, atomically: true, encoding: .utf8)
        try FileManager.default.setAttributes([.posixPermissions: 0o755], ofItemAtPath: script)
        var limits = Scheduler.Limits(from: f.config.scheduler, hostTotalMiB: HostMemory.read().totalMiB)
        limits.loadTimeout = loadTimeout
        limits.fit = false
        limits.stopGrace = .milliseconds(500)
        let tools = LlamaTools(server: .init(path: script, origin: .config))
        let scheduler = Scheduler(catalog: ModelCatalog.build(from: f.config), limits: limits, tools: tools, client: sharedClient, logger: Logger(label: "test"))
        return (scheduler, tools)
    }

    @Test func aServerThatNeverBecomesReadyTimesOutAndIsStopped() async throws {
        guard var f = try Fixture.make(models: ["alpha"]) else { return }
        let (scheduler, tools) = try Self.hangingScheduler(f, loadTimeout: .milliseconds(500))
        f = Fixture(directory: f.directory, scheduler: scheduler, config: f.config, tools: tools)
        let mine = "sleep\0\(Self.hangArgument(f))"
        try await f.run { port in
            let reply = try await send(port, "/v1/chat/completions", json: chat("alpha"))
            #expect(reply.status == 503)
            let message = (reply.json?["error"] as? [String: Any])?["message"] as? String ?? ""
            #expect(message.contains("not ready within"), "\(message)")
            #expect(await scheduler.spawnCount == 1)
            // Children belong to the thread that forked them: look at every thread of this process,
            // for this test's hanging server (suites beside it run llama-servers of their own).
            let threads = try FileManager.default.contentsOfDirectory(atPath: "/proc/self/task")
            let children = threads.compactMap { try? String(contentsOfFile: "/proc/self/task/\($0)/children", encoding: .utf8) }
                .joined(separator: " ").split(separator: " ")
            let leftovers = children.filter { pid in
                (try? String(contentsOfFile: "/proc/\(pid)/cmdline", encoding: .utf8))?.hasPrefix(mine) == true
            }
            #expect(leftovers.isEmpty, "children left: \(leftovers)")
        }
    }

    @Test(.timeLimit(.minutes(1))) func shutdownStopsAHangingLoad() async throws {
        guard let f = try Fixture.make(models: ["alpha"]) else { return }
        let (scheduler, _) = try Self.hangingScheduler(f, loadTimeout: .seconds(600))
        let request = Task { try await scheduler.acquire("alpha") }
        #expect(await eventually(10) { await scheduler.spawnCount == 1 })
        // Without stopping the loading child, shutdown would wait out the 600 s load timeout
        // and the test's time limit would fail it.
        await scheduler.shutdown()
        await #expect(throws: SchedulerError.self) { try await request.value }
    }

    @Test func fitParamsGetsTheConfiguredMemoryMargin() async throws {
        guard let f = try Fixture.make(models: ["alpha"]) else { return }
        // A stand-in llama-fit-params that records its arguments and plans nothing special.
        let record = f.directory + "/fit-args"
        let fit = f.directory + "/fit.sh"
        try "#!/bin/sh\necho \"$@\" >> \(record)\necho '-c 1024 -ngl -1'\n".write(toFile: fit, atomically: true, encoding: .utf8)
        try FileManager.default.setAttributes([.posixPermissions: 0o755], ofItemAtPath: fit)
        var limits = Scheduler.Limits(from: f.config.scheduler, hostTotalMiB: HostMemory.read().totalMiB)
        limits.memoryMarginMiB = 777
        let tools = LlamaTools(server: f.tools.server, fitParams: .init(path: fit, origin: .config))
        let scheduler = Scheduler(catalog: ModelCatalog.build(from: f.config), limits: limits, tools: tools, client: sharedClient, logger: Logger(label: "test"))
        try await scheduler.load("alpha")
        await scheduler.shutdown()
        let args = try String(contentsOfFile: record, encoding: .utf8)
        #expect(args.contains("--fit-target 777"), "\(args)")
    }

    @Test func adminLoadPinUnloadAndLog() async throws {
        guard let f = try Fixture.make(models: ["alpha", "beta"], configure: { $0.maxLoadedModels = 1 }) else { return }
        try await f.run { port in
            #expect(try await send(port, "/admin/models/alpha/load").status == 200)
            #expect(try await send(port, "/admin/models/alpha/pin").status == 200)
            let instances = try await send(port, "/admin/instances", method: .GET)
            let alpha = (try JSONSerialization.jsonObject(with: Data(instances.body.utf8)) as? [[String: Any]])?.first
            #expect(alpha?["state"] as? String == "loaded")
            #expect(alpha?["pinned"] as? Bool == true)
            #expect((alpha?["arguments"] as? [String])?.contains("--alias") == true)
            // beta cannot evict pinned alpha.
            #expect(try await send(port, "/v1/chat/completions", json: chat("beta")).status == 503)
            let log = try await send(port, "/admin/models/alpha/log?lines=50", method: .GET)
            #expect(((log.json?["lines"] as? [String]) ?? []).contains { $0.contains("listening on") })
            #expect(try await send(port, "/admin/models/alpha/unpin").status == 200)
            #expect(try await send(port, "/v1/chat/completions", json: chat("beta")).status == 200)
            #expect(try await send(port, "/admin/models/beta/unload").status == 200)
            #expect(await f.scheduler.instances().allSatisfy { $0.state == "unloaded" })
            #expect(try await send(port, "/admin/models/ghost/load").status == 404)
            #expect(try await send(port, "/admin/models/alpha/explode").status == 404)
        }
    }
}
