/// One metadata value of a GGUF file.
public enum GGUFValue: Sendable, Equatable {
    case uint8(UInt8), int8(Int8), uint16(UInt16), int16(Int16)
    case uint32(UInt32), int32(Int32), uint64(UInt64), int64(Int64)
    case float32(Float), float64(Double), bool(Bool), string(String)
    case array(GGUFArray)

    /// The value as an integer, whatever its integer width (GGUF writers differ).
    public var int: Int? {
        switch self {
        case .uint8(let v): Int(v)
        case .int8(let v): Int(v)
        case .uint16(let v): Int(v)
        case .int16(let v): Int(v)
        case .uint32(let v): Int(v)
        case .int32(let v): Int(v)
        case .uint64(let v): Int(exactly: v)
        case .int64(let v): Int(v)
        case .bool(let v): v ? 1 : 0
        default: nil
        }
    }

    public var double: Double? {
        switch self {
        case .float32(let v): Double(v)
        case .float64(let v): v
        default: int.map(Double.init)
        }
    }

    public var string: String? {
        if case .string(let s) = self { return s }
        return nil
    }

    public var bool: Bool? {
        if case .bool(let b) = self { return b }
        return nil
    }

    public var array: GGUFArray? {
        if case .array(let a) = self { return a }
        return nil
    }

    /// Integers of a scalar or of every element of an array (per-layer keys use both forms).
    public var ints: [Int]? {
        if let i = int { return [i] }
        guard let a = array, let values = a.values else { return nil }
        let ints = values.compactMap(\.int)
        return ints.count == values.count ? ints : nil
    }

    /// The wire type code of this value.
    public var typeCode: GGUFValueType {
        switch self {
        case .uint8: .uint8
        case .int8: .int8
        case .uint16: .uint16
        case .int16: .int16
        case .uint32: .uint32
        case .int32: .int32
        case .uint64: .uint64
        case .int64: .int64
        case .float32: .float32
        case .float64: .float64
        case .bool: .bool
        case .string: .string
        case .array: .array
        }
    }
}

/// A metadata array. Large arrays (vocabularies) keep only their count unless asked for.
public struct GGUFArray: Sendable, Equatable {
    public var elementType: GGUFValueType
    public var count: UInt64
    /// The elements, when kept (see ``GGUFReadOptions/keepArraysUpTo``).
    public var values: [GGUFValue]?

    public init(elementType: GGUFValueType, count: UInt64, values: [GGUFValue]?) {
        self.elementType = elementType
        self.count = count
        self.values = values
    }

    /// An array with all its values kept.
    public init(_ elementType: GGUFValueType, _ values: [GGUFValue]) {
        self.init(elementType: elementType, count: UInt64(values.count), values: values)
    }
}

/// GGUF metadata value type codes.
public enum GGUFValueType: UInt32, Sendable {
    case uint8 = 0, int8, uint16, int16, uint32, int32, float32, bool, string, array, uint64, int64, float64

    /// Fixed size in bytes, nil for strings and arrays.
    var fixedSize: UInt64? {
        switch self {
        case .uint8, .int8, .bool: 1
        case .uint16, .int16: 2
        case .uint32, .int32, .float32: 4
        case .uint64, .int64, .float64: 8
        case .string, .array: nil
        }
    }

    /// The fewest bytes one value of this type can take on disk.
    var minimumSize: UInt64 {
        switch self {
        case .string: 8
        case .array: 12
        default: fixedSize!
        }
    }
}
