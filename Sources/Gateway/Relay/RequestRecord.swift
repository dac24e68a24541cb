import Foundation

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
}

/// Receives a record for every proxied request.
public typealias RequestRecorder = @Sendable (RequestRecord) -> Void
