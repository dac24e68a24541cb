import Foundation
import Store
import Synchronization

/// Who is asking: a team's key, or anyone (open mode).
public struct Caller: Sendable, Equatable {
    public var teamID: String?
    public var teamName: String?
    public var keyPrefix: String?
    /// The cluster node that admitted this request and relayed it here (its reservation and
    /// ledger row are that node's); nil for a request a client sent here.
    public var admittedBy: String?

    public init(teamID: String? = nil, teamName: String? = nil, keyPrefix: String? = nil, admittedBy: String? = nil) {
        self.teamID = teamID
        self.teamName = teamName
        self.keyPrefix = keyPrefix
        self.admittedBy = admittedBy
    }

    /// Open mode: no team exists, so no limits apply.
    public static let anonymous = Caller()
}

/// Tokens held for one admitted request until it ends.
public struct Reservation: Sendable {
    let id: UInt64
    let teamID: String
    let keyPrefix: String
    public let tokens: Int
    let day: Int
    let month: Int
    /// The reservation's id in the shared store (a cluster node), nil when held in memory.
    let shared: String?
    /// `x-ratelimit-*` headers describing the caller's remaining allowance after admission.
    public let headers: [String: String]
}

/// Teams, keys and their limits: authentication, model permissions and admission with
/// reservations. Teams, keys and policies are held in memory (loaded from the store at start,
/// written through on every change), so a revocation or limit change applies to the very next
/// request.
///
/// Admission is one critical section: the checks and the reservation of `prompt + max_tokens`
/// happen together, so parallel requests can never overshoot a limit; at the end the reservation
/// is replaced by the real usage. On one node the section is a lock over in-memory windows; on a
/// cluster node (``SharedQuota``) it is a transaction in the shared store that locks the team and
/// the key, so the limits hold across every node.
public final class AccessControl: Sendable {
    struct Subject {
        var inFlight = 0
        var requests: [Double] = []
        var tokens: [(id: UInt64, at: Double, n: Int)] = []
        var day = -1
        var dayUsed = 0
        var month = -1
        var monthUsed = 0
        var reserved: [UInt64: Int] = [:]
    }

    struct State {
        var teams: [String: TeamRecord] = [:]
        var keys: [String: KeyRecord] = [:]
        var adminHash: String?
        var teamUsage: [String: Subject] = [:]
        var keyUsage: [String: Subject] = [:]
        var nextID: UInt64 = 0
        /// Decoded policies, kept next to the records (decoding JSON per request would cost more
        /// than the rest of admission).
        var teamPolicies: [String: Policy] = [:]
        var keyPolicies: [String: Policy] = [:]

        mutating func put(_ team: TeamRecord) {
            teams[team.id] = team
            teamPolicies[team.id] = Policy.decode(team.policy)
        }

        mutating func put(_ key: KeyRecord) {
            keys[key.prefix] = key
            keyPolicies[key.prefix] = Policy.decode(key.policy)
        }
    }

    private let state: Mutex<State>
    let store: (any AccountStore)?
    /// The cluster's shared quota store, when this node is one of several.
    let shared: SharedQuota?
    /// The clock (tests move it).
    let now: @Sendable () -> Date
    static let utc: Calendar = {
        var c = Calendar(identifier: .gregorian)
        c.timeZone = TimeZone(identifier: "UTC")!
        return c
    }()

    /// Whether having no team means open mode (loopback, or `auth.allowOpen`); otherwise a
    /// gateway whose last team was deleted refuses every model request.
    let openWithoutTeams: Bool

    public init(store: (any AccountStore)?, openWithoutTeams: Bool = true, shared: SharedQuota? = nil, now: @escaping @Sendable () -> Date = { Date() }) {
        self.store = store
        self.shared = shared
        self.now = now
        self.openWithoutTeams = openWithoutTeams
        self.state = Mutex(State())
    }

