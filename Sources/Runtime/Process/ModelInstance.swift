import AsyncHTTPClient
import Foundation
import NIOCore
import NIOHTTP1
import Synchronization

/// The recent output of one llama-server, fed line by line on its reader thread.
///
/// Until the server is listening, lines are also scanned for the `buffer size` allocation
/// lines and the `listening on` readiness line; after that a line costs one ring-buffer store.
public final class InstanceLog: Sendable {
    private let state = Mutex(State())

    struct State {
        var ring = [String](repeating: "", count: InstanceLog.capacity)
        var next = 0
        var count = 0
        var listening = false
        var ended = false
        var gaveUp = false
        var listeningWaiter: CheckedContinuation<Void, Never>?
        /// MiB per device and buffer kind, from llama-server's own "buffer size" log lines.
        var allocated: [String: Double] = [:]
        /// `n_ctx` as llama-server reported it.
        var contextSize: Int?
    }

    /// What an earlier load with the same arguments reported, for a server started at `-lv 3`
    /// (which prints no allocation lines).
    let learned: LearnedAllocations?

    /// How many lines each instance keeps.
    public static let capacity = 300

    public init(learned: LearnedAllocations? = nil) {
        self.learned = learned
    }

    /// Feeds one line (nil at end of output).
    public func record(_ line: String?) {
        let waiter: CheckedContinuation<Void, Never>? = state.withLock { s in
            guard let line else {
                s.ended = true
                defer { s.listeningWaiter = nil }
                return s.listeningWaiter
            }
            s.ring[s.next] = line
            s.next = (s.next + 1) % Self.capacity
            s.count = min(s.count + 1, Self.capacity)
            guard !s.listening else { return nil }
            if let (key, mib) = ModelInstance.parseBufferLine(line) { s.allocated[key, default: 0] += mib }
            if s.contextSize == nil, let n = ModelInstance.parseContextLine(line) { s.contextSize = n }
            if line.contains("listening on http") {
                s.listening = true
                defer { s.listeningWaiter = nil }
                return s.listeningWaiter
            }
            return nil
        }
        waiter?.resume()
    }

    /// The last `count` lines, oldest first.
    public func recent(_ count: Int = capacity) -> [String] {
        state.withLock { s in
            let n = min(count, s.count)
            return (0..<n).map { s.ring[(s.next - n + $0 + Self.capacity) % Self.capacity] }
        }
    }

    /// This server's own allocation lines, else what an earlier load reported.
    var allocated: [String: Double] {
        let own = state.withLock { $0.allocated }
        return own.isEmpty ? learned?.allocatedMiB ?? [:] : own
    }
    var contextSize: Int? { state.withLock { $0.contextSize } ?? learned?.contextSize }

    /// What this server's own log reported allocating, nil when it printed no allocation lines.
    var observedAllocations: LearnedAllocations? {
        state.withLock { s in s.allocated.isEmpty ? nil : LearnedAllocations(allocatedMiB: s.allocated, contextSize: s.contextSize) }
    }

    /// `log` when the allocations come from this server's own log, `learned` when from an
    /// earlier load with the same arguments, nil when neither reported any.
    var allocationSource: String? {
        if state.withLock({ !$0.allocated.isEmpty }) { return "log" }
        return learned == nil ? nil : "learned"
    }

    /// Ends a pending ``waitUntilListening()`` (and any later one): the load timed out.
    func giveUpWaiting() {
        let waiter = state.withLock { s in
            s.gaveUp = true
            defer { s.listeningWaiter = nil }
            return s.listeningWaiter
        }
        waiter?.resume()
    }

    /// Waits until the server says it is listening, its output ends, or ``giveUpWaiting()``.
    func waitUntilListening() async {
        await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
            let now = state.withLock { s -> Bool in
                if s.listening || s.ended || s.gaveUp { return true }
                s.listeningWaiter = c
                return false
            }
            if now { c.resume() }
        }
    }
}

/// One running llama-server for one model: its process, port, plan and recent log.
public final class ModelInstance: Sendable {
    public let modelID: String
    public let process: ChildProcess
    public let port: Int
    public let arguments: [String]
    public let plan: FitPlan
    public let startedAt: Date
    let log: InstanceLog

    /// How many log lines each instance keeps.
    public static let logCapacity = InstanceLog.capacity

    public var baseURL: String { "http://127.0.0.1:\(port)" }

    init(modelID: String, process: ChildProcess, log: InstanceLog, port: Int, arguments: [String], plan: FitPlan) {
        self.modelID = modelID
        self.process = process
        self.port = port
        self.arguments = arguments
        self.plan = plan
        self.startedAt = Date()
        self.log = log
    }

    /// The last log lines, oldest first.
    public func recentLog(_ count: Int = logCapacity) -> [String] { log.recent(count) }

    /// What llama-server reported allocating, in MiB, by `DEVICE kind` (e.g. `CPU KV`): this
    /// process's log, or an earlier load's with the same arguments (see ``LearnedAllocations``).
    public var allocatedMiB: [String: Double] { log.allocated }

