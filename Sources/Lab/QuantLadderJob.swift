import Foundation
import GGUF
import Jobs
import Library
import Runtime

/// A quant ladder: a model quantized to each of `quants`, each measured against the model itself
/// on one text, to find the smallest quantization that stays within a quality budget and fits.
public struct QuantLadderSpec: Sendable, Codable, Equatable {
    public var model: String
    public var path: String
    /// The base file's type (`F32`, `F16`, …) and size.
    public var baseType: String
    public var baseBytes: Int64
    public var quants: [QuantType]
    public var textPath: String
    public var textSHA256: String
    public var textSource: String
    /// Tokens per perplexity chunk (`-c`), and at most this many chunks.
    public var contextSize: Int
    public var chunks: Int?
    /// The largest mean KL divergence (against the base) a recommended quant may have.
    public var maxKLD: Double
    /// The context the fit verdict is judged for (the model's configured one, else 4096).
    public var fitContextSize: Int
    /// The model's settings `llama-perplexity` shares with llama-server (threads, GPU layers, …).
    public var arguments: [String]
    /// The estimator's MiB per device for the base, claimed while the tools run.
    public var estimatedDeviceMiB: [String: Int]
    public var allowRequantize: Bool

    /// What a ladder measures when none are named: the common types from 8 bits down to 2.
    public static let defaultQuants: [QuantType] = ["Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M", "Q4_0", "Q3_K_M", "Q2_K"].compactMap(QuantType.init)
}

/// One rung: a quantization's size, fit, speed and quality against the base.
public struct QuantRung: Sendable, Codable, Equatable {
    public var type: QuantType
    public var bytes: Int64
    /// Size relative to the base.
    public var sizeRatio: Double
    /// The fit verdict on this machine at the spec's `fitContextSize` (`fits_gpu`, `cpu_only`, …),
    /// and the estimator's total.
    public var fit: String
    public var estimatedMiB: Int
    /// llama-bench: prompt processing and generation, tokens per second.
    public var promptTPS: Double?
    public var generationTPS: Double?
    public var perplexity: Double
    /// Mean KL divergence of the quant's token distributions from the base's, and how often both
    /// put the same token first (%).
    public var meanKLD: Double
    public var sameTopPercent: Double?
    public var fallbackTensors: Int
}

/// A ladder's outcome: the base, every rung, and the recommendation.
public struct QuantLadderResult: Sendable, Codable, Equatable {
    public var model: String
    public var baseType: String
    public var baseBytes: Int64
    public var basePerplexity: Double
    public var rungs: [QuantRung]
    public var maxKLD: Double
    /// The smallest rung within `maxKLD` that fits; nil when none does.
    public var recommended: QuantType?
    /// Why that one (or why none).
    public var reason: String
    public var contextSize: Int
    public var textSHA256: String

    /// The smallest rung (by size) whose mean KLD is within `maxKLD` and that fits this machine.
    static func recommend(_ rungs: [QuantRung], maxKLD: Double) -> (QuantType?, String) {
        let fitting = rungs.filter { $0.fit != Compatibility.Verdict.doesNotFit.rawValue }
        let within = fitting.filter { $0.meanKLD <= maxKLD }
        guard let best = within.min(by: { $0.bytes < $1.bytes }) else {
            if fitting.isEmpty { return (nil, "no quantization fits this machine") }
            let closest = fitting.min { $0.meanKLD < $1.meanKLD }!
            return (nil, "no quantization that fits stays within a mean KLD of \(maxKLD) (the closest, \(closest.type), has \(format(closest.meanKLD)))")
        }
        return (best.type, "\(best.type) is the smallest that fits with a mean KLD within \(maxKLD): \(format(best.meanKLD)), \(String(format: "%.1f", best.sizeRatio * 100))% of the base's size")
    }

    static func format(_ v: Double) -> String { String(format: v < 0.01 ? "%.5f" : "%.3f", v) }
}

