#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Writes GGUF v3 files: metadata, tensor infos and tensor data, aligned as llama.cpp expects.
///
/// Used for generated test models and crafted reader inputs; it is not a converter.
public struct GGUFWriter: Sendable {
    public struct Tensor: Sendable {
        public var name: String
        /// Shape in GGUF `ne` order (fastest-varying dimension first).
        public var dimensions: [UInt64]
        public var type: GGMLType
        /// Raw tensor bytes; nil leaves the data as a sparse hole (see ``write(to:sparse:)``).
        public var data: [UInt8]?

        public init(name: String, dimensions: [UInt64], type: GGMLType, data: [UInt8]?) {
            self.name = name
            self.dimensions = dimensions
            self.type = type
            self.data = data
        }

        var byteCount: UInt64 {
            type.bytes(forElements: dimensions[0]) * dimensions.dropFirst().reduce(1, *)
        }
    }

    public var metadata: [(key: String, value: GGUFValue)] = []
    public var tensors: [Tensor] = []
    public var alignment: UInt64 = 32

    public init() {}

    public mutating func set(_ key: String, _ value: GGUFValue) {
        metadata.removeAll { $0.key == key }
        metadata.append((key, value))
    }

    /// The header bytes (everything before the tensor data), padded to the alignment.
    public func headerBytes() -> [UInt8] {
        var out: [UInt8] = []
        out.append(contentsOf: Array("GGUF".utf8))
        Self.put(UInt32(3), &out)
        Self.put(UInt64(tensors.count), &out)
        Self.put(UInt64(metadata.count), &out)
        for (key, value) in metadata {
            Self.putString(key, &out)
            Self.put(value.typeCode.rawValue, &out)
            Self.putValue(value, &out)
        }
        var offset: UInt64 = 0
        for t in tensors {
            Self.putString(t.name, &out)
            Self.put(UInt32(t.dimensions.count), &out)
            for d in t.dimensions { Self.put(d, &out) }
            Self.put(t.type.rawValue, &out)
            Self.put(offset, &out)
            offset += (t.byteCount + alignment - 1) / alignment * alignment
        }
        while UInt64(out.count) % alignment != 0 { out.append(0) }
        return out
    }

    /// Writes the file. With `sparse`, tensors without data become a hole made by extending the
    /// file, so a realistically shaped multi-GB model costs only its header on disk.
    public func write(to path: String, sparse: Bool = false) throws(GGUFError) {
        let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw GGUFError(.io(String(cString: strerror(errno))), offset: 0, path: path) }
        defer { close(fd) }
        var position: UInt64 = 0
        func emit(_ bytes: [UInt8]) throws(GGUFError) {
            var done = 0
            while done < bytes.count {
                let n = bytes.withUnsafeBytes { Self.systemWrite(fd, $0.baseAddress! + done, bytes.count - done) }
                if n < 0 && errno == EINTR { continue }
                guard n > 0 else { throw GGUFError(.io(String(cString: strerror(errno))), offset: position, path: path) }
                done += n
            }
            position += UInt64(bytes.count)
        }
        try emit(headerBytes())
        for t in tensors {
            let padded = (t.byteCount + alignment - 1) / alignment * alignment
            if let data = t.data {
                precondition(UInt64(data.count) == t.byteCount, "tensor \(t.name) has \(data.count) bytes, needs \(t.byteCount)")
                try emit(data + [UInt8](repeating: 0, count: Int(padded - t.byteCount)))
            } else {
                position += padded
                guard lseek(fd, off_t(position), SEEK_SET) >= 0 else {
                    throw GGUFError(.io("seek failed"), offset: position, path: path)
                }
            }
        }
        guard ftruncate(fd, off_t(position)) == 0 else {
            throw GGUFError(.io(String(cString: strerror(errno))), offset: position, path: path)
        }
    }

    private static func systemWrite(_ fd: Int32, _ p: UnsafeRawPointer, _ n: Int) -> Int {
        #if canImport(Glibc)
        Glibc.write(fd, p, n)
        #else
        Darwin.write(fd, p, n)
        #endif
    }

    static func put<T: FixedWidthInteger>(_ v: T, _ out: inout [UInt8]) {
        withUnsafeBytes(of: v.littleEndian) { out.append(contentsOf: $0) }
    }

    static func putString(_ s: String, _ out: inout [UInt8]) {
        put(UInt64(s.utf8.count), &out)
        out.append(contentsOf: s.utf8)
    }

    static func putValue(_ value: GGUFValue, _ out: inout [UInt8]) {
        switch value {
        case .uint8(let v): put(v, &out)
        case .int8(let v): put(v, &out)
        case .uint16(let v): put(v, &out)
        case .int16(let v): put(v, &out)
        case .uint32(let v): put(v, &out)
        case .int32(let v): put(v, &out)
        case .uint64(let v): put(v, &out)
        case .int64(let v): put(v, &out)
        case .float32(let v): put(v.bitPattern, &out)
        case .float64(let v): put(v.bitPattern, &out)
        case .bool(let v): out.append(v ? 1 : 0)
        case .string(let s): putString(s, &out)
        case .array(let a):
            put(a.elementType.rawValue, &out)
            let values = a.values ?? []
            put(UInt64(values.count), &out)
            for v in values { putValue(v, &out) }
        }
    }
}
