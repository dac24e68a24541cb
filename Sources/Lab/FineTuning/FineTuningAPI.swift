import Foundation
import Jobs

/// A `POST /v1/fine_tuning/jobs` body, its fields checked (the model, its files and the
/// settings that depend on the model are checked when the job is created).
public struct FineTuningCreateRequest: Sendable, Decodable {
    public var model: String
    public var trainingFile: String
    public var validationFile: String?
    /// `hyperparameters`, with `method.supervised.hyperparameters` over them; each value a number
    /// or `"auto"`, checked against the model by `FineTuning.create`.
    public var hyperparameters: [String: JobJSON]
    /// The `method` as sent (always `supervised`).
    public var method: JobJSON?
    public var preset: FineTuning.Preset
    /// Whether the request named its preset (`preset` is then shown in the job's settings).
    public var presetNamed: Bool
    public var suffix: String?
    public var seed: Int?
    public var metadata: [String: String]?

    public init(from decoder: any Decoder) throws {
        try self.init(try [String: JobJSON](from: decoder))
    }

    public init(_ body: [String: JobJSON]) throws(FineTuningError) {
        guard let model = body["model"]?.stringValue, !model.isEmpty else { throw .badRequest("model is required", param: "model") }
        self.model = model
        guard let training = body["training_file"]?.stringValue, !training.isEmpty else { throw .badRequest("training_file is required", param: "training_file") }
        trainingFile = training
        if let raw = body["validation_file"], !raw.isNull {
            guard let id = raw.stringValue, !id.isEmpty else { throw .badRequest("validation_file must be a file id", param: "validation_file") }
            validationFile = id
        }
        var requested = body["hyperparameters"]?.objectValue ?? [:]
        if let method = body["method"] {
            guard let type = method["type"]?.stringValue else { throw .badRequest("method must be an object with a type", param: "method") }
            guard type == "supervised" else {
                throw .badRequest("method.type '\(type)' is not supported: llama-finetune does supervised fine-tuning only", param: "method.type")
            }
            if let h = method["supervised"]?["hyperparameters"]?.objectValue { requested.merge(h) { _, new in new } }
            self.method = method
        }
        hyperparameters = requested
        if let integrations = body["integrations"]?.arrayValue, !integrations.isEmpty {
            throw .badRequest("integrations are not supported (metrics are in the job's events and result file)", param: "integrations")
        }
        guard let preset = FineTuning.presets[body["preset"]?.stringValue ?? "balanced"] else {
            throw .badRequest("preset must be one of \(FineTuning.presets.keys.sorted().joined(separator: ", "))", param: "preset")
        }
        self.preset = preset
        presetNamed = body["preset"] != nil
        if let raw = body["suffix"], !raw.isNull {
            guard let s = raw.stringValue, (1...64).contains(s.count),
                s.unicodeScalars.allSatisfy({ CharacterSet.alphanumerics.contains($0) && $0.isASCII || "-_.".unicodeScalars.contains($0) })
            else { throw .badRequest("suffix must be 1 to 64 letters, digits, '-', '_' or '.'", param: "suffix") }
            suffix = s.lowercased()
        }
        if let raw = body["seed"], !raw.isNull {
            guard let n = raw.intValue, (0...2_147_483_647).contains(n) else { throw .badRequest("seed must be an integer from 0 to 2147483647", param: "seed") }
            seed = n
        }
        metadata = try Self.metadata(body["metadata"])
    }

    static func metadata(_ raw: JobJSON?) throws(FineTuningError) -> [String: String]? {
        guard let raw, !raw.isNull else { return nil }
        let error = FineTuningError.badRequest("metadata must be at most 16 string values (keys up to 64 characters, values up to 512)", param: "metadata")
        guard let object = raw.objectValue, object.count <= 16 else { throw error }
        var metadata: [String: String] = [:]
        for (key, value) in object {
            guard key.count <= 64, let text = value.stringValue, text.count <= 512 else { throw error }
            metadata[key] = text
        }
        return metadata
    }
}