/// What a ladder reports while it runs (the job's detail): rungs done so far and the step now.
public struct QuantLadderProgress: Sendable, Codable, Equatable {
    public var basePerplexity: Double?
    public var rungs: [QuantRung] = []
    public var step: String
}

/// Runs a quant ladder as a job: the base's logits once (`llama-perplexity
/// --kl-divergence-base`), then per type `llama-quantize`, the fit verdict, `llama-bench` and
/// `llama-perplexity --kl-divergence`; the quantized files are scratch (deleted as each rung is
/// measured: `corral quantize` keeps the one chosen). A restart runs it again from the start.
public struct QuantLadderJob: JobKind {
    public static let name = "quant-ladder"
    public static let idPrefix = "ladder"

    let tools: LlamaTools
    /// Where the scratch files go (one folder per job, removed when it ends).
    let directory: String
    /// The machine and margin fit verdicts are judged against, now.
    let compatibility: @Sendable () async -> Compatibility

    public init(tools: LlamaTools, directory: String, compatibility: @escaping @Sendable () async -> Compatibility) {
        self.tools = tools
        self.directory = directory
        self.compatibility = compatibility
    }

    public var policy: JobPolicy { JobPolicy(maxConcurrent: 1, restart: .resume, keepFinished: 200, cancelGrace: .seconds(5)) }

    public func model(of spec: QuantLadderSpec) -> String? { spec.model }

    /// The spec for a ladder of `model`: its file and settings, the types (deduplicated, largest
    /// first), and the memory the base needs for the perplexity runs.
    public static func plan(_ model: ModelSpec, runtimeArguments: [String], quants: [QuantType], text: (path: String, sha256: String, source: String),
                            contextSize: Int, chunks: Int?, maxKLD: Double, allowRequantize: Bool, compatibility: Compatibility) throws(LabError) -> QuantLadderSpec {
        let perplexity = try PerplexityJob.plan(model, runtimeArguments: runtimeArguments, text: text, contextSize: contextSize, chunks: chunks,
                                                compatibility: compatibility)
        guard let facts = model.facts else { throw .badRequest("'\(model.id)' is not a local GGUF model", param: "model") }
        if !QuantType.isUnquantized(fileType: facts.fileType) && !allowRequantize {
            throw .badRequest("'\(model.id)' is \(facts.quantization): a ladder measures quantizations of F32, F16 or BF16 weights (allowRequantize to measure requantizations)", param: "model")
        }
        guard !quants.isEmpty else { throw .badRequest("quants must name at least one type", param: "quants") }
        guard maxKLD > 0 else { throw .badRequest("maxKLD must be above 0", param: "maxKLD") }
        let ordered = QuantType.all.filter(quants.contains)
        let bytes = (try? FileManager.default.attributesOfItem(atPath: perplexity.path))?[.size] as? NSNumber
        return QuantLadderSpec(
            model: model.id, path: perplexity.path, baseType: facts.quantization, baseBytes: bytes?.int64Value ?? 0, quants: ordered,
            textPath: text.path, textSHA256: text.sha256, textSource: text.source, contextSize: contextSize, chunks: chunks, maxKLD: maxKLD,
            fitContextSize: model.contextSize ?? 4096, arguments: perplexity.arguments, estimatedDeviceMiB: perplexity.estimatedDeviceMiB,
            allowRequantize: allowRequantize)
    }

