import ArgumentParser
import Foundation
import Runtime

/// `corral doctor`: which llama.cpp tools Corral will use, system packages and devices.
struct DoctorCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "doctor", abstract: "Check the llama.cpp tools, system packages and hardware.")

    @Option(help: "Configuration file.")
    var config = "routes.json"

    func run() async throws {
        let configured = (try? CorralConfig.load(path: config))?.llama.toolPaths ?? [:]
        let tools = LlamaTools.discover(configured: configured)
        var problems = 0
        func report(_ ok: Bool, _ line: String, fix: String) {
            print((ok ? "ok    " : "MISS  ") + line + (ok ? "" : "\n      fix: " + fix))
            if !ok { problems += 1 }
        }
        let found: [(name: String, configKey: String, tool: LlamaTools.Tool?)] = [
            ("llama-server", "server", tools.server), ("llama-fit-params", "fitParams", tools.fitParams), ("llama-bench", "bench", tools.bench),
            ("llama-perplexity", "perplexity", tools.perplexity), ("llama-finetune", "finetune", tools.finetune),
            ("llama-quantize", "quantize", tools.quantize),
        ]
        for (name, configKey, tool) in found {
            report(
                tool != nil, "\(name): " + (tool.map { "\($0.path) (from \($0.origin.rawValue))" } ?? "not found"),
                fix: "run `make llama` (scripts/install-llama.sh) or set llama.\(configKey) in routes.json")
        }
        if let build = await tools.serverBuild() { print("      build: \(build)") }
        for package in ["libcurl4-openssl-dev", "libsqlite3-dev", "libssl-dev", "cmake"] {
            let installed = Self.debianPackageInstalled(package)
            report(installed, "package \(package)", fix: "apt-get install -y \(package)")
        }
        if tools.server != nil {
            let devices = await tools.devices()
            print("      devices: " + (devices.isEmpty ? "none (CPU only)" : devices.map { "\($0.name) \($0.description) \($0.totalMiB) MiB total, \($0.freeMiB) MiB free" }.joined(separator: "; ")))
        }
        if problems > 0 { throw ExitCode(1) }
    }

    static func debianPackageInstalled(_ name: String) -> Bool {
        guard let status = try? String(contentsOfFile: "/var/lib/dpkg/status", encoding: .utf8) else { return false }
        var current: String?
        for line in status.split(separator: "\n", omittingEmptySubsequences: false) {
            if line.hasPrefix("Package: ") { current = String(line.dropFirst(9)) }
            if line.hasPrefix("Status: "), current == name || current?.hasPrefix(name + ":") == true {
                return line.hasSuffix("install ok installed")
            }
        }
        return false
    }
}
