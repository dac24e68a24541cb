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
    /// When it was admitted (Unix seconds, as the minute window saw it): settlement corrects that slot.
    let admittedAt: Double
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
/// Admission is one critical section per team: the checks and the reservation of
/// `prompt + max_tokens` happen together for the team and the key, so parallel requests can never
/// overshoot a limit; at the end the reservation is replaced by the real usage. On one node the
/// section is a lock over the team's shard of in-memory counters (``MinuteWindow`` slots and
/// running sums: constant time per request, whatever the traffic of the last minute); on a
/// cluster node (``SharedQuota``) it is a transaction in the shared store that locks the team and
/// the key, so the limits hold across every node.
///
/// Nothing on the request path takes one lock for everyone: keys live in shards by prefix, teams
/// (with their usage and their keys' usage) in shards by team id, and each lookup or admission
/// holds one shard's lock for a few dictionary operations.
public final class AccessControl: Sendable {
    /// Admission counters of a team or a key.
    struct Subject {
        var inFlight = 0
        var window = MinuteWindow()
        var day = -1
        var dayUsed = 0
        var month = -1
        var monthUsed = 0
        /// Tokens reserved by requests in flight (not yet replaced by real usage).
        var reserved = 0

        /// Drops what left the minute window and resets counters at period boundaries; returns
        /// the time as the window saw it (never before an earlier call's).
        @discardableResult
        mutating func roll(at t: Double, day: Int, month: Int) -> Double {
            if self.day != day { self.day = day; dayUsed = 0 }
            if self.month != month { self.month = month; monthUsed = 0 }
            return window.expire(at: t)
        }

        func minute(at t: Double) -> QuotaMinute {
            QuotaMinute(requests: window.requests, tokens: window.tokens, resetSeconds: window.secondsUntilOldestLeaves(at: t))
        }
    }

    /// A team with its policy, decoded once when stored.
    struct TeamEntry {
        var record: TeamRecord
        var policy: Policy
        /// Why the stored policy could not be read (then `policy` allows nothing and requests are refused).
        var unreadable: String?

        init(record: TeamRecord, log: (String) -> Void) {
            self.record = record
            (policy, unreadable) = AccessControl.read(record.policy, of: "team '\(record.name)' (\(record.id))", log: log)
        }
    }

    struct KeyEntry {
        var record: KeyRecord
        /// Decoded once when stored (decoding JSON per request would cost more than admission).
        var policy: Policy
        var unreadable: String?

        init(record: KeyRecord, log: (String) -> Void) {
            self.record = record
            (policy, unreadable) = AccessControl.read(record.policy, of: "key \(record.prefix)", log: log)
        }
    }

    /// A stored policy, or one that allows nothing and the reason (logged) when it cannot be read.
    static func read(_ json: String, of whom: String, log: (String) -> Void) -> (Policy, String?) {
        do { return (try Policy.decode(json), nil) } catch {
            let why = "the policy of \(whom) cannot be read; its requests are refused until it is set again: \(error.description)"
            log(why)
            return (Policy.refuseAll, why)
        }
    }

    /// One shard of teams: records, policies and the usage of the teams and their keys.
    struct TeamShard {
        var teams: [String: TeamEntry] = [:]
        var teamUsage: [String: Subject] = [:]
        /// Usage by key prefix, for the keys of this shard's teams.
        var keyUsage: [String: Subject] = [:]
    }

    static let shardCount = 16
    private let teamShards: [ShardBox<TeamShard>]
    private let keyShards: [ShardBox<[String: KeyEntry]>]
    private let adminHash = Mutex<String?>(nil)
    private let teamCount = Atomic<Int>(0)
    private let nextID = Atomic<UInt64>(0)
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

    /// Where problems with stored accounts are reported (an unreadable policy).
    let log: @Sendable (String) -> Void
    /// Told of each request refused because a stored policy could not be read (to be counted).
    let refused: @Sendable () -> Void