    public func run(_ spec: QuantLadderSpec, context: JobContext) async throws -> QuantLadderResult {
        guard let perplexityTool = tools.perplexity?.path else { throw JobError("no_llama_perplexity", "llama-perplexity not found (run `make llama`)") }
        guard let quantizeTool = tools.quantize?.path else { throw JobError("no_llama_quantize", "llama-quantize not found (run `make llama`)") }
        guard FileManager.default.fileExists(atPath: spec.textPath) else { throw JobError("text_missing", "the text \(spec.textSHA256) is gone") }
        let scratch = directory + "/" + context.id
        do { try FileManager.default.createDirectory(atPath: scratch, withIntermediateDirectories: true) } catch {
            throw JobError("storage", "cannot create \(scratch): \(error.localizedDescription)")
        }
        defer { try? FileManager.default.removeItem(atPath: scratch) }  // scratch only: nothing else reads it
        try await context.claimMemory(spec.estimatedDeviceMiB)
        do {
            let result = try await measure(spec, perplexityTool: perplexityTool, quantizeTool: quantizeTool, scratch: scratch, context: context)
            await context.releaseMemory()
            return result
        } catch {
            await context.releaseMemory()
            throw error
        }
    }

    func measure(_ spec: QuantLadderSpec, perplexityTool: String, quantizeTool: String, scratch: String, context: JobContext) async throws -> QuantLadderResult {
        let steps = Double(1 + 3 * spec.quants.count)
        var progress = QuantLadderProgress(step: "base logits")
        func step(_ done: Int, _ what: String) async throws {
            progress.step = what
            try await context.progress(Double(done), of: steps, unit: "steps", message: what)
            try await context.detail(progress)
        }
        try await step(0, "the base's logits (\(spec.baseType))")
        let logits = scratch + "/base.kld"
        let base = try await PerplexityJob.measure(
            tool: perplexityTool, model: spec.path, textPath: spec.textPath, contextSize: spec.contextSize, chunks: spec.chunks,
            arguments: spec.arguments + ["--kl-divergence-base", logits]) { _, _ in }
        progress.basePerplexity = base.perplexity
        let compatibility = await compatibility()
        var done = 1
        for type in spec.quants {
            try await step(done, "quantizing to \(type)")
            let file = scratch + "/\(type.name).gguf"
            let quantized: Quantizer.Outcome
            do {
                quantized = try await Quantizer.run(tool: quantizeTool, source: spec.path, output: file, type: type,
                                                    allowRequantize: spec.allowRequantize) { _, _ in }
            } catch let failure as QuantizeFailure {
                throw JobError("quantize_failed", "\(type): \(failure.description)")
            }
            done += 1
            try await step(done, "measuring the speed of \(type)")
            let facts: ModelFacts
            do { facts = try ModelFacts.read(path: file) } catch { throw JobError("quantize_failed", "\(type): the result cannot be read: \(error)") }
            var settings = MemoryEstimator.Settings()
            settings.contextSize = spec.fitContextSize
            let (verdict, estimate) = compatibility.assess(facts, settings)
            let speed = try await Self.bench(tool: tools.bench?.path, model: file, arguments: spec.arguments)
            done += 1
            try await step(done, "measuring the quality of \(type)")
            let quality = try await Self.divergence(tool: perplexityTool, model: file, logits: logits, contextSize: spec.contextSize, arguments: spec.arguments)
            done += 1
            progress.rungs.append(QuantRung(
                type: type, bytes: quantized.bytes, sizeRatio: spec.baseBytes > 0 ? Double(quantized.bytes) / Double(spec.baseBytes) : 0,
                fit: verdict.rawValue, estimatedMiB: Int(estimate.total >> 20), promptTPS: speed?.prompt, generationTPS: speed?.generation,
                perplexity: quality.perplexity, meanKLD: quality.meanKLD, sameTopPercent: quality.sameTopPercent, fallbackTensors: quantized.fallbackTensors))
            unlink(file)
            try await context.event("rung", progress.rungs.last!)
        }
        try await step(done, "done")
        let (recommended, reason) = QuantLadderResult.recommend(progress.rungs, maxKLD: spec.maxKLD)
        return QuantLadderResult(model: spec.model, baseType: spec.baseType, baseBytes: spec.baseBytes, basePerplexity: base.perplexity,
                                 rungs: progress.rungs, maxKLD: spec.maxKLD, recommended: recommended, reason: reason,
                                 contextSize: spec.contextSize, textSHA256: spec.textSHA256)
    }