    /// Loads teams, keys, the admin token hash and this day's and month's usage from the store.
    public func load() async throws {
        guard let store else { return }
        let teams = try await store.teams()
        let keys = try await store.keys()
        let admin = try await store.adminTokenHash()
        let t = now()
        let month = try await store.tokensUsed(since: Self.startOfMonth(t))
        let day = try await store.tokensUsed(since: Self.startOfDay(t))
        let (dayIndex, monthIndex) = Self.periods(t)
        state.withLock { s in
            for t in teams { s.put(t) }
            for k in keys { s.put(k) }
            s.adminHash = admin
            for (id, n) in month.teams { s.teamUsage[id, default: Subject()].month = monthIndex; s.teamUsage[id]!.monthUsed = n }
            for (p, n) in month.keys { s.keyUsage[p, default: Subject()].month = monthIndex; s.keyUsage[p]!.monthUsed = n }
            for (id, n) in day.teams { s.teamUsage[id, default: Subject()].day = dayIndex; s.teamUsage[id]!.dayUsed = n }
            for (p, n) in day.keys { s.keyUsage[p, default: Subject()].day = dayIndex; s.keyUsage[p]!.dayUsed = n }
        }
    }

    /// Reads teams, keys and the admin token again (another node changed them). Usage windows
    /// are kept: on a cluster they live in the shared store anyway.
    public func reloadAccounts() async throws {
        guard let store else { return }
        let teams = try await store.teams()
        let keys = try await store.keys()
        let admin = try await store.adminTokenHash()
        state.withLock { s in
            s.teams = [:]
            s.teamPolicies = [:]
            s.keys = [:]
            s.keyPolicies = [:]
            for t in teams { s.put(t) }
            for k in keys { s.put(k) }
            s.adminHash = admin
        }
    }

    /// Open mode: no team exists yet.
    public var isOpen: Bool { state.withLock { $0.teams.isEmpty } }

    // MARK: Admin token

    /// Creates the admin token when none exists; returns it (to be shown once) or nil.
    public func createAdminTokenIfNeeded() async throws -> String? {
        guard state.withLock({ $0.adminHash == nil }) else { return nil }
        let token = Secrets.newAdminToken()
        let hash = Secrets.sha256(token)
        // On a cluster another node may have made the token a moment ago: the first one stays.
        let stored = try await store?.saveAdminTokenHashIfAbsent(hash) ?? hash
        state.withLock { $0.adminHash = stored }
        return stored == hash ? token : nil
    }

    /// Sets the admin token directly (tests and operators who manage it themselves).
    public func setAdminToken(_ token: String) async throws {
        let hash = Secrets.sha256(token)
        try await store?.saveAdminTokenHash(hash)
        state.withLock { $0.adminHash = hash }
    }

    /// Whether an admin token exists.
    public var hasAdminToken: Bool { state.withLock { $0.adminHash != nil } }

    /// Whether `token` is the admin token (constant-time).
    public func isAdmin(_ token: String?) -> Bool {
        guard let token, !token.isEmpty else { return false }
        let hash = Secrets.sha256(token)
        return state.withLock { s in s.adminHash.map { Secrets.constantTimeEqual($0, hash) } ?? false }
    }

    // MARK: Authentication

    /// The key from `Authorization: Bearer …` or `x-api-key`.
    public static func presentedKey(authorization: String?, apiKey: String?) -> String? {
        if let auth = authorization?.trimmingCharacters(in: .whitespaces), auth.lowercased().hasPrefix("bearer") {
            let token = auth.dropFirst(6).trimmingCharacters(in: .whitespaces)
            if !token.isEmpty { return token }
        }
        if let key = apiKey?.trimmingCharacters(in: .whitespaces), !key.isEmpty { return key }
        return nil
    }

