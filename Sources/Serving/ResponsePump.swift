import AsyncHTTPClient
import HTTPTypes
import NIOCore

/// What a response pump does with an answer's bytes as they arrive: which bytes the client gets
/// now, what is left at the end (an error event after a failure mid-stream), and what the answer
/// reported it used. A value type, so the pump's loop calls it without an existential or a hop.
public protocol AnswerReader {
    /// The bytes to write to the client for `chunk` (empty: nothing yet).
    mutating func feed(_ chunk: ByteBuffer) -> ByteBuffer
    /// What to write when the answer has ended: held-back bytes and, when reading it failed,
    /// the failure in the client's shape.
    mutating func finish(failure: ServingError?) -> ByteBuffer
    /// The usage and timings the answer reported.
    var reported: AnswerUsage { get }
    /// Events delivered so far (a stream cut short is charged one token each); nil when the
    /// answer is not a stream of events.
    var deliveredEvents: Int? { get }
    /// The ledger's error kind for an error the answer itself carried (an error event inside a
    /// stream); nil when it carried none.
    var reportedErrorKind: String? { get }
}

extension AnswerReader {
    public var deliveredEvents: Int? { nil }
    public var reportedErrorKind: String? { nil }
}

/// An answer that is not an event stream, passed on as it is; its first 4 MiB are kept to read
/// its usage from at the end.
public struct PassThroughReader: AnswerReader {
    private var kept = ByteBuffer()

    public init() {}

    public mutating func feed(_ chunk: ByteBuffer) -> ByteBuffer {
        if kept.readableBytes < 4 << 20 { kept.writeImmutableBuffer(chunk) }
        return chunk
    }

    public mutating func finish(failure: ServingError?) -> ByteBuffer { ByteBuffer() }

    public var reported: AnswerUsage { kept.withUnsafeReadableBytes { AnswerUsage(answer: $0) } }
}

/// An event stream through the ``SSEUsageFilter``: events pass as soon as they are complete (the
/// usage chunk Corral asked for on the client's behalf held back), and a failure mid-stream
/// ends it with `failureEvent`, the error in the client's API's shape.
public struct EventStreamReader: AnswerReader {
    private var filter: SSEUsageFilter
    private let failureEvent: @Sendable (ServingError) -> String

    public init(hideUsage: Bool, failureEvent: @escaping @Sendable (ServingError) -> String) {
        filter = SSEUsageFilter(hideUsageChunk: hideUsage)
        self.failureEvent = failureEvent
    }

    public mutating func feed(_ chunk: ByteBuffer) -> ByteBuffer { filter.feed(chunk) }

    public mutating func finish(failure: ServingError?) -> ByteBuffer {
        var rest = filter.finish()
        if let failure { rest.writeString(failureEvent(failure)) }
        return rest
    }

    public var reported: AnswerUsage { filter.reported }
    public var deliveredEvents: Int? { filter.events }
}

/// A whole answer read by ``Relay/readWhole(_:keepingUpTo:)``.
public struct WholeAnswer: Sendable {
    public var body: ByteBuffer
    /// When its first byte arrived.
    public var firstByte: ContinuousClock.Instant
}

extension Relay {
    /// The one response pump: reads an answer's body as it arrives, hands each part to `reader`
    /// and what it returns to `write`, ends the response, then settles the request (ledger,
    /// reservation) and releases its slot. A failure while reading is classified
    /// (``bodyFailure(_:lease:)``) and given to the reader to report. `write` returns false once
    /// the client is gone (which stops reading upstream, and so cancels the generation); `end`
    /// is called only while the client is still there. Returns whether it was called.
    @discardableResult
    public func pump<Reader: AnswerReader>(
        _ exchange: UpstreamExchange, status: Int, reader: inout Reader,
        write: (ByteBuffer) async -> Bool, end: () async -> Void
    ) async -> Bool {
        var firstByte: ContinuousClock.Instant?
        var disconnected = false
        var failure: ServingError?
        do {
            let completed = try await readBody(exchange, firstByte: &firstByte) { chunk in
                let out = reader.feed(chunk)
                return out.readableBytes == 0 ? true : await write(out)
            }
            disconnected = !completed
        } catch {
            failure = await bodyFailure(error, lease: exchange.lease)
        }
        if !disconnected {
            let rest = reader.finish(failure: failure)
            if rest.readableBytes > 0, !(await write(rest)) { disconnected = true }
            if !disconnected { await end() }
        }
        settle(
            exchange, status: failure?.status ?? status,
            errorKind: failure?.kind ?? reader.reportedErrorKind ?? Self.upstreamErrorKind(HTTPResponse.Status(code: status)),
            firstByte: firstByte, usage: reader.reported, disconnected: disconnected, streamedEvents: reader.deliveredEvents)
        await exchange.holder.release()
        return !disconnected
    }

    /// Reads a whole answer: one the local client gathered (``UpstreamExchange/gatheredLength``)
    /// as the one buffer it already is, any other up to `limit` bytes (the rest is read and
    /// dropped). On a failure the request is settled and its slot released, and the failure is
    /// thrown. On success the caller settles it (``settleAnswer(_:status:answer:)`` or ``finish``).
    public func readWhole(_ exchange: UpstreamExchange, keepingUpTo limit: Int = .max) async throws(ServingError) -> WholeAnswer {
        var firstByte: ContinuousClock.Instant?
        do {
            if let length = exchange.gatheredLength {
                return WholeAnswer(body: try await exchange.response.body.collect(upTo: length), firstByte: .now)
            }
            var body = ByteBuffer()
            try await readBody(exchange, firstByte: &firstByte) { chunk in
                if body.readableBytes < limit { body.writeImmutableBuffer(chunk) }
                return true
            }
            return WholeAnswer(body: body, firstByte: firstByte ?? .now)
        } catch {
            let failure = await bodyFailure(error, lease: exchange.lease)
            settle(exchange, status: failure.status, errorKind: failure.kind, firstByte: firstByte)
            await exchange.holder.release()
            throw failure
        }
    }

    /// The one loop that reads an answer's body (for ``pump(_:status:reader:write:end:)`` and
    /// ``readWhole(_:keepingUpTo:)``): each part goes to `consume` as it arrives, until the body
    /// ends (true) or `consume` returns false (the client left: reading stops, which cancels the
    /// generation). Notes in `firstByte` when the first part arrived; throws what reading threw.
    @discardableResult
    private func readBody(_ exchange: UpstreamExchange, firstByte: inout ContinuousClock.Instant?,
                          _ consume: (ByteBuffer) async -> Bool) async throws -> Bool {
        for try await chunk in exchange.response.body {
            if firstByte == nil { firstByte = .now }
            guard await consume(chunk) else { return false }
        }
        return true
    }

    /// Reads a whole (non-streamed) answer; a failure while reading is recorded, the exchange
    /// finished, and thrown. On success the caller still finishes it.
    public func collect(_ exchange: UpstreamExchange) async throws(ServingError) -> ByteBuffer {
        try await readWhole(exchange).body
    }

    /// Settles a whole answer with the usage and timings its body holds, then releases its slot.
    public func settleAnswer(_ exchange: UpstreamExchange, status: Int, answer: WholeAnswer) async {
        let usage = answer.body.withUnsafeReadableBytes { AnswerUsage(answer: $0) }
        settle(exchange, status: status, errorKind: Self.upstreamErrorKind(HTTPResponse.Status(code: status)), firstByte: answer.firstByte, usage: usage)
        await exchange.holder.release()
    }
}