/// OpenAI's `FineTuningJob`, plus Corral's `epochs_done`, resolved `settings`, `quality`
/// (validation perplexity before and after) and, while running, `progress`.
public struct FineTuningJobObject: Codable, Sendable, Equatable {
    public struct Hyperparameters: Codable, Sendable, Equatable {
        public var nEpochs: Int
        public var batchSize: Int
        public var learningRateMultiplier: Double
        enum CodingKeys: String, CodingKey { case nEpochs = "n_epochs", batchSize = "batch_size", learningRateMultiplier = "learning_rate_multiplier" }
    }
    public struct Method: Codable, Sendable, Equatable {
        public struct Supervised: Codable, Sendable, Equatable { public var hyperparameters: Hyperparameters }
        public var type = "supervised"
        public var supervised: Supervised
    }
    public struct JobError: Codable, Sendable, Equatable {
        public var code: String
        public var message: String
        /// The file at fault for `invalid_file`; null otherwise.
        public var param: String?
        public func encode(to encoder: any Encoder) throws {
            var c = encoder.container(keyedBy: CodingKeys.self)
            try c.encode(code, forKey: .code)
            try c.encode(message, forKey: .message)
            try c.encode(param, forKey: .param)
        }
    }
    public struct Settings: Codable, Sendable, Equatable {
        /// Null when the request named no preset.
        public var preset: String?
        public var contextSize: Int
        public var learningRate: Double
        public var learningRateMin: Double
        public var validationSplit: Double
        public var optimizer: String
        public var weightDecay: Double
        enum CodingKeys: String, CodingKey {
            case preset, optimizer
            case contextSize = "context_size", learningRate = "learning_rate", learningRateMin = "learning_rate_min"
            case validationSplit = "validation_split", weightDecay = "weight_decay"
        }
        public func encode(to encoder: any Encoder) throws {
            var c = encoder.container(keyedBy: CodingKeys.self)
            try c.encode(preset, forKey: .preset)
            try c.encode(contextSize, forKey: .contextSize)
            try c.encode(learningRate, forKey: .learningRate)
            try c.encode(learningRateMin, forKey: .learningRateMin)
            try c.encode(validationSplit, forKey: .validationSplit)
            try c.encode(optimizer, forKey: .optimizer)
            try c.encode(weightDecay, forKey: .weightDecay)
        }
    }
    public struct Perplexity: Codable, Sendable, Equatable {
        public var perplexity: Double
        public var error: Double
        public var chunks: Int
        public var contextSize: Int
        enum CodingKeys: String, CodingKey { case perplexity, error, chunks, contextSize = "context_size" }
        init(_ p: PerplexityOutcome) { (perplexity, error, chunks, contextSize) = (p.perplexity, p.error, p.chunks, p.contextSize) }
    }
    public struct Quality: Codable, Sendable, Equatable {
        /// Null before the files are read.
        public var validationSource: String?
        public var perplexityBefore: Perplexity?
        public var perplexityAfter: Perplexity?
        public var note: String?
        enum CodingKeys: String, CodingKey {
            case note, validationSource = "validation_source", perplexityBefore = "perplexity_before", perplexityAfter = "perplexity_after"
        }
        public func encode(to encoder: any Encoder) throws {
            var c = encoder.container(keyedBy: CodingKeys.self)
            try c.encode(validationSource, forKey: .validationSource)
            try c.encodeIfPresent(perplexityBefore, forKey: .perplexityBefore)
            try c.encodeIfPresent(perplexityAfter, forKey: .perplexityAfter)
            try c.encodeIfPresent(note, forKey: .note)
        }
    }
    public struct Progress: Codable, Sendable, Equatable {
        public var phase: String
        public var batch: Int
        public var batches: Int
        public var loss: Double
        public var accuracy: Double
    }