    /// Who presents `key`; in open mode everyone is anonymous whatever key they carry.
    public func authenticate(_ key: String?) throws(AccessError) -> Caller {
        let date = now()
        let result: Result<Caller, AccessError> = state.withLock { s in
            if s.teams.isEmpty {
                return openWithoutTeams ? .success(.anonymous) : .failure(.unauthenticated("no team exists and open mode is off: create a team and a key"))
            }
            guard let key else {
                return .failure(.unauthenticated("missing API key: send it as 'Authorization: Bearer KEY' or 'x-api-key: KEY'"))
            }
            guard let prefix = Secrets.prefix(of: key), let record = s.keys[prefix],
                Secrets.constantTimeEqual(Secrets.sha256(key), record.hash)
            else { return .failure(.unauthenticated("invalid API key")) }
            if record.revokedAt != nil { return .failure(.unauthenticated("API key \(prefix) has been revoked")) }
            if let e = record.expiresAt, e <= date { return .failure(.unauthenticated("API key \(prefix) expired")) }
            guard let team = s.teams[record.teamID] else { return .failure(.unauthenticated("invalid API key")) }
            if team.disabled { return .failure(.forbidden("team '\(team.name)' is disabled")) }
            return .success(Caller(teamID: team.id, teamName: team.name, keyPrefix: prefix))
        }
        return try result.get()
    }

    /// Whether the caller may use a model known by `names` (id and aliases).
    public func allows(_ caller: Caller, model names: [String]) -> Bool {
        guard let teamID = caller.teamID else { return true }
        return state.withLock { s in
            guard let teamPolicy = s.teamPolicies[teamID] else { return false }
            let keyPolicy = caller.keyPrefix.flatMap { s.keyPolicies[$0] } ?? Policy()
            return teamPolicy.allows(names) && keyPolicy.allows(names)
        }
    }

    // MARK: Admission

    /// Admits a request needing up to `tokens` (prompt + max output) for a model known by
    /// `names`, reserving them; nil for anonymous callers (open mode has no limits). On a cluster
    /// node the reservation is made in the shared store.
    /// `requestID` and `route` go with a cluster reservation (the ledger row written for it if
    /// this node dies before writing its own).
    public func admit(_ caller: Caller, model names: [String], tokens: Int, requestID: String? = nil, route: String = "") async throws(AccessError) -> Reservation? {
        guard caller.admittedBy == nil else { return nil }
        guard let shared else { return try admitLocally(caller, model: names, tokens: tokens) }
        let request = QuotaRequest(
            id: requestID ?? shared.node + "-" + Secrets.random(bytes: 9).lowercased(), team: caller.teamID ?? "", key: caller.keyPrefix ?? "",
            model: names.first ?? "", route: route)
        return try await admit(caller, model: names, tokens: tokens, request: request, in: shared)
    }

    /// Admission against in-memory windows (one node).
    func admitLocally(_ caller: Caller, model names: [String], tokens: Int) throws(AccessError) -> Reservation? {
        guard let teamID = caller.teamID, let prefix = caller.keyPrefix else { return nil }
        let date = now()
        let t = date.timeIntervalSince1970
        let (day, month) = Self.periods(date)
        let result: Result<Reservation, AccessError> = state.withLock { s in
            guard let team = s.teams[teamID], let teamPolicy = s.teamPolicies[teamID], let keyPolicy = s.keyPolicies[prefix] else {
                return .failure(.unauthenticated("invalid API key"))
            }
            guard teamPolicy.allows(names), keyPolicy.allows(names) else {
                return .failure(.forbidden("team '\(team.name)' may not use model '\(names.first ?? "")'"))
            }
            var teamSubject = Self.rolled(s.teamUsage[teamID] ?? Subject(), at: t, day: day, month: month)
            var keySubject = Self.rolled(s.keyUsage[prefix] ?? Subject(), at: t, day: day, month: month)
            for (subject, policy, who) in [(teamSubject, teamPolicy, "team '\(team.name)'"), (keySubject, keyPolicy, "key \(prefix)")] {
                if let refusal = Self.check(subject, policy, tokens: tokens, at: date, who: who) {
                    s.teamUsage[teamID] = teamSubject
                    s.keyUsage[prefix] = keySubject
                    return .failure(refusal)
                }
            }
            s.nextID += 1
            let id = s.nextID
            for i in 0..<2 {
                var sub = i == 0 ? teamSubject : keySubject
                sub.inFlight += 1
                sub.requests.append(t)
                sub.tokens.append((id, t, tokens))
                sub.reserved[id] = tokens
                if i == 0 { teamSubject = sub } else { keySubject = sub }
            }
            s.teamUsage[teamID] = teamSubject
            s.keyUsage[prefix] = keySubject
            let headers = Self.rateHeaders([(teamSubject, teamPolicy), (keySubject, keyPolicy)], at: t)
            return .success(Reservation(id: id, teamID: teamID, keyPrefix: prefix, tokens: tokens, day: day, month: month, shared: nil, headers: headers))
        }
        return try result.get()
    }

