import NIOCore

/// Splits an SSE byte stream into the `data:` payloads of complete events.
public struct SSEEvents {
    public init() {}

    private var pending = ByteBuffer()

    /// Feeds bytes; returns the payloads of the events completed by them.
    public mutating func feed(_ chunk: ByteBuffer) -> [Substring] {
        pending.writeImmutableBuffer(chunk)
        var payloads: [Substring] = []
        while let end = Self.eventEnd(pending) {
            let event = pending.readSlice(length: end)!
            payloads += Self.dataLines(event)
        }
        pending.discardReadBytes()
        return payloads
    }

    /// Payloads of an unterminated last event.
    public mutating func finish() -> [Substring] {
        defer { pending.clear() }
        return Self.dataLines(pending)
    }

    @inlinable
    public static func dataLines(_ event: ByteBuffer) -> [Substring] {
        String(buffer: event).split(whereSeparator: { $0 == "\n" || $0 == "\r\n" }).compactMap { line in
            guard line.hasPrefix("data:") else { return nil }
            let payload = line.dropFirst(5)
            return payload.first == " " ? payload.dropFirst() : payload
        }
    }

    /// Index just past the next blank line ("\n\n" or "\r\n\r\n") in `buffer`.
    @inlinable
    public static func eventEnd(_ buffer: ByteBuffer) -> Int? {
        let view = buffer.readableBytesView
        var previousNewline = false
        var i = view.startIndex
        while i < view.endIndex {
            let b = view[i]
            if b == 10 {
                if previousNewline { return i - view.startIndex + 1 }
                previousNewline = true
            } else if b != 13 {
                previousNewline = false
            }
            i += 1
        }
        return nil
    }
}