    /// Where ``allocatedMiB`` comes from: `log` (this process) or `learned` (an earlier load).
    public var allocationSource: String? { log.allocationSource }

    /// The context llama-server runs with: its `n_ctx = N` log line, else the last `-c` argument.
    public var contextSize: Int? {
        if let n = log.contextSize { return n }
        var value: Int?
        for (i, a) in arguments.enumerated() where (a == "-c" || a == "--ctx-size") && i + 1 < arguments.count {
            value = Int(arguments[i + 1])
        }
        return value.flatMap { $0 > 0 ? $0 : nil }
    }

    /// Parses `llama_context: n_ctx         = 4096`.
    static func parseContextLine(_ line: String) -> Int? {
        guard let r = line.range(of: "llama_context: n_ctx ") ?? line.range(of: "llama_context: n_ctx=") else { return nil }
        let rest = line[r.upperBound...].drop { $0 == " " || $0 == "=" }
        return Int(rest.prefix { $0.isNumber })
    }

    /// Parses `NAME model|KV|compute|output|RS buffer size = 12.34 MiB`.
    static func parseBufferLine(_ line: String) -> (String, Double)? {
        guard let range = line.range(of: " buffer size") else { return nil }
        let before = line[..<range.lowerBound].split(separator: " ")
        guard before.count >= 2, let kind = before.last, ["model", "KV", "compute", "output", "RS"].contains(String(kind)) else { return nil }
        let device = before[before.count - 2].replacingOccurrences(of: ":", with: "")
        let after = line[range.upperBound...].split(whereSeparator: { $0 == " " || $0 == "=" })
        guard let value = after.first.flatMap({ Double($0) }), after.dropFirst().first == "MiB" else { return nil }
        return ("\(device) \(kind)", value)
    }

    /// Starts a llama-server outside the scheduler (a tuning trial) and waits until it serves.
    /// The caller stops it with `process.stop(grace:)`.
    public static func launch(
        modelID: String, serverPath: String, arguments: [String], client: HTTPClient, timeout: Duration
    ) async throws(SchedulerError) -> ModelInstance {
        guard let port = freeLoopbackPort() else { throw .loadFailed(modelID, "no free port") }
        let all = arguments + ["--host", "127.0.0.1", "--port", String(port), "--no-webui", "-lv", "4"]
        let log = InstanceLog()
        let child: ChildProcess
        do { child = try ChildProcess(executable: serverPath, arguments: all, onLine: { log.record($0) }) } catch {
            throw .loadFailed(modelID, error.description)
        }
        let instance = ModelInstance(
            modelID: modelID, process: child, log: log, port: port, arguments: all,
            plan: FitPlan(arguments: [], projection: [], source: .estimator, note: "tuning trial"))
        do {
            try await instance.waitUntilReady(client: client, timeout: timeout)
        } catch {
            _ = await child.stop(grace: .seconds(1))
            throw error
        }
        return instance
    }

    /// Waits until `/health` answers 200: first for the "listening" log line, then polling every
    /// few milliseconds (a tiny model is ready ~0.2 s after start; one-second polling would triple that).
    /// How long a ready instance's log reader waits between reads (see
    /// ``ChildProcess/coalesceOutput(every:)``).
    static let logBatchInterval = Duration.milliseconds(20)

    func waitUntilReady(client: HTTPClient, timeout: Duration) async throws(SchedulerError) {
        let deadline = ContinuousClock.now + timeout
        // The log line arrives once the HTTP socket is bound; until then connections are refused.
        let log = self.log
        let timer = Task {
            try await Task.sleep(for: timeout)
            log.giveUpWaiting()
        }
        await log.waitUntilListening()
        timer.cancel()
        while ContinuousClock.now < deadline {
            if let t = process.termination {
                throw .loadFailed(modelID, "llama-server \(t): " + recentLog(8).joined(separator: " | "))
            }
            var request = HTTPClientRequest(url: baseURL + "/health")
            request.method = .GET
            if let response = try? await client.execute(request, timeout: .milliseconds(500)) {
                _ = try? await response.body.collect(upTo: 1 << 16)
                if response.status.code == 200 {
                    // From here on its log is only kept, not waited on: read it in batches.
                    process.coalesceOutput(every: Self.logBatchInterval)
                    return
                }
            }
            try? await Task.sleep(for: .milliseconds(4))
        }
        throw .loadFailed(modelID, "not ready within \(timeout)")
    }
}

/// A free loopback TCP port, found by binding port 0.
func freeLoopbackPort() -> Int? {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    guard fd >= 0 else { return nil }
    defer { close(fd) }
    var addr = sockaddr_in()
    addr.sin_family = sa_family_t(AF_INET)
    addr.sin_port = 0
    addr.sin_addr.s_addr = inet_addr("127.0.0.1")
    let bound = withUnsafePointer(to: &addr) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
    }
    guard bound == 0 else { return nil }
    var len = socklen_t(MemoryLayout<sockaddr_in>.size)
    let named = withUnsafeMutablePointer(to: &addr) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) }
    }
    guard named == 0 else { return nil }
    return Int(UInt16(bigEndian: addr.sin_port))
}