    public init(store: (any AccountStore)?, openWithoutTeams: Bool = true, shared: SharedQuota? = nil, now: @escaping @Sendable () -> Date = { Date() },
                log: @escaping @Sendable (String) -> Void = { _ in }, refused: @escaping @Sendable () -> Void = {}) {
        self.log = log
        self.refused = refused
        self.store = store
        self.shared = shared
        self.now = now
        self.openWithoutTeams = openWithoutTeams
        self.teamShards = (0..<Self.shardCount).map { _ in ShardBox(TeamShard()) }
        self.keyShards = (0..<Self.shardCount).map { _ in ShardBox([:]) }
    }

    private func teamShard(_ id: String) -> ShardBox<TeamShard> { teamShards[Self.shard(of: id)] }
    private func keyShard(_ prefix: String) -> ShardBox<[String: KeyEntry]> { keyShards[Self.shard(of: prefix)] }

    /// A stable shard number for a team id or key prefix (FNV-1a: `hashValue` is seeded per process
    /// and would do too, but this one is the same in every run, which helps reading profiles).
    static func shard(of id: String) -> Int {
        var h: UInt32 = 2_166_136_261
        for b in id.utf8 { h = (h ^ UInt32(b)) &* 16_777_619 }
        return Int(h % UInt32(shardCount))
    }

    private func put(_ team: TeamRecord) {
        let entry = TeamEntry(record: team, log: log)
        let added = teamShard(team.id).withLock { s in s.teams.updateValue(entry, forKey: team.id) == nil }
        if added { teamCount.add(1, ordering: .relaxed) }
    }

    private func put(_ key: KeyRecord) {
        let entry = KeyEntry(record: key, log: log)
        keyShard(key.prefix).withLock { $0[key.prefix] = entry }
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
        for t in teams { put(t) }
        for k in keys { put(k) }
        adminHash.withLock { $0 = admin }
        let teamOfKey = Dictionary(keys.map { ($0.prefix, $0.teamID) }, uniquingKeysWith: { a, _ in a })
        for (id, n) in month.teams { teamShard(id).withLock { $0.teamUsage[id, default: Subject()].month = monthIndex; $0.teamUsage[id]!.monthUsed = n } }
        for (id, n) in day.teams { teamShard(id).withLock { $0.teamUsage[id, default: Subject()].day = dayIndex; $0.teamUsage[id]!.dayUsed = n } }
        for (p, n) in month.keys {
            guard let team = teamOfKey[p] else { continue }
            teamShard(team).withLock { $0.keyUsage[p, default: Subject()].month = monthIndex; $0.keyUsage[p]!.monthUsed = n }
        }
        for (p, n) in day.keys {
            guard let team = teamOfKey[p] else { continue }
            teamShard(team).withLock { $0.keyUsage[p, default: Subject()].day = dayIndex; $0.keyUsage[p]!.dayUsed = n }
        }
    }

    /// Reads teams, keys and the admin token again (another node changed them). Usage windows
    /// are kept: on a cluster they live in the shared store anyway. Each shard is replaced in one
    /// step, so a key that exists before and after is never missing in between.
    public func reloadAccounts() async throws {
        guard let store else { return }
        let teams = try await store.teams()
        let keys = try await store.keys()
        let admin = try await store.adminTokenHash()
        var teamsByShard = [[String: TeamEntry]](repeating: [:], count: Self.shardCount)
        for t in teams { teamsByShard[Self.shard(of: t.id)][t.id] = TeamEntry(record: t, log: log) }
        var keysByShard = [[String: KeyEntry]](repeating: [:], count: Self.shardCount)
        for k in keys { keysByShard[Self.shard(of: k.prefix)][k.prefix] = KeyEntry(record: k, log: log) }
        for i in 0..<Self.shardCount {
            let fresh = teamsByShard[i]
            teamShards[i].withLock { $0.teams = fresh }
            let freshKeys = keysByShard[i]
            keyShards[i].withLock { $0 = freshKeys }
        }
        teamCount.store(teams.count, ordering: .relaxed)
        adminHash.withLock { $0 = admin }
    }