    public var id: String
    public var object = "fine_tuning.job"
    public var createdAt: Int
    public var model: String
    public var organizationID: String
    public var trainingFile: String
    public var validationFile: String?
    public var status: String
    public var hyperparameters: Hyperparameters
    public var seed: Int
    public var fineTunedModel: String?
    public var finishedAt: Int?
    /// Null until the job succeeded.
    public var trainedTokens: Int?
    public var resultFiles: [String]
    public var integrations: [String] = []
    public var metadata: [String: String]?
    public var method: Method
    public var estimatedFinish: Int?
    public var error: JobError?
    public var suffix: String?
    public var epochsDone: Int
    public var settings: Settings
    public var quality: Quality
    /// Only while the job runs.
    public var progress: Progress?

    enum CodingKeys: String, CodingKey {
        case id, object, model, status, hyperparameters, seed, integrations, metadata, method, error, suffix, settings, quality, progress
        case createdAt = "created_at", organizationID = "organization_id", trainingFile = "training_file", validationFile = "validation_file"
        case fineTunedModel = "fine_tuned_model", finishedAt = "finished_at", trainedTokens = "trained_tokens", resultFiles = "result_files"
        case estimatedFinish = "estimated_finish", epochsDone = "epochs_done"
    }

    /// Every field OpenAI defines is present, null where it has no value.
    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(id, forKey: .id)
        try c.encode(object, forKey: .object)
        try c.encode(createdAt, forKey: .createdAt)
        try c.encode(model, forKey: .model)
        try c.encode(organizationID, forKey: .organizationID)
        try c.encode(trainingFile, forKey: .trainingFile)
        try c.encode(validationFile, forKey: .validationFile)
        try c.encode(status, forKey: .status)
        try c.encode(hyperparameters, forKey: .hyperparameters)
        try c.encode(seed, forKey: .seed)
        try c.encode(fineTunedModel, forKey: .fineTunedModel)
        try c.encode(finishedAt, forKey: .finishedAt)
        try c.encode(trainedTokens, forKey: .trainedTokens)
        try c.encode(resultFiles, forKey: .resultFiles)
        try c.encode(integrations, forKey: .integrations)
        try c.encode(metadata, forKey: .metadata)
        try c.encode(method, forKey: .method)
        try c.encode(estimatedFinish, forKey: .estimatedFinish)
        try c.encode(error, forKey: .error)
        try c.encode(suffix, forKey: .suffix)
        try c.encode(epochsDone, forKey: .epochsDone)
        try c.encode(settings, forKey: .settings)
        try c.encode(quality, forKey: .quality)
        try c.encodeIfPresent(progress, forKey: .progress)
    }

    public init(_ record: JobRecord, _ spec: FineTuneSpec) {
        let state = FineTuning.state(record)
        let h = spec.hyperparameters
        let hyper = Hyperparameters(nEpochs: h.nEpochs, batchSize: h.batchSize, learningRateMultiplier: h.learningRateMultiplier)
        id = record.id
        createdAt = Int(record.createdAt.timeIntervalSince1970)
        model = spec.base
        organizationID = spec.team.map { "team-" + $0 } ?? "corral"
        trainingFile = spec.trainingFile
        validationFile = spec.validationFile
        status = FineTuning.status(state: record.state, phase: state?.phase)
        hyperparameters = hyper
        seed = spec.seed
        fineTunedModel = state?.fineTunedModel
        finishedAt = record.finishedAt.map { Int($0.timeIntervalSince1970) }
        trainedTokens = record.state == .succeeded ? state?.trainedTokens ?? 0 : nil
        resultFiles = state?.resultFiles ?? []
        metadata = spec.metadata
        method = Method(supervised: .init(hyperparameters: hyper))
        estimatedFinish = FineTuning.estimatedFinish(record, spec, state)
        suffix = spec.suffix
        epochsDone = state?.epochsDone ?? 0
        settings = Settings(
            preset: h.preset, contextSize: h.contextSize, learningRate: h.learningRate, learningRateMin: h.learningRateMin,
            validationSplit: h.validationSplit, optimizer: h.optimizer, weightDecay: h.weightDecay)
        quality = Quality(
            validationSource: state?.validationSource, perplexityBefore: state?.perplexityBefore.map(Perplexity.init),
            perplexityAfter: state?.perplexityAfter.map(Perplexity.init), note: state?.perplexityNote)
        if let current = state?.current, record.state == .running {
            progress = Progress(phase: current.phase, batch: current.batch, batches: current.batches, loss: current.loss, accuracy: current.accuracy)
        }
        if let failure = record.error, record.state == .failed || record.state == .interrupted {
            let param = failure.code == "invalid_file" ? (spec.validationFile.map { failure.message.contains($0) } == true ? "validation_file" : "training_file") : nil
            error = JobError(code: failure.code, message: failure.message, param: param)
        }
    }
}

