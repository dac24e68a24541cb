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
        /// `draft` for what the draft model (speculative decoding) takes on the device; nil for
        /// the model itself. The scheduler adds both to the device's need.
        public var part: String?
        public var totalMiB: Int { modelMiB + contextMiB + computeMiB }

        public init(device: String, modelMiB: Int, contextMiB: Int, computeMiB: Int, part: String? = nil) {
            self.device = device
            self.modelMiB = modelMiB
            self.contextMiB = contextMiB
            self.computeMiB = computeMiB
            self.part = part
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
    /// Projected memory summed over every device, host included (the draft model's too).
    public var totalMiB: Int { projection.reduce(0) { $0 + $1.totalMiB } }
    /// What the draft model alone takes, summed over every device (0 without one).
    public var draftMiB: Int { projection.filter { $0.part == Self.draftPart }.reduce(0) { $0 + $1.totalMiB } }
    /// The ``DeviceProjection/part`` of the draft model's rows.
    public static let draftPart = "draft"

    /// Whether a projection row's device is host memory (llama-fit-params prints `Host`, older
    /// builds `CPU`).
    public static func isHost(_ device: String) -> Bool { device == "Host" || device == "CPU" }

    /// Adds a draft model's rows and launch arguments.
    mutating func add(_ draft: FitPlanner.DraftPart) {
        projection += draft.projection
        arguments += draft.arguments
        if let n = draft.note { note = "draft: " + n }
    }

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
    ///
    /// A model with a draft (speculative decoding) is planned in two parts, as llama-server
    /// loads it: llama-fit-params refuses `-md`, so the draft is fitted on its own file at the
    /// model's context (llama-server gives the draft the target's context), the model is fitted
    /// with the draft's GPU memory added to the margin, and the draft's rows (part `draft`) join
    /// the projection.
    public func plan(model: ModelSpec, baseArguments: [String]) async -> FitPlan {
        guard let tool = fitParamsPath, let path = model.path else {
            return estimate(model, baseArguments: baseArguments, note: "llama-fit-params not found")
        }
        // llama-fit-params refuses llama-server's own flags (`invalid argument: --embeddings`),
        // which would send every embedding, reranking or fine-tuned model to the estimator.
        let baseArguments = Self.fitArguments(baseArguments)
        let draft = model.draftArguments.isEmpty ? nil : model.draft
        var draftPart: DraftPart?
        var margin = marginMiB
        if let draft {
            let part = await planDraft(draft, tool: tool, target: baseArguments,
                                       context: Self.contextSize(in: baseArguments) ?? model.contextSize ?? model.facts?.contextLength ?? 4096)
            margin += part.largestGPUMiB
            draftPart = part
        }
        let common = ["-m", path] + baseArguments + ["--fit-target", String(margin)]
        do {
            let args = try await LlamaTools.run(tool, common)
            guard args.termination == .exited(0),
                let line = args.lines.last(where: { $0.hasPrefix("-") })
            else {
                return estimate(model, baseArguments: baseArguments, note: "llama-fit-params failed: \(args.termination)")
            }
            let arguments = FitPlan.parseArguments(line)
            let projection = try await Self.projection(tool, ["-m", path] + baseArguments + arguments)
            var plan = FitPlan(arguments: arguments, projection: projection, source: .fitParams, note: nil)
            if let draft, var part = draftPart {
                // The model's fit may have settled on another context than the draft was planned at.
                if let context = plan.contextSize, context != part.context {
                    part = await planDraft(draft, tool: tool, target: baseArguments, context: context)
                }
                plan.add(part)
            }
            return plan
        } catch {
            return estimate(model, baseArguments: baseArguments, note: "\(error)")
        }
    }

    /// `llama-fit-params --fit-print on` for a launch with `arguments`. Without mmap it counts
    /// every host-resident weight, which is what RAM must hold (`-lm none`; builds before the
    /// load-mode flag took `--no-mmap`).
    static func projection(_ tool: String, _ arguments: [String]) async throws(SpawnError) -> [FitPlan.DeviceProjection] {
        var projection: [FitPlan.DeviceProjection] = []
        for flags in [["-lm", "none"], ["--no-mmap"], []] {
            let print = try await LlamaTools.run(tool, arguments + ["--fit-print", "on"] + flags)
            projection = FitPlan.parseProjection(print.lines)
            if print.termination == .exited(0) && !projection.isEmpty { break }
        }
        return projection
    }

    /// What a draft model adds to its target's plan.
    struct DraftPart {
        /// The context it was planned at (the target's).
        var context: Int
        /// Launch arguments the fit chose for it (`-ngld`), when it goes to a GPU and none was set.
        var arguments: [String]
        var projection: [FitPlan.DeviceProjection]
        /// Why the estimator sized it, when it did.
        var note: String?

        /// The most it takes on any one accelerator (what the target's margin grows by).
        var largestGPUMiB: Int { projection.filter { !FitPlan.isHost($0.device) }.map(\.totalMiB).max() ?? 0 }
    }

    /// Fits the draft model alone, as llama-server creates its context: the target's context,
    /// slots, flash attention and batch sizes, the draft's own cache types and GPU layers.
    func planDraft(_ draft: Draft, tool: String, target: [String], context: Int) async -> DraftPart {
        let args = ["-m", draft.path, "-c", String(context)] + Self.draftFitArguments(target) + (draft.gpuLayers.map { ["-ngl", String($0)] } ?? [])
        func estimated(_ note: String) -> DraftPart {
            DraftPart(context: context, arguments: [], projection: Self.estimateDraft(draft, context: context, arguments: target), note: note)
        }
        do {
            let fit = try await LlamaTools.run(tool, args + ["--fit-target", String(marginMiB)])
            guard fit.termination == .exited(0), let line = fit.lines.last(where: { $0.hasPrefix("-") }) else {
                return estimated("llama-fit-params failed on the draft: \(fit.termination)")
            }
            let fitted = FitPlan.parseArguments(line)
            var projection = try await Self.projection(tool, args + fitted)
            guard !projection.isEmpty else { return estimated("llama-fit-params printed no projection for the draft") }
            for i in projection.indices { projection[i].part = FitPlan.draftPart }
            let layers = FitPlan(arguments: fitted, projection: [], source: .fitParams).gpuLayers
            let onGPU = projection.contains { !FitPlan.isHost($0.device) }
            let chosen = onGPU && draft.gpuLayers == nil ? layers.flatMap { $0 >= 0 ? ["-ngld", String($0)] : nil } ?? [] : []
            return DraftPart(context: context, arguments: chosen, projection: projection, note: nil)
        } catch {
            return estimated("\(error)")
        }
    }

    /// The target's flags that shape the draft's context too (llama-server builds the draft's
    /// parameters from the target's): slots, flash attention, batch sizes, unified KV; the
    /// draft's own cache types (`-ctkd`, `-ctvd`) become `-ctk`/`-ctv`.
    static func draftFitArguments(_ target: [String]) -> [String] {
        let shared: Set<String> = ["-np", "--parallel", "-fa", "--flash-attn", "-ub", "--ubatch-size", "-b", "--batch-size"]
        let renamed = ["-ctkd": "-ctk", "--cache-type-k-draft": "-ctk", "--spec-draft-type-k": "-ctk",
                       "-ctvd": "-ctv", "--cache-type-v-draft": "-ctv", "--spec-draft-type-v": "-ctv"]
        let switches: Set<String> = ["-kvu", "--kv-unified", "-no-kvu", "--no-kv-unified"]
        var out: [String] = []
        var i = 0
        while i < target.count {
            let flag = target[i]
            if switches.contains(flag) {
                out.append(flag)
            } else if i + 1 < target.count, shared.contains(flag) || renamed[flag] != nil {
                out += [renamed[flag] ?? flag, target[i + 1]]
                i += 1
            }
            i += 1
        }
        return out
    }

    /// The last `-c` (`--ctx-size`) in `arguments`.
    static func contextSize(in arguments: [String]) -> Int? {
        guard let i = arguments.lastIndex(where: { $0 == "-c" || $0 == "--ctx-size" }), i + 1 < arguments.count else { return nil }
        return Int(arguments[i + 1])
    }

    /// The draft's rows from its header alone (the estimator's accounting, all on the host).
    static func estimateDraft(_ draft: Draft, context: Int, arguments: [String]) -> [FitPlan.DeviceProjection] {
        var s = MemoryEstimator.Settings()
        s.contextSize = context
        if let i = arguments.lastIndex(where: { $0 == "-np" || $0 == "--parallel" }), i + 1 < arguments.count, let n = Int(arguments[i + 1]) { s.parallel = n }
        let mib = UInt64(1 << 20)
        func up(_ bytes: UInt64) -> Int { Int(bytes / mib + (bytes % mib == 0 ? 0 : 1)) }
        return MemoryEstimator.estimate(draft.facts, s).devices.map { d in
            let buffers = d.compute.addingReportingOverflow(d.output)  // header values may be hostile: no trap
            return FitPlan.DeviceProjection(device: d.name, modelMiB: up(d.weights), contextMiB: up(d.kv), computeMiB: up(buffers.overflow ? .max : buffers.partialValue),
                                     part: FitPlan.draftPart)
        }
    }

    /// Flags only llama-server takes (none changes where weights or the KV cache go), without a
    /// value and with one.
    static let serverOnlyFlags: Set<String> = ["--embeddings", "--embedding", "--reranking", "--rerank", "--jinja", "--no-jinja", "--no-webui", "--metrics",
                                               "--slots", "--no-slots", "--props"]
    static let serverOnlyOptions: Set<String> = ["--pooling", "--alias", "-a", "--chat-template", "--chat-template-file", "--cache-ram", "-cram",
                                                 "--mmproj", "-mm", "--slot-save-path", "--host", "--port", "--api-key", "--slot-prompt-similarity", "-sps"]

    /// `arguments` without the flags llama-fit-params does not know (and their values): the
    /// server's own, and the draft model's (planned apart, see ``plan(model:baseArguments:)``).
    public static func fitArguments(_ arguments: [String]) -> [String] {
        var kept: [String] = []
        var i = 0
        while i < arguments.count {
            if serverOnlyFlags.contains(arguments[i]) {
                i += 1
            } else if serverOnlyOptions.contains(arguments[i]) || Draft.options.contains(arguments[i]) {
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
        var projection: [FitPlan.DeviceProjection] = [.init(device: "Host", modelMiB: weights, contextMiB: kvBytes / mib, computeMiB: compute)]
        if !model.draftArguments.isEmpty, let draft = model.draft {
            projection += Self.estimateDraft(draft, context: ctx, arguments: baseArguments)
        }
        return FitPlan(arguments: [], projection: projection, source: .estimator, note: note)
    }
}
