import Files
import Foundation
import Jobs
import Runtime
import Serving
import Store

/// The training settings of a job, resolved from its preset and `hyperparameters` when it was
/// created (so a restart trains with the same ones).
public struct FineTuneHyperparameters: Sendable, Codable, Equatable {
    /// `efficient`, `balanced` or `high-quality` when one was named.
    public var preset: String?
    public var nEpochs: Int
    /// Accepted and shown as OpenAI's; `llama-finetune` trains one window of `contextSize`
    /// tokens per step, so it does not change the training (see docs/decisions/025-fine-tuning-one-invocation-per-epoch.md).
    public var batchSize: Int
    public var learningRateMultiplier: Double
    /// The first epoch's rate: ``FineTuning/baseLearningRate`` × the multiplier.
    public var learningRate: Double
    /// The last epochs' rate (0: constant); see ``LearningRateSchedule``.
    public var learningRateMin: Double
    /// Tokens per training window (`-c`, `-b` and `-ub` of the trainer).
    public var contextSize: Int
    /// Fraction of each epoch's windows the trainer holds out for its validation loss.
    public var validationSplit: Double
    /// `adamw` or `sgd`.
    public var optimizer: String
    public var weightDecay: Double

    public var schedule: LearningRateSchedule { LearningRateSchedule(lr: learningRate, lrMin: learningRateMin, decayEpochs: nil) }
}

/// A fine-tuning job as submitted: the base model and its file, the data, the settings.
public struct FineTuneSpec: Sendable, Codable {
    /// The base model's catalog id, and its file.
    public var base: String
    public var basePath: String
    public var suffix: String?
    public var team: String?
    /// The key that created the job (its base-model requests are recorded under it).
    public var keyPrefix: String?
    public var trainingFile: String
    public var validationFile: String?
    public var hyperparameters: FineTuneHyperparameters
    public var seed: Int
    public var metadata: [String: String]?
    /// `method` as the request gave it (echoed by the job object).
    public var method: JobJSON?
    /// Memory the trainer needs per device (weights, gradients and optimizer state, activations).
    public var estimatedDeviceMiB: [String: Int]
    /// Settings of the base model the tools share with llama-server (GPU layers, split, threads).
    public var toolArguments: [String]
    /// Where job folders are made (`<directory>/<job id>`); the catalog serves what they hold.
    public var directory: String
    /// The base's chat template and context length: `llama-finetune` drops the first from the
    /// file it writes and sets the second to the training context, so the models a job makes
    /// are served with the base's (see ``FineTuneJob/writeManifest(folder:spec:state:final:)``).
    public var chatTemplate: String?
    public var baseContextLength: Int?
}

/// One finished epoch: its model file (servable as `fineTunedModelCheckpoint`) and its metrics.
public struct FineTuneCheckpoint: Sendable, Codable, Equatable {
    public var epoch: Int
    public var step: Int
    /// File name inside the job's folder.
    public var file: String
    public var fineTunedModelCheckpoint: String
    public var createdAt: Date
    public var trainLoss: Double
    public var trainMeanTokenAccuracy: Double
    public var validLoss: Double?
    public var validMeanTokenAccuracy: Double?
    public var learningRate: Double
    public var seconds: Double
}

/// A job's state as it goes: its phase, its prepared data, the epochs done (its restart point
/// and its result), the quality before and after.
public struct FineTuneState: Sendable, Codable, Equatable {
    /// `validating_files`, `queued` or `running` while the job is not final.
    public var phase = "validating_files"
    /// The prepared training and validation texts (inside the job's folder) once validated.
    public var trainingText: String?
    public var validationText: String?
    /// Where the validation text came from: the `validation_file`, or the last part of the
    /// training data held out.
    public var validationSource: String?
    public var trainingExamples = 0
    public var trainingTokens = 0
    public var validationTokens = 0
    /// Steps (training windows) per epoch, once the first epoch started.
    public var stepsPerEpoch: Int?
    public var epochsDone = 0
    public var checkpoints: [FineTuneCheckpoint] = []
    public var perplexityBefore: PerplexityOutcome?
    public var perplexityAfter: PerplexityOutcome?
    /// Why perplexity was not measured, when it was not.
    public var perplexityNote: String?
    public var fineTunedModel: String?
    public var resultFiles: [String] = []
    /// Tokens trained on: training tokens × epochs done.
    public var trainedTokens: Int { trainingTokens * epochsDone }
    /// The last progress read from the trainer.
    public var current: TrainerProgress?
}