    /// Ends a request: the reservation is replaced by what it really used (the reservation
    /// itself when unknown).
    public func reconcile(_ reservation: Reservation, actualTokens: Int?) {
        let used = max(0, actualTokens ?? reservation.tokens)
        if let id = reservation.shared, let shared {
            shared.settle(id, tokens: used)
            return
        }
        let date = now()
        let (day, month) = Self.periods(date)
        state.withLock { s in
            func settle(_ sub: inout Subject) {
                sub = Self.rolled(sub, at: date.timeIntervalSince1970, day: day, month: month)
                sub.inFlight = max(0, sub.inFlight - 1)
                sub.reserved[reservation.id] = nil
                if let i = sub.tokens.firstIndex(where: { $0.id == reservation.id }) { sub.tokens[i].n = used }
                if reservation.day == sub.day { sub.dayUsed += used }
                if reservation.month == sub.month { sub.monthUsed += used }
            }
            if var t = s.teamUsage[reservation.teamID] { settle(&t); s.teamUsage[reservation.teamID] = t }
            if var k = s.keyUsage[reservation.keyPrefix] { settle(&k); s.keyUsage[reservation.keyPrefix] = k }
        }
    }

    /// Drops window entries older than a minute and resets counters at period boundaries.
    static func rolled(_ subject: Subject, at t: Double, day: Int, month: Int) -> Subject {
        var s = subject
        s.requests.removeAll { $0 <= t - 60 }
        s.tokens.removeAll { $0.at <= t - 60 }
        if s.day != day { s.day = day; s.dayUsed = 0 }
        if s.month != month { s.month = month; s.monthUsed = 0 }
        return s
    }

    /// Why `subject` may not take `tokens` more now, if it may not.
    static func check(_ s: Subject, _ p: Policy, tokens: Int, at date: Date, who: String) -> AccessError? {
        let t = date.timeIntervalSince1970
        let reserved = s.reserved.values.reduce(0, +)
        func limited(_ what: String, _ after: Double) -> AccessError {
            .limited("\(who) reached its \(what)", retryAfter: max(1, Int(after.rounded(.up))), headers: rateHeaders([(s, p)], at: t))
        }
        if let max = p.maxParallel, s.inFlight >= max { return limited("limit of \(max) parallel requests", 1) }
        if let rpm = p.requestsPerMinute, s.requests.count >= rpm {
            guard rpm > 0 else { return limited("limit of 0 requests per minute", 60) }
            let oldest = s.requests[s.requests.count - rpm]
            return limited("limit of \(rpm) requests per minute", oldest + 60 - t)
        }
        if let tpm = p.tokensPerMinute {
            if tokens > tpm { return .invalid("this request may use \(tokens) tokens (prompt + max_tokens), more than \(who)'s limit of \(tpm) per minute; lower max_tokens") }
            let used = s.tokens.reduce(0) { $0 + $1.n }
            if used + tokens > tpm {
                // Wait until enough of the window has expired.
                var freed = 0
                var after = 60.0
                for e in s.tokens {
                    freed += e.n
                    if used - freed + tokens <= tpm { after = e.at + 60 - t; break }
                }
                return limited("limit of \(tpm) tokens per minute", after)
            }
        }
        if let perDay = p.tokensPerDay {
            if tokens > perDay { return .invalid("this request may use \(tokens) tokens, more than \(who)'s daily budget of \(perDay)") }
            if s.dayUsed + reserved + tokens > perDay {
                return limited("daily budget of \(perDay) tokens", startOfDay(date).addingTimeInterval(86_400).timeIntervalSince(date))
            }
        }
        if let perMonth = p.tokensPerMonth {
            if tokens > perMonth { return .invalid("this request may use \(tokens) tokens, more than \(who)'s monthly budget of \(perMonth)") }
            if s.monthUsed + reserved + tokens > perMonth {
                let next = utc.date(byAdding: .month, value: 1, to: startOfMonth(date)) ?? date.addingTimeInterval(86_400)
                return limited("monthly budget of \(perMonth) tokens", next.timeIntervalSince(date))
            }
        }
        return nil
    }

