import CSpawn
import Foundation
import Synchronization

/// How a child process ended.
public enum Termination: Sendable, Equatable, CustomStringConvertible {
    case exited(Int32)
    case signaled(Int32)

    public var description: String {
        switch self {
        case .exited(let code): "exited with code \(code)"
        case .signaled(let signal): "killed by signal \(signal)"
        }
    }
}

/// Why a child could not be started.
public struct SpawnError: Error, Sendable, CustomStringConvertible {
    public var executable: String
    public var errno: Int32
    public var description: String { "cannot start \(executable): \(String(cString: strerror(errno)))" }
}

/// A running child process: its own process group, killed by the kernel if Corral dies, with
/// stdout and stderr merged into a stream of lines.
///
/// One plain thread per child reads its output until EOF and then reaps it, so neither blocks
/// the concurrency pool.
public final class ChildProcess: Sendable {
    public let pid: Int32
    public let executable: String
    /// Output lines (stdout and stderr merged), finished when the child closes its output.
    public let lines: AsyncStream<String>
    private let state: Mutex<State>
    /// Microseconds the reader waits after each read (0: none); see ``coalesceOutput(every:)``.
    private let readPause = Atomic<Int>(0)

    private struct State {
        var termination: Termination?
        var waiters: [CheckedContinuation<Termination, Never>] = []
    }

    /// Starts `executable` with `arguments`; `environment` nil inherits Corral's.
    /// - Parameter carriageReturnEndsLines: a `\r` ends a line too (progress bars that redraw
    ///   one line, like llama-finetune's).
    /// - Parameter onLine: when given, receives every output line on the reader thread (nil at
    ///   end of output) instead of ``lines``, which then stays empty. Long-lived children use it:
    ///   no task switch per line.
    public init(
        executable: String, arguments: [String], environment: [String: String]? = nil, carriageReturnEndsLines: Bool = false,
        onLine: (@Sendable (String?) -> Void)? = nil
    ) throws(SpawnError) {
        var fds: [Int32] = [0, 0]
        let pipeError = corral_pipe_cloexec(&fds)
        guard pipeError == 0 else { throw SpawnError(executable: executable, errno: pipeError) }
        let env = (environment ?? ProcessInfo.processInfo.environment).map { "\($0.key)=\($0.value)" }
        var spawnError: Int32 = 0
        let pid = withCStrings([executable] + arguments) { argv in
            withCStrings(env) { envp in
                corral_spawn(executable, argv, envp, fds[1], &spawnError)
            }
        }
        close(fds[1])
        guard pid > 0 else {
            close(fds[0])
            throw SpawnError(executable: executable, errno: spawnError)
        }
        self.pid = pid
        self.executable = executable
        let (stream, continuation) = AsyncStream.makeStream(of: String.self, bufferingPolicy: .bufferingNewest(4096))
        self.lines = stream
        self.state = Mutex(State())
        let readFD = fds[0]
        let thread = Thread { [self] in
            if let onLine {
                continuation.finish()
                Self.pump(fd: readFD, pause: readPause, carriageReturn: carriageReturnEndsLines, into: onLine)
                onLine(nil)
            } else {
                Self.pump(fd: readFD, pause: readPause, carriageReturn: carriageReturnEndsLines) { continuation.yield($0) }
                continuation.finish()
            }
            let status = corral_wait(pid)
            let termination: Termination =
                corral_signaled(status) != 0 ? .signaled(corral_term_signal(status)) : .exited(corral_exit_code(status))
            let waiters = state.withLock { s in
                s.termination = termination
                defer { s.waiters = [] }
                return s.waiters
            }
            for w in waiters { w.resume(returning: termination) }
        }
        thread.name = "corral-child-\(pid)"
        thread.start()
    }

    /// From now on, the reader waits `interval` after each read that did not fill its buffer, so
    /// a chatty child's lines (llama-server writes each log line on its own) arrive in batches:
    /// one wake-up per interval instead of one per line, on a machine where every wake-up takes
    /// CPU from the requests being served. Lines and the end of output arrive up to `interval`
    /// late, so only for a child nobody waits on line by line (a model server once ready).
    public func coalesceOutput(every interval: Duration) {
        let (seconds, attoseconds) = interval.components
        readPause.store(Int(seconds) * 1_000_000 + Int(attoseconds / 1_000_000_000_000), ordering: .relaxed)
    }