    /// `llama-bench` (64 prompt tokens, 16 generated, twice) with the model's GPU layers and
    /// threads: tokens per second for each; nil without the tool.
    static func bench(tool: String?, model: String, arguments: [String]) async throws -> (prompt: Double?, generation: Double?)? {
        guard let tool else { return nil }
        var args = ["-m", model, "-p", "64", "-n", "16", "-r", "2", "-o", "jsonl"]
        for flag in ["-ngl", "-t"] {
            if let i = arguments.lastIndex(of: flag), i + 1 < arguments.count { args += [flag, arguments[i + 1]] }
        }
        let child: ChildProcess
        do { child = try ChildProcess(executable: tool, arguments: args) } catch { throw JobError("spawn_failed", "llama-bench: \(error)") }
        var output = BenchOutput()
        _ = await child.follow { output.read($0) }
        let termination = await child.wait()
        try Task.checkCancellation()
        guard termination == .exited(0) else { throw JobError("bench_failed", "llama-bench ended (\(termination)) on \(URL(fileURLWithPath: model).lastPathComponent)") }
        return (output.prompt, output.generation)
    }

    /// `llama-perplexity --kl-divergence` against the base's logits: the quant's perplexity, mean
    /// KL divergence and same-top-token share.
    static func divergence(tool: String, model: String, logits: String, contextSize: Int, arguments: [String]) async throws -> DivergenceOutput {
        let child: ChildProcess
        let all = ["-m", model, "-c", String(contextSize), "--kl-divergence-base", logits, "--kl-divergence"] + arguments
        do { child = try ChildProcess(executable: tool, arguments: all) } catch {
            throw JobError("spawn_failed", "llama-perplexity: \(error)")
        }
        var output = DivergenceOutput()
        _ = await child.follow { output.read($0) }
        let termination = await child.wait()
        try Task.checkCancellation()
        guard termination == .exited(0), output.meanKLD.isFinite, output.perplexity.isFinite else {
            throw JobError("perplexity_failed", output.errors.last ?? "llama-perplexity --kl-divergence ended (\(termination)) without its statistics")
        }
        return output
    }
}

/// `llama-bench -o jsonl`: one JSON object per test; `n_prompt` > 0 is prompt processing, `n_gen`
/// > 0 generation, `avg_ts` their tokens per second.
struct BenchOutput {
    var prompt: Double?
    var generation: Double?

    mutating func read(_ line: String) {
        guard line.hasPrefix("{"), let data = line.data(using: .utf8), let test = try? JSONDecoder().decode(Test.self, from: data) else { return }
        if test.n_prompt > 0 && test.n_gen == 0 { prompt = test.avg_ts }
        if test.n_gen > 0 && test.n_prompt == 0 { generation = test.avg_ts }
    }

    struct Test: Decodable {
        var n_prompt: Int
        var n_gen: Int
        var avg_ts: Double
    }
}

/// The statistics `llama-perplexity --kl-divergence` prints at the end:
/// `Mean PPL(Q) : 1891.248958 ± 51.485120`, `Mean    KLD:   0.000995 ±   0.000007`,
/// `Same top p: 96.603 ± 0.214 %`.
struct DivergenceOutput {
    var perplexity = Double.nan
    var meanKLD = Double.nan
    var sameTopPercent: Double?
    var errors: [String] = []

    mutating func read(_ line: String) {
        func first(after marker: String) -> Double? {
            guard let r = line.range(of: marker) else { return nil }
            return Double(line[r.upperBound...].drop { $0 == " " || $0 == ":" }.prefix { !$0.isWhitespace })
        }
        if let v = first(after: "Mean PPL(Q)") { perplexity = v }
        if let v = first(after: "Mean    KLD:") { meanKLD = v }
        if let v = first(after: "Same top p:") { sameTopPercent = v }
        let fields = line.split(separator: " ", maxSplits: 2)
        if fields.count == 3, fields[1] == "E" { errors.append(String(fields[2])) }
    }
}
