import ArgumentParser
import Foundation

/// CLI twins of the admin library, hardware, compatibility, recommendation, profile, benchmark
/// and tuning routes: each prints the route's JSON answer.
/// `corral default-model [NAME] [--clear]`: show or choose the model requests without one go to.
struct DefaultModelCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "default-model", abstract: "Show or choose the model that requests naming none are served by (talks to the running gateway).")
    @OptionGroup var connection: AdminConnection
    @Argument(help: "The model to make the default; none: show the current one.") var model: String?
    @Flag(help: "Go back to routes.json's defaultModel (or the only model).") var clear = false
    func run() async throws {
        guard model == nil || !clear else { throw ValidationError("give a model or --clear, not both") }
        if model == nil && !clear {
            connection.print(try await connection.call("GET", "/admin/default-model"))
        } else {
            connection.print(try await connection.call("PUT", "/admin/default-model", body: ["model": model ?? NSNull()]))
        }
    }
}

struct LibraryCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "library", abstract: "The model library and what fits this machine (talks to the running gateway).",
        subcommands: [List.self, Show.self, Compare.self, Scan.self, Hardware.self, Compatibility.self, Recommend.self])

    struct List: AsyncParsableCommand {
        @OptionGroup var connection: AdminConnection
        @Option(help: "Text to search for.") var q: String?
        @Option(help: "Capability: completion, embedding, tools, thinking, insert, vision.") var capability: String?
        @Option(help: "Only models that fit (true) or not (false).") var fits: String?
        @Option(help: "Sort by name, size, params, lastUsed or context.") var sort: String?
        @Flag(help: "Descending order.") var desc = false
        func run() async throws {
            var query: [String] = []
            if let q { query.append("q=\(escapedQuery(q))") }
            if let capability { query.append("capability=\(escapedQuery(capability))") }
            if let fits { query.append("fits=\(escapedQuery(fits))") }
            if let sort { query.append("sort=\(escapedQuery(sort))") }
            if desc { query.append("order=desc") }
            connection.print(try await connection.call("GET", "/admin/models" + (query.isEmpty ? "" : "?" + query.joined(separator: "&"))))
        }
    }

    struct Show: AsyncParsableCommand {
        @OptionGroup var connection: AdminConnection
        @Argument(help: "Model id or alias.") var model: String
        func run() async throws { connection.print(try await connection.call("GET", "/admin/models/\(model)")) }
    }

    struct Compare: AsyncParsableCommand {
        @OptionGroup var connection: AdminConnection
        @Argument(help: "Two or more model ids.") var models: [String]
        func run() async throws { connection.print(try await connection.call("GET", "/admin/models/compare?ids=\(escapedQuery(models.joined(separator: ",")))")) }
    }

    struct Scan: AsyncParsableCommand {
        @OptionGroup var connection: AdminConnection
        func run() async throws { connection.print(try await connection.call("POST", "/admin/models/scan")) }
    }

    struct Hardware: AsyncParsableCommand {
        @OptionGroup var connection: AdminConnection
        @Flag(help: "Probe again instead of the cached answer.") var refresh = false
        func run() async throws { connection.print(try await connection.call("GET", "/admin/hardware" + (refresh ? "?refresh=true" : ""))) }
    }

    struct Compatibility: AsyncParsableCommand {
        @OptionGroup var connection: AdminConnection
        @Argument(help: "Model id or alias.") var model: String
        @Option(help: "Context size.") var ctx: Int?
        @Option(help: "KV cache type (f16, q8_0, …).") var kv: String?
        @Option(help: "Parallel slots.") var parallel: Int?
        @Option(help: "GPU layers.") var ngl: Int?
        @Flag(help: "Add llama-fit-params' own projection.") var exact = false
        func run() async throws {
            var query: [String] = []
            if let ctx { query.append("ctx=\(ctx)") }
            if let kv { query.append("kv=\(escapedQuery(kv))") }
            if let parallel { query.append("parallel=\(parallel)") }
            if let ngl { query.append("ngl=\(ngl)") }
            if exact { query.append("exact=true") }
            connection.print(try await connection.call("GET", "/admin/models/\(model)/compatibility" + (query.isEmpty ? "" : "?" + query.joined(separator: "&"))))
        }
    }

    struct Recommend: AsyncParsableCommand {
        @OptionGroup var connection: AdminConnection
        @Option(help: "chat, code, embedding or vision.") var task = "chat"
        @Option(help: "Smallest context the model must support.") var minCtx: Int?
        func run() async throws {
            connection.print(try await connection.call("GET", "/admin/recommendations?task=\(escapedQuery(task))" + (minCtx.map { "&min_ctx=\($0)" } ?? "")))
        }
    }
}