/// What a fine-tuning job's `metrics` events carry (OpenAI's `data` object, plus Corral's).
public struct FineTuneMetrics: Sendable, Codable, Equatable {
    public var step: Int
    public var totalSteps: Int
    public var epoch: Int
    public var trainLoss: Double
    public var trainMeanTokenAccuracy: Double
    public var validLoss: Double?
    public var validMeanTokenAccuracy: Double?
    public var etaSeconds: Int?

    enum CodingKeys: String, CodingKey {
        case step, epoch
        case totalSteps = "total_steps"
        case trainLoss = "train_loss"
        case trainMeanTokenAccuracy = "train_mean_token_accuracy"
        case validLoss = "valid_loss"
        case validMeanTokenAccuracy = "valid_mean_token_accuracy"
        case etaSeconds = "eta_seconds"
    }
}

/// A `message` event: OpenAI's level and text.
public struct FineTuneMessage: Sendable, Codable, Equatable {
    public var level: String
    public var message: String

    public init(_ message: String, level: String = "info") { (self.level, self.message) = (level, message) }
}

/// The base model, as a fine-tuning job needs it while validating its data.
public struct FineTuneBaseModel: Sendable {
    /// Renders chat messages with the model's own chat template (llama-server's
    /// `/apply-template`).
    public var render: @Sendable (_ messages: [TrainingMessage]) async throws -> String
    /// Counts the tokens of a text with the model's tokenizer (llama-server's `/tokenize`).
    public var countTokens: @Sendable (_ text: String) async throws -> Int

    public init(render: @escaping @Sendable ([TrainingMessage]) async throws -> String, countTokens: @escaping @Sendable (String) async throws -> Int) {
        (self.render, self.countTokens) = (render, countTokens)
    }

    /// The route the ledger records a fine-tuning job's requests under.
    public static let route = "/v1/fine_tuning/jobs"

    /// `model` asked through `client` under the job's key, behind client requests; a failure is
    /// the job's `base_model_failed` error.
    public init(model: String, keyPrefix: String?, client: any ModelClient) {
        let origin = ModelCallOrigin(keyPrefix: keyPrefix, priority: .background, route: Self.route)
        @Sendable func failed(_ path: String, _ error: ModelClientError) -> JobError {
            JobError("base_model_failed", error.kind == .answeredError ? "\(path) answered \(error.status ?? 0): \(error.message)" : error.message)
        }
        self.init(
            render: { messages in
                do throws(ModelClientError) { return try await client.applyTemplate(model: model, messages: messages.map { ModelMessage(role: $0.role, content: $0.content) }, origin: origin) } catch {
                    throw failed("/apply-template", error)
                }
            },
            countTokens: { text in
                do throws(ModelClientError) { return try await client.tokenize(model: model, text: text, addSpecial: true, origin: origin).count } catch {
                    throw failed("/tokenize", error)
                }
            })
    }
}

/// Fine-tuning on `llama-finetune`: validates and renders the data (validating_files), waits for
/// its turn at the trainer (queued), runs one trainer invocation per epoch, each continuing from
/// the previous epoch's model with Corral's learning-rate schedule (running), so every epoch end
/// is a servable checkpoint and the point a pause stops at and a restart resumes from; measures
/// the validation text's perplexity with the base and the result; registers the result as
/// `ft:BASE:SUFFIX:ID` in the catalog.
public struct FineTuneJob: JobKind {
    public static let name = "fine_tune"
    public static let idPrefix = "ftjob"

