import Foundation

/// One subject's (a team's or a key's) use of its limits as the shared store sees it, read with
/// the subject locked so that no other node admits against it at the same time.
public struct QuotaWindow: Sendable, Equatable {
    /// When each request admitted in the last minute was admitted (epoch seconds, the store's clock).
    public var requestTimes: [Double] = []
    /// Tokens of the last minute's requests: settled ones at their real use, live ones at their reservation.
    public var tokenEntries: [QuotaEntry] = []
    /// Requests admitted and not yet settled whose lease is alive.
    public var inFlight = 0
    /// Tokens reserved by those requests.
    public var reserved = 0
    /// Settled tokens of this UTC day and month.
    public var dayUsed = 0
    public var monthUsed = 0

    public init() {}
}

public struct QuotaEntry: Sendable, Equatable {
    public var at: Double
    public var tokens: Int
    public init(at: Double, tokens: Int) {
        self.at = at
        self.tokens = tokens
    }
}

/// What the shared store knows about a key and its team at admission, read in the same
/// transaction (so a key revoked on another node is refused at its very next request).
public struct QuotaCredentials: Sendable, Equatable {
    public var keyExists: Bool
    public var keyRevoked: Bool
    public var teamDisabled: Bool
    public init(keyExists: Bool, keyRevoked: Bool, teamDisabled: Bool) {
        self.keyExists = keyExists
        self.keyRevoked = keyRevoked
        self.teamDisabled = teamDisabled
    }
}

/// Exact limits across nodes: admission and settlement as transactions in the shared store.
///
/// A reservation is recorded per subject with a lease; the node renews the leases of its
/// unsettled reservations while it lives (``renewLeases(node:lease:)``), so a node that dies
/// releases its reservations when the lease expires.
public protocol SharedQuotaStore: Sendable {
    /// Locks the request's team and key, reads their windows and, when `decide` returns a number
    /// of tokens, records a reservation of them under the request's id for both. `decide` gets the
    /// store's clock (epoch seconds), the key's and team's state and both windows.
    func reserve<Refusal: Error>(
        _ request: QuotaRequest, node: String, lease: Double,
        decide: (_ now: Double, _ credentials: QuotaCredentials, _ team: QuotaWindow, _ key: QuotaWindow) -> Result<QuotaGrant, Refusal>
    ) async throws -> Result<QuotaGrant, Refusal>

    /// Replaces a reservation by what the request used, adding it to its subjects' day and month.
    func settle(reservation: String, tokens: Int) async throws

    /// Extends the leases of `node`'s unsettled reservations to `lease` seconds from now and
    /// drops entries too old to matter.
    func renewLeases(node: String, lease: Double) async throws

    /// Writes a ledger row (`errorKind` `node_lost`) for every request admitted by a node whose
    /// heartbeat is older than `staleAfter` seconds and whose own row may never come (kill -9,
    /// power loss); a row the node did write is kept. Returns the rows written.
    func recoverLostRequests(staleAfter: Double) async throws -> Int
}

/// An admission's outcome: the tokens to reserve and the rate-limit headers the caller gets.
public struct QuotaGrant: Sendable, Equatable {
    public var tokens: Int
    public var headers: [String: String]
    public init(tokens: Int, headers: [String: String]) {
        self.tokens = tokens
        self.headers = headers
    }
}

/// What a reservation records about its request besides tokens: enough for a ledger row if its
/// node dies before writing one.
public struct QuotaRequest: Sendable, Equatable {
    /// The request id (the ledger's `requestID`).
    public var id: String
    public var team: String
    public var key: String
    public var model: String
    public var route: String
    public init(id: String, team: String, key: String, model: String, route: String) {
        self.id = id
        self.team = team
        self.key = key
        self.model = model
        self.route = route
    }
}

/// One node as the registry saw it at its last heartbeat.
public struct NodeRecord: Sendable, Equatable, Codable {
    public var name: String
    /// How peers reach it (`cluster.advertiseURL`).
    public var url: String
    public var version: String
    /// `serving` or `draining`.
    public var state: String
    /// JSON: loaded models with their slots and queues, free memory per device.
    public var detail: String
    /// Seconds since its last heartbeat, by the store's clock.
    public var age: Double
    /// When it started (epoch seconds).
    public var started: Double

    public init(name: String, url: String, version: String, state: String, detail: String, age: Double = 0, started: Double) {
        self.name = name
        self.url = url
        self.version = version
        self.state = state
        self.detail = detail
        self.age = age
        self.started = started
    }
}

/// The registry of a cluster's nodes.
public protocol NodeRegistryStore: Sendable {
    /// Saves this node's state and its heartbeat time (the store's clock).
    func heartbeat(_ node: NodeRecord) async throws
    /// Every registered node, with the seconds since its heartbeat.
    func nodes() async throws -> [NodeRecord]
    /// Takes a node out of the registry (it drained and left).
    func removeNode(_ name: String) async throws
}
