import Foundation
import GGUF

/// How to run one model: llama-server arguments from `llama-fit-params`, and the memory it
/// projected per device.
public struct FitPlan: Sendable, Equatable, Codable {
    /// Where the plan came from.
    public enum Source: String, Sendable, Codable {
        case fitParams = "llama-fit-params"
        case estimator = "header-estimator"
    }

    public struct DeviceProjection: Sendable, Equatable, Codable {
        public var device: String
        public var modelMiB: Int
        public var contextMiB: Int
        public var computeMiB: Int
        public var totalMiB: Int { modelMiB + contextMiB + computeMiB }

        public init(device: String, modelMiB: Int, contextMiB: Int, computeMiB: Int) {
            self.device = device
            self.modelMiB = modelMiB
            self.contextMiB = contextMiB
            self.computeMiB = computeMiB
        }
    }

    /// Arguments as llama-fit-params printed them (`-c`, `-ngl`, `-ts`, `-ot`).
    public var arguments: [String]
    public var projection: [DeviceProjection]
    public var source: Source
    /// Why the estimator was used, when it was.
    public var note: String?

    public init(arguments: [String], projection: [DeviceProjection], source: Source, note: String? = nil) {
        self.arguments = arguments
        self.projection = projection
        self.source = source
        self.note = note
    }

    public var contextSize: Int? { value(after: "-c").flatMap { Int($0) } }
    public var gpuLayers: Int? { value(after: "-ngl").flatMap { Int($0) } }
    public var tensorSplit: String? { value(after: "-ts") }
    public var overrideTensors: String? { value(after: "-ot") }
    /// Projected memory summed over every device, host included.
    public var totalMiB: Int { projection.reduce(0) { $0 + $1.totalMiB } }

    func value(after flag: String) -> String? {
        guard let i = arguments.firstIndex(of: flag), i + 1 < arguments.count else { return nil }
        return arguments[i + 1]
    }

    /// Splits llama-fit-params' one stdout line into arguments, honouring double quotes
    /// (`-ot "a=CUDA1,b=CPU"`); older builds print `-ot` unquoted and 999 for all layers.
    public static func parseArguments(_ line: String) -> [String] {
        var out: [String] = []
        var current = ""
        var inQuotes = false
        var hasToken = false
        for ch in line {
            if ch == "\"" {
                inQuotes.toggle()
                hasToken = true
            } else if ch == " " && !inQuotes {
                if hasToken { out.append(current) }
                current = ""
                hasToken = false
            } else {
                current.append(ch)
                hasToken = true
            }
        }
        if hasToken { out.append(current) }
        return out
    }

    /// Parses `--fit-print on` lines: `NAME MODEL_MiB CONTEXT_MiB COMPUTE_MiB`.
    public static func parseProjection(_ lines: [String]) -> [DeviceProjection] {
        lines.compactMap { line in
            let parts = line.split(separator: " ", omittingEmptySubsequences: true)
            guard parts.count == 4, let m = Int(parts[1]), let c = Int(parts[2]), let k = Int(parts[3]) else { return nil }
            return DeviceProjection(device: String(parts[0]), modelMiB: m, contextMiB: c, computeMiB: k)
        }
    }
}

/// Runs `llama-fit-params` for a model, with the header estimator as the fallback.
public struct FitPlanner: Sendable {
    public var fitParamsPath: String?
    public var marginMiB: Int

    public init(fitParamsPath: String?, marginMiB: Int) {
        self.fitParamsPath = fitParamsPath
        self.marginMiB = marginMiB
    }

    /// Plans `model` with the given base arguments (pinned args and Corral's own `-c`/`-np`).
    public func plan(model: ModelSpec, baseArguments: [String]) async -> FitPlan {
        guard let tool = fitParamsPath, let path = model.path else {
            return estimate(model, baseArguments: baseArguments, note: "llama-fit-params not found")
        }
        // llama-fit-params refuses llama-server's own flags (`invalid argument: --embeddings`),
        // which would send every embedding, reranking or fine-tuned model to the estimator.
        let baseArguments = Self.fitArguments(baseArguments)
        let common = ["-m", path] + baseArguments + ["--fit-target", String(marginMiB)]
        do {
            let args = try await LlamaTools.run(tool, common)
            guard args.termination == .exited(0),
                let line = args.lines.last(where: { $0.hasPrefix("-") })
            else {
                return estimate(model, baseArguments: baseArguments, note: "llama-fit-params failed: \(args.termination)")
            }
            let arguments = FitPlan.parseArguments(line)
            // The projection without mmap counts every host-resident weight, which is what RAM
            // must hold (`-lm none`; builds before the load-mode flag took `--no-mmap`).
            var projection: [FitPlan.DeviceProjection] = []
            for flags in [["-lm", "none"], ["--no-mmap"], []] {
                let print = try await LlamaTools.run(tool, ["-m", path] + baseArguments + arguments + ["--fit-print", "on"] + flags)
                projection = FitPlan.parseProjection(print.lines)
                if print.termination == .exited(0) && !projection.isEmpty { break }
            }
            return FitPlan(arguments: arguments, projection: projection, source: .fitParams, note: nil)
        } catch {
            return estimate(model, baseArguments: baseArguments, note: "\(error)")
        }
    }

    /// Flags only llama-server takes (none changes where weights or the KV cache go), without a
    /// value and with one.
    static let serverOnlyFlags: Set<String> = ["--embeddings", "--embedding", "--reranking", "--rerank", "--jinja", "--no-jinja", "--no-webui", "--metrics",
                                               "--slots", "--no-slots", "--props"]
    static let serverOnlyOptions: Set<String> = ["--pooling", "--alias", "-a", "--chat-template", "--chat-template-file", "--cache-ram", "-cram",
                                                 "--mmproj", "-mm", "--slot-save-path", "--host", "--port", "--api-key"]

    /// `arguments` without the flags llama-fit-params does not know (and their values).
    public static func fitArguments(_ arguments: [String]) -> [String] {
        var kept: [String] = []
        var i = 0
        while i < arguments.count {
            if serverOnlyFlags.contains(arguments[i]) {
                i += 1
            } else if serverOnlyOptions.contains(arguments[i]) {
                i += 2
            } else {
                kept.append(arguments[i])
                i += 1
            }
        }
        return kept
    }

    /// A plan from the GGUF header alone: weights from the tensor table, KV for the context,
    /// and a compute buffer, all on the host.
    public func estimate(_ model: ModelSpec, baseArguments: [String], note: String) -> FitPlan {
        let mib = 1 << 20
        let facts = model.facts
        let weights = Int(facts?.tensorBytes ?? model.fileSize ?? 0) / mib
        var ctx = model.contextSize ?? facts?.contextLength ?? 4096
        if let i = baseArguments.firstIndex(of: "-c"), i + 1 < baseArguments.count, let c = Int(baseArguments[i + 1]) { ctx = c }
        if ctx == 0 { ctx = facts?.contextLength ?? 4096 }
        ctx = (ctx + 255) / 256 * 256
        var kvBytes = 0
        if let f = facts, let kl = f.keyLength, let vl = f.valueLength {
            for heads in f.headCountKV { kvBytes += (kl + vl) * heads * ctx * 2 }
        }
        let embd = facts?.embeddingLength ?? 4096
        let vocab = facts?.vocabularySize ?? 32000
        let compute = 4 * 512 * (embd + vocab) / mib + 1
        return FitPlan(
            arguments: [], projection: [.init(device: "Host", modelMiB: weights, contextMiB: kvBytes / mib, computeMiB: compute)],
            source: .estimator, note: note)
    }
}