    /// OpenAI's `x-ratelimit-*` headers: the smallest remaining allowance across the subjects.
    static func rateHeaders(_ subjects: [(Subject, Policy)], at t: Double) -> [String: String] {
        rateHeaders(subjects.map { s, p in
            (QuotaMinute(requests: s.requests.count, tokens: s.tokens.reduce(0) { $0 + $1.n }, resetSeconds: s.requests.first.map { $0 + 60 - t } ?? 0), p)
        })
    }

    /// The headers from each subject's last minute (in memory on one node, from the shared store
    /// on a cluster).
    static func rateHeaders(_ minutes: [(QuotaMinute, Policy)]) -> [String: String] {
        var headers: [String: String] = [:]
        var requests: (limit: Int, remaining: Int, reset: Double)?
        var tokens: (limit: Int, remaining: Int, reset: Double)?
        for (minute, p) in minutes {
            if let rpm = p.requestsPerMinute, requests == nil || rpm - minute.requests < requests!.remaining {
                requests = (rpm, max(0, rpm - minute.requests), minute.resetSeconds)
            }
            if let tpm = p.tokensPerMinute, tokens == nil || tpm - minute.tokens < tokens!.remaining {
                tokens = (tpm, max(0, tpm - minute.tokens), minute.resetSeconds)
            }
        }
        for (kind, b) in [("requests", requests), ("tokens", tokens)] {
            guard let b else { continue }
            headers["x-ratelimit-limit-\(kind)"] = String(b.limit)
            headers["x-ratelimit-remaining-\(kind)"] = String(b.remaining)
            headers["x-ratelimit-reset-\(kind)"] = String(format: "%.0fs", max(0, b.reset).rounded(.up))
        }
        return headers
    }

    static func startOfDay(_ d: Date) -> Date { utc.startOfDay(for: d) }
    static func startOfMonth(_ d: Date) -> Date { utc.date(from: utc.dateComponents([.year, .month], from: d)) ?? d }
    /// Day and month indexes in UTC: budgets reset exactly at 00:00 UTC and on the 1st.
    static func periods(_ d: Date) -> (day: Int, month: Int) {
        let c = utc.dateComponents([.year, .month], from: d)
        return (Int(startOfDay(d).timeIntervalSince1970 / 86_400), c.year! * 12 + c.month!)
    }

    // MARK: Teams and keys (admin)

    public func teams() -> [TeamRecord] { state.withLock { Array($0.teams.values) }.sorted { $0.createdAt < $1.createdAt } }
    public func keys(team: String? = nil) -> [KeyRecord] {
        state.withLock { s in Array(s.keys.values).filter { team == nil || $0.teamID == team } }.sorted { $0.createdAt < $1.createdAt }
    }

    /// A team by id or name.
    public func team(_ idOrName: String) -> TeamRecord? {
        state.withLock { s in s.teams[idOrName] ?? s.teams.values.first { $0.name == idOrName } }
    }

    /// Tokens used today and this month (reservations included) by a team; on a cluster node,
    /// the whole cluster's.
    public func usage(team id: String) async -> (day: Int, month: Int, inFlight: Int) {
        if let shared { return (try? await shared.use(subject: id)) ?? (0, 0, 0) }
        return localUsage(team: id)
    }

    func localUsage(team id: String) -> (day: Int, month: Int, inFlight: Int) {
        let (day, month) = Self.periods(now())
        return state.withLock { s in
            guard let sub = s.teamUsage[id] else { return (0, 0, 0) }
            let reserved = sub.reserved.values.reduce(0, +)
            return ((sub.day == day ? sub.dayUsed : 0) + reserved, (sub.month == month ? sub.monthUsed : 0) + reserved, sub.inFlight)
        }
    }

    // MARK: Shared admission (cluster)

