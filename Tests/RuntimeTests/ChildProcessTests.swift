import Foundation
import Runtime
import Synchronization
import Testing

@Suite struct ChildProcessTests {
    @Test func capturesOutputAndExitCode() async throws {
        let child = try ChildProcess(executable: "/bin/sh", arguments: ["-c", "echo one; echo two >&2; exit 3"])
        var lines: [String] = []
        for await line in child.lines { lines.append(line) }
        #expect(lines.sorted() == ["one", "two"])
        #expect(await child.wait() == .exited(3))
    }

    /// A ready llama-server's output is read in batches; lines must still arrive whole, in order,
    /// split correctly across reads, with an over-long line cut to 64 KiB.
    @Test func batchedOutputKeepsEveryLineInOrder() async throws {
        let lines = Mutex<[String]>([])
        let ended = Mutex(false)
        let script = "for i in $(seq 1 400); do echo line-$i; [ $((i % 50)) -eq 0 ] && sleep 0.01; done; "
            + "head -c 70000 /dev/zero | tr '\\0' x; echo; echo last"
        let child = try ChildProcess(executable: "/bin/sh", arguments: ["-c", script]) { line in
            if let line { lines.withLock { $0.append(line) } } else { ended.withLock { $0 = true } }
        }
        child.coalesceOutput(every: .milliseconds(15))
        #expect(await child.wait() == .exited(0))
        #expect(ended.withLock { $0 })
        let got = lines.withLock { $0 }
        #expect(Array(got.prefix(400)) == (1...400).map { "line-\($0)" })
        #expect(got.count == 402)
        #expect(got.dropFirst(400).first == String(repeating: "x", count: 65536))
        #expect(got.last == "last")
    }

    @Test func missingExecutableIsATypedError() {
        #expect(throws: SpawnError.self) { try ChildProcess(executable: "/nonexistent/llama-server", arguments: []) }
    }

    @Test func stopSignalsTheWholeGroupThenKills() async throws {
        // The shell ignores SIGTERM and starts a grandchild: SIGKILL after the grace period
        // must take both down.
        let child = try ChildProcess(executable: "/bin/sh", arguments: ["-c", "trap '' TERM; sleep 300 & echo $!; wait"])
        var iterator = child.lines.makeAsyncIterator()
        let grandchild = try #require(await iterator.next().flatMap { Int32($0) })
        let termination = await child.stop(grace: .milliseconds(300))
        #expect(termination == .signaled(SIGKILL))
        try await Task.sleep(for: .milliseconds(100))
        #expect(isGoneOrZombie(grandchild))
    }

    @Test func childDoesNotInheritCorralsDescriptors() async throws {
        let fd = open("/dev/null", O_RDONLY)  // not CLOEXEC
        defer { close(fd) }
        let child = try ChildProcess(executable: "/bin/sh", arguments: ["-c", "ls /proc/self/fd"])
        var fds: [String] = []
        for await line in child.lines { fds.append(line) }
        _ = await child.wait()
        // 0, 1, 2 and the fd `ls` opens for the directory listing.
        #expect(!fds.contains(String(fd)), "inherited \(fd): \(fds)")
        #expect(fds.count <= 4)
    }
}

/// True when `pid` no longer runs (absent, or a zombie waiting for its new parent to reap it).
func isGoneOrZombie(_ pid: Int32) -> Bool {
    guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8) else { return true }
    guard let close = stat.lastIndex(of: ")") else { return true }
    let state = stat[stat.index(close, offsetBy: 2)]
    return state == "Z" || state == "X"
}
