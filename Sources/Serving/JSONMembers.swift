/// Reading numbers out of JSON answers without building them: the usage and timings a response
/// carries, while its generated text passes through untouched.
public enum JSONMembers {
    /// JSON's whitespace.
    public static func isSpace(_ byte: UInt8) -> Bool {
        byte == 0x20 || byte == 0x0A || byte == 0x0D || byte == 0x09
    }

    /// The numbers of the members called `names` of a JSON object's top level, for reading
    /// `usage` and `timings` from an answer whose generated text the gateway does not need: each
    /// such member that is an object becomes its numeric members (nested objects kept the same
    /// way, other kinds of value left out), and everything else is skipped over without being
    /// built. Nil when `bytes` is not an object (or is cut short).
    public static func members(_ names: Set<String>, of bytes: UnsafeRawBufferPointer) -> [String: NumericObject]? {
        var scanner = Scanner(bytes: bytes)
        var found: [String: NumericObject] = [:]
        let complete = scanner.object { key, scanner in
            guard names.contains(key), scanner.peek == UInt8(ascii: "{") else { return scanner.skipValue() }
            guard let numbers = scanner.numbers() else { return false }
            found[key] = numbers
            return true
        }
        return complete ? found : nil
    }

    /// Where the values of the members called `names` of a JSON object's top level lie in
    /// `bytes` (strings with their quotes), without building anything; nil when `bytes` is not an
    /// object (or is cut short).
    public static func valueRanges(_ names: Set<String>, of bytes: UnsafeRawBufferPointer) -> [String: Range<Int>]? {
        var scanner = Scanner(bytes: bytes)
        var found: [String: Range<Int>] = [:]
        let complete = scanner.object { key, scanner in
            let start = scanner.position
            guard scanner.skipValue() else { return false }
            if names.contains(key) { found[key] = start..<scanner.position }
            return true
        }
        return complete ? found : nil
    }

    /// A cursor over JSON text that can skip whole values.
    private struct Scanner {
        let bytes: UnsafeRawBufferPointer
        var position = 0

        init(bytes: UnsafeRawBufferPointer) { self.bytes = bytes }

        mutating func skipSpace() {
            while position < bytes.count, JSONMembers.isSpace(bytes[position]) { position += 1 }
        }

        var peek: UInt8? { position < bytes.count ? bytes[position] : nil }

        /// Reads an object, calling `member` with each key (escapes left as they are) and the
        /// scanner at its value, which `member` must consume; false when the text is not an object.
        mutating func object(_ member: (String, inout Scanner) -> Bool) -> Bool {
            skipSpace()
            guard take(UInt8(ascii: "{")) else { return false }
            skipSpace()
            if take(UInt8(ascii: "}")) { return true }
            while true {
                skipSpace()
                guard let key = string() else { return false }
                skipSpace()
                guard take(UInt8(ascii: ":")) else { return false }
                skipSpace()
                guard member(String(decoding: UnsafeRawBufferPointer(rebasing: bytes[key]), as: UTF8.self), &self) else { return false }
                skipSpace()
                if take(UInt8(ascii: ",")) { continue }
                return take(UInt8(ascii: "}"))
            }
        }

        /// Reads an object keeping only its numbers and nested objects (see ``JSON/members(_:of:)``).
        mutating func numbers() -> NumericObject? {
            var found = NumericObject()
            let complete = object { key, scanner in
                switch scanner.peek ?? 0 {
                case UInt8(ascii: "{"):
                    guard let nested = scanner.numbers() else { return false }
                    found.numbers[key] = nil
                    found.objects[key] = nested
                case UInt8(ascii: "-"), UInt8(ascii: "0")...UInt8(ascii: "9"):
                    let start = scanner.position
                    guard scanner.skipValue() else { return false }
                    let text = String(decoding: UnsafeRawBufferPointer(rebasing: scanner.bytes[start..<scanner.position]), as: UTF8.self)
                    guard let number = Int(text).map(Double.init) ?? Double(text) else { return false }
                    found.objects[key] = nil
                    found.numbers[key] = number
                default:
                    // A later member of another kind replaces an earlier one, as in a full parse.
                    found.numbers[key] = nil
                    found.objects[key] = nil
                    return scanner.skipValue()
                }
                return true
            }
            return complete ? found : nil
        }

        mutating func take(_ byte: UInt8) -> Bool {
            guard position < bytes.count, bytes[position] == byte else { return false }
            position += 1
            return true
        }

        /// Skips a string; returns the range of its contents (between the quotes).
        mutating func string() -> Range<Int>? {
            guard take(UInt8(ascii: "\"")) else { return nil }
            let start = position
            while position < bytes.count {
                switch bytes[position] {
                case UInt8(ascii: "\\"): position += 2
                case UInt8(ascii: "\""):
                    position += 1
                    return start..<(position - 1)
                default: position += 1
                }
            }
            return nil
        }

        /// Skips one value of any kind, nested ones included.
        mutating func skipValue() -> Bool {
            guard position < bytes.count else { return false }
            switch bytes[position] {
            case UInt8(ascii: "\""): return string() != nil
            case UInt8(ascii: "{"), UInt8(ascii: "["):
                var depth = 0
                while position < bytes.count {
                    switch bytes[position] {
                    case UInt8(ascii: "\""):
                        guard string() != nil else { return false }
                        continue
                    case UInt8(ascii: "{"), UInt8(ascii: "["): depth += 1
                    case UInt8(ascii: "}"), UInt8(ascii: "]"):
                        depth -= 1
                        if depth == 0 {
                            position += 1
                            return true
                        }
                    default: break
                    }
                    position += 1
                }
                return false
            default:  // number, true, false, null
                let start = position
                while position < bytes.count {
                    let byte = bytes[position]
                    if JSONMembers.isSpace(byte) || byte == UInt8(ascii: ",") || byte == UInt8(ascii: "}") || byte == UInt8(ascii: "]") { break }
                    position += 1
                }
                return position > start
            }
        }
    }
}
