import Foundation
import GGUF

/// A type `llama-quantize` makes, named as Ollama and llama.cpp name it (`q4_K_M` and `Q4_K_M`
/// are the same). Only types that need no importance matrix are offered.
public struct QuantType: Sendable, Hashable, Codable, CustomStringConvertible {
    /// llama.cpp's name (`Q4_K_M`), what `llama-quantize` is given.
    public let name: String

    /// Every type offered, from the largest to the smallest.
    public static let all: [QuantType] = [
        "F32", "BF16", "F16", "Q8_0", "Q6_K", "Q5_K_M", "Q5_K_S", "Q5_1", "Q5_0", "Q4_K_M", "Q4_K_S", "Q4_1", "Q4_0", "IQ4_NL", "IQ4_XS",
        "Q3_K_L", "Q3_K_M", "Q3_K_S", "Q2_K",
    ].map { QuantType(uncheckedName: $0) }

    init(uncheckedName: String) { name = uncheckedName }

    /// The type `raw` names, case-insensitively; nil when it is not one Corral offers.
    public init?(_ raw: String) {
        let upper = raw.trimmingCharacters(in: .whitespaces).uppercased()
        guard let found = Self.all.first(where: { $0.name == upper }) else { return nil }
        self = found
    }

    public init(from decoder: any Decoder) throws {
        let raw = try decoder.singleValueContainer().decode(String.self)
        guard let type = QuantType(raw) else {
            throw DecodingError.dataCorrupted(.init(codingPath: decoder.codingPath, debugDescription: "'\(raw)' is not a quantization type"))
        }
        self = type
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(name)
    }

    public var description: String { name }

    /// Whether a model file of `fileType` (`general.file_type`) holds unquantized weights (F32,
    /// F16, BF16): the sources a quantization should start from.
    public static func isUnquantized(fileType: UInt32?) -> Bool {
        guard let fileType else { return false }
        return [0, 1, 32].contains(fileType & 0x7FFF)
    }
}

/// Why `llama-quantize` did not produce a model.
public struct QuantizeFailure: Error, Sendable, CustomStringConvertible {
    public var description: String
}

/// Runs `llama-quantize`, reporting tensors done as it goes.
public enum Quantizer {
    public struct Outcome: Sendable, Codable, Equatable {
        /// Size of the file written.
        public var bytes: Int64
        public var seconds: Double
        /// Tensors whose shape did not suit the type and got llama.cpp's fallback type instead.
        public var fallbackTensors: Int
    }

    /// Quantizes `source` into `output` (written whole or not at all: the tool writes a
    /// temporary file renamed once it succeeded). `progress` gets (tensors done, of how many);
    /// cancelling the task stops the tool.
    public static func run(tool: String, source: String, output: String, type: QuantType, allowRequantize: Bool, threads: Int? = nil,
                           progress: @Sendable (Int, Int) async throws -> Void) async throws -> Outcome {
        let partial = output + ".partial"
        unlink(partial)
        var arguments = allowRequantize ? ["--allow-requantize"] : []
        arguments += [source, partial, type.name]
        if let threads { arguments.append(String(threads)) }
        let started = ContinuousClock.now
        let child: ChildProcess
        do { child = try ChildProcess(executable: tool, arguments: arguments) } catch {
            throw QuantizeFailure(description: "llama-quantize could not be started: \(error)")
        }
        var parser = QuantizeOutput()
        let progressFailure = await child.follow { line in
            let before = parser.done
            parser.read(line)
            if parser.done != before, let total = parser.total { try await progress(parser.done, total) }
        }
        let termination = await child.wait()
        do {
            try Task.checkCancellation()
            if let progressFailure { throw progressFailure }
            guard termination == .exited(0), parser.failure == nil,
                let size = (try? FileManager.default.attributesOfItem(atPath: partial))?[.size] as? NSNumber, size.int64Value > 0
            else {
                throw QuantizeFailure(description: parser.failure ?? "llama-quantize ended (\(termination)) without a model")
            }
            guard rename(partial, output) == 0 else {
                throw QuantizeFailure(description: "cannot move the quantized model into place: \(String(cString: strerror(errno)))")
            }
            return Outcome(bytes: size.int64Value, seconds: (ContinuousClock.now - started).inSeconds, fallbackTensors: parser.fallbackTensors)
        } catch {
            unlink(partial)
            throw error
        }
    }
}

/// Reads `llama-quantize`'s output: `[  13/  21] blk.1.attn_k.weight …` per tensor, the
/// fallback count, and its failure line.
struct QuantizeOutput {
    var done = 0
    var total: Int?
    var fallbackTensors = 0
    var failure: String?

    mutating func read(_ line: String) {
        let trimmed = line.drop { $0 == " " }
        if trimmed.hasPrefix("["), let slash = trimmed.firstIndex(of: "/"), let close = trimmed.firstIndex(of: "]"), slash < close,
            let n = Int(trimmed[trimmed.index(after: trimmed.startIndex)..<slash].trimmingCharacters(in: .whitespaces)),
            let of = Int(trimmed[trimmed.index(after: slash)..<close].trimmingCharacters(in: .whitespaces))
        {
            done = max(done, n)
            total = of
        }
        if let r = line.range(of: "WARNING: "), let count = Int(line[r.upperBound...].prefix { $0.isNumber }), line.contains("required fallback quantization") {
            fallbackTensors = count
        }
        // `llama_model_quantize: failed to quantize: requantizing from type q5_0 is disabled`
        if failure == nil, let r = line.range(of: "failed to quantize: ") {
            failure = String(line[r.upperBound...]).trimmingCharacters(in: .whitespaces)
        }
    }
}
