import Foundation
import GGUF
import Jobs
import Library
import Runtime

/// A perplexity measurement: the model, its file, the text and how it is cut into chunks, and
/// what `llama-perplexity` is started with (the model's own settings, taken at submission).
public struct PerplexitySpec: Sendable, Codable, Equatable {
    public var model: String
    public var path: String
    /// The text, kept under the data directory by its SHA-256 (`textSHA256`).
    public var textPath: String
    public var textSHA256: String
    /// Where the text came from: a file id, or `inline`.
    public var textSource: String
    /// Tokens per chunk (`-c`): perplexity is comparable only between runs with the same value.
    public var contextSize: Int
    /// At most this many chunks (`--chunks`); nil: the whole text.
    public var chunks: Int?
    /// The model's settings that `llama-perplexity` understands (GPU layers, split, KV types,
    /// flash attention, threads), from its pinned arguments and runtime profile.
    public var arguments: [String]
    /// The estimator's MiB per device, claimed from the scheduler while the tool runs.
    public var estimatedDeviceMiB: [String: Int]
}

/// What `llama-perplexity` reported: `PPL ± error` over `chunks` chunks of `contextSize` tokens.
public struct PerplexityOutcome: Sendable, Codable, Equatable {
    public var perplexity: Double
    /// The tool's standard error of the estimate (its `+/-`).
    public var error: Double
    public var chunks: Int
    public var contextSize: Int
    public var seconds: Double
}

/// Runs `llama-perplexity` on a model (outside the serving fleet, its estimated memory claimed
/// from the scheduler while it runs) and keeps `PPL ± err` as a quality figure next to the
/// model's speed benchmarks. A restart runs it again from the start (it is deterministic).
public struct PerplexityJob: JobKind {
    public static let name = "perplexity"
    public static let idPrefix = "ppl"

    let tools: LlamaTools

    public init(tools: LlamaTools) { self.tools = tools }

    public var policy: JobPolicy { JobPolicy(maxConcurrent: 1, restart: .resume, keepFinished: 500, cancelGrace: .seconds(5)) }

    public func model(of spec: PerplexitySpec) -> String? { spec.model }

    /// Flags of a model's llama-server arguments that `llama-perplexity` takes with the same
    /// meaning (each with one value). Context, slots, ports and the like are the server's own.
    static let sharedFlags: Set<String> = [
        "-ngl", "--n-gpu-layers", "--gpu-layers", "-ts", "--tensor-split", "-sm", "--split-mode", "-mg", "--main-gpu",
        "-fa", "--flash-attn", "-ctk", "--cache-type-k", "-ctv", "--cache-type-v", "-t", "--threads", "-tb", "--threads-batch",
        "-ub", "--ubatch-size", "-ot", "--override-tensor", "-ncmoe", "--n-cpu-moe",
    ]

    /// The model's settings `llama-perplexity` shares with llama-server, in order (the last
    /// value of a flag wins there as in llama-server).
    static func sharedArguments(_ arguments: [String]) -> [String] {
        var kept: [String] = []
        var i = 0
        while i < arguments.count {
            if sharedFlags.contains(arguments[i]), i + 1 < arguments.count {
                kept += [arguments[i], arguments[i + 1]]
                i += 2
            } else {
                i += 1
            }
        }
        return kept
    }

    /// The spec for `model`: its settings, the memory the estimator expects for `contextSize`
    /// (the tool evaluates up to 2048 tokens at once, in as many sequences as fit), and the text.
    public static func plan(_ spec: ModelSpec, runtimeArguments: [String], text: (path: String, sha256: String, source: String),
                            contextSize: Int, chunks: Int?, compatibility: Compatibility) throws(LabError) -> PerplexitySpec {
        guard let facts = spec.facts, let path = spec.path else { throw .badRequest("'\(spec.id)' is not a local GGUF model", param: "model") }
        let arguments = sharedArguments(spec.pinnedArgs + runtimeArguments)
        var s = MemoryEstimator.Settings()
        s.contextSize = max(contextSize, 2048 / contextSize * contextSize)
        s.ubatch = 512
        if let i = arguments.lastIndex(where: { ["-ngl", "--n-gpu-layers", "--gpu-layers"].contains($0) }), let n = Int(arguments[i + 1]) { s.gpuLayers = n }
        let (verdict, estimate) = compatibility.assess(facts, s)
        if verdict == .doesNotFit {
            throw .badRequest("'\(spec.id)' does not fit in memory for a perplexity run (needs \(estimate.total >> 20) MiB)", param: "model")
        }
        let devices = Dictionary(estimate.devices.map { ($0.name, Int(($0.total + 1_048_575) / 1_048_576)) }, uniquingKeysWith: +)
        return PerplexitySpec(model: spec.id, path: path, textPath: text.path, textSHA256: text.sha256, textSource: text.source,
                              contextSize: contextSize, chunks: chunks, arguments: arguments, estimatedDeviceMiB: devices)
    }

