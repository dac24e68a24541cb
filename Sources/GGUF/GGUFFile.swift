/// One tensor's entry in the header: name, shape (GGUF `ne` order), type and data offset.
public struct GGUFTensorInfo: Sendable, Equatable {
    public var name: String
    public var dimensions: [UInt64]
    public var type: GGMLType
    /// Offset relative to the start of the data section.
    public var offset: UInt64

    public var elementCount: UInt64 { dimensions.reduce(1, *) }
    public var byteCount: UInt64 {
        guard let row = dimensions.first else { return 0 }
        return type.bytes(forElements: row) * dimensions.dropFirst().reduce(1, *)
    }
}

/// How much of a header to keep.
public struct GGUFReadOptions: Sendable {
    /// Arrays with more elements than this keep only their count (vocabularies are large).
    public var keepArraysUpTo: UInt64
    /// Whether to read tensor infos (needed for sizes and parameter counts).
    public var readTensors: Bool

    public init(keepArraysUpTo: UInt64 = 4096, readTensors: Bool = true) {
        self.keepArraysUpTo = keepArraysUpTo
        self.readTensors = readTensors
    }

    public static let `default` = GGUFReadOptions()
    public static let everything = GGUFReadOptions(keepArraysUpTo: .max)
}

/// The header of one GGUF file: metadata, tensor table and where tensor data starts.
public struct GGUFFile: Sendable {
    public var version: UInt32
    /// Metadata in file order.
    public var metadata: [(key: String, value: GGUFValue)]
    public var tensors: [GGUFTensorInfo]
    public var alignment: UInt64
    /// Absolute file offset of the tensor data section.
    public var dataOffset: UInt64
    public var fileSize: UInt64
    /// Digests of `tokenizer.ggml.tokens`' texts (kept whatever the array's size), for
    /// comparing vocabularies as llama.cpp does before speculative decoding.
    public var tokenDigests: TokenTextDigests?

    public subscript(key: String) -> GGUFValue? {
        metadata.first { $0.key == key }?.value
    }

    /// Reads the header of the file at `path`; never reads tensor data. With `declaredSize`,
    /// `path` holds only the first bytes of a file that size (a prefix fetched from a remote
    /// file): a header that does not fit in them is `.truncated`.
    public static func read(path: String, options: GGUFReadOptions = .default, declaredSize: UInt64? = nil) throws(GGUFError) -> GGUFFile {
        var reader = try ByteReader(path: path, declaredSize: declaredSize)
        return try parse(&reader, options: options)
    }

    static let maxArrayDepth = 3

    private static func parse(_ r: inout ByteReader, options: GGUFReadOptions) throws(GGUFError) -> GGUFFile {
        let magic = try r.u32()
        guard magic == 0x4655_4747 else { throw r.error(.badMagic, at: 0) }  // "GGUF"
        let version = try r.u32()
        if version & 0xFFFF == 0 && version >> 16 != 0 { throw r.error(.bigEndian, at: 4) }
        guard version == 2 || version == 3 else { throw r.error(.unsupportedVersion(version), at: 4) }
        let tensorCount = try r.u64()
        let kvCount = try r.u64()
        // Each metadata entry takes at least a key length, a type and one byte of value.
        guard kvCount <= r.remaining / 13 else { throw r.error(.tooManyKeys(kvCount), at: 16) }
        guard tensorCount <= r.remaining / 24 else { throw r.error(.tooManyTensors(tensorCount), at: 8) }

        var metadata: [(key: String, value: GGUFValue)] = []
        metadata.reserveCapacity(Int(kvCount))
        var tokenDigests: TokenTextDigests?
        for _ in 0..<kvCount {
            let key = try r.string()!
            let typeOffset = r.offset
            let rawType = try r.u32()
            guard let type = GGUFValueType(rawValue: rawType) else {
                throw r.error(.invalidValueType(rawType), at: typeOffset)
            }
            if key == "tokenizer.ggml.tokens" && type == .array {
                let (value, digests) = try readTokens(&r, options: options)
                tokenDigests = digests
                metadata.append((key, value))
                continue
            }
            let value = try readValue(&r, type: type, options: options, depth: 0)
            metadata.append((key, value))
        }

        var alignment: UInt64 = 32
        if let a = metadata.first(where: { $0.key == "general.alignment" })?.value.int {
            guard a > 0 && a & (a - 1) == 0 else { throw r.error(.invalidAlignment(UInt64(a))) }
            alignment = UInt64(a)
        }

        var tensors: [GGUFTensorInfo] = []
        if options.readTensors || tensorCount == 0 {
            tensors.reserveCapacity(Int(tensorCount))
            for _ in 0..<tensorCount {
                tensors.append(try readTensorInfo(&r))
            }
        } else {
            for _ in 0..<tensorCount { _ = try readTensorInfo(&r) }
        }
        let headerEnd = r.offset
        let dataOffset = (headerEnd + alignment - 1) / alignment * alignment
        for t in tensors {
            let (end, overflow) = t.offset.addingReportingOverflow(t.byteCount)
            guard !overflow, dataOffset <= r.fileSize, end <= r.fileSize - dataOffset else {
                throw r.error(.tensorOutOfBounds(t.name), at: headerEnd)
            }
        }
        return GGUFFile(
            version: version, metadata: metadata, tensors: options.readTensors ? tensors : [],
            alignment: alignment, dataOffset: dataOffset, fileSize: r.fileSize, tokenDigests: tokenDigests)
    }

