import Files
import Foundation
import GGUF
import Jobs
import Library
import Runtime
import Store

/// Why a fine-tuning request was refused (the OpenAI routes map these to 400, 404, 409, 500).
public enum FineTuningError: Error, Sendable, Equatable {
    case badRequest(String, param: String?)
    case notFound(String)
    case conflict(String)
    case storage(String)
}

/// The OpenAI fine-tuning API on `llama-finetune`: jobs (of kind `fine_tune`) created from a
/// request, listed, controlled, and shown as OpenAI's objects (job, event, checkpoint). A team
/// key sees its team's jobs; the admin token sees all.
public struct FineTuning: Sendable {
    public let engine: JobEngine
    let files: FileLibrary?
    let store: any JobStore
    let directory: String
    /// The current catalog (to resolve the base model) and the runtime arguments tuning applied.
    let catalog: @Sendable () -> ModelCatalog
    let runtimeArguments: @Sendable (String) async -> [String]
    let compatibility: @Sendable () async -> Compatibility

    public init(engine: JobEngine, files: FileLibrary?, store: any JobStore, directory: String, catalog: @escaping @Sendable () -> ModelCatalog,
                runtimeArguments: @escaping @Sendable (String) async -> [String], compatibility: @escaping @Sendable () async -> Compatibility) {
        self.engine = engine
        self.files = files
        self.store = store
        self.directory = directory
        self.catalog = catalog
        self.runtimeArguments = runtimeArguments
        self.compatibility = compatibility
    }

    /// `llama-finetune`'s default learning rate, scaled by `learning_rate_multiplier`.
    public static let baseLearningRate = 1e-5

    /// Named settings (a Corral extension, `preset` on the create request); `auto` values of a
    /// request come from its preset (`balanced` when it names none).
    public struct Preset: Sendable {
        public var name: String
        public var epochs: Int
        public var contextSize: Int
        public var learningRateMultiplier: Double
        /// The last epoch's rate as a fraction of the first's (1: constant).
        public var finalRateFraction: Double
    }

    public static let presets: [String: Preset] = [
        "efficient": Preset(name: "efficient", epochs: 1, contextSize: 256, learningRateMultiplier: 1, finalRateFraction: 1),
        "balanced": Preset(name: "balanced", epochs: 3, contextSize: 512, learningRateMultiplier: 1, finalRateFraction: 0.25),
        "high-quality": Preset(name: "high-quality", epochs: 5, contextSize: 1024, learningRateMultiplier: 1, finalRateFraction: 0.1),
    ]

    // MARK: Creating

    /// Creates a job from a `POST /v1/fine_tuning/jobs` request. The model and settings are
    /// checked here (400); the files' contents when the job validates them (`validating_files`,
    /// then `failed` naming the file and line).
    public func create(_ request: FineTuningCreateRequest, team: String?, keyPrefix: String?) async throws(FineTuningError) -> JobRecord {
        let name = request.model
        guard let model = catalog().resolve(name) else { throw .notFound("no model '\(name)' to fine-tune") }
        guard let facts = model.facts, let path = model.path else {
            throw .badRequest("'\(model.id)' is not a local GGUF model: only local models can be fine-tuned", param: "model")
        }
        guard facts.quantization.uppercased() == "F32" else {
            throw .badRequest(
                "'\(model.id)' is \(facts.quantization): llama-finetune trains only the F32 tensors of a model, so only an F32 model can be fine-tuned (convert it to F32 first)",
                param: "model")
        }
        let scope: TeamScope = team.map { .team($0) } ?? .all
        try await checkFile(request.trainingFile, scope: scope, param: "training_file")
        if let validation = request.validationFile { try await checkFile(validation, scope: scope, param: "validation_file") }
        let hyperparameters = try Self.hyperparameters(request.hyperparameters, preset: request.preset, named: request.presetNamed, modelContext: facts.contextLength)
        let (training, validation, suffix, methodObject, metadata) = (request.trainingFile, request.validationFile, request.suffix, request.method, request.metadata)
        let seed = request.seed ?? Int.random(in: 0...2_147_483_647)

        let arguments = PerplexityJob.sharedArguments(model.pinnedArgs + (await runtimeArguments(model.id)))
        let toolArguments = Self.trainerToolArguments(arguments)
        let memory = try await Self.trainingMemory(facts, contextSize: hyperparameters.contextSize, toolArguments: toolArguments, compatibility: await compatibility())
        let spec = FineTuneSpec(
            base: model.id, basePath: path, suffix: suffix, team: team, keyPrefix: keyPrefix, trainingFile: training, validationFile: validation,
            hyperparameters: hyperparameters, seed: seed, metadata: metadata, method: methodObject, estimatedDeviceMiB: memory,
            toolArguments: toolArguments, directory: directory, chatTemplate: facts.chatTemplate, baseContextLength: model.contextSize ?? facts.contextLength)
        do { return try await engine.submit(FineTuneJob.self, spec) } catch { throw .storage("\(error)") }
    }

