import Foundation
import Runtime

/// A real PostgreSQL server for one test: Debian's `initdb` into a temporary folder and `pg_ctl`
/// on a free loopback port, as an unprivileged user when the tests run as root (PostgreSQL
/// refuses root), with SCRAM password authentication as in a deployment. The Python harness's
/// `corral_harness.postgres` does the same for the cluster tests.
struct PostgresServer {
    static let password = "corral-test-password"
    let root: String
    let port: Int
    let binaries: String
    let asUser: [String]

    /// Debian's versioned folder of the server binaries, else nil.
    static var binariesFolder: String? {
        let base = "/usr/lib/postgresql"
        let versions = (try? FileManager.default.contentsOfDirectory(atPath: base)) ?? []
        return versions.compactMap(Int.init).sorted().last.map { "\(base)/\($0)/bin" }
            .flatMap { FileManager.default.fileExists(atPath: $0 + "/initdb") ? $0 : nil }
    }

    /// Whether these tests can run here; under CI they must (`make test-system` installs PostgreSQL).
    static var available: Bool { binariesFolder != nil || ProcessInfo.processInfo.environment["CI"] == "true" }

    static func start() async throws -> PostgresServer {
        guard let binaries = binariesFolder else { throw Failure("PostgreSQL's initdb was not found under /usr/lib/postgresql") }
        let root = NSTemporaryDirectory() + "corral-pg-swift-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o755])
        var asUser: [String] = []
        let passwordFile = root + "/pw"
        try Data(password.utf8).write(to: URL(fileURLWithPath: passwordFile))
        if geteuid() == 0, let nobody = getpwnam("nobody") {
            asUser = ["/usr/sbin/runuser", "-u", "nobody", "--"]
            for path in [root, passwordFile] {
                try FileManager.default.setAttributes([.ownerAccountID: Int(nobody.pointee.pw_uid)], ofItemAtPath: path)
            }
        }
        let server = PostgresServer(root: root, port: try freePort(), binaries: binaries, asUser: asUser)
        try await server.run("initdb", "-D", root + "/data", "-U", "corral", "--auth=scram-sha-256", "--pwfile=\(passwordFile)", "-E", "UTF8", "--no-sync")
        try await server.run("pg_ctl", "-D", root + "/data", "-l", root + "/server.log", "-w", "-t", "30", "start", "-o",
                       "-p \(server.port) -k \(root) -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off")
        try await server.run("psql", "-h", "127.0.0.1", "-p", String(server.port), "-U", "corral", "-d", "postgres", "-c", "CREATE DATABASE corral",
                       environment: ["PGPASSWORD": password])
        return server
    }

    /// Stops the server at once and removes its folder.
    func stop() async {
        do { try await run("pg_ctl", "-D", root + "/data", "-m", "immediate", "-w", "stop") } catch { print("stopping PostgreSQL: \(error)") }
        try? FileManager.default.removeItem(atPath: root)
    }

    /// Runs a PostgreSQL tool to its end. Through Corral's own spawner, not Foundation's
    /// `Process`: the server `pg_ctl` starts inherited the descriptor `Process` watches for its
    /// child's exit, so `waitUntilExit` never returned; the spawner passes on no descriptors.
    func run(_ tool: String, _ arguments: String..., environment: [String: String] = [:]) async throws {
        let command = asUser + [binaries + "/" + tool] + arguments
        let child = try ChildProcess(executable: command[0], arguments: Array(command.dropFirst()),
                                     environment: ProcessInfo.processInfo.environment.merging(environment) { $1 })
        var output: [String] = []
        for await line in child.lines { output.append(line) }
        guard case .exited(0) = await child.wait() else {
            throw Failure("\(tool) failed: \(output.suffix(20).joined(separator: "\n"))")
        }
    }

    /// A port nothing listens on now: the kernel's choice for a socket bound to port 0.
    static func freePort() throws -> Int {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw Failure("socket() failed") }
        defer { close(fd) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, length) == 0 && getsockname(fd, $0, &length) == 0 }
        }
        guard bound else { throw Failure("bind() failed") }
        return Int(UInt16(bigEndian: address.sin_port))
    }

    struct Failure: Error, CustomStringConvertible {
        let description: String
        init(_ description: String) { self.description = description }
    }
}
