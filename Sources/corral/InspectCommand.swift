import ArgumentParser
import Foundation
import GGUF

/// `corral inspect FILE…`: the facts of GGUF files, as a table or JSON.
struct InspectCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "inspect", abstract: "Print the facts of GGUF files.")

    @Argument(help: "GGUF files (the first part of a split model reads all parts).")
    var files: [String]

    @Flag(help: "Print JSON instead of a table.")
    var json = false

    func run() async throws {
        var objects: [[String: Any]] = []
        var failed = false
        for path in files {
            do {
                let facts = try ModelFacts.read(path: path)
                let object = facts.jsonObject(path: path)
                if json { objects.append(object) } else { print(Self.table(object)) }
            } catch {
                failed = true
                FileHandle.standardError.write(Data("corral: \(error)\n".utf8))
            }
        }
        if json {
            let data = try JSONSerialization.data(withJSONObject: objects, options: [.prettyPrinted, .sortedKeys])
            print(String(decoding: data, as: UTF8.self))
        }
        if failed { throw ExitCode(1) }
    }

    static func table(_ object: [String: Any]) -> String {
        let order = [
            "path", "architecture", "name", "size_label", "parameters", "quantization", "bits_per_weight",
            "tensor_bytes", "context_length", "layers", "embedding_length", "feed_forward_length", "heads",
            "kv_heads", "key_length", "value_length", "vocabulary_size", "tokenizer", "experts",
            "experts_used", "sliding_window", "capabilities", "split_count",
        ]
        return order.compactMap { key in
            guard let v = object[key] else { return nil }
            let text = (v as? [Any]).map { $0.map { "\($0)" }.joined(separator: ",") } ?? "\(v)"
            return key.padding(toLength: 20, withPad: " ", startingAt: 0) + text
        }.joined(separator: "\n") + "\n"
    }
}

extension ModelFacts {
    /// A JSON-ready dictionary of the facts (also used by `--json`).
    func jsonObject(path: String) -> [String: Any] {
        var o: [String: Any] = [
            "path": path, "architecture": architecture, "parameters": parameterCount,
            "quantization": quantization, "bits_per_weight": (bitsPerWeight * 100).rounded() / 100,
            "tensor_bytes": tensorBytes, "capabilities": capabilities.names, "split_count": splitCount,
            "tensor_count": tensorCount,
        ]
        o["name"] = name
        o["size_label"] = sizeLabel
        o["context_length"] = contextLength
        o["layers"] = blockCount
        o["embedding_length"] = embeddingLength
        o["feed_forward_length"] = feedForwardLength
        if let h = headCount.first { o["heads"] = Set(headCount).count == 1 ? h : headCount }
        if let h = headCountKV.first { o["kv_heads"] = Set(headCountKV).count == 1 ? h : headCountKV }
        o["key_length"] = keyLength
        o["value_length"] = valueLength
        o["vocabulary_size"] = vocabularySize
        o["tokenizer"] = tokenizerModel
        o["experts"] = expertCount
        o["experts_used"] = expertUsedCount
        o["sliding_window"] = slidingWindow
        o["has_chat_template"] = chatTemplate != nil
        return o
    }
}