    func checkFile(_ id: String, scope: TeamScope, param: String) async throws(FineTuningError) {
        guard let files else { throw .badRequest("the Files API is not configured", param: param) }
        let file: StoredFile
        do { file = try await files.file(id, scope: scope) } catch {
            if case .notFound = error { throw .badRequest("no file '\(id)'", param: param) }
            throw .storage("\(error)")
        }
        guard file.purpose == "fine-tune" else { throw .badRequest("file '\(id)' has purpose '\(file.purpose)'; fine-tuning needs purpose 'fine-tune'", param: param) }
    }

    /// The settings of a request: its values, else the preset's (`"auto"` means the preset's).
    static func hyperparameters(_ h: [String: JobJSON], preset: Preset, named: Bool, modelContext: Int?) throws(FineTuningError) -> FineTuneHyperparameters {
        func value<T>(_ key: String, _ read: (JobJSON) -> T?, _ valid: (T) -> Bool, _ why: String) throws(FineTuningError) -> T? {
            guard let raw = h[key], !raw.isNull else { return nil }
            if raw.stringValue == "auto" { return nil }
            guard let v = read(raw), valid(v) else { throw .badRequest("hyperparameters.\(key) \(why)", param: "hyperparameters.\(key)") }
            return v
        }
        let int: (JobJSON) -> Int? = { $0.intValue }
        let double: (JobJSON) -> Double? = { $0.doubleValue }
        let epochs = try value("n_epochs", int, { (1...50).contains($0) }, "must be 'auto' or an integer from 1 to 50") ?? preset.epochs
        let batch = try value("batch_size", int, { (1...256).contains($0) }, "must be 'auto' or an integer from 1 to 256") ?? 1
        let multiplier = try value("learning_rate_multiplier", double, { $0 > 0 && $0 <= 1000 }, "must be 'auto' or a number above 0 and at most 1000")
            ?? preset.learningRateMultiplier
        var context = try value("context_size", int, { $0 >= 256 && $0 % 256 == 0 && $0 <= 131_072 }, "must be a multiple of 256 (llama-finetune pads its context to one), at most 131072")
            ?? preset.contextSize
        if let modelContext, h["context_size"] == nil, context > modelContext { context = max(256, modelContext / 256 * 256) }
        if let modelContext, context > max(256, modelContext) {
            throw .badRequest("hyperparameters.context_size \(context) is above the model's context length \(modelContext)", param: "hyperparameters.context_size")
        }
        let split = try value("validation_split", double, { $0 >= 0 && $0 < 0.5 }, "must be a number from 0 to below 0.5") ?? 0.05
        let optimizer = try value("optimizer", { $0.stringValue }, { ["adamw", "sgd"].contains($0) }, "must be adamw or sgd") ?? "adamw"
        let decay = try value("weight_decay", double, { $0 >= 0 && $0 < 1 }, "must be a number from 0 to below 1") ?? 0
        let lr = baseLearningRate * multiplier
        return FineTuneHyperparameters(
            preset: named ? preset.name : nil, nEpochs: epochs, batchSize: batch, learningRateMultiplier: multiplier, learningRate: lr,
            learningRateMin: preset.finalRateFraction < 1 ? lr * preset.finalRateFraction : 0, contextSize: context, validationSplit: split,
            optimizer: optimizer, weightDecay: decay)
    }

    /// The base's settings the trainer takes: GPU layers, split and threads (not the KV or
    /// batch settings, which training sets itself).
    static func trainerToolArguments(_ shared: [String]) -> [String] {
        let kept: Set<String> = ["-ngl", "--n-gpu-layers", "--gpu-layers", "-ts", "--tensor-split", "-sm", "--split-mode", "-mg", "--main-gpu", "-t", "--threads"]
        var out: [String] = []
        var i = 0
        while i + 1 < shared.count {
            if kept.contains(shared[i]) { out += [shared[i], shared[i + 1]] }
            i += 2
        }
        return out
    }