struct ProfilesCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "profiles", abstract: "Sampling profiles (talks to the running gateway).", subcommands: [List.self, Set.self, Delete.self])

    struct List: AsyncParsableCommand {
        @OptionGroup var connection: AdminConnection
        func run() async throws { connection.print(try await connection.call("GET", "/admin/profiles")) }
    }

    struct Set: AsyncParsableCommand {
        @OptionGroup var connection: AdminConnection
        @Argument(help: "Profile name.") var name: String
        @Argument(help: "Fields as key=value (temperature=0.2 top_p=0.9 stop=END).") var fields: [String]
        func run() async throws {
            var body: [String: Any] = [:]
            for pair in fields {
                let kv = pair.split(separator: "=", maxSplits: 1).map(String.init)
                guard kv.count == 2 else { throw ValidationError("expected key=value, got \(pair)") }
                body[kv[0]] = kv[0] == "stop" ? [kv[1]] : (Double(kv[1]) as Any? ?? kv[1])
            }
            connection.print(try await connection.call("PUT", "/admin/profiles/\(escaped(name))", body: body))
        }
    }

    struct Delete: AsyncParsableCommand {
        @OptionGroup var connection: AdminConnection
        @Argument(help: "Profile name.") var name: String
        func run() async throws { _ = try await connection.call("DELETE", "/admin/profiles/\(escaped(name))"); print("deleted \(name)") }
    }
}

struct BenchCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bench", abstract: "Benchmark a model through the serving path and wait for the result.")

    @OptionGroup var connection: AdminConnection
    @Argument(help: "Model id or alias.") var model: String
    @Option(help: "Requests.") var requests = 20
    @Option(help: "Concurrency.") var concurrency = 1
    @Option(help: "Prompt length in words.") var promptWords = 32
    @Option(help: "Tokens to generate per request.") var maxTokens = 64

    func run() async throws {
        let started = try await connection.call("POST", "/admin/benchmarks", body: [
            "model": model, "requests": requests, "concurrency": concurrency, "promptWords": promptWords, "maxTokens": maxTokens,
        ])
        guard let id = (started as? [String: Any])?["id"] as? String else { throw ValidationError("unexpected answer: \(started)") }
        _ = try await connection.follow(id)
        connection.print(try await connection.call("GET", "/admin/benchmarks/\(id)"))
    }
}

