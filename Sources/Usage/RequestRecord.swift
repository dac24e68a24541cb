import Foundation
import Synchronization

/// What Corral measured about one proxied request: the usage ledger's row and the metrics' input.
public struct RequestRecord: Sendable {
    public var requestID: String
    public var route: String
    public var model: String
    public var status: Int
    public var errorKind: String?
    public var queueMs: Double
    public var loadMs: Double
    /// Time from the request reaching Corral to the first response byte from upstream.
    public var timeToFirstByteMs: Double?
    public var totalMs: Double
    public var promptTokens: Int?
    public var cachedTokens: Int?
    public var completionTokens: Int?
    public var promptTokensPerSecond: Double?
    public var generationTokensPerSecond: Double?
    public var clientDisconnected: Bool
    /// The caller's team id and key prefix (nil in open mode).
    public var team: String?
    public var keyPrefix: String?
    /// Time Corral itself spent before the request went upstream, queue and load excluded.
    public var gatewayOverheadMs: Double?
    /// llama-server's time per generated token.
    public var timePerOutputTokenMs: Double?
    public var date = Date()
    /// The cluster node that served it, when another node than the one recording (a relayed request).
    public var node: String?
    /// The node that admitted the request and relayed it here: that node writes its ledger row.
    public var relayedFrom: String?
    /// Which of the model's local instances served it (not stored; per-instance metrics).
    public var replica = 0

    public init(
        requestID: String, route: String, model: String, status: Int, errorKind: String? = nil, queueMs: Double, loadMs: Double,
        timeToFirstByteMs: Double?, totalMs: Double, promptTokens: Int? = nil, cachedTokens: Int? = nil, completionTokens: Int? = nil,
        promptTokensPerSecond: Double? = nil, generationTokensPerSecond: Double? = nil, clientDisconnected: Bool
    ) {
        self.requestID = requestID
        self.route = route
        self.model = model
        self.status = status
        self.errorKind = errorKind
        self.queueMs = queueMs
        self.loadMs = loadMs
        self.timeToFirstByteMs = timeToFirstByteMs
        self.totalMs = totalMs
        self.promptTokens = promptTokens
        self.cachedTokens = cachedTokens
        self.completionTokens = completionTokens
        self.promptTokensPerSecond = promptTokensPerSecond
        self.generationTokensPerSecond = generationTokensPerSecond
        self.clientDisconnected = clientDisconnected
    }
}

/// Receives a record for every proxied request.
public typealias RequestRecorder = @Sendable (RequestRecord) -> Void

/// Request IDs in UUID form (`8-4-4-4-12` lowercase hex), unique within the process.
///
/// Foundation's `UUID()` opens and reads `/dev/urandom` on every call on Linux (three file
/// system calls per request). These IDs identify a request in logs, the ledger and
/// `x-request-id`; they need to be unique, not secret: a random start, then a counter passed
/// through SplitMix64's bijective mix so consecutive IDs look unrelated.
public enum RequestIDs {
    private static let counter = Atomic<UInt64>(UInt64.random(in: .min ... .max))
    private static let high = UInt64.random(in: .min ... .max)
    private static let digits = Array("0123456789abcdef".utf8)

    public static func next() -> String {
        let n = counter.add(1, ordering: .relaxed).newValue
        var out = [UInt8](repeating: UInt8(ascii: "-"), count: 36)
        var i = 0
        // The first half alone is unique (the mix is a bijection); the second adds spread.
        for word in [mix(n), mix(n &+ high)] {
            for shift in stride(from: 60, through: 0, by: -4) {
                if i == 8 || i == 13 || i == 18 || i == 23 { i += 1 }
                out[i] = digits[Int((word >> UInt64(shift)) & 0xF)]
                i += 1
            }
        }
        return String(decoding: out, as: UTF8.self)
    }

    /// SplitMix64's finaliser: a bijection on 64-bit values.
    private static func mix(_ x: UInt64) -> UInt64 {
        var z = x &+ 0x9E37_79B9_7F4A_7C15
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