    /// One call to the shared store, which checks the key and team again (a revocation on
    /// another node counts even before its notice arrives), locks the team's and the key's
    /// counters, makes the same checks as one node does, and records the reservation with a lease.
    func admit(_ caller: Caller, model names: [String], tokens: Int, request: QuotaRequest, in shared: SharedQuota) async throws(AccessError) -> Reservation? {
        guard let teamID = caller.teamID, let prefix = caller.keyPrefix else { return nil }
        let cached: Result<(TeamRecord, Policy, Policy), AccessError> = state.withLock { s in
            guard let team = s.teams[teamID], let teamPolicy = s.teamPolicies[teamID], let keyPolicy = s.keyPolicies[prefix] else {
                return .failure(.unauthenticated("invalid API key"))
            }
            guard teamPolicy.allows(names), keyPolicy.allows(names) else {
                return .failure(.forbidden("team '\(team.name)' may not use model '\(names.first ?? "")'"))
            }
            return .success((team, teamPolicy, keyPolicy))
        }
        let (team, teamPolicy, keyPolicy) = try cached.get()
        // A request larger than a limit can never pass: said without asking the store.
        for (policy, who) in [(teamPolicy, "team '\(team.name)'"), (keyPolicy, "key \(prefix)")] {
            if let refusal = Self.tooLarge(tokens, policy, who: who) { throw refusal }
        }
        let decision: QuotaDecision
        do {
            decision = try await shared.admit(QuotaAdmission(request: request, tokens: tokens, team: teamPolicy.quotaLimits, key: keyPolicy.quotaLimits))
        } catch {
            throw .unavailable("the shared store cannot be reached to admit this request: \(error)")
        }
        let headers = Self.rateHeaders([(decision.team, teamPolicy), (decision.key, keyPolicy)])
        guard let refusal = decision.refusal else {
            let (day, month) = Self.periods(now())
            return Reservation(id: 0, teamID: teamID, keyPrefix: prefix, tokens: tokens, day: day, month: month, shared: request.id, headers: headers)
        }
        let who = decision.refusedTeam ? "team '\(team.name)'" : "key \(prefix)"
        let policy = decision.refusedTeam ? teamPolicy : keyPolicy
        let after = max(1, Int(decision.retryAfter.rounded(.up)))
        func limited(_ what: String) -> AccessError { .limited("\(who) reached its \(what)", retryAfter: after, headers: headers) }
        switch refusal {
        case .keyUnknown, .keyRevoked, .teamDisabled:
            // Another node changed it and the notice has not arrived: read them now.
            Task { try? await reloadAccounts() }
            switch refusal {
            case .keyRevoked: throw .unauthenticated("API key \(prefix) has been revoked")
            case .teamDisabled: throw .forbidden("team '\(team.name)' is disabled")
            default: throw .unauthenticated("invalid API key")
            }
        case .maxParallel: throw limited("limit of \(policy.maxParallel ?? 0) parallel requests")
        case .requestsPerMinute: throw limited("limit of \(policy.requestsPerMinute ?? 0) requests per minute")
        case .tokensPerMinute: throw limited("limit of \(policy.tokensPerMinute ?? 0) tokens per minute")
        case .tokensPerDay: throw limited("daily budget of \(policy.tokensPerDay ?? 0) tokens")
        case .tokensPerMonth: throw limited("monthly budget of \(policy.tokensPerMonth ?? 0) tokens")
        }
    }

    /// The refusal for a request that alone exceeds one of `policy`'s token limits.
    static func tooLarge(_ tokens: Int, _ p: Policy, who: String) -> AccessError? {
        if let tpm = p.tokensPerMinute, tokens > tpm {
            return .invalid("this request may use \(tokens) tokens (prompt + max_tokens), more than \(who)'s limit of \(tpm) per minute; lower max_tokens")
        }
        if let perDay = p.tokensPerDay, tokens > perDay { return .invalid("this request may use \(tokens) tokens, more than \(who)'s daily budget of \(perDay)") }
        if let perMonth = p.tokensPerMonth, tokens > perMonth { return .invalid("this request may use \(tokens) tokens, more than \(who)'s monthly budget of \(perMonth)") }
        return nil
    }