    let tools: LlamaTools
    let files: FileLibrary?
    let turns: TrainerTurns
    /// Asks the base model for its chat template and tokenizer (through the serving path).
    let client: any ModelClient
    /// Rebuilds the catalog, so the models a job wrote are served.
    let refreshCatalog: @Sendable () async throws -> Void

    public init(tools: LlamaTools, files: FileLibrary?, turns: TrainerTurns, client: any ModelClient,
                refreshCatalog: @escaping @Sendable () async throws -> Void) {
        self.tools = tools
        self.files = files
        self.turns = turns
        self.client = client
        self.refreshCatalog = refreshCatalog
    }

    public var policy: JobPolicy { JobPolicy(maxConcurrent: 8, pausable: true, restart: .resume, keepFinished: 500, cancelGrace: .seconds(10)) }

    public func model(of spec: FineTuneSpec) -> String? { spec.base }

    /// The name a job's result is served under: `ft:BASE:SUFFIX:ID` (the suffix may be empty).
    public static func modelName(base: String, suffix: String?, job: String) -> String {
        "ft:\(base):\(suffix ?? ""):\(job.hasPrefix(idPrefix + "-") ? String(job.dropFirst(idPrefix.count + 1)) : job)"
    }

    public func run(_ spec: FineTuneSpec, context: JobContext) async throws -> FineTuneState {
        guard let trainer = tools.finetune?.path else { throw JobError("no_llama_finetune", "llama-finetune not found (run `make llama`)") }
        let folder = spec.directory + "/" + context.id
        var state = try context.resumeFrom?.decode(FineTuneState.self) ?? FineTuneState()
        let resumed = context.resumeFrom != nil
        do { try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true) } catch {
            throw JobError("storage", "cannot create \(folder): \(error.localizedDescription)")
        }
        // Whatever an interrupted epoch left is not a checkpoint.
        Self.removePartial(in: folder)