    /// MiB per device training needs: the model's weights, KV and compute at the training
    /// context, plus its gradients and AdamW's two moments (three more F32 copies of the
    /// weights) and the backward pass (twice the compute). Refused when it cannot fit.
    static func trainingMemory(_ facts: ModelFacts, contextSize: Int, toolArguments: [String], compatibility: Compatibility) async throws(FineTuningError) -> [String: Int] {
        var s = MemoryEstimator.Settings()
        s.contextSize = contextSize
        s.ubatch = contextSize
        if let i = toolArguments.lastIndex(where: { ["-ngl", "--n-gpu-layers", "--gpu-layers"].contains($0) }), let n = Int(toolArguments[i + 1]) { s.gpuLayers = n }
        let (_, estimate) = compatibility.assess(facts, s)
        var needed: [String: Int] = [:]
        var fits = true
        for device in estimate.devices {
            let bytes = device.total + 3 * device.weights + 2 * device.compute
            needed[device.name] = Int((bytes + 1_048_575) / 1_048_576)
            if bytes > compatibility.available[device.name] ?? 0 { fits = false }
        }
        guard fits else {
            let total = needed.values.reduce(0, +)
            throw .badRequest("the model does not fit in memory for training: about \(total) MiB (weights, gradients, optimizer state and activations at a context of \(contextSize)) are needed", param: "model")
        }
        return needed
    }

    // MARK: Reading and controlling

    /// The job `id`, if `scope` may see it.
    public func job(_ id: String, scope: TeamScope) async throws(FineTuningError) -> (JobRecord, FineTuneSpec) {
        let record: JobRecord?
        do { record = try await engine.get(id) } catch { throw .storage("\(error)") }
        guard let record, record.kind == FineTuneJob.name, let spec = try? record.spec.decode(FineTuneSpec.self) else {
            throw .notFound("no fine-tuning job '\(id)'")
        }
        if case .team(let team) = scope, spec.team != team { throw .notFound("no fine-tuning job '\(id)'") }
        return (record, spec)
    }

    /// A page of jobs newest first (after the job `after`), those `scope` may see, optionally
    /// with the given metadata.
    public func list(scope: TeamScope, after: String?, limit: Int, metadata: [String: String]) async throws(FineTuningError) -> (jobs: [(JobRecord, FineTuneSpec)], hasMore: Bool) {
        var found: [(JobRecord, FineTuneSpec)] = []
        var cursor = after
        do {
            while found.count <= limit {
                let page = try await engine.list(kind: FineTuneJob.name, after: cursor, limit: 100)
                for job in page.jobs {
                    guard let spec = try? job.spec.decode(FineTuneSpec.self) else { continue }
                    if case .team(let team) = scope, spec.team != team { continue }
                    if !metadata.allSatisfy({ spec.metadata?[$0.key] == $0.value }) { continue }
                    found.append((job, spec))
                }
                guard let next = page.next else { break }
                cursor = next
            }
        } catch JobEngineError.notFound(let id) {
            throw .badRequest("no fine-tuning job '\(id)' to list after", param: "after")
        } catch {
            throw .storage("\(error)")
        }
        return (Array(found.prefix(limit)), found.count > limit)
    }

    /// Cancels, pauses or resumes a job `scope` may see.
    public func control(_ id: String, _ action: String, scope: TeamScope) async throws(FineTuningError) -> (JobRecord, FineTuneSpec) {
        let (_, spec) = try await job(id, scope: scope)
        let record: JobRecord
        do {
            switch action {
            case "cancel": record = try await engine.cancel(id)
            case "pause": record = try await engine.pause(id)
            default: record = try await engine.resume(id)
            }
        } catch let error as JobEngineError {
            if case .wrongState(_, let state, _) = error {
                throw .conflict("job '\(id)' is \(Self.status(state: state, phase: nil)): it cannot be \(action == "cancel" ? "cancelled" : action + "d")")
            }
            throw .storage("\(error)")
        } catch {
            throw .storage("\(error)")
        }
        let note: String? = switch (action, record.state) {
        case ("pause", .paused): "Pause requested: the job stops at the end of the current epoch, its checkpoint kept"
        case ("resume", .running): "Job resumed"
        default: nil
        }
        if let note, let data = try? JobJSON(encoding: FineTuneMessage(note)) { try? await engine.note(id, "message", data) }
        return (record, spec)
    }

    /// The job's events newest first, as OpenAI lists them (`after`: an event id).
    public func events(_ id: String, scope: TeamScope, after: String?, limit: Int) async throws(FineTuningError) -> (events: [FineTuningEventObject], hasMore: Bool) {
        _ = try await job(id, scope: scope)
        let stored = try await storedEvents(id)
        var events: [FineTuningEventObject] = []
        for e in stored.reversed() {
            guard let data = try? JobCoding.decoder.decode(JobJSON.self, from: e.data), let event = Self.event(id, e, data) else { continue }
            events.append(event)
        }
        if let after {
            guard let i = events.firstIndex(where: { $0.id == after }) else { throw .badRequest("no event '\(after)' in job '\(id)'", param: "after") }
            events.removeFirst(i + 1)
        }
        return (Array(events.prefix(limit)), events.count > limit)
    }

