import Foundation
import Testing

@testable import GGUF

@Suite struct ReaderTests {
    @Test func roundTripsEveryValueType() throws {
        var w = GGUFWriter()
        w.set("general.architecture", .string("llama"))
        w.set("u8", .uint8(200))
        w.set("i8", .int8(-100))
        w.set("u16", .uint16(60000))
        w.set("i16", .int16(-30000))
        w.set("u32", .uint32(4_000_000_000))
        w.set("i32", .int32(-2_000_000_000))
        w.set("u64", .uint64(1 << 62))
        w.set("i64", .int64(-(1 << 62)))
        w.set("f32", .float32(1.5))
        w.set("f64", .float64(-2.25))
        w.set("bool", .bool(true))
        w.set("str", .string("héllo ▁wörld"))
        w.set("arr", .array(GGUFArray(.int32, [.int32(1), .int32(-2), .int32(3)])))
        w.set("strs", .array(GGUFArray(.string, [.string("a"), .string(""), .string("ccc")])))
        w.set("nested", .array(GGUFArray(.array, [.array(GGUFArray(.uint8, [.uint8(7)]))])))
        w.tensors = [
            .init(name: "a", dimensions: [4, 3], type: .f32, data: [UInt8](repeating: 1, count: 48)),
            .init(name: "b", dimensions: [64], type: .q8_0, data: [UInt8](repeating: 2, count: 68)),
        ]
        let dir = try makeTempDirectory()
        let path = dir + "/all.gguf"
        try w.write(to: path)

        let file = try GGUFFile.read(path: path, options: .everything)
        #expect(file.version == 3)
        #expect(file.metadata.count == w.metadata.count)
        for (expected, actual) in zip(w.metadata, file.metadata) {
            #expect(expected.key == actual.key)
            #expect(expected.value == actual.value)
        }
        #expect(file.tensors.map(\.name) == ["a", "b"])
        #expect(file.tensors[0].dimensions == [4, 3])
        #expect(file.tensors[1].type == .q8_0)
        #expect(file.tensors[1].byteCount == 68)
        #expect(file.tensors[1].offset == 64)  // 48 bytes padded to 32-byte alignment
        #expect(file.dataOffset % 32 == 0)
        #expect(file.fileSize == file.dataOffset + 64 + 96)
    }

    @Test func largeArraysKeepOnlyTheirCount() throws {
        var w = GGUFWriter()
        w.set("big", .array(GGUFArray(.string, (0..<5000).map { .string("tok\($0)") })))
        let path = try makeTempDirectory() + "/big.gguf"
        try w.write(to: path)
        let file = try GGUFFile.read(path: path)
        #expect(file["big"]?.array?.count == 5000)
        #expect(file["big"]?.array?.values == nil)
        let full = try GGUFFile.read(path: path, options: .everything)
        #expect(full["big"]?.array?.values?.last == .string("tok4999"))
    }

    @Test(arguments: TestModelShape.WeightType.allCases)
    func generatedModelFacts(type: TestModelShape.WeightType) throws {
        var shape = TestModelShape()
        shape.weightType = type
        shape.embeddingLength = 64
        shape.layers = 3
        shape.fim = true
        let path = try makeTempDirectory() + "/m.gguf"
        try TestModel.write(shape: shape, to: path)
        let facts = try ModelFacts.read(path: path)
        #expect(facts.architecture == "llama")
        #expect(facts.blockCount == 3)
        #expect(facts.headCount == [4, 4, 4])
        #expect(facts.headCountKV == [2, 2, 2])
        #expect(facts.keyLength == 16)
        #expect(facts.vocabularySize == shape.vocabularySize)
        // Parameters from the tensor shapes: embeddings, output, norms and per-layer matrices.
        let v = UInt64(shape.vocabularySize), e: UInt64 = 64, kv: UInt64 = 32, ff: UInt64 = 128
        let perLayer = 2 * e + e * e * 2 + 2 * e * kv + 3 * e * ff
        #expect(facts.parameterCount == 2 * v * e + e + 3 * perLayer)
        #expect(facts.quantization == ["f32": "F32", "f16": "F16", "q8_0": "Q8_0"][type.rawValue])
        #expect(facts.capabilities == [.completion, .insert])
        #expect(facts.chatTemplate == TestModel.chatTemplate)
        let expectedBits: ClosedRange<Double> = switch type {
        case .f32: 31.9...32.1
        case .f16: 16.0...17.0  // norms stay F32
        case .q8_0: 8.4...9.5
        }
        #expect(expectedBits.contains(facts.bitsPerWeight))
    }

    @Test func embeddingModelsReportEmbeddingCapability() throws {
        let shape = try TestModelShape(spec: "embedding=true,vocab=400")
        let path = try makeTempDirectory() + "/e.gguf"
        try TestModel.write(shape: shape, to: path)
        let facts = try ModelFacts.read(path: path)
        #expect(facts.capabilities == [.embedding])
        #expect(facts.poolingType == 1)
    }

    @Test func splitModelsAreReadAsOne() throws {
        let dir = try makeTempDirectory()
        var totalTensors = 0
        for i in 1...3 {
            var w = GGUFWriter()
            w.set("general.architecture", .string("llama"))
            w.set("split.no", .uint16(UInt16(i - 1)))
            w.set("split.count", .uint16(3))
            w.tensors = [.init(name: "t\(i)", dimensions: [8, UInt64(i)], type: .f32, data: nil)]
            totalTensors += 8 * i
            try w.write(to: dir + "/big-0000\(i)-of-00003.gguf", sparse: true)
        }
        #expect(SplitFiles.splitInfo("x/big-00002-of-00003.gguf")?.count == 3)
        #expect(SplitFiles.splitInfo("x/big.gguf") == nil)
        let facts = try ModelFacts.read(path: dir + "/big-00001-of-00003.gguf")
        #expect(facts.splitCount == 3)
        #expect(facts.tensorCount == 3)
        #expect(facts.parameterCount == UInt64(totalTensors))
    }

    @Test func shapeSpecRejectsNonsense() {
        #expect(throws: TestModelError.self) { try TestModelShape(spec: "embd=65,heads=4") }
        #expect(throws: TestModelError.self) { try TestModelShape(spec: "colour=blue") }
        #expect(throws: TestModelError.self) { try TestModelShape(spec: "type=q4_k") }
        #expect(throws: TestModelError.self) { try TestModelShape(spec: "vocab=10") }
    }
}