    /// The vocabulary array: its value as ``readValue`` would give it, and the digests of its
    /// texts (nil when its elements are not strings).
    private static func readTokens(_ r: inout ByteReader, options: GGUFReadOptions) throws(GGUFError) -> (GGUFValue, TokenTextDigests?) {
        let start = r.offset
        let rawType = try r.u32()
        guard let elementType = GGUFValueType(rawValue: rawType) else { throw r.error(.invalidValueType(rawType), at: start) }
        let count = try r.u64()
        guard count <= r.remaining / elementType.minimumSize else { throw r.error(.arrayTooLong(count), at: start) }
        let keep = count <= options.keepArraysUpTo
        var values: [GGUFValue] = []
        guard elementType == .string else {
            for _ in 0..<count {
                let v = try readValue(&r, type: elementType, options: options, depth: 1, keep: keep)
                if keep { values.append(v) }
            }
            return (.array(GGUFArray(elementType: elementType, count: count, values: keep ? values : nil)), nil)
        }
        var digests = TokenTextDigests.Builder(count: Int(count))
        if keep { values.reserveCapacity(Int(count)) }
        for _ in 0..<count {
            if keep {
                let text = try r.string() ?? ""
                digests.add(Array(text.utf8)[...])
                values.append(.string(text))
            } else {
                try r.digestString(into: &digests)
            }
        }
        return (.array(GGUFArray(elementType: .string, count: count, values: keep ? values : nil)), digests.result)
    }

    private static func readTensorInfo(_ r: inout ByteReader) throws(GGUFError) -> GGUFTensorInfo {
        let name = try r.string()!
        let dimsOffset = r.offset
        let nDims = try r.u32()
        guard nDims >= 1 && nDims <= 4 else { throw r.error(.tooManyDimensions(nDims), at: dimsOffset) }
        var dims: [UInt64] = []
        var elements: UInt64 = 1
        for _ in 0..<nDims {
            let d = try r.u64()
            let (product, overflow) = elements.multipliedReportingOverflow(by: d)
            guard d > 0, !overflow, product < 1 << 60 else { throw r.error(.invalidShape, at: dimsOffset) }
            elements = product
            dims.append(d)
        }
        let typeOffset = r.offset
        let rawType = try r.u32()
        guard let type = GGMLType.all[rawType] else { throw r.error(.invalidTensorType(rawType), at: typeOffset) }
        let offset = try r.u64()
        return GGUFTensorInfo(name: name, dimensions: dims, type: type, offset: offset)
    }

    private static func readValue(
        _ r: inout ByteReader, type: GGUFValueType, options: GGUFReadOptions, depth: Int, keep: Bool = true
    ) throws(GGUFError) -> GGUFValue {
        switch type {
        case .uint8: return .uint8(try r.u8())
        case .int8: return .int8(Int8(bitPattern: try r.u8()))
        case .uint16: return .uint16(try r.u16())
        case .int16: return .int16(Int16(bitPattern: try r.u16()))
        case .uint32: return .uint32(try r.u32())
        case .int32: return .int32(Int32(bitPattern: try r.u32()))
        case .uint64: return .uint64(try r.u64())
        case .int64: return .int64(Int64(bitPattern: try r.u64()))
        case .float32: return .float32(Float(bitPattern: try r.u32()))
        case .float64: return .float64(Double(bitPattern: try r.u64()))
        case .bool: return .bool(try r.u8() != 0)
        case .string: return .string(try r.string(keep: keep) ?? "")
        case .array:
            let start = r.offset
            guard depth < maxArrayDepth else { throw r.error(.arrayTooDeep, at: start) }
            let rawType = try r.u32()
            guard let elementType = GGUFValueType(rawValue: rawType) else {
                throw r.error(.invalidValueType(rawType), at: start)
            }
            let count = try r.u64()
            guard count <= r.remaining / elementType.minimumSize else {
                throw r.error(.arrayTooLong(count), at: start)
            }
            let keepValues = keep && count <= options.keepArraysUpTo
            if !keepValues, let size = elementType.fixedSize {
                try r.skip(count * size)
                return .array(GGUFArray(elementType: elementType, count: count, values: nil))
            }
            var values: [GGUFValue] = []
            if keepValues { values.reserveCapacity(Int(count)) }
            for _ in 0..<count {
                let v = try readValue(&r, type: elementType, options: options, depth: depth + 1, keep: keepValues)
                if keepValues { values.append(v) }
            }
            return .array(GGUFArray(elementType: elementType, count: count, values: keepValues ? values : nil))
        }
    }
}