    private static let readSize = 65536
    private static let pauseStep = 5000

    /// Reads lines until EOF. Lines longer than 64 KiB are cut.
    private static func pump(fd: Int32, pause: borrowing Atomic<Int>, carriageReturn: Bool, into emit: (String) -> Void) {
        var buffer = [UInt8](repeating: 0, count: readSize)
        var line: [UInt8] = []
        while true {
            let n = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, readSize) }
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { break }
            buffer.withUnsafeBufferPointer { bytes in
                var start = 0
                while start < n {
                    let end = carriageReturn ? bytes[start..<n].firstIndex { $0 == 10 || $0 == 13 } : bytes[start..<n].firstIndex(of: 10)
                    guard let newline = end else {
                        line.append(contentsOf: bytes[start..<min(n, start + max(0, readSize - line.count))])
                        break
                    }
                    if line.isEmpty {
                        emit(String(decoding: bytes[start..<newline], as: UTF8.self))
                    } else {
                        line.append(contentsOf: bytes[start..<min(newline, start + max(0, readSize - line.count))])
                        emit(String(decoding: line, as: UTF8.self))
                        line.removeAll(keepingCapacity: true)
                    }
                    start = newline + 1
                }
            }
            // Paused in steps, so a stop (which ends the pause) sees the end of output promptly.
            if n < readSize {
                var paused = 0
                while paused < pause.load(ordering: .relaxed) {
                    usleep(UInt32(pauseStep))
                    paused += pauseStep
                }
            }
        }
        if !line.isEmpty { emit(String(decoding: line, as: UTF8.self)) }
        close(fd)
    }

    /// The termination, once the child has exited and been reaped.
    public var termination: Termination? { state.withLock { $0.termination } }

    /// Waits for the child to exit.
    public func wait() async -> Termination {
        await withCheckedContinuation { continuation in
            let done = state.withLock { s -> Termination? in
                if let t = s.termination { return t }
                s.waiters.append(continuation)
                return nil
            }
            if let done { continuation.resume(returning: done) }
        }
    }

    /// Sends `signal` to the child's whole process group (and reads its output eagerly again:
    /// whoever signals usually waits for the end).
    public func signalGroup(_ signal: Int32) {
        readPause.store(0, ordering: .relaxed)
        if termination == nil { _ = corral_kill_group(pid, signal) }
    }

    /// Hands each output line to `read` until the output ends. The first error `read` throws
    /// stops the tool (SIGTERM to its group; later lines are drained unread) and is returned, for
    /// the caller to rethrow once the tool has ended; cancelling the task stops the tool too.
    public func follow(_ read: (String) async throws -> Void) async -> (any Error)? {
        var failure: (any Error)?
        await withTaskCancellationHandler {
            for await line in lines where failure == nil {
                do { try await read(line) } catch {
                    failure = error
                    signalGroup(SIGTERM)
                }
            }
        } onCancel: {
            signalGroup(SIGTERM)
        }
        return failure
    }

    /// SIGTERM to the group, then SIGKILL after `grace`; returns once the child is reaped.
    @discardableResult
    public func stop(grace: Duration = .seconds(5)) async -> Termination {
        if let t = termination { return t }
        signalGroup(SIGTERM)
        let killer = Task {
            try await Task.sleep(for: grace)
            self.signalGroup(SIGKILL)
        }
        let t = await wait()
        killer.cancel()
        return t
    }
}

/// Calls `body` with a NULL-terminated C string array that lives for the call.
func withCStrings<R>(_ strings: [String], _ body: (UnsafePointer<UnsafeMutablePointer<CChar>?>) -> R) -> R {
    var pointers: [UnsafeMutablePointer<CChar>?] = strings.map { strdup($0) }
    pointers.append(nil)
    defer { for p in pointers { free(p) } }
    return pointers.withUnsafeBufferPointer { body($0.baseAddress!) }
}