        if state.trainingText == nil {
            state.phase = "validating_files"
            try await context.detail(state)
            try await context.event("message", FineTuneMessage("Validating training file: \(spec.trainingFile)" + (spec.validationFile.map { " and validation file: \($0)" } ?? "")))
            try await validate(spec, folder: folder, into: &state)
            try await context.event("message", FineTuneMessage(
                "Files validated: \(state.trainingExamples) examples, \(state.trainingTokens) training tokens, \(state.validationTokens) validation tokens (\(state.validationSource ?? "")); moving job to queued state"))
        } else if resumed {
            try await context.event("message", FineTuneMessage("Corral restarted during the job: resuming after epoch \(state.epochsDone) of \(spec.hyperparameters.nEpochs)"))
        }
        state.phase = "queued"
        try await context.detail(state)
        let validated = state
        return try await turns.holding {
            try await train(spec, trainer: trainer, folder: folder, state: validated, context: context)
        }
    }

    /// Reads, renders and checks the data, then writes the training and validation texts.
    func validate(_ spec: FineTuneSpec, folder: String, into state: inout FineTuneState) async throws {
        guard let files else { throw JobError("no_files", "the Files API is not configured") }
        let base = FineTuneBaseModel(model: spec.base, keyPrefix: spec.keyPrefix, client: client)
        let scope: TeamScope = spec.team.map { .team($0) } ?? .all
        /// A file's examples rendered as text (chat ones with the base model's template).
        func texts(of id: String) async throws -> [String] {
            let (file, data): (StoredFile, Data)
            do { (file, data) = try await files.contents(id, scope: scope) } catch {
                throw JobError("invalid_file", "\(id): \(error)")
            }
            let name = "\(file.id) (\(file.filename))"
            let examples: [TrainingExample]
            do { examples = try TrainingData.read(data, format: TrainingFormat.detect(filename: file.filename, contents: data), name: name) } catch {
                throw JobError("invalid_file", error.description)
            }
            var texts: [String] = []
            for example in examples {
                switch example {
                case .text(let text, _): texts.append(text)
                case .chat(let messages, let line):
                    do { texts.append(try await base.render(messages)) } catch {
                        throw JobError("invalid_file", "\(name) line \(line): the base model's chat template could not render it: \(error)")
                    }
                }
            }
            return texts
        }
        var training = try await texts(of: spec.trainingFile)
        var validation: [String]
        state.trainingExamples = training.count
        if let id = spec.validationFile {
            validation = try await texts(of: id)
            state.validationSource = "validation_file \(id)"
        } else {
            // The last tenth of the training data is held out: by examples when there are enough,
            // else by text (at a line or word boundary).
            (training, validation) = Self.holdOut(training)
            state.validationSource = "the last 10% of the training data, held out"
        }
        let trainingText = training.joined(separator: "\n\n") + "\n"
        let validationText = validation.joined(separator: "\n\n") + "\n"
        let context = spec.hyperparameters.contextSize
        do {
            state.trainingTokens = try await base.countTokens(trainingText)
            state.validationTokens = validation.isEmpty ? 0 : try await base.countTokens(validationText)
        } catch let error as JobError {
            throw error
        } catch {
            throw JobError("base_model_unavailable", "the base model '\(spec.base)' could not tokenize the data: \(error)")
        }
        // The trainer cuts the text into windows of `context` tokens every `context / 2` tokens,
        // holds out its validation share of them, and crashes (or trains nothing) on too few.
        let needed = Self.minimumTokens(context: context, validationSplit: spec.hyperparameters.validationSplit)
        guard state.trainingTokens >= needed else {
            throw JobError("invalid_file", "\(spec.trainingFile): the training data has \(state.trainingTokens) tokens; \(needed) are needed for a context of \(context) tokens (use more data or a smaller context_size)")
        }
        let trainingPath = folder + "/train.txt", validationPath = folder + "/validation.txt"
        do {
            try Data(trainingText.utf8).write(to: URL(fileURLWithPath: trainingPath), options: .atomic)
            if !validation.isEmpty { try Data(validationText.utf8).write(to: URL(fileURLWithPath: validationPath), options: .atomic) }
        } catch {
            throw JobError("storage", "the prepared data cannot be written in \(folder): \(error.localizedDescription)")
        }
        state.trainingText = trainingPath
        state.validationText = validation.isEmpty ? nil : validationPath
    }

    /// Training windows an epoch must have at least.
    public static let minimumWindows = 4

    /// Tokens the trainer needs for ``minimumWindows`` training windows of `context` tokens with
    /// `validationSplit` held out: it makes `(tokens − context − 1) / (context / 2)` windows.
    public static func minimumTokens(context: Int, validationSplit: Double) -> Int {
        let windows = Int((Double(minimumWindows) / max(0.05, 1 - validationSplit)).rounded(.up))
        return context + 1 + windows * (context / 2)
    }

    /// Splits rendered examples into training and held-out validation parts (a tenth).
    static func holdOut(_ texts: [String]) -> ([String], [String]) {
        if texts.count >= 10 {
            let cut = texts.count - texts.count / 10
            return (Array(texts[..<cut]), Array(texts[cut...]))
        }
        let joined = texts.joined(separator: "\n\n")
        var cut = joined.index(joined.startIndex, offsetBy: joined.count * 9 / 10)
        if let boundary = joined[..<cut].lastIndex(where: { $0 == "\n" || $0 == " " }), joined.distance(from: boundary, to: cut) < 2000 {
            cut = boundary
        }
        let tail = joined[cut...].trimmingCharacters(in: .whitespacesAndNewlines)
        return ([String(joined[..<cut])], tail.isEmpty ? [] : [tail])
    }

    /// Runs the epochs not done yet, then measures and registers the result.
    func train(_ spec: FineTuneSpec, trainer: String, folder: String, state: FineTuneState, context: JobContext) async throws -> FineTuneState {
        var state = state
        let h = spec.hyperparameters
        state.phase = "running"
        try await context.detail(state)
        if state.epochsDone == 0 { try await context.event("message", FineTuneMessage("Fine-tuning job started")) }
        try await context.claimMemory(spec.estimatedDeviceMiB)
        do {
            if state.perplexityBefore == nil && state.perplexityNote == nil {
                try await measurePerplexity(spec, model: spec.basePath, state: &state, after: false, context: context)
            }
            while state.epochsDone < h.nEpochs {
                // A pause takes effect here, at an epoch's end; the trainer's memory is given
                // back while the job waits.
                await context.releaseMemory()
                try await context.pausePoint()
                try await context.claimMemory(spec.estimatedDeviceMiB)
                let checkpoint = try await runEpoch(spec, trainer: trainer, folder: folder, state: &state, context: context)
                state.checkpoints.append(checkpoint)
                state.epochsDone += 1
                try Self.writeManifest(folder: folder, spec: spec, state: state, final: nil)
                try? await refreshCatalog()
                try await context.checkpoint(state)
                try await context.detail(state)
                try await context.event("message", FineTuneMessage(
                    "Epoch \(checkpoint.epoch)/\(h.nEpochs) done: train loss \(Self.format(checkpoint.trainLoss))"
                        + (checkpoint.validLoss.map { ", validation loss \(Self.format($0))" } ?? "")
                        + "; checkpoint \(checkpoint.fineTunedModelCheckpoint)"))
            }
            // A pause asked for during the last epoch stops here, before the result is made.
            await context.releaseMemory()
            try await context.pausePoint()
            try await context.claimMemory(spec.estimatedDeviceMiB)
            guard let last = state.checkpoints.last else { throw JobError("failed", "no epoch was trained") }
            if state.perplexityBefore != nil {
                try await measurePerplexity(spec, model: folder + "/" + last.file, state: &state, after: true, context: context)
            }
        } catch {
            await context.releaseMemory()
            throw error
        }
        await context.releaseMemory()
        let last = state.checkpoints[state.checkpoints.count - 1]
        let name = Self.modelName(base: spec.base, suffix: spec.suffix, job: context.id)
        try Self.writeManifest(folder: folder, spec: spec, state: state, final: (name, last.file))
        do { try await refreshCatalog() } catch {
            throw JobError("registration_failed", "the fine-tuned model could not be registered: \(error)")
        }
        state.fineTunedModel = name
        if let files, let csv = try? Data(contentsOf: URL(fileURLWithPath: folder + "/metrics.csv")) {
            let stored = try await files.createResult(csv, filename: "step_metrics.csv", purpose: "fine-tune-results", team: spec.team)
            state.resultFiles = [stored.id]
        }
        try await context.event("message", FineTuneMessage("New fine-tuned model created: \(name)"))
        if let before = state.perplexityBefore, let after = state.perplexityAfter {
            try await context.event("message", FineTuneMessage("Validation perplexity: \(Self.format(before.perplexity)) before, \(Self.format(after.perplexity)) after"))
        }
        try await context.event("message", FineTuneMessage("The job has successfully completed"))
        state.current = nil
        return state
    }

    /// One trainer invocation: epoch `state.epochsDone + 1` from the last checkpoint (or the
    /// base), written to a partial name and renamed once the trainer exited cleanly.
    func runEpoch(_ spec: FineTuneSpec, trainer: String, folder: String, state: inout FineTuneState, context: JobContext) async throws -> FineTuneCheckpoint {
        let h = spec.hyperparameters
        let epoch = state.epochsDone + 1
        let input = state.checkpoints.last.map { folder + "/" + $0.file } ?? spec.basePath
        let file = "epoch-\(epoch).gguf"
        let partial = folder + "/" + file + Self.partialSuffix
        let rate = h.schedule.rate(epoch: epoch - 1, of: h.nEpochs)
        let arguments = Self.trainerArguments(input: input, data: state.trainingText!, output: partial, hyperparameters: h, learningRate: rate,
                                              seed: spec.seed + epoch - 1, toolArguments: spec.toolArguments)
        let started = ContinuousClock.now
        let child: ChildProcess
        do { child = try ChildProcess(executable: trainer, arguments: arguments, carriageReturnEndsLines: true) } catch {
            throw JobError("spawn_failed", "\(error)")
        }
        var output = TrainerOutput()
        var lastEvent = ContinuousClock.now - .seconds(10)
        var endedPhases: Set<String> = []
        var failure: (any Error)?
        let stepsBefore = state.stepsPerEpoch.map { $0 * (epoch - 1) } ?? 0
        let metricsPath = folder + "/metrics.csv"
        var rows: [String] = []
        await withTaskCancellationHandler {
            for await line in child.lines {
                guard let progress = output.read(line), failure == nil else { continue }
                if progress.phase == "train" {
                    if state.stepsPerEpoch == nil || progress.batch == progress.batches { state.stepsPerEpoch = progress.batches }
                    let step = (state.stepsPerEpoch.map { $0 * (epoch - 1) } ?? stepsBefore) + progress.batch
                    rows.append("\(step),\(progress.loss),\(progress.accuracy),,")
                }
                state.current = progress
                let now = ContinuousClock.now
                let ends = progress.batch == progress.batches
                // A phase's last line can come twice (the progress bar redrawn, then ended): its
                // end is reported once, or an epoch would end twice in the events.
                if ends && !endedPhases.insert(progress.phase).inserted { continue }
                guard ends || now - lastEvent >= .milliseconds(500) else { continue }
                lastEvent = now
                do {
                    try await context.event("metrics", Self.metrics(state: state, train: output.lastTrain, epoch: epoch, epochs: h.nEpochs))
                    let perEpoch = state.stepsPerEpoch ?? progress.batches
                    let done = Double(perEpoch * (epoch - 1) + (progress.phase == "train" ? progress.batch : perEpoch))
                    try await context.progress(done, of: Double(perEpoch * h.nEpochs), unit: "steps")
                } catch {
                    failure = error
                    child.signalGroup(SIGKILL)
                }
            }
        } onCancel: {
            // Cancel kills the trainer at once; its partial output is removed below.
            child.signalGroup(SIGKILL)
        }
        let termination = await child.wait()
        if Task.isCancelled || failure != nil || termination != .exited(0) {
            try? FileManager.default.removeItem(atPath: partial)
            try Task.checkCancellation()
            if let failure { throw failure }
            throw JobError("training_failed", "llama-finetune ended (\(termination)) in epoch \(epoch): " + (output.errors.last ?? "no error was printed"))
        }
        guard let train = output.lastTrain, FileManager.default.fileExists(atPath: partial) else {
            try? FileManager.default.removeItem(atPath: partial)
            throw JobError("training_failed", "llama-finetune wrote no model in epoch \(epoch)" + (output.errors.last.map { ": \($0)" } ?? ""))
        }
        do {
            try FileManager.default.moveItem(atPath: partial, toPath: folder + "/" + file)
            // Per-step rows of this epoch; the epoch's validation figures on its last row.
            if let val = output.lastValidation, let lastRow = rows.indices.last {
                rows[lastRow] = rows[lastRow].dropLast(2) + ",\(val.loss),\(val.accuracy)"
            }
            let exists = FileManager.default.fileExists(atPath: metricsPath)
            let text = (exists ? "" : "step,train_loss,train_accuracy,valid_loss,valid_mean_token_accuracy\n") + rows.map { $0 + "\n" }.joined()
            if exists {
                let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: metricsPath))
                try handle.seekToEnd()
                try handle.write(contentsOf: Data(text.utf8))
                try handle.close()
            } else {
                try Data(text.utf8).write(to: URL(fileURLWithPath: metricsPath))
            }
        } catch {
            throw JobError("storage", "epoch \(epoch)'s model or metrics cannot be kept: \(error.localizedDescription)")
        }
        let step = (state.stepsPerEpoch ?? train.batches) * epoch
        return FineTuneCheckpoint(
            epoch: epoch, step: step, file: file,
            fineTunedModelCheckpoint: Self.modelName(base: spec.base, suffix: spec.suffix, job: context.id) + ":ckpt-step-\(step)",
            createdAt: Date(), trainLoss: train.loss, trainMeanTokenAccuracy: train.accuracy,
            validLoss: output.lastValidation?.loss, validMeanTokenAccuracy: output.lastValidation?.accuracy,
            learningRate: rate, seconds: (ContinuousClock.now - started).inSeconds)
    }

    /// A `metrics` event: where the epoch is, its running training loss and accuracy, and once its
    /// validation phase has ended the validation ones too. A validation phase still running gives
    /// none: its loss over part of the split is not the epoch's (a slow machine reported several
    /// "epoch ends" per epoch when partial validation losses were sent).
    static func metrics(state: FineTuneState, train: TrainerProgress?, epoch: Int, epochs: Int) -> FineTuneMetrics {
        let perEpoch = state.stepsPerEpoch ?? train?.batches ?? 0
        let validating = state.current?.phase == "val"
        let validated = validating && state.current.map { $0.batch == $0.batches } == true
        return FineTuneMetrics(
            step: perEpoch * (epoch - 1) + (validating ? perEpoch : train?.batch ?? 0), totalSteps: perEpoch * epochs, epoch: epoch,
            trainLoss: train?.loss ?? 0, trainMeanTokenAccuracy: train?.accuracy ?? 0,
            validLoss: validated ? state.current?.loss : nil, validMeanTokenAccuracy: validated ? state.current?.accuracy : nil,
            etaSeconds: state.current?.etaSeconds)
    }

    /// The trainer's command line for one epoch.
    public static func trainerArguments(input: String, data: String, output: String, hyperparameters h: FineTuneHyperparameters, learningRate: Double,
                                        seed: Int, toolArguments: [String]) -> [String] {
        ["-m", input, "-f", data, "-o", output,
         "-c", String(h.contextSize), "-b", String(h.contextSize), "-ub", String(h.contextSize),
         "-epochs", "1", "-lr", String(learningRate), "-val-split", String(h.validationSplit),
         "-opt", h.optimizer, "-wd", String(h.weightDecay), "--seed", String(seed),
         // Progress, warnings and errors only (not an info line per step).
         "-lv", "2"] + toolArguments
    }

    /// Measures the validation text's perplexity with `model` (the base before, the result after).
    func measurePerplexity(_ spec: FineTuneSpec, model: String, state: inout FineTuneState, after: Bool, context: JobContext) async throws {
        guard let text = state.validationText else {
            state.perplexityNote = "no validation text: perplexity not measured"
            return
        }
        guard let tool = tools.perplexity?.path else {
            state.perplexityNote = "llama-perplexity not found: perplexity not measured"
            return
        }
        // llama-perplexity needs two chunks of text at least.
        let chunk = min(spec.hyperparameters.contextSize, state.validationTokens / 2)
        guard chunk >= 16 else {
            state.perplexityNote = "the validation text (\(state.validationTokens) tokens) is too short for perplexity"
            return
        }
        do {
            let outcome = try await PerplexityJob.measure(tool: tool, model: model, textPath: text, contextSize: chunk, chunks: nil,
                                                          arguments: spec.toolArguments) { _, _ in }
            if after { state.perplexityAfter = outcome } else { state.perplexityBefore = outcome }
            try await context.detail(state)
            try await context.event("message", FineTuneMessage(
                "Validation perplexity of the \(after ? "fine-tuned" : "base") model: \(Self.format(outcome.perplexity)) ± \(Self.format(outcome.error)) (\(outcome.chunks) chunks of \(chunk) tokens)"))
        } catch is CancellationError {
            throw CancellationError()
        } catch {
            state.perplexityNote = "perplexity could not be measured: \(error)"
            try await context.event("message", FineTuneMessage(state.perplexityNote!, level: "warn"))
        }
    }

    static let partialSuffix = ".partial"

    static func removePartial(in folder: String) {
        for name in (try? FileManager.default.contentsOfDirectory(atPath: folder)) ?? [] where name.hasSuffix(partialSuffix) {
            try? FileManager.default.removeItem(atPath: folder + "/" + name)
        }
    }

    /// `models.json` in the job's folder: the checkpoints, and the result once done, by name and
    /// file, with the base's context length and chat template (kept next to them as
    /// `chat_template.jinja`); the catalog's `fine-tuned` source reads it.
    static func writeManifest(folder: String, spec: FineTuneSpec, state: FineTuneState, final: (name: String, file: String)?) throws {
        var chatTemplateFile: String?
        do {
            if let template = spec.chatTemplate {
                try Data(template.utf8).write(to: URL(fileURLWithPath: folder + "/chat_template.jinja"), options: .atomic)
                chatTemplateFile = "chat_template.jinja"
            }
            func entry(_ name: String, _ file: String) -> FineTuneManifest.Model {
                FineTuneManifest.Model(name: name, file: file, base: spec.base, contextSize: spec.baseContextLength, chatTemplateFile: chatTemplateFile)
            }
            var models = state.checkpoints.map { entry($0.fineTunedModelCheckpoint, $0.file) }
            if let final { models.insert(entry(final.name, final.file), at: 0) }
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
            let data = try encoder.encode(FineTuneManifest(models: models))
            try data.write(to: URL(fileURLWithPath: folder + "/models.json"), options: .atomic)
        } catch {
            throw JobError("storage", "the job's models cannot be recorded: \(error.localizedDescription)")
        }
    }

    static func format(_ value: Double) -> String { String(format: "%.4f", value) }
}