    public func run(_ spec: PerplexitySpec, context: JobContext) async throws -> PerplexityOutcome {
        guard let tool = tools.perplexity?.path else { throw JobError("no_llama_perplexity", "llama-perplexity not found (run `make llama`)") }
        guard FileManager.default.fileExists(atPath: spec.textPath) else { throw JobError("text_missing", "the text \(spec.textSHA256) is gone") }
        try await context.claimMemory(spec.estimatedDeviceMiB)
        let outcome: PerplexityOutcome
        do {
            outcome = try await Self.measure(
                tool: tool, model: spec.path, textPath: spec.textPath, contextSize: spec.contextSize, chunks: spec.chunks, arguments: spec.arguments
            ) { done, total in
                try await context.progress(Double(done), of: total.map(Double.init), unit: "chunks")
            }
        } catch {
            await context.releaseMemory()
            throw error
        }
        await context.releaseMemory()
        try await context.detail(outcome)
        return outcome
    }

    /// Runs `llama-perplexity` on `model` and `textPath` and returns its final estimate, calling
    /// `progress` (chunks done, of how many) as chunks finish; a `progress` that throws stops
    /// the tool and the error is rethrown once it ended. Cancelling stops the tool.
    public static func measure(tool: String, model: String, textPath: String, contextSize: Int, chunks: Int?, arguments: [String],
                               progress: @Sendable (Int, Int?) async throws -> Void) async throws -> PerplexityOutcome {
        var arguments = ["-m", model, "-f", textPath, "-c", String(contextSize)] + arguments
        if let chunks { arguments += ["--chunks", String(chunks)] }
        let started = ContinuousClock.now
        let child: ChildProcess
        do { child = try ChildProcess(executable: tool, arguments: arguments) } catch {
            throw JobError("spawn_failed", "\(error)")
        }
        var parser = PerplexityOutput()
        // A progress write that fails ends the job once the tool is done (it is not left
        // running on its own).
        let progressFailure = await child.follow { line in
            let before = parser.chunksDone
            parser.read(line)
            if parser.chunksDone != before || (parser.chunks != nil && before == 0) { try await progress(parser.chunksDone, parser.chunks) }
        }
        let termination = await child.wait()
        try Task.checkCancellation()
        if let progressFailure { throw progressFailure }
        guard let result = parser.result else {
            // The tool's log is written by a background thread whose last lines can be lost at
            // exit (the install script patches that; a tool built elsewhere may still lose them):
            // a clean exit before it started computing is the too-short-text case.
            let tooShort = "the text is too short: llama-perplexity needs at least \(2 * contextSize) tokens for chunks of \(contextSize)"
            let why = parser.errors.last ?? (parser.chunks == nil && termination == .exited(0) ? tooShort : "llama-perplexity ended (\(termination)) without an estimate")
            throw JobError("perplexity_failed", why)
        }
        return PerplexityOutcome(
            perplexity: result.perplexity, error: result.error, chunks: parser.chunks ?? parser.chunksDone, contextSize: contextSize,
            seconds: seconds(ContinuousClock.now - started))
    }
}

/// Reads `llama-perplexity`'s output: the chunk count, the running estimates (`[1]12.3,[2]…`),
/// the final `PPL = x +/- e`, and its error lines.
struct PerplexityOutput {
    var chunks: Int?
    var chunksDone = 0
    var result: (perplexity: Double, error: Double)?
    var errors: [String] = []

    mutating func read(_ line: String) {
        if let r = line.range(of: "calculating perplexity over ") {
            chunks = Int(line[r.upperBound...].prefix { $0.isNumber })
        }
        var rest = line[...]
        while let open = rest.firstIndex(of: "["), let close = rest[open...].firstIndex(of: "]"),
            let n = Int(rest[rest.index(after: open)..<close])
        {
            chunksDone = max(chunksDone, n)
            rest = rest[rest.index(after: close)...]
        }
        if let r = line.range(of: "Final estimate: PPL = ") {
            let parts = line[r.upperBound...].components(separatedBy: " +/- ")
            if parts.count == 2, let p = Double(parts[0].trimmingCharacters(in: .whitespaces)),
                let e = Double(parts[1].trimmingCharacters(in: .whitespaces))
            {
                result = (p, e)
            }
        }
        // Log lines look like `0.00.011.067 E perplexity: you need at least …`.
        let fields = line.split(separator: " ", maxSplits: 2)
        if fields.count == 3, fields[1] == "E" { errors.append(String(fields[2])) }
    }
}


/// A perplexity run as `/admin/benchmarks` shows it (`kind: perplexity`).
public struct PerplexityRun: Sendable, Codable {
    public var id: String
    public var kind = "perplexity"
    public var model: String
    /// `queued`, `running`, `done`, `failed`, `cancelled` or `interrupted`.
    public var status: String
    public var state: JobState
    public var createdAt: Date
    public var contextSize: Int
    public var chunks: Int?
    public var text: Text
    public var arguments: [String]
    public var completed: Int
    public var total: Int?
    public var result: PerplexityOutcome?
    public var error: String?

    public struct Text: Sendable, Codable {
        public var source: String
        public var sha256: String
    }

    public init(_ job: JobRecord) throws {
        let spec = try job.spec.decode(PerplexitySpec.self)
        id = job.id
        model = spec.model
        status = job.state.legacyStatus
        state = job.state
        createdAt = job.createdAt
        contextSize = spec.contextSize
        chunks = spec.chunks
        text = Text(source: spec.textSource, sha256: spec.textSHA256)
        arguments = spec.arguments
        completed = Int(job.progress?.completed ?? 0)
        total = job.progress?.total.map { Int($0) }
        result = try job.result.map { try $0.decode(PerplexityOutcome.self) }
        error = job.error?.message
    }
}
