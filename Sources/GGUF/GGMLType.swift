/// A ggml tensor type: its block size and bytes per block, as llama.cpp defines them.
public struct GGMLType: Sendable, Hashable, CustomStringConvertible {
    public let rawValue: UInt32
    public let name: String
    /// Elements per block.
    public let blockSize: UInt64
    /// Bytes per block.
    public let bytesPerBlock: UInt64

    /// Every type llama.cpp defines that a GGUF file can hold.
    public static let all: [UInt32: GGMLType] = {
        let table: [(UInt32, String, UInt64, UInt64)] = [
            (0, "F32", 1, 4), (1, "F16", 1, 2), (2, "Q4_0", 32, 18), (3, "Q4_1", 32, 20),
            (6, "Q5_0", 32, 22), (7, "Q5_1", 32, 24), (8, "Q8_0", 32, 34), (9, "Q8_1", 32, 36),
            (10, "Q2_K", 256, 84), (11, "Q3_K", 256, 110), (12, "Q4_K", 256, 144),
            (13, "Q5_K", 256, 176), (14, "Q6_K", 256, 210), (15, "Q8_K", 256, 292),
            (16, "IQ2_XXS", 256, 66), (17, "IQ2_XS", 256, 74), (18, "IQ3_XXS", 256, 98),
            (19, "IQ1_S", 256, 50), (20, "IQ4_NL", 32, 18), (21, "IQ3_S", 256, 110),
            (22, "IQ2_S", 256, 82), (23, "IQ4_XS", 256, 136), (24, "I8", 1, 1), (25, "I16", 1, 2),
            (26, "I32", 1, 4), (27, "I64", 1, 8), (28, "F64", 1, 8), (29, "IQ1_M", 256, 56),
            (30, "BF16", 1, 2), (34, "TQ1_0", 256, 54), (35, "TQ2_0", 256, 66), (39, "MXFP4", 32, 17),
        ]
        var all: [UInt32: GGMLType] = [:]
        for (raw, name, block, bytes) in table {
            all[raw] = GGMLType(rawValue: raw, name: name, blockSize: block, bytesPerBlock: bytes)
        }
        return all
    }()

    public static let f32 = all[0]!
    public static let f16 = all[1]!
    public static let q8_0 = all[8]!

    /// Bytes taken by `elements` values of this type (a whole number of blocks).
    public func bytes(forElements elements: UInt64) -> UInt64 {
        (elements + blockSize - 1) / blockSize * bytesPerBlock
    }

    public var description: String { name }
}

/// `general.file_type` values (llama.cpp's `llama_ftype`) and their usual labels.
public enum FileTypeLabel {
    static let labels: [UInt32: String] = [
        0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1", 10: "Q2_K",
        11: "Q3_K_S", 12: "Q3_K_M", 13: "Q3_K_L", 14: "Q4_K_S", 15: "Q4_K_M", 16: "Q5_K_S",
        17: "Q5_K_M", 18: "Q6_K", 19: "IQ2_XXS", 20: "IQ2_XS", 21: "Q2_K_S", 22: "IQ3_XS",
        23: "IQ3_XXS", 24: "IQ1_S", 25: "IQ4_NL", 26: "IQ3_S", 27: "IQ3_M", 28: "IQ2_S",
        29: "IQ2_M", 30: "IQ4_XS", 31: "IQ1_M", 32: "BF16", 36: "TQ1_0", 37: "TQ2_0", 38: "MXFP4_MOE",
    ]

    /// The label for a `general.file_type` value, or nil when unknown.
    public static func label(for fileType: UInt32) -> String? { labels[fileType & 0x7FFF] }
}