struct TuneCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "tune", abstract: "Tune a model's llama-server settings on this machine, wait, and optionally apply the winner.")

    @OptionGroup var connection: AdminConnection
    @Argument(help: "Model id or alias.") var model: String
    @Option(help: "max_generation_tps, min_ttft, max_throughput_at_concurrency, min_memory, balanced, weighted or quality.") var objective = "max_generation_tps"
    @Option(help: "grid, random, halving, tpe, hyperband or evolutionary.") var strategy = "halving"
    @Option(help: "Context sizes, comma-separated.") var ctx: String?
    @Option(help: "Ubatch sizes, comma-separated.") var ubatch: String?
    @Option(help: "Thread counts, comma-separated.") var threads: String?
    @Option(help: "KV cache types, comma-separated.") var kv: String?
    @Option(help: "Flash attention values: on,off.") var fa: String?
    @Option(help: "Temperatures, comma-separated (sampling: trials share a llama-server).") var temperature: String?
    @Option(help: "top_p values, comma-separated.") var topP: String?
    @Option(help: "top_k values, comma-separated.") var topK: String?
    @Option(help: "min_p values, comma-separated.") var minP: String?
    @Option(help: "repeat_penalty values, comma-separated.") var repeatPenalty: String?
    @Option(help: "Weights of the weighted objective: generationTPS=1,ttftMs=0.5,memoryMiB=…,throughputTPS=…,quality=….") var weights: String?
    @Option(help: "Quality: an evaluation run whose items each trial is asked.") var qualityEvalRun: String?
    @Option(help: "Quality: a text file whose perplexity each trial's settings give.") var qualityText: String?
    @Option(help: "Trial budget.") var maxTrials: Int?
    @Option(help: "Start no trial after this many seconds.") var maxSeconds: Double?
    @Option(help: "Stop after this many measured trials in a row without a new best.") var patience: Int?
    @Option(help: "Load runs per trial (each measure with its 95 % interval).") var repetitions: Int?
    @Option(help: "Measure the best N trials again at the end.") var remeasureTop: Int?
    @Option(help: "Seed.") var seed: Int?
    @Flag(help: "Apply the winner (runtime profile, and its sampling as a profile).") var apply = false

    func run() async throws {
        func ints(_ s: String?) -> [Int]? { s.map { $0.split(separator: ",").compactMap { Int($0) } } }
        func numbers(_ s: String?) -> [Double]? { s.map { $0.split(separator: ",").compactMap { Double($0) } } }
        var space: [String: Any] = [:]
        space["contextSize"] = ints(ctx)
        space["ubatch"] = ints(ubatch)
        space["threads"] = ints(threads)
        space["cacheType"] = kv.map { $0.split(separator: ",").map(String.init) }
        space["flashAttention"] = fa.map { $0.split(separator: ",").map { $0 == "on" } }
        space["temperature"] = numbers(temperature)
        space["top_p"] = numbers(topP)
        space["top_k"] = ints(topK)
        space["min_p"] = numbers(minP)
        space["repeat_penalty"] = numbers(repeatPenalty)
        var body: [String: Any] = ["model": model, "objective": objective, "strategy": strategy, "space": space]
        if let weights {
            var w: [String: Double] = [:]
            for pair in weights.split(separator: ",") {
                let kv = pair.split(separator: "=", maxSplits: 1)
                guard kv.count == 2, let v = Double(kv[1]) else { throw ValidationError("--weights takes NAME=NUMBER pairs, comma-separated") }
                w[String(kv[0])] = v
            }
            body["weights"] = w
        }
        if let qualityEvalRun { body["quality"] = ["evalRun": qualityEvalRun] }
        if let qualityText {
            guard let text = try? String(contentsOfFile: qualityText, encoding: .utf8) else { throw ValidationError("cannot read \(qualityText)") }
            body["quality"] = ["text": text]
        }
        body["maxTrials"] = maxTrials
        body["maxSeconds"] = maxSeconds
        body["patience"] = patience
        body["repetitions"] = repetitions
        body["remeasureTop"] = remeasureTop
        body["seed"] = seed
        let started = try await connection.call("POST", "/admin/tuning", body: body)
        guard let id = (started as? [String: Any])?["id"] as? String else { throw ValidationError("unexpected answer: \(started)") }
        _ = try await connection.follow(id)
        let session = try await connection.call("GET", "/admin/tuning/\(id)") as? [String: Any] ?? [:]
        connection.print(session)
        if apply && session["status"] as? String == "done" { connection.print(try await connection.call("POST", "/admin/tuning/\(id)/apply")) }
    }
}

func escapedQuery(_ s: String) -> String { s.addingPercentEncoding(withAllowedCharacters: .urlQueryAllowed.subtracting(CharacterSet(charactersIn: "&=+"))) ?? s }

