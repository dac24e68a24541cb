import Foundation

/// The llama.cpp tools Corral runs, and where each was found.
public struct LlamaTools: Sendable, Equatable {
    /// Where a tool path came from, in lookup order.
    public enum Origin: String, Sendable {
        case config, environment, cache, path
    }

    public struct Tool: Sendable, Equatable {
        public var path: String
        public var origin: Origin

        public init(path: String, origin: Origin) {
            self.path = path
            self.origin = origin
        }
    }

    public var server: Tool?
    public var fitParams: Tool?
    public var bench: Tool?
    /// `llama-perplexity`: perplexity of a model on a text (a quality figure next to speed).
    public var perplexity: Tool?
    /// `llama-finetune`: llama.cpp's trainer (fine-tuning jobs).
    public var finetune: Tool?
    /// `llama-quantize`: quantize jobs and the quant ladder.
    public var quantize: Tool?
    /// `ggml-rpc-server` (`rpc-server` in older trees): a cluster node's devices offered to
    /// the other nodes (`cluster.rpc`).
    public var rpcServer: Tool?

    /// No tools (a gateway that only proxies remote upstreams).
    public init(server: Tool? = nil, fitParams: Tool? = nil, bench: Tool? = nil, perplexity: Tool? = nil, finetune: Tool? = nil, quantize: Tool? = nil,
                rpcServer: Tool? = nil) {
        self.rpcServer = rpcServer
        self.server = server
        self.fitParams = fitParams
        self.bench = bench
        self.perplexity = perplexity
        self.finetune = finetune
        self.quantize = quantize
    }

    /// The llama.cpp version the install script builds.
    public static let version = ProcessInfo.processInfo.environment["LLAMA_CPP_VERSION"] ?? "11434.0.0"

    /// The cache folder the install script fills (`~/.cache/corral/llama.cpp/<version>`).
    public static var cacheDirectory: String {
        let root = ProcessInfo.processInfo.environment["CORRAL_LLAMA_CACHE"]
            ?? (NSHomeDirectory() + "/.cache/corral/llama.cpp")
        return root + "/" + version
    }

    /// Finds the tools: explicit config paths, then `CORRAL_LLAMA_SERVER` / `CORRAL_LLAMA_FIT_PARAMS` /
    /// `CORRAL_LLAMA_BENCH` / `CORRAL_LLAMA_PERPLEXITY` / `CORRAL_LLAMA_FINETUNE` / `CORRAL_LLAMA_QUANTIZE` /
    /// `CORRAL_LLAMA_RPC_SERVER`, then `CORRAL_LLAMA_BIN` (a folder), then the build cache, then `PATH`.
    public static func discover(
        configured: [String: String] = [:],
        environment: [String: String] = ProcessInfo.processInfo.environment
    ) -> LlamaTools {
        func find(_ name: String, configKey: String, envKey: String) -> Tool? {
            // A path set in routes.json is the operator's choice: if it is unusable, nothing
            // else is silently used in its place.
            if let p = configured[configKey] { return isExecutable(p) ? Tool(path: p, origin: .config) : nil }
            if let p = environment[envKey], isExecutable(p) { return Tool(path: p, origin: .environment) }
            if let dir = environment["CORRAL_LLAMA_BIN"], isExecutable(dir + "/" + name) {
                return Tool(path: dir + "/" + name, origin: .environment)
            }
            let cached = cacheDirectory + "/bin/" + name
            if isExecutable(cached) { return Tool(path: cached, origin: .cache) }
            for dir in (environment["PATH"] ?? "").split(separator: ":") {
                let p = "\(dir)/\(name)"
                if isExecutable(p) { return Tool(path: p, origin: .path) }
            }
            return nil
        }
        return LlamaTools(
            server: find("llama-server", configKey: "server", envKey: "CORRAL_LLAMA_SERVER"),
            fitParams: find("llama-fit-params", configKey: "fitParams", envKey: "CORRAL_LLAMA_FIT_PARAMS"),
            bench: find("llama-bench", configKey: "bench", envKey: "CORRAL_LLAMA_BENCH"),
            perplexity: find("llama-perplexity", configKey: "perplexity", envKey: "CORRAL_LLAMA_PERPLEXITY"),
            finetune: find("llama-finetune", configKey: "finetune", envKey: "CORRAL_LLAMA_FINETUNE"),
            quantize: find("llama-quantize", configKey: "quantize", envKey: "CORRAL_LLAMA_QUANTIZE"),
            rpcServer: find("ggml-rpc-server", configKey: "rpcServer", envKey: "CORRAL_LLAMA_RPC_SERVER")
                ?? (configured["rpcServer"] == nil ? find("rpc-server", configKey: "rpcServer", envKey: "CORRAL_LLAMA_RPC_SERVER") : nil))
    }

    /// An executable named `name` on `PATH`, if any.
    public static func which(_ name: String) -> String? {
        for dir in (ProcessInfo.processInfo.environment["PATH"] ?? "").split(separator: ":") where isExecutable("\(dir)/\(name)") {
            return "\(dir)/\(name)"
        }
        return nil
    }

    static func isExecutable(_ path: String) -> Bool {
        var isDir: ObjCBool = false
        return FileManager.default.fileExists(atPath: path, isDirectory: &isDir) && !isDir.boolValue
            && FileManager.default.isExecutableFile(atPath: path)
    }

    /// Runs a tool to completion and returns its output lines and termination.
    public static func run(_ path: String, _ arguments: [String]) async throws(SpawnError) -> (lines: [String], termination: Termination) {
        let child = try ChildProcess(executable: path, arguments: arguments)
        var lines: [String] = []
        for await line in child.lines { lines.append(line) }
        return (lines, await child.wait())
    }

    /// `llama-server --version` output's build line, e.g. `version: 1 (abc123)`.
    public func serverBuild() async -> String? {
        guard let server else { return nil }
        guard let out = try? await Self.run(server.path, ["--version"]) else { return nil }
        return out.lines.first { $0.hasPrefix("version:") }
    }

    /// The devices llama.cpp sees (`llama-server --list-devices`).
    public func devices() async -> [Device] {
        guard let server, let out = try? await Self.run(server.path, ["--list-devices"]) else { return [] }
        return Device.parseList(out.lines)
    }
}

/// An accelerator as llama.cpp lists it.
public struct Device: Sendable, Equatable, Codable {
    public var name: String
    public var description: String
    public var totalMiB: Int
    public var freeMiB: Int

    public init(name: String, description: String, totalMiB: Int, freeMiB: Int) {
        self.name = name
        self.description = description
        self.totalMiB = totalMiB
        self.freeMiB = freeMiB
    }

    /// Parses `--list-devices` lines: `  NAME: DESCRIPTION (TOTAL MiB, FREE MiB free)`.
    public static func parseList(_ lines: [String]) -> [Device] {
        lines.compactMap { line in
            let trimmed = line.trimmingCharacters(in: .whitespaces)
            guard let colon = trimmed.firstIndex(of: ":"), let open = trimmed.lastIndex(of: "("),
                trimmed.hasSuffix("MiB free)"), open > colon
            else { return nil }
            let name = String(trimmed[..<colon])
            let description = trimmed[trimmed.index(after: colon)..<open].trimmingCharacters(in: .whitespaces)
            let numbers = trimmed[open...].split(whereSeparator: { !$0.isNumber }).compactMap { Int($0) }
            guard numbers.count >= 2 else { return nil }
            return Device(name: name, description: description, totalMiB: numbers[0], freeMiB: numbers[1])
        }
    }
}
