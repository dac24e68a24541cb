import Foundation
import Testing

@testable import GGUF

/// Compares the reader with llama.cpp's own gguf-py on every `models/ggml-vocab-*.gguf` file of
/// the llama.cpp source tree (present after `scripts/install-llama.sh`; required under CI).
@Suite struct GGUFPyAgreementTests {
    struct Dump: Decodable {
        var path: String
        var architecture: String?
        var scalars: [String: Scalar]
        var arrays: [String: Int]
        var tensor_count: Int
        var data_offset: UInt64
    }

    enum Scalar: Decodable, Equatable {
        case int(Int), double(Double), string(String), bool(Bool)
        init(from decoder: any Decoder) throws {
            let c = try decoder.singleValueContainer()
            if let b = try? c.decode(Bool.self) { self = .bool(b) }
            else if let i = try? c.decode(Int.self) { self = .int(i) }
            else if let d = try? c.decode(Double.self) { self = .double(d) }
            else { self = .string(try c.decode(String.self)) }
        }
    }

    @Test func agreesWithGGUFPyOnVocabFiles() throws {
        guard let tree = llamaSourceTree() else {
            #expect(!isCI, "llama.cpp source tree missing under CI: run scripts/install-llama.sh")
            return
        }
        let models = try FileManager.default.contentsOfDirectory(atPath: tree + "/models")
            .filter { $0.hasPrefix("ggml-vocab-") && $0.hasSuffix(".gguf") }
            .sorted()
            .map { tree + "/models/" + $0 }
        #expect(models.count >= 10)

        // gguf-py needs about two minutes for these files on 2 cores; its answer depends only on
        // the source tree, so it is kept next to the tree and reused.
        let cache = URL(fileURLWithPath: tree).deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("gguf-py-dump.json")
        var data = (try? Data(contentsOf: cache)) ?? Data()
        if data.isEmpty {
            let process = Process()
            process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
            let script = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
                .appendingPathComponent("../../scripts/gguf_dump.py").standardized.path
            let python = ProcessInfo.processInfo.environment["CORRAL_PYTHON"] ?? "python3"
            process.arguments = [python, script, tree + "/gguf-py"] + models
            let pipe = Pipe()
            process.standardOutput = pipe
            try process.run()
            data = pipe.fileHandleForReading.readDataToEndOfFile()
            process.waitUntilExit()
            try #require(process.terminationStatus == 0, "gguf_dump.py failed (numpy installed?)")
            try data.write(to: cache)
        }
        let dumps = try JSONDecoder().decode([Dump].self, from: data)
        #expect(dumps.count == models.count)

        for dump in dumps {
            let file = try GGUFFile.read(path: dump.path)
            let name = URL(fileURLWithPath: dump.path).lastPathComponent
            #expect(file["general.architecture"]?.string == dump.architecture, "\(name)")
            #expect(file.tensors.count == dump.tensor_count, "\(name)")
            #expect(file.dataOffset == dump.data_offset, "\(name)")
            var ours: [String: GGUFValue] = [:]
            for (k, v) in file.metadata { ours[k] = v }
            #expect(Set(ours.keys) == Set(dump.scalars.keys).union(dump.arrays.keys), "\(name)")
            for (key, expected) in dump.scalars {
                let value = ours[key]
                let actual: Scalar? = switch value {
                case .bool(let b)?: .bool(b)
                case .string(let s)?: .string(s)
                case .float32(let f)?: .double(Double(f))
                case .float64(let d)?: .double(d)
                default: value?.int.map(Scalar.int)
                }
                if case .double(let e) = expected, case .double(let a)? = actual {
                    #expect(e == a, "\(name) \(key)")
                } else if case .int(let e) = expected, case .double(let a)? = actual {
                    #expect(Double(e) == a, "\(name) \(key)")
                } else {
                    #expect(actual == expected, "\(name) \(key)")
                }
            }
            for (key, count) in dump.arrays {
                #expect(ours[key]?.array?.count == UInt64(count), "\(name) \(key)")
            }
        }
    }
}