    /// Open mode: no team exists yet.
    public var isOpen: Bool { teamCount.load(ordering: .relaxed) == 0 }

    // MARK: Admin token

    /// Creates the admin token when none exists; returns it (to be shown once) or nil.
    public func createAdminTokenIfNeeded() async throws -> String? {
        guard adminHash.withLock({ $0 == nil }) else { return nil }
        let token = Secrets.newAdminToken()
        let hash = Secrets.sha256(token)
        // On a cluster another node may have made the token a moment ago: the first one stays.
        let stored = try await store?.saveAdminTokenHashIfAbsent(hash) ?? hash
        adminHash.withLock { $0 = stored }
        return stored == hash ? token : nil
    }

    /// Sets the admin token directly (tests and operators who manage it themselves).
    public func setAdminToken(_ token: String) async throws {
        let hash = Secrets.sha256(token)
        try await store?.saveAdminTokenHash(hash)
        adminHash.withLock { $0 = hash }
    }

    /// Whether an admin token exists.
    public var hasAdminToken: Bool { adminHash.withLock { $0 != nil } }

    /// Whether `token` is the admin token (constant-time).
    public func isAdmin(_ token: String?) -> Bool {
        guard let token, !token.isEmpty else { return false }
        let hash = Secrets.sha256(token)
        return adminHash.withLock { $0 }.map { Secrets.constantTimeEqual($0, hash) } ?? false
    }

    // MARK: Authentication

    /// The key from `Authorization: Bearer …` or `x-api-key`.
    /// Works on UTF-8 bytes: Foundation's `trimmingCharacters` and `lowercased` were 5 % of a
    /// keyed request's time.
    public static func presentedKey(authorization: String?, apiKey: String?) -> String? {
        if let authorization {
            let bytes = trimmed(Array(authorization.utf8)[...])
            let scheme = Array("bearer".utf8)
            if bytes.count >= scheme.count, zip(bytes.prefix(scheme.count), scheme).allSatisfy({ $0 | 0x20 == $1 }) {
                let token = trimmed(bytes.dropFirst(scheme.count))
                if !token.isEmpty { return String(decoding: token, as: UTF8.self) }
            }
        }
        if let apiKey {
            let key = trimmed(Array(apiKey.utf8)[...])
            if !key.isEmpty { return String(decoding: key, as: UTF8.self) }
        }
        return nil
    }

    /// Without leading and trailing spaces and tabs.
    private static func trimmed(_ bytes: ArraySlice<UInt8>) -> ArraySlice<UInt8> {
        var s = bytes
        while let first = s.first, first == 0x20 || first == 0x09 { s = s.dropFirst() }
        while let last = s.last, last == 0x20 || last == 0x09 { s = s.dropLast() }
        return s
    }

    /// Who presents `key`; in open mode everyone is anonymous whatever key they carry.
    public func authenticate(_ key: String?) throws(AccessError) -> Caller {
        if isOpen {
            if openWithoutTeams { return .anonymous }
            throw .unauthenticated("no team exists and open mode is off: create a team and a key")
        }
        guard let key else {
            throw .unauthenticated("missing API key: send it as 'Authorization: Bearer KEY' or 'x-api-key: KEY'")
        }
        guard let prefix = Secrets.prefix(of: key) else { throw .unauthenticated("invalid API key") }
        // Hashed outside any lock; the lock covers one dictionary lookup.
        let hash = Secrets.sha256(key)
        guard let record = keyShard(prefix).withLock({ $0[prefix]?.record }), Secrets.constantTimeEqual(hash, record.hash) else {
            throw .unauthenticated("invalid API key")
        }
        if record.revokedAt != nil { throw .unauthenticated("API key \(prefix) has been revoked") }
        if let e = record.expiresAt, e <= now() { throw .unauthenticated("API key \(prefix) expired") }
        guard let team = teamShard(record.teamID).withLock({ $0.teams[record.teamID]?.record }) else { throw .unauthenticated("invalid API key") }
        if team.disabled { throw .forbidden("team '\(team.name)' is disabled") }
        return Caller(teamID: team.id, teamName: team.name, keyPrefix: prefix)
    }