/// The trainer's turns: jobs train one at a time (`fineTuning.maxConcurrent`), first come first
/// served; a job cancelled while it waits leaves the line.
public actor TrainerTurns {
    let limit: Int
    var running = 0
    var waiting: [(id: UUID, continuation: CheckedContinuation<Void, any Error>)] = []

    public init(limit: Int = 1) { self.limit = max(1, limit) }

    /// Runs `body` once a turn is free.
    public func holding<T: Sendable>(_ body: @Sendable () async throws -> T) async throws -> T {
        if running >= limit {
            let id = UUID()
            try await withTaskCancellationHandler {
                try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
                    if Task.isCancelled { continuation.resume(throwing: CancellationError()) } else { waiting.append((id, continuation)) }
                }
            } onCancel: {
                Task { await self.leave(id) }
            }
        } else {
            running += 1
        }
        defer { handOn() }
        return try await body()
    }

    private func leave(_ id: UUID) {
        guard let i = waiting.firstIndex(where: { $0.id == id }) else { return }
        waiting.remove(at: i).continuation.resume(throwing: CancellationError())
    }

    /// The turn passes to the first waiter (the count stays), or is given back.
    private func handOn() {
        if waiting.isEmpty { running -= 1 } else { waiting.removeFirst().continuation.resume() }
    }
}

/// `models.json` in a fine-tuning job's folder, as the catalog's `fine-tuned` source reads it.
struct FineTuneManifest: Codable, Equatable {
    struct Model: Codable, Equatable {
        var name: String
        var file: String
        var base: String
        var contextSize: Int?
        var chatTemplateFile: String?
    }
    var models: [Model]
}
