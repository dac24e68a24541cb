import Foundation

/// One progress line of `llama-finetune`: `train: [▍  ] data=0000012/0000324 loss=4.67697±0.08477
/// acc=20.44±0.73% t=00:00:00 ETA=00:00:03`. Loss and accuracy are running means over the epoch
/// so far (the `±` is their standard error), so the value at the epoch's last batch is the epoch's.
public struct TrainerProgress: Sendable, Codable, Equatable {
    /// `train` or `val`.
    public var phase: String
    /// Batches done in this phase of the epoch, and how many it has.
    public var batch: Int
    public var batches: Int
    public var loss: Double
    /// Mean token accuracy, 0–1.
    public var accuracy: Double
    public var etaSeconds: Int?
}

/// Reads `llama-finetune`'s output (its `\r`-separated progress lines and its log).
public struct TrainerOutput: Sendable {
    public private(set) var lastTrain: TrainerProgress?
    public private(set) var lastValidation: TrainerProgress?
    /// Lines the tool logged as errors (`E` level), and `error:`/`failed` lines.
    public private(set) var errors: [String] = []

    public init() {}

    /// Reads one line; returns the progress it carries, if any.
    @discardableResult
    public mutating func read(_ line: String) -> TrainerProgress? {
        if let progress = Self.progress(line) {
            if progress.phase == "train" { lastTrain = progress } else { lastValidation = progress }
            return progress
        }
        // Log lines look like `0.00.011.067 E main: …`, or plain `error: …` from argument parsing.
        let fields = line.split(separator: " ", maxSplits: 2)
        if fields.count == 3, fields[1] == "E" {
            errors.append(String(fields[2]))
        } else if line.hasPrefix("error:") || line.contains("failed to") {
            errors.append(line.trimmingCharacters(in: .whitespaces))
        }
        return nil
    }

    /// Parses a `train:` or `val:` progress line.
    static func progress(_ line: String) -> TrainerProgress? {
        let trimmed = line.drop { $0 == " " }
        let phase: String
        if trimmed.hasPrefix("train:") { phase = "train" } else if trimmed.hasPrefix("val:") { phase = "val" } else { return nil }
        func value(_ key: String) -> Substring? {
            guard let r = trimmed.range(of: " " + key + "=") else { return nil }
            return trimmed[r.upperBound...].prefix { $0 != " " }
        }
        guard let data = value("data"), let slash = data.firstIndex(of: "/"),
            let batch = Int(data[..<slash]), let batches = Int(data[data.index(after: slash)...]),
            let lossText = value("loss"), let loss = Double(lossText.prefix { $0 != "±" }),
            let accText = value("acc"), let acc = Double(accText.prefix { $0 != "±" && $0 != "%" })
        else { return nil }
        let eta = value("ETA").flatMap(Self.seconds)
        return TrainerProgress(phase: phase, batch: batch, batches: batches, loss: loss, accuracy: acc / 100, etaSeconds: eta)
    }

    /// `HH:MM:SS` in seconds.
    static func seconds(_ text: Substring) -> Int? {
        let parts = text.split(separator: ":").compactMap { Int($0) }
        guard parts.count == 3 else { return nil }
        return parts[0] * 3600 + parts[1] * 60 + parts[2]
    }
}

/// The learning rate of each epoch: `llama-finetune`'s own schedule (constant within an epoch,
/// halving `log2(lr / lrMin) / decayEpochs` times per epoch, `lrMin` from `decayEpochs` on),
/// computed by Corral because it runs one epoch per invocation: the tool, started for one epoch,
/// would use `lr` throughout.
public struct LearningRateSchedule: Sendable, Codable, Equatable {
    public var lr: Double
    /// Zero or less: constant `lr`.
    public var lrMin: Double
    /// Epochs over which the rate falls to `lrMin` (nil: all epochs).
    public var decayEpochs: Double?

    public init(lr: Double, lrMin: Double, decayEpochs: Double?) {
        (self.lr, self.lrMin, self.decayEpochs) = (lr, lrMin, decayEpochs)
    }

    /// The rate of 0-based `epoch` in a run of `epochs`.
    public func rate(epoch: Int, of epochs: Int) -> Double {
        guard lrMin > 0, lrMin < lr else { return lr }
        let decay = decayEpochs.flatMap { $0 > 0 && $0 < Double(epochs) ? $0 : nil } ?? Double(epochs)
        if Double(epoch) >= decay { return lrMin }
        let halvings = log2(lr / lrMin) / decay
        return lr * pow(0.5, Double(epoch) * halvings)
    }
}
