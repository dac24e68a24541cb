import AsyncHTTPClient
import CorralApp
import Foundation
import GGUF
import Gateway
import Hummingbird
import HummingbirdTesting
import Logging
import NIOCore
import NIOHTTP1
import Runtime
import Testing

/// A Corral with generated tiny models and a real llama-server behind a live HTTP port.
struct Fixture {
    let directory: String
    let scheduler: Scheduler
    let config: CorralConfig
    let tools: LlamaTools

    static var isCI: Bool { ProcessInfo.processInfo.environment["CI"] == "true" }

    /// The real tools, or nil (and a recorded failure under CI) when they are absent.
    static func requireTools() -> LlamaTools? {
        let tools = LlamaTools.discover()
        if tools.server == nil {
            #expect(!isCI, "llama-server missing under CI: run scripts/install-llama.sh")
            return nil
        }
        return tools
    }

    /// Models named `names` (all the same tiny shape, different seeds) and a scheduler with `limits`.
    static func make(
        models names: [String] = ["alpha"], embedding: [String] = [], pinned: [String] = [], parallel: Int = 2, contextSize: Int = 1024,
        ttl: Duration? = nil, upstreams: [CorralConfig.Upstream] = [], cacheRamMiB: Int = 0, configure: (inout Scheduler.Limits) -> Void = { _ in }
    ) throws -> Fixture? {
        guard let tools = requireTools() else { return nil }
        let dir = NSTemporaryDirectory() + "corral-gw-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        var config = CorralConfig()
        config.dataDirectory = dir
        // No prompt cache unless a test asks: budgets in these tests are a few MiB.
        config.cacheRamMiB = cacheRamMiB
        for (i, name) in names.enumerated() {
            var shape = TestModelShape()
            shape.seed = UInt64(i + 1)
            shape.name = name
            shape.embedding = embedding.contains(name)
            let path = "\(dir)/\(name).gguf"
            try TestModel.write(shape: shape, to: path)
            var model = CorralConfig.Model(name: name, path: path)
            model.contextSize = contextSize
            model.parallel = parallel
            model.pinned = pinned.contains(name)
            model.ttl = ttl
            config.models.append(model)
        }
        config.upstreams = upstreams
        var limits = Scheduler.Limits(from: config.scheduler, hostTotalMiB: HostMemory.read().totalMiB)
        limits.stopGrace = .seconds(2)
        configure(&limits)
        var logger = Logger(label: "test")
        logger.logLevel = .warning
        let scheduler = Scheduler(catalog: ModelCatalog.build(from: config), limits: limits, tools: tools,
                                  client: sharedClient, logger: logger)
        return Fixture(directory: dir, scheduler: scheduler, config: config, tools: tools)
    }

    /// Runs `body` against the app on a live loopback port, then stops every child.
    func run(_ body: @Sendable (_ port: Int) async throws -> Void) async throws {
        var logger = Logger(label: "test")
        logger.logLevel = .warning
        let deps = GatewayDependencies(config: config, scheduler: scheduler, client: sharedClient, logger: logger)
        let app = Application(router: buildRouter(deps), configuration: .init(address: .hostname("127.0.0.1", port: 0)), logger: logger)
        do {
            try await app.test(.live) { client in try await body(client.port!) }
        } catch {
            await scheduler.shutdown()
            throw error
        }
        await scheduler.shutdown()
        try? FileManager.default.removeItem(atPath: directory)
    }
}

/// One client for all tests (Corral's upstream client and the tests' own).
let sharedClient: HTTPClient = {
    var configuration = HTTPClient.Configuration(redirectConfiguration: .disallow, timeout: .init(connect: .seconds(5), read: .seconds(180)), decompression: .disabled)
    configuration.connectionPool.concurrentHTTP1ConnectionsPerHostSoftLimit = 64
    configuration.connectionPool.idleTimeout = .seconds(3)
    return HTTPClient(eventLoopGroup: HTTPClient.defaultEventLoopGroup, configuration: configuration)
}()

/// A response read in full.
struct Reply {
    var status: Int
    var headers: HTTPHeaders
    var body: String
    var json: [String: Any]? { try? JSONSerialization.jsonObject(with: Data(body.utf8)) as? [String: Any] }
}

/// Sends a request to Corral and reads the whole answer.
func send(_ port: Int, _ path: String, method: HTTPMethod = .POST, json: Any? = nil, raw: String? = nil) async throws -> Reply {
    var request = HTTPClientRequest(url: "http://127.0.0.1:\(port)\(path)")
    request.method = method
    if let json {
        request.headers.add(name: "content-type", value: "application/json")
        request.body = .bytes(ByteBuffer(bytes: try JSONSerialization.data(withJSONObject: json)))
    } else if let raw {
        request.body = .bytes(ByteBuffer(string: raw))
    }
    let response = try await sharedClient.execute(request, timeout: .seconds(180))  // a hang guard, not a timing check
    let body = try await response.body.collect(upTo: 64 << 20)
    return Reply(status: Int(response.status.code), headers: response.headers, body: String(buffer: body))
}

func chat(_ model: String, maxTokens: Int = 4, stream: Bool = false) -> [String: Any] {
    ["model": model, "messages": [["role": "user", "content": "hello"]], "max_tokens": maxTokens, "stream": stream]
}

/// Polls `condition` every 20 ms for up to `seconds`.
func eventually(_ seconds: Double = 10, _ condition: () async -> Bool) async -> Bool {
    let deadline = Date().addingTimeInterval(seconds)
    while Date() < deadline {
        if await condition() { return true }
        try? await Task.sleep(for: .milliseconds(20))
    }
    return await condition()
}

/// Whether a process with this pid exists.
func processExists(_ pid: Int32) -> Bool { kill(pid, 0) == 0 || errno == EPERM }
