/// Typed reads of a JSON value, for request values built from a body checked field by field
/// (each read is nil when the value has another type, as a cast of Foundation's objects was).
extension JobJSON {
    /// The text of a string.
    public var stringValue: String? {
        if case .string(let s) = self { return s }
        return nil
    }

    /// A number that is a whole integer (not a boolean, not 1.5).
    public var intValue: Int? {
        guard case .number(let n) = self, n == n.rounded(), abs(n) < 9.2e18 else { return nil }
        return Int(n)
    }

    /// Any number.
    public var doubleValue: Double? {
        if case .number(let n) = self { return n }
        return nil
    }

    public var boolValue: Bool? {
        if case .bool(let b) = self { return b }
        return nil
    }

    public var arrayValue: [JobJSON]? {
        if case .array(let a) = self { return a }
        return nil
    }

    public var objectValue: [String: JobJSON]? {
        if case .object(let o) = self { return o }
        return nil
    }

    /// Whether the value is JSON null.
    public var isNull: Bool { self == .null }

    /// The value at a dotted path (`item.a.b`, `item.list.0`); nil where the path leaves the
    /// document. A null on the way ends the path with null.
    public func value(at path: String) -> JobJSON? {
        var current = self
        for key in path.split(separator: ".") {
            switch current {
            case .object(let o):
                guard let next = o[String(key)] else { return nil }
                current = next
            case .array(let a):
                guard let i = Int(key), i >= 0, i < a.count else { return nil }
                current = a[i]
            default: return nil
            }
            if current == .null { return .null }
        }
        return current
    }
}

extension JobJSON {
    /// An array of strings; nil when it is not one.
    public var stringsValue: [String]? {
        guard case .array(let items) = self else { return nil }
        let strings = items.compactMap(\.stringValue)
        return strings.count == items.count ? strings : nil
    }
    /// An array of numbers; nil when it is not one.
    public var numbersValue: [Double]? {
        guard case .array(let items) = self else { return nil }
        let numbers = items.compactMap(\.doubleValue)
        return numbers.count == items.count ? numbers : nil
    }
}