    /// As ``authenticate(_:)``, but on a cluster node a key this node has not heard of is looked
    /// up in the shared store before it is refused: a key works on every node the moment its
    /// creation returns, before the change notice arrives. Misses are remembered for
    /// ``missMemory`` (at most ``missCapacity`` prefixes) and look-ups are rate-limited, so random
    /// keys cannot flood the store. Revocation needs no look-up: the shared admission checks it.
    public func authenticateLookingUp(_ key: String?) async throws(AccessError) -> Caller {
        do {
            return try authenticate(key)
        } catch {
            guard shared != nil, let store, case .unauthenticated = error, let key, let prefix = Secrets.prefix(of: key),
                self.key(prefix) == nil, lookups.mayLookUp(prefix, at: ContinuousClock.now)
            else { throw error }
            let found: (KeyRecord, TeamRecord)?
            do { found = try await store.keyWithTeam(prefix: prefix) } catch {
                throw .unavailable("the shared store cannot be reached to check this API key: \(error)")
            }
            guard let (record, team) = found else {
                lookups.remember(prefix, at: ContinuousClock.now)
                throw error
            }
            if self.team(team.id) == nil { put(team) }
            if self.key(prefix) == nil { put(record) }
            return try authenticate(key)
        }
    }

    /// How long a prefix not found in the shared store is refused without asking again.
    public static let missMemory: Duration = .seconds(2)
    /// Prefixes remembered as missing at most (beyond it the expired ones go, or all of them).
    public static let missCapacity = 10_000
    /// Shared-store look-ups of unknown keys per second at most (beyond: refused without asking).
    public static let lookupsPerSecond = 100

    let lookups = KeyLookups()

    /// Whether the caller may use a model known by `names` (id and aliases).
    public func allows(_ caller: Caller, model names: [String]) -> Bool {
        guard let teamID = caller.teamID else { return true }
        guard let teamPolicy = teamShard(teamID).withLock({ $0.teams[teamID]?.policy }) else { return false }
        let keyPolicy = caller.keyPrefix.flatMap { p in keyShard(p).withLock { $0[p]?.policy } } ?? Policy()
        return teamPolicy.allows(names) && keyPolicy.allows(names)
    }