/// OpenAI's `FineTuningJobEvent`: a message, or a `metrics` event whose `data` is the step's
/// metrics (`{}` for a message).
public struct FineTuningEventObject: Codable, Sendable, Equatable {
    public var id: String
    public var object = "fine_tuning.job.event"
    public var createdAt: Int
    public var level: String
    public var message: String
    public var type: String
    public var data: JobJSON
    enum CodingKeys: String, CodingKey { case id, object, level, message, type, data, createdAt = "created_at" }
}

/// OpenAI's `FineTuningJobCheckpoint`.
public struct FineTuningCheckpointObject: Codable, Sendable, Equatable {
    public struct Metrics: Codable, Sendable, Equatable {
        public var step: Int
        public var trainLoss: Double
        public var trainMeanTokenAccuracy: Double
        /// The validation figures, present at an epoch's end (twice, as OpenAI names them both ways).
        public var validLoss: Double?
        public var fullValidLoss: Double?
        public var validMeanTokenAccuracy: Double?
        public var fullValidMeanTokenAccuracy: Double?
        enum CodingKeys: String, CodingKey {
            case step, trainLoss = "train_loss", trainMeanTokenAccuracy = "train_mean_token_accuracy", validLoss = "valid_loss", fullValidLoss = "full_valid_loss"
            case validMeanTokenAccuracy = "valid_mean_token_accuracy", fullValidMeanTokenAccuracy = "full_valid_mean_token_accuracy"
        }
    }

    public var id: String
    public var object = "fine_tuning.job.checkpoint"
    public var createdAt: Int
    public var fineTunedModelCheckpoint: String
    public var fineTuningJobID: String
    public var stepNumber: Int
    public var metrics: Metrics
    public var epoch: Int
    public var learningRate: Double
    public var seconds: Double

    enum CodingKeys: String, CodingKey {
        case id, object, metrics, epoch, seconds
        case createdAt = "created_at", fineTunedModelCheckpoint = "fine_tuned_model_checkpoint", fineTuningJobID = "fine_tuning_job_id"
        case stepNumber = "step_number", learningRate = "learning_rate"
    }

    public init(_ c: FineTuneCheckpoint, job: String) {
        id = "ftckpt-\(job.dropFirst(FineTuneJob.idPrefix.count + 1))-\(c.epoch)"
        createdAt = Int(c.createdAt.timeIntervalSince1970)
        fineTunedModelCheckpoint = c.fineTunedModelCheckpoint
        fineTuningJobID = job
        stepNumber = c.step
        metrics = Metrics(
            step: c.step, trainLoss: c.trainLoss, trainMeanTokenAccuracy: c.trainMeanTokenAccuracy, validLoss: c.validLoss, fullValidLoss: c.validLoss,
            validMeanTokenAccuracy: c.validMeanTokenAccuracy, fullValidMeanTokenAccuracy: c.validMeanTokenAccuracy)
        epoch = c.epoch
        learningRate = c.learningRate
        seconds = c.seconds
    }
}