    public func createTeam(name: String, policy: Policy) async throws(AccessError) -> TeamRecord {
        let trimmed = name.trimmingCharacters(in: .whitespaces)
        guard !trimmed.isEmpty, trimmed.count <= 100 else { throw .invalid("name must be 1 to 100 characters") }
        guard team(trimmed) == nil else { throw .conflict("a team named '\(trimmed)' exists") }
        let record = TeamRecord(id: "team-" + Secrets.random(bytes: 6).lowercased(), name: trimmed, disabled: false, policy: policy.json, createdAt: now())
        try await persist { try await $0.save(record) }
        state.withLock { $0.put(record) }
        return record
    }

    public func updateTeam(_ idOrName: String, name: String? = nil, policy: Policy? = nil, disabled: Bool? = nil) async throws(AccessError) -> TeamRecord {
        guard var record = team(idOrName) else { throw .notFound("no team '\(idOrName)'") }
        if let name {
            if let other = team(name), other.id != record.id { throw .conflict("a team named '\(name)' exists") }
            record.name = name
        }
        if let policy { record.policy = policy.json }
        if let disabled { record.disabled = disabled }
        let updated = record
        try await persist { try await $0.save(updated) }
        state.withLock { $0.put(updated) }
        return updated
    }

    public func deleteTeam(_ idOrName: String) async throws(AccessError) {
        guard let record = team(idOrName) else { throw .notFound("no team '\(idOrName)'") }
        try await persist { try await $0.deleteTeam(id: record.id) }
        state.withLock { s in
            s.teams[record.id] = nil
            s.teamPolicies[record.id] = nil
            for (prefix, key) in s.keys where key.teamID == record.id {
                s.keys[prefix] = nil
                s.keyPolicies[prefix] = nil
            }
        }
    }

    /// Creates a key; the returned key string is the only time it exists outside the caller.
    public func createKey(team idOrName: String, name: String, expiresAt: Date?, policy: Policy) async throws(AccessError) -> (key: String, record: KeyRecord) {
        guard let team = team(idOrName) else { throw .notFound("no team '\(idOrName)'") }
        let (key, prefix) = Secrets.newKey()
        let record = KeyRecord(prefix: prefix, teamID: team.id, name: name, hash: Secrets.sha256(key), policy: policy.json,
                               createdAt: now(), expiresAt: expiresAt, revokedAt: nil)
        try await persist { try await $0.save(record) }
        state.withLock { $0.put(record) }
        return (key, record)
    }

    public func key(_ prefix: String) -> KeyRecord? { state.withLock { $0.keys[prefix] } }

    public func updateKey(_ prefix: String, policy: Policy?, expiresAt: Date??) async throws(AccessError) -> KeyRecord {
        guard var record = key(prefix) else { throw .notFound("no key '\(prefix)'") }
        if let policy { record.policy = policy.json }
        if let expiresAt { record.expiresAt = expiresAt }
        let updated = record
        try await persist { try await $0.save(updated) }
        state.withLock { $0.put(updated) }
        return updated
    }

    public func revokeKey(_ prefix: String) async throws(AccessError) -> KeyRecord {
        guard var record = key(prefix) else { throw .notFound("no key '\(prefix)'") }
        if record.revokedAt == nil { record.revokedAt = now() }
        let revoked = record
        try await persist { try await $0.save(revoked) }
        state.withLock { $0.put(revoked) }
        return revoked
    }

    /// Revokes a key and issues a new one with the same team, name, policy and expiry.
    public func rotateKey(_ prefix: String) async throws(AccessError) -> (key: String, record: KeyRecord) {
        guard let old = key(prefix) else { throw .notFound("no key '\(prefix)'") }
        guard old.revokedAt == nil else { throw .conflict("key '\(prefix)' is revoked") }
        let fresh = try await createKey(team: old.teamID, name: old.name, expiresAt: old.expiresAt, policy: Policy.decode(old.policy))
        _ = try await revokeKey(prefix)
        return fresh
    }

    private func persist(_ write: (any AccountStore) async throws -> Void) async throws(AccessError) {
        guard let store else { return }
        do { try await write(store) } catch { throw .unavailable("could not save: \(error)") }
    }
}