    /// The job's training curve oldest first: every `metrics` event's data (step, epoch, train
    /// loss and accuracy, validation loss at epoch ends), for the dashboard's chart.
    public func series(_ id: String, scope: TeamScope) async throws(FineTuningError) -> [JobJSON] {
        _ = try await job(id, scope: scope)
        return try await storedEvents(id).filter { $0.type == "metrics" }.compactMap { event in
            let data = try? JobCoding.decoder.decode(JobJSON.self, from: event.data)
            return data?.objectValue == nil ? nil : data
        }
    }

    /// Every stored event of a job, oldest first.
    func storedEvents(_ id: String) async throws(FineTuningError) -> [StoredJobEvent] {
        var stored: [StoredJobEvent] = []
        do {
            var last: Int64 = 0
            while true {
                let page = try await store.jobEvents(job: id, after: last, limit: 1000)
                stored += page
                guard let end = page.last, page.count == 1000 else { break }
                last = end.sequence
            }
        } catch { throw .storage("\(error)") }
        return stored
    }

    /// The job's checkpoints newest first (`after`: a checkpoint id).
    public func checkpoints(_ id: String, scope: TeamScope, after: String?, limit: Int) async throws(FineTuningError) -> (checkpoints: [FineTuningCheckpointObject], hasMore: Bool) {
        let (record, _) = try await job(id, scope: scope)
        let state = Self.state(record)
        var list = (state?.checkpoints ?? []).reversed().map { FineTuningCheckpointObject($0, job: id) }
        if let after {
            guard let i = list.firstIndex(where: { $0.id == after }) else { throw .badRequest("no checkpoint '\(after)' in job '\(id)'", param: "after") }
            list.removeFirst(i + 1)
        }
        return (Array(list.prefix(limit)), list.count > limit)
    }

    // MARK: OpenAI's objects

    static func state(_ record: JobRecord) -> FineTuneState? {
        (record.result ?? record.detail).flatMap { try? $0.decode(FineTuneState.self) }
    }

    /// OpenAI's status for a job: the engine's state, and within `running` the job's phase.
    public static func status(state: JobState, phase: String?) -> String {
        switch state {
        case .queued: phase == nil || phase == "validating_files" ? "validating_files" : "queued"
        case .running: phase ?? "validating_files"
        case .paused: "paused"
        case .succeeded: "succeeded"
        case .failed, .interrupted: "failed"
        case .cancelled: "cancelled"
        }
    }

    /// Now plus the ETA of the epoch under way plus the mean epoch time for the epochs after it.
    static func estimatedFinish(_ record: JobRecord, _ spec: FineTuneSpec, _ state: FineTuneState?) -> Int? {
        guard record.state == .running, let state, state.phase == "running", let eta = state.current?.etaSeconds else { return nil }
        let times = state.checkpoints.map(\.seconds)
        let perEpoch = times.isEmpty ? Double(eta) : times.reduce(0, +) / Double(times.count)
        let remaining = max(0, spec.hyperparameters.nEpochs - state.epochsDone - 1)
        return Int(Date().timeIntervalSince1970 + Double(eta) + perEpoch * Double(remaining))
    }

    /// One stored job event as OpenAI's `FineTuningJobEvent` (nil for the engine's own
    /// bookkeeping: progress, detail, checkpoints).
    static func event(_ job: String, _ e: StoredJobEvent, _ data: JobJSON) -> FineTuningEventObject? {
        let object = data.objectValue.map(JobJSON.object) ?? .object([:])
        var level = "info", message: String, type = "message"
        var payload = JobJSON.object([:])
        switch e.type {
        case "message":
            level = object["level"]?.stringValue ?? "info"
            message = object["message"]?.stringValue ?? ""
        case "metrics":
            type = "metrics"
            payload = object
            let step = object["step"]?.intValue ?? 0, total = object["total_steps"]?.intValue ?? 0
            message = "Step \(step)/\(total): training loss=\(String(format: "%.4f", object["train_loss"]?.doubleValue ?? 0))"
                + ((object["valid_loss"]?.doubleValue).map { ", validation loss=\(String(format: "%.4f", $0))" } ?? "")
        case "state":
            let state = object["state"]?.stringValue ?? ""
            switch state {
            case "queued": message = (object["reason"]?.stringValue).map { "Job queued: \($0)" } ?? "Created fine-tuning job: \(job)"
            case "paused": message = "Job paused"
            case "cancelled": message = "Job cancelled" + ((object["error"]?.stringValue).map { ": \($0)" } ?? "")
            case "failed", "interrupted":
                level = "error"
                message = "Job failed: " + (object["error"]?.stringValue ?? state)
            default: return nil
            }
        default:
            return nil
        }
        return FineTuningEventObject(
            id: "ftevent-\(e.sequence)", createdAt: Int(e.at.timeIntervalSince1970), level: level, message: message, type: type, data: payload)
    }
}
