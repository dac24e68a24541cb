/// Why a GGUF file could not be read, and where.
///
/// Every failure of the reader is one of these: a truncated, corrupt or hostile file never
/// crashes, hangs or makes the reader allocate more than the file holds.
public struct GGUFError: Error, Sendable, Equatable, CustomStringConvertible {
    /// What went wrong.
    public enum Kind: Sendable, Equatable {
        /// The file does not start with `GGUF`.
        case badMagic
        /// The version field reads as a byte-swapped small number: a big-endian file.
        case bigEndian
        /// A version other than 2 or 3.
        case unsupportedVersion(UInt32)
        /// The file ends before the structure being read.
        case truncated
        /// A string claims more bytes than remain in the file.
        case stringTooLong(UInt64)
        /// A string's bytes are not UTF-8.
        case invalidUTF8
        /// An array claims more elements than the remaining bytes could hold.
        case arrayTooLong(UInt64)
        /// Arrays nested deeper than the reader allows.
        case arrayTooDeep
        /// A metadata value type that GGUF does not define.
        case invalidValueType(UInt32)
        /// More metadata entries than the remaining bytes could hold.
        case tooManyKeys(UInt64)
        /// More tensor infos than the remaining bytes could hold.
        case tooManyTensors(UInt64)
        /// A tensor with more than 4 dimensions.
        case tooManyDimensions(UInt32)
        /// A tensor with a zero or overflowing shape.
        case invalidShape
        /// A tensor type this reader does not know.
        case invalidTensorType(UInt32)
        /// `general.alignment` is zero or not a power of two.
        case invalidAlignment(UInt64)
        /// A tensor's data lies outside the file.
        case tensorOutOfBounds(String)
        /// The file could not be opened or read.
        case io(String)
    }

    public var kind: Kind
    /// Byte offset in the file where the problem was found.
    public var offset: UInt64
    /// The file, when known.
    public var path: String?

    public init(_ kind: Kind, offset: UInt64, path: String? = nil) {
        self.kind = kind
        self.offset = offset
        self.path = path
    }

    public var description: String {
        let place = path.map { "\($0): " } ?? ""
        return "\(place)\(message) at byte \(offset)"
    }

    /// What is wrong, without the path and offset.
    public var message: String {
        switch kind {
        case .badMagic: "not a GGUF file (bad magic)"
        case .bigEndian: "big-endian GGUF is not supported"
        case .unsupportedVersion(let v): "unsupported GGUF version \(v)"
        case .truncated: "file is truncated"
        case .stringTooLong(let n): "string length \(n) exceeds the remaining file"
        case .invalidUTF8: "string is not valid UTF-8"
        case .arrayTooLong(let n): "array count \(n) exceeds the remaining file"
        case .arrayTooDeep: "arrays nested too deeply"
        case .invalidValueType(let t): "invalid metadata value type \(t)"
        case .tooManyKeys(let n): "metadata count \(n) exceeds the remaining file"
        case .tooManyTensors(let n): "tensor count \(n) exceeds the remaining file"
        case .tooManyDimensions(let n): "tensor has \(n) dimensions (at most 4)"
        case .invalidShape: "tensor shape is zero or overflows"
        case .invalidTensorType(let t): "unknown tensor type \(t)"
        case .invalidAlignment(let a): "invalid alignment \(a)"
        case .tensorOutOfBounds(let name): "tensor \(name) lies outside the file"
        case .io(let what): "I/O error: \(what)"
        }
    }
}