    /// The team, its policy and the key's policy, or why the caller may not use a model known by `names`.
    private func policies(_ teamID: String, _ prefix: String, model names: [String]) throws(AccessError) -> (TeamRecord, Policy, Policy) {
        guard let (keyPolicy, keyUnreadable) = keyShard(prefix).withLock({ s in s[prefix].map { ($0.policy, $0.unreadable) } }),
            let team = teamShard(teamID).withLock({ $0.teams[teamID] })
        else { throw .unauthenticated("invalid API key") }
        if let why = team.unreadable ?? keyUnreadable {
            refused()
            throw .unreadable(why)
        }
        guard team.policy.allows(names), keyPolicy.allows(names) else {
            throw .forbidden("team '\(team.record.name)' may not use model '\(names.first ?? "")'")
        }
        return (team.record, team.policy, keyPolicy)
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

    /// Admission against in-memory counters (one node): constant time, under the team's shard lock.
    func admitLocally(_ caller: Caller, model names: [String], tokens: Int) throws(AccessError) -> Reservation? {
        guard let teamID = caller.teamID, let prefix = caller.keyPrefix else { return nil }
        let (team, teamPolicy, keyPolicy) = try policies(teamID, prefix, model: names)
        let date = now()
        let (day, month) = Self.periods(date)
        let id = nextID.add(1, ordering: .relaxed).newValue
        let result: Result<Reservation, AccessError> = teamShard(teamID).withLock { s in
            // Taken out and put back, so each is mutated in place (no copy of its window).
            var teamSubject = s.teamUsage.removeValue(forKey: teamID) ?? Subject()
            var keySubject = s.keyUsage.removeValue(forKey: prefix) ?? Subject()
            defer {
                s.teamUsage[teamID] = teamSubject
                s.keyUsage[prefix] = keySubject
            }
            let t = teamSubject.roll(at: date.timeIntervalSince1970, day: day, month: month)
            keySubject.roll(at: t, day: day, month: month)
            if let refusal = Self.check(teamSubject, teamPolicy, tokens: tokens, at: t, who: "team '\(team.name)'")
                ?? Self.check(keySubject, keyPolicy, tokens: tokens, at: t, who: "key \(prefix)")
            {
                return .failure(refusal)
            }
            func reserve(_ sub: inout Subject) {
                sub.inFlight += 1
                sub.window.add(at: t, tokens: tokens)
                sub.reserved += tokens
            }
            reserve(&teamSubject)
            reserve(&keySubject)
            let headers = Self.rateHeaders([(teamSubject.minute(at: t), teamPolicy), (keySubject.minute(at: t), keyPolicy)])
            return .success(Reservation(id: id, teamID: teamID, keyPrefix: prefix, tokens: tokens, day: day, month: month, admittedAt: t, shared: nil, headers: headers))
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
        teamShard(reservation.teamID).withLock { s in
            func settle(_ sub: inout Subject) {
                sub.roll(at: date.timeIntervalSince1970, day: day, month: month)
                sub.inFlight = max(0, sub.inFlight - 1)
                sub.reserved -= reservation.tokens
                sub.window.adjust(admittedAt: reservation.admittedAt, by: used - reservation.tokens)
                if reservation.day == sub.day { sub.dayUsed += used }
                if reservation.month == sub.month { sub.monthUsed += used }
            }
            if var t = s.teamUsage.removeValue(forKey: reservation.teamID) { settle(&t); s.teamUsage[reservation.teamID] = t }
            if var k = s.keyUsage.removeValue(forKey: reservation.keyPrefix) { settle(&k); s.keyUsage[reservation.keyPrefix] = k }
        }
    }

    /// Why `subject` may not take `tokens` more at `t`, if it may not.
    static func check(_ s: Subject, _ p: Policy, tokens: Int, at t: Double, who: String) -> AccessError? {
        func limited(_ what: String, _ after: Double) -> AccessError {
            .limited("\(who) reached its \(what)", retryAfter: max(1, Int(after.rounded(.up))), headers: rateHeaders([(s.minute(at: t), p)]))
        }
        if let max = p.maxParallel, s.inFlight >= max { return limited("limit of \(max) parallel requests", 1) }
        if let rpm = p.requestsPerMinute, s.window.requests >= rpm {
            guard rpm > 0 else { return limited("limit of 0 requests per minute", 60) }
            return limited("limit of \(rpm) requests per minute", s.window.secondsUntilRequests(below: rpm, at: t))
        }
        if let tpm = p.tokensPerMinute {
            if tokens > tpm { return .invalid("this request may use \(tokens) tokens (prompt + max_tokens), more than \(who)'s limit of \(tpm) per minute; lower max_tokens") }
            if s.window.tokens + tokens > tpm {
                // Wait until enough of the window has expired.
                return limited("limit of \(tpm) tokens per minute", s.window.secondsUntilTokens(fit: tokens, under: tpm, at: t))
            }
        }
        let date = Date(timeIntervalSince1970: t)
        if let perDay = p.tokensPerDay {
            if tokens > perDay { return .invalid("this request may use \(tokens) tokens, more than \(who)'s daily budget of \(perDay)") }
            if s.dayUsed + s.reserved + tokens > perDay {
                return limited("daily budget of \(perDay) tokens", startOfDay(date).addingTimeInterval(86_400).timeIntervalSince(date))
            }
        }
        if let perMonth = p.tokensPerMonth {
            if tokens > perMonth { return .invalid("this request may use \(tokens) tokens, more than \(who)'s monthly budget of \(perMonth)") }
            if s.monthUsed + s.reserved + tokens > perMonth {
                let next = utc.date(byAdding: .month, value: 1, to: startOfMonth(date)) ?? date.addingTimeInterval(86_400)
                return limited("monthly budget of \(perMonth) tokens", next.timeIntervalSince(date))
            }
        }
        return nil
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
            // Not `String(format:)`: slow on Linux, and this runs on every admission with limits.
            headers["x-ratelimit-reset-\(kind)"] = "\(Int(max(0, b.reset).rounded(.up)))s"
        }
        return headers
    }

    static func startOfDay(_ d: Date) -> Date { utc.startOfDay(for: d) }
    static func startOfMonth(_ d: Date) -> Date { utc.date(from: utc.dateComponents([.year, .month], from: d)) ?? d }
    /// Day and month indexes in UTC: budgets reset exactly at 00:00 UTC and on the 1st.
    static func periods(_ d: Date) -> (day: Int, month: Int) { UTCPeriods.periods(d.timeIntervalSince1970) }

    // MARK: Teams and keys (admin)

    public func teams() -> [TeamRecord] {
        teamShards.flatMap { shard in shard.withLock { $0.teams.values.map(\.record) } }.sorted { $0.createdAt < $1.createdAt }
    }

    public func keys(team: String? = nil) -> [KeyRecord] {
        keyShards.flatMap { shard in shard.withLock { $0.values.map(\.record).filter { team == nil || $0.teamID == team } } }
            .sorted { $0.createdAt < $1.createdAt }
    }

    /// A team by id or name.
    public func team(_ idOrName: String) -> TeamRecord? {
        if let byID = teamShard(idOrName).withLock({ $0.teams[idOrName]?.record }) { return byID }
        for shard in teamShards {
            if let byName = shard.withLock({ $0.teams.values.first { $0.record.name == idOrName }?.record }) { return byName }
        }
        return nil
    }

    /// Tokens used today and this month (reservations included) by a team; on a cluster node,
    /// the whole cluster's.
    public func usage(team id: String) async -> (day: Int, month: Int, inFlight: Int) {
        if let shared { return (try? await shared.use(subject: id)) ?? (0, 0, 0) }
        return localUsage(team: id)
    }

    func localUsage(team id: String) -> (day: Int, month: Int, inFlight: Int) {
        let (day, month) = Self.periods(now())
        return teamShard(id).withLock { s in
            guard let sub = s.teamUsage[id] else { return (0, 0, 0) }
            return ((sub.day == day ? sub.dayUsed : 0) + sub.reserved, (sub.month == month ? sub.monthUsed : 0) + sub.reserved, sub.inFlight)
        }
    }

    // MARK: Shared admission (cluster)

    /// One call to the shared store, which checks the key and team again (a revocation on
    /// another node counts even before its notice arrives), locks the team's and the key's
    /// counters, makes the same checks as one node does, and records the reservation with a lease.
    func admit(_ caller: Caller, model names: [String], tokens: Int, request: QuotaRequest, in shared: SharedQuota) async throws(AccessError) -> Reservation? {
        guard let teamID = caller.teamID, let prefix = caller.keyPrefix else { return nil }
        let (team, teamPolicy, keyPolicy) = try policies(teamID, prefix, model: names)
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
            return Reservation(id: 0, teamID: teamID, keyPrefix: prefix, tokens: tokens, day: day, month: month, admittedAt: 0, shared: request.id, headers: headers)
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
        put(record)
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
        put(updated)
        return updated
    }

    public func deleteTeam(_ idOrName: String) async throws(AccessError) {
        guard let record = team(idOrName) else { throw .notFound("no team '\(idOrName)'") }
        try await persist { try await $0.deleteTeam(id: record.id) }
        for shard in keyShards {
            shard.withLock { keys in keys = keys.filter { $0.value.record.teamID != record.id } }
        }
        let removed = teamShard(record.id).withLock { s in
            s.teamUsage[record.id] = nil
            return s.teams.removeValue(forKey: record.id) != nil
        }
        if removed { teamCount.subtract(1, ordering: .relaxed) }
    }

    /// Creates a key; the returned key string is the only time it exists outside the caller.
    public func createKey(team idOrName: String, name: String, expiresAt: Date?, policy: Policy) async throws(AccessError) -> (key: String, record: KeyRecord) {
        guard let team = team(idOrName) else { throw .notFound("no team '\(idOrName)'") }
        let (key, prefix) = Secrets.newKey()
        let record = KeyRecord(prefix: prefix, teamID: team.id, name: name, hash: Secrets.sha256(key), policy: policy.json,
                               createdAt: now(), expiresAt: expiresAt, revokedAt: nil)
        try await persist { try await $0.save(record) }
        put(record)
        return (key, record)
    }

    public func key(_ prefix: String) -> KeyRecord? { keyShard(prefix).withLock { $0[prefix]?.record } }

    public func updateKey(_ prefix: String, policy: Policy?, expiresAt: Date??) async throws(AccessError) -> KeyRecord {
        guard var record = key(prefix) else { throw .notFound("no key '\(prefix)'") }
        if let policy { record.policy = policy.json }
        if let expiresAt { record.expiresAt = expiresAt }
        let updated = record
        try await persist { try await $0.save(updated) }
        put(updated)
        return updated
    }

    public func revokeKey(_ prefix: String) async throws(AccessError) -> KeyRecord {
        guard var record = key(prefix) else { throw .notFound("no key '\(prefix)'") }
        if record.revokedAt == nil { record.revokedAt = now() }
        let revoked = record
        try await persist { try await $0.save(revoked) }
        put(revoked)
        return revoked
    }

    /// Revokes a key and issues a new one with the same team, name, policy and expiry.
    public func rotateKey(_ prefix: String) async throws(AccessError) -> (key: String, record: KeyRecord) {
        guard let old = key(prefix) else { throw .notFound("no key '\(prefix)'") }
        guard old.revokedAt == nil else { throw .conflict("key '\(prefix)' is revoked") }
        // The new key keeps the stored policy, or there is no new key: an unreadable policy must
        // not become "no limits" by rotation.
        let fresh = try await createKey(team: old.teamID, name: old.name, expiresAt: old.expiresAt, policy: try Policy.decode(old.policy))
        _ = try await revokeKey(prefix)
        return fresh
    }

    private func persist(_ write: (any AccountStore) async throws -> Void) async throws(AccessError) {
        guard let store else { return }
        do { try await write(store) } catch { throw .unavailable("could not save: \(error)") }
    }
}

/// A lock and the state it guards, as a class so shards can sit in an array (`Mutex` cannot).
final class ShardBox<Value>: Sendable where Value: Sendable {
    private let mutex: Mutex<Value>
    init(_ value: sending Value) { mutex = Mutex(value) }
    func withLock<R>(_ body: (inout sending Value) throws -> sending R) rethrows -> sending R { try mutex.withLock(body) }
}

/// The bookkeeping of unknown-key look-ups: remembered misses and a per-second budget.
final class KeyLookups: Sendable {
    private struct State {
        var misses: [String: ContinuousClock.Instant] = [:]
        var second = ContinuousClock.now
        var used = 0
    }

    private let state = Mutex(State())

    /// Whether `prefix` may be looked up now (not a recent miss, and within the budget).
    func mayLookUp(_ prefix: String, at now: ContinuousClock.Instant) -> Bool {
        state.withLock { s in
            if let missed = s.misses[prefix], now - missed < AccessControl.missMemory { return false }
            if now - s.second >= .seconds(1) { s.second = now; s.used = 0 }
            guard s.used < AccessControl.lookupsPerSecond else { return false }
            s.used += 1
            return true
        }
    }

    /// Prefixes remembered as missing now.
    var missCount: Int { state.withLock { $0.misses.count } }

    func remember(_ prefix: String, at now: ContinuousClock.Instant) {
        state.withLock { s in
            if s.misses.count >= AccessControl.missCapacity {
                s.misses = s.misses.filter { now - $0.value < AccessControl.missMemory }
                if s.misses.count >= AccessControl.missCapacity { s.misses.removeAll() }
            }
            s.misses[prefix] = now
        }
    }
}
