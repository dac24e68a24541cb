import Foundation
import Testing

@testable import GGUF

/// Crafted and mutated files: every one must give a typed error (or a valid read), never a
/// crash, a hang or an allocation beyond the file's size.
@Suite struct HostileInputTests {
    /// Little-endian byte builder for crafted headers.
    struct Bytes {
        var b: [UInt8] = []
        mutating func u32(_ v: UInt32) { withUnsafeBytes(of: v.littleEndian) { b += $0 } }
        mutating func u64(_ v: UInt64) { withUnsafeBytes(of: v.littleEndian) { b += $0 } }
        mutating func str(_ s: String) { u64(UInt64(s.utf8.count)); b += Array(s.utf8) }
        mutating func header(tensors: UInt64 = 0, kvs: UInt64) { b += Array("GGUF".utf8); u32(3); u64(tensors); u64(kvs) }
    }

    func read(_ bytes: [UInt8]) throws(GGUFError) -> GGUFFile {
        let path = NSTemporaryDirectory() + "corral-hostile-\(UUID().uuidString).gguf"
        _ = FileManager.default.createFile(atPath: path, contents: Data(bytes))
        defer { try? FileManager.default.removeItem(atPath: path) }
        return try GGUFFile.read(path: path)
    }

    func expectKind(_ bytes: [UInt8], _ kind: GGUFError.Kind, offset: UInt64? = nil) {
        do {
            _ = try read(bytes)
            Issue.record("expected \(kind), read succeeded")
        } catch {
            #expect(error.kind == kind)
            if let offset { #expect(error.offset == offset) }
            #expect(error.description.contains("at byte"))
        }
    }

    @Test func wrongMagic() { expectKind(Array("GGML".utf8) + [3, 0, 0, 0], .badMagic, offset: 0) }

    @Test func bigEndian() {
        var x = Bytes()
        x.b += Array("GGUF".utf8)
        x.b += [0, 0, 0, 3]
        x.b += [UInt8](repeating: 0, count: 16)
        expectKind(x.b, .bigEndian, offset: 4)
    }

    @Test func unknownVersion() {
        var x = Bytes()
        x.b += Array("GGUF".utf8); x.u32(7); x.u64(0); x.u64(0)
        expectKind(x.b, .unsupportedVersion(7), offset: 4)
    }

    @Test func emptyAndTinyFiles() {
        expectKind([], .truncated)
        expectKind(Array("GGUF".utf8), .truncated)
    }

    @Test func hugeStringLength() {
        var x = Bytes()
        x.header(kvs: 1)
        x.u64(1 << 62)  // key length
        x.b += [UInt8](repeating: 65, count: 32)
        expectKind(x.b, .stringTooLong(1 << 62), offset: 24)
    }

    @Test func hugeArrayCount() {
        var x = Bytes()
        x.header(kvs: 1)
        x.str("k"); x.u32(9); x.u32(4); x.u64(1 << 60)
        x.b += [UInt8](repeating: 0, count: 64)
        expectKind(x.b, .arrayTooLong(1 << 60), offset: 24 + 9 + 4)
    }

    @Test func hugeStringArrayCount() {
        var x = Bytes()
        x.header(kvs: 1)
        x.str("k"); x.u32(9); x.u32(8); x.u64(UInt64.max)
        expectKind(x.b, .arrayTooLong(UInt64.max))
    }

    @Test func hugeKeyAndTensorCounts() {
        var x = Bytes()
        x.header(kvs: 1 << 40)
        expectKind(x.b, .tooManyKeys(1 << 40), offset: 16)
        var y = Bytes()
        y.header(tensors: 1 << 50, kvs: 0)
        expectKind(y.b, .tooManyTensors(1 << 50), offset: 8)
    }

    @Test func invalidValueType() {
        var x = Bytes()
        x.header(kvs: 1)
        x.str("k"); x.u32(13); x.u64(0)
        expectKind(x.b, .invalidValueType(13), offset: 24 + 9)
    }

    @Test func deeplyNestedArrays() {
        var x = Bytes()
        x.header(kvs: 1)
        x.str("k"); x.u32(9)
        for _ in 0..<10 { x.u32(9); x.u64(1) }
        x.u32(0); x.u64(0)
        expectKind(x.b, .arrayTooDeep)
    }

    @Test func invalidUTF8() {
        var x = Bytes()
        x.header(kvs: 1)
        x.u64(2); x.b += [0xC3, 0x28]; x.u32(0); x.b.append(1)
        expectKind(x.b, .invalidUTF8, offset: 24)
    }

    @Test func tensorProblems() {
        func tensor(dims: [UInt64], type: UInt32, offset: UInt64) -> [UInt8] {
            var x = Bytes()
            x.header(tensors: 1, kvs: 0)
            x.str("t"); x.u32(UInt32(dims.count)); for d in dims { x.u64(d) }
            x.u32(type); x.u64(offset)
            x.b += [UInt8](repeating: 0, count: 64)
            return x.b
        }
        expectKind(tensor(dims: [1, 1, 1, 1, 1], type: 0, offset: 0), .tooManyDimensions(5))
        expectKind(tensor(dims: [4, 0], type: 0, offset: 0), .invalidShape)
        expectKind(tensor(dims: [1 << 40, 1 << 40], type: 0, offset: 0), .invalidShape)
        expectKind(tensor(dims: [4], type: 99, offset: 0), .invalidTensorType(99))
        expectKind(tensor(dims: [1 << 30], type: 0, offset: 0), .tensorOutOfBounds("t"))
        expectKind(tensor(dims: [4], type: 0, offset: UInt64.max - 4), .tensorOutOfBounds("t"))
    }

    @Test func badAlignment() {
        var x = Bytes()
        x.header(kvs: 1)
        x.str("general.alignment"); x.u32(4); x.u32(24)
        expectKind(x.b, .invalidAlignment(24))
    }

    /// Every prefix of a valid model header fails cleanly with `truncated`.
    @Test func everyTruncationOfAValidHeader() throws {
        var shape = TestModelShape()
        shape.vocabularySize = 300
        let header = TestModel.writer(shape: shape, withData: false).headerBytes()
        let dir = try makeTempDirectory("trunc")
        let path = dir + "/t.gguf"
        // Every byte offset in the first 2 KiB, then a stride through the rest.
        var cuts = Array(0..<min(2048, header.count))
        cuts += stride(from: 2048, to: header.count, by: 97)
        for cut in cuts {
            _ = FileManager.default.createFile(atPath: path, contents: Data(header[0..<cut]))
            do {
                _ = try GGUFFile.read(path: path)
                Issue.record("prefix of \(cut) bytes read without error")
            } catch {
                let ok: Bool = switch error.kind {
                case .truncated, .stringTooLong, .arrayTooLong, .tooManyKeys, .tooManyTensors: true
                default: false
                }
                #expect(ok, "cut \(cut): \(error)")
            }
        }
    }

    /// Thousands of seeded random mutations of a valid header: each read must end in a value or a
    /// typed error, and the process must not balloon in memory. Bounded in `make test`;
    /// `make fuzz` (or `CORRAL_FUZZ_ITERATIONS=N CORRAL_FUZZ_SEED=S`) runs it longer.
    @Test func mutatedHeaders() throws {
        let env = ProcessInfo.processInfo.environment
        let iterations = Int(env["CORRAL_FUZZ_ITERATIONS"] ?? "") ?? 3000
        let seed = UInt64(env["CORRAL_FUZZ_SEED"] ?? "") ?? 2026
        var shape = TestModelShape()
        shape.vocabularySize = 300
        let original = TestModel.writer(shape: shape, withData: false).headerBytes() + [UInt8](repeating: 0, count: 4096)
        let dir = try makeTempDirectory("mut")
        let path = dir + "/m.gguf"
        var rng = SplitMix64(seed: seed)
        var errors = 0, successes = 0
        let rssBefore = maxResidentMiB()
        for _ in 0..<iterations {
            var bytes = original
            let edits = 1 + Int(rng.next() % 4)
            for _ in 0..<edits {
                let at = Int(rng.next() % UInt64(bytes.count))
                switch rng.next() % 4 {
                case 0: bytes[at] = UInt8(truncatingIfNeeded: rng.next())
                case 1: bytes[at] = 0xFF
                case 2:  // plant a huge 64-bit value
                    for i in 0..<min(8, bytes.count - at) { bytes[at + i] = i == 7 ? 0x7F : 0xFF }
                default: bytes.removeLast(Int(rng.next() % 2048))
                }
            }
            _ = FileManager.default.createFile(atPath: path, contents: Data(bytes))
            do {
                _ = try GGUFFile.read(path: path)
                successes += 1
            } catch {
                errors += 1
            }
        }
        #expect(errors + successes == iterations)
        #expect(errors > iterations / 3)  // the mutations really do break headers
        // No allocation beyond the file's size: peak RSS stays far below what a trusted
        // length field (2^60 elements) would have asked for.
        #expect(maxResidentMiB() - rssBefore < 512)
    }

    func maxResidentMiB() -> Int {
        var usage = rusage()
        getrusage(RUSAGE_SELF.rawValue, &usage)
        return usage.ru_maxrss / 1024
    }
}