/// `corral pull NAME`: a download through the running gateway, with a progress bar (bytes,
/// rate, time left). Ctrl-C pauses it (the partial files stay); running the command again
/// resumes it.
struct PullCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "pull", abstract: "Pull a model from an Ollama registry or hf.co (Ctrl-C pauses; run again to resume).")

    @OptionGroup var connection: AdminConnection
    @Argument(help: "[host/][namespace/]model[:tag], or hf.co/org/repo[:quant].") var model: String
    @Flag(help: "Allow plain http to the registry.") var insecure = false

    func run() async throws {
        let started = try await connection.call("POST", "/admin/downloads", body: ["model": model, "insecure": insecure]) as? [String: Any] ?? [:]
        guard let id = started["id"] as? String else { throw ValidationError("unexpected answer: \(started)") }
        if started["state"] as? String == "paused" { _ = try await connection.call("POST", "/admin/downloads/\(escaped(id))/resume") }
        // Ctrl-C: pause the download on the gateway, then leave.
        signal(SIGINT, SIG_IGN)
        let interrupt = DispatchSource.makeSignalSource(signal: SIGINT)
        let connection = self.connection
        interrupt.setEventHandler {
            Task {
                _ = try? await connection.call("POST", "/admin/downloads/\(escaped(id))/pause")
                FileHandle.standardError.write(Data("\npaused \(id): run the same command again to resume\n".utf8))
                Foundation.exit(130)
            }
        }
        interrupt.resume()
        _ = try await connection.follow(id)
        let done = try await connection.call("GET", "/admin/downloads/\(escaped(id))")
        connection.print(done)
        if (done as? [String: Any])?["state"] as? String != "completed" { throw ExitCode(1) }
    }
}

/// `corral quantize MODEL --to TYPE`: a quantization through the running gateway, as a job with
/// a progress bar; prints the job (its result names the new model, its size and its parent).
struct QuantizeCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "quantize", abstract: "Quantize a local model with llama-quantize (from F32/F16/BF16; the result is a new model).")

    @OptionGroup var connection: AdminConnection
    @Argument(help: "The model to quantize.") var model: String
    @Option(help: "The type: q8_0, q6_K, q5_K_M, q4_K_M, q4_K_S, q4_0, q3_K_M, q2_K, … (Ollama's or llama.cpp's names).") var to: String
    @Option(help: "The new model's name (default MODEL:TYPE).") var name: String?
    @Flag(help: "Quantize an already quantized model (loses quality compared to quantizing from F32/F16).") var allowRequantize = false

    func run() async throws {
        var body: [String: Any] = ["model": model, "type": to, "allowRequantize": allowRequantize]
        body["name"] = name
        try await connection.runJob("/admin/quantize", body: body)
    }
}

/// `corral quant-ladder MODEL --text FILE`: a quant ladder through the running gateway, as a job
/// with a progress bar; prints the result (each rung's size, fit, speed, perplexity and KL
/// divergence, and the recommendation).
struct QuantLadderCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "quant-ladder", abstract: "Quantize a model to several types and measure each against it (size, fit, speed, KL divergence).")

    @OptionGroup var connection: AdminConnection
    @Argument(help: "The model (F32, F16 or BF16).") var model: String
    @Option(help: "A text file to measure quality on (at least 2 × context-size tokens).") var text: String
    @Option(help: "Types, comma-separated (default Q8_0,Q6_K,Q5_K_M,Q4_K_M,Q4_0,Q3_K_M,Q2_K).") var quants: String?
    @Option(help: "The largest mean KL divergence a recommended quant may have.") var maxKld: Double = 0.05
    @Option(help: "Tokens per perplexity chunk.") var contextSize: Int = 512
    @Option(help: "At most this many chunks.") var chunks: Int?

    func run() async throws {
        guard let contents = try? String(contentsOfFile: text, encoding: .utf8) else { throw ValidationError("cannot read \(text)") }
        var body: [String: Any] = ["model": model, "text": contents, "maxKLD": maxKld, "contextSize": contextSize]
        body["quants"] = quants.map { $0.split(separator: ",").map { String($0).trimmingCharacters(in: .whitespaces) } }
        body["chunks"] = chunks
        try await connection.runJob("/admin/quant-ladder", body: body)
    }
}

extension AdminConnection {
    /// Starts a job with `POST path`, follows it with a progress bar, prints the finished job and
    /// exits 1 unless it succeeded.
    func runJob(_ path: String, body: [String: Any]) async throws {
        let started = try await call("POST", path, body: body) as? [String: Any] ?? [:]
        guard let id = started["id"] as? String else { throw ValidationError("unexpected answer: \(started)") }
        _ = try await follow(id)
        let done = try await call("GET", "/admin/jobs/\(escaped(id))")
        print(done)
        if (done as? [String: Any])?["state"] as? String != "succeeded" { throw ExitCode(1) }
    }
}
