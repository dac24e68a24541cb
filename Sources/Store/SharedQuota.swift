import Foundation

/// The limits of one subject (a team or a key) as the shared store checks them; nil is none.
public struct QuotaLimits: Sendable, Equatable {
    public var requestsPerMinute: Int?
    public var tokensPerMinute: Int?
    public var maxParallel: Int?
    public var tokensPerDay: Int?
    public var tokensPerMonth: Int?
    public init(requestsPerMinute: Int? = nil, tokensPerMinute: Int? = nil, maxParallel: Int? = nil, tokensPerDay: Int? = nil, tokensPerMonth: Int? = nil) {
        self.requestsPerMinute = requestsPerMinute
        self.tokensPerMinute = tokensPerMinute
        self.maxParallel = maxParallel
        self.tokensPerDay = tokensPerDay
        self.tokensPerMonth = tokensPerMonth
    }
}

/// Why the shared store refused an admission.
public enum QuotaRefusal: String, Sendable, Equatable {
    case keyUnknown = "key_unknown", keyRevoked = "key_revoked", teamDisabled = "team_disabled"
    case maxParallel = "max_parallel", requestsPerMinute = "requests_per_minute", tokensPerMinute = "tokens_per_minute"
    case tokensPerDay = "tokens_per_day", tokensPerMonth = "tokens_per_month"
}

/// One subject's last minute after the admission (for `x-ratelimit-*` headers).
public struct QuotaMinute: Sendable, Equatable {
    public var requests: Int
    public var tokens: Int
    /// Seconds until the oldest counted second leaves the window (0 when empty).
    public var resetSeconds: Double
    public init(requests: Int, tokens: Int, resetSeconds: Double) {
        self.requests = requests
        self.tokens = tokens
        self.resetSeconds = resetSeconds
    }
}

/// The shared store's answer to an admission.
public struct QuotaDecision: Sendable, Equatable {
    /// Nil when admitted.
    public var refusal: QuotaRefusal?
    /// Whether the refusal is the team's limit (else the key's).
    public var refusedTeam: Bool
    /// Seconds until retrying can succeed (refusals by a limit).
    public var retryAfter: Double
    public var team: QuotaMinute
    public var key: QuotaMinute
    public init(refusal: QuotaRefusal?, refusedTeam: Bool, retryAfter: Double, team: QuotaMinute, key: QuotaMinute) {
        self.refusal = refusal
        self.refusedTeam = refusedTeam
        self.retryAfter = retryAfter
        self.team = team
        self.key = key
    }
}

/// Exact limits across nodes: admission and settlement in the shared store, each one call that
/// runs as one transaction there (the team's and the key's counter rows locked, the checks made
/// on them, the reservation recorded with a lease).
///
/// The node renews the leases of its unsettled reservations while it lives
/// (``renewLeases(node:lease:)``); a node that dies releases its reservations when the lease
/// expires (``releaseExpiredLeases()``, run by every live node).
public protocol SharedQuotaStore: Sendable {
    /// For each admission in order, in one transaction: checks the key and team, then every
    /// limit of both, and reserves its tokens when all pass. One decision per admission, in the
    /// same order.
    func admit(_ batch: [QuotaAdmission], node: String, lease: Double) async throws -> [QuotaDecision]

    /// Replaces reservations by what their requests used, adding it to their subjects' day and
    /// month, in one transaction.
    func settle(_ settlements: [QuotaSettlement]) async throws

    /// Extends the leases of `node`'s unsettled reservations to `lease` seconds from now.
    func renewLeases(node: String, lease: Double) async throws

    /// Releases the reservations whose lease has expired (their node is gone) and drops counters
    /// too old to matter.
    func releaseExpiredLeases() async throws

    /// Writes a ledger row (`errorKind` `node_lost`) for every request admitted by a node whose
    /// heartbeat is older than `staleAfter` seconds and whose own row may never come (kill -9,
    /// power loss); a row the node did write is kept. Returns the rows written.
    func recoverLostRequests(staleAfter: Double) async throws -> Int

    /// Tokens used today and this month (live reservations included) and requests in flight of a
    /// subject across the cluster.
    func quotaUse(subject: String) async throws -> (day: Int, month: Int, inFlight: Int)
}

/// One admission asked of the shared store: the request, the tokens to reserve and the limits
/// of its team and key as this node knows them.
public struct QuotaAdmission: Sendable, Equatable {
    public var request: QuotaRequest
    public var tokens: Int
    public var team: QuotaLimits
    public var key: QuotaLimits
    public init(request: QuotaRequest, tokens: Int, team: QuotaLimits, key: QuotaLimits) {
        self.request = request
        self.tokens = tokens
        self.team = team
        self.key = key
    }
}

/// A reservation and the tokens its request really used.
public struct QuotaSettlement: Sendable, Equatable {
    public var reservation: String
    public var tokens: Int
    public init(reservation: String, tokens: Int) {
        self.reservation = reservation
        self.tokens = tokens
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
