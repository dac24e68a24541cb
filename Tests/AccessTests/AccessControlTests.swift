import Foundation
import Store
import Synchronization
import Testing

@testable import Access

/// A clock the tests move by hand.
final class TestClock: Sendable {
    private let time: Mutex<Date>
    init(_ start: Date) { time = Mutex(start) }
    var now: Date { time.withLock { $0 } }
    func advance(_ seconds: TimeInterval) { time.withLock { $0 = $0.addingTimeInterval(seconds) } }
}

/// The refusal an admission produced, nil when admitted.
func refusal(_ admit: () throws(AccessError) -> Reservation?) -> AccessError? {
    switch Result(catching: admit) {
    case .success: return nil
    case .failure(let e): return e
    }
}

struct AccessControlTests {
    /// 2026-03-31 23:59:00 UTC: one minute before both a day and a month boundary.
    static let lastMinuteOfMarch = Date(timeIntervalSince1970: 1_775_001_540)

    func make(_ policy: Policy, key: Policy = Policy(), clock: TestClock = TestClock(Date())) async throws -> (AccessControl, Caller, TestClock) {
        let store = try Store.inMemory()
        let access = AccessControl(store: store, now: { clock.now })
        try await access.load()
        _ = try await access.createTeam(name: "t", policy: policy)
        let (secret, _) = try await access.createKey(team: "t", name: "k", expiresAt: nil, policy: key)
        return (access, try access.authenticate(secret), clock)
    }

    @Test func secretsAreRandomPrefixedAndComparedByHash() {
        let (a, pa) = Secrets.newKey()
        let (b, _) = Secrets.newKey()
        #expect(a != b && a.hasPrefix(pa + "-") && Secrets.prefix(of: a) == pa)
        #expect(Secrets.prefix(of: "ck-short") == nil && Secrets.prefix(of: Secrets.newAdminToken()) == nil)
        #expect(Secrets.sha256("abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
        #expect(Secrets.constantTimeEqual("abc", "abc") && !Secrets.constantTimeEqual("abc", "abd") && !Secrets.constantTimeEqual("abc", "abcd"))
    }

    @Test func openModeUntilATeamExistsThenKeysAreRequired() async throws {
        let access = AccessControl(store: try Store.inMemory())
        #expect(try access.authenticate(nil) == .anonymous)
        #expect(try access.authenticate("anything") == .anonymous)
        _ = try await access.createTeam(name: "a", policy: Policy())
        #expect(throws: AccessError.self) { try access.authenticate(nil) }
        #expect(throws: AccessError.self) { try access.authenticate("sk-anything") }
    }

    @Test func zeroLimitsRefuseInsteadOfCrashing() async throws {
        let (access, caller, _) = try await make(Policy(requestsPerMinute: 0))
        guard case .limited(_, let after, _) = refusal({ () throws(AccessError) in try access.admitLocally(caller, model: ["m"], tokens: 1) }) else {
            Issue.record("a zero limit admitted a request")
            return
        }
        #expect(after == 60)
    }

    @Test func withoutOpenModeNoTeamMeansNoAccess() async throws {
        let access = AccessControl(store: try Store.inMemory(), openWithoutTeams: false)
        #expect(throws: AccessError.self) { try access.authenticate("anything") }
    }

    @Test func revocationExpiryAndDisablingApplyAtOnce() async throws {
        let clock = TestClock(Date())
        let access = AccessControl(store: try Store.inMemory(), now: { clock.now })
        _ = try await access.createTeam(name: "a", policy: Policy())
        let (key, record) = try await access.createKey(team: "a", name: "", expiresAt: clock.now.addingTimeInterval(60), policy: Policy())
        #expect(try access.authenticate(key).keyPrefix == record.prefix)
        _ = try await access.updateTeam("a", disabled: true)
        #expect(throws: AccessError.forbidden("team 'a' is disabled")) { try access.authenticate(key) }
        _ = try await access.updateTeam("a", disabled: false)
        clock.advance(61)
        #expect(throws: AccessError.unauthenticated("API key \(record.prefix) expired")) { try access.authenticate(key) }
        let (other, otherRecord) = try await access.createKey(team: "a", name: "", expiresAt: nil, policy: Policy())
        _ = try await access.revokeKey(otherRecord.prefix)
        #expect(throws: AccessError.self) { try access.authenticate(other) }
    }

    @Test func teamsAndKeysSurviveARestart() async throws {
        let path = NSTemporaryDirectory() + "corral-access-\(UUID().uuidString).sqlite"
        defer { try? FileManager.default.removeItem(atPath: path) }
        let first = AccessControl(store: try Store.open(path: path))
        _ = try await first.createTeam(name: "a", policy: Policy(models: ["chat*"], requestsPerMinute: 5))
        let (key, _) = try await first.createKey(team: "a", name: "", expiresAt: nil, policy: Policy())
        let admin = try #require(try await first.createAdminTokenIfNeeded())
        let second = AccessControl(store: try Store.open(path: path))
        try await second.load()
        #expect(try second.authenticate(key).teamName == "a")
        #expect(second.isAdmin(admin) && !second.isAdmin(key) && !second.isAdmin(nil))
        #expect(try await second.createAdminTokenIfNeeded() == nil)
        #expect(try second.team("a").map { try Policy.decode($0.policy).requestsPerMinute } == 5)
    }

    /// A stored policy that cannot be read fails closed: its team's (or key's) requests are
    /// refused with 500 and counted, the models are hidden, and rotating the key fails instead
    /// of giving the new key no limits. Other teams are not affected.
    @Test func aPolicyRowThatCannotBeDecodedRefusesTheRequest() async throws {
        let path = NSTemporaryDirectory() + "corral-access-\(UUID().uuidString).sqlite"
        defer { try? FileManager.default.removeItem(atPath: path) }
        let store = try Store.open(path: path)
        let first = AccessControl(store: store)
        let team = try await first.createTeam(name: "a", policy: Policy(models: ["chat"], requestsPerMinute: 5))
        let (key, keyRecord) = try await first.createKey(team: "a", name: "", expiresAt: nil, policy: Policy())
        _ = try await first.createTeam(name: "b", policy: Policy(models: ["chat"]))
        let (other, _) = try await first.createKey(team: "b", name: "", expiresAt: nil, policy: Policy())
        let (brokenKey, brokenKeyRecord) = try await first.createKey(team: "b", name: "", expiresAt: nil, policy: Policy(tokensPerDay: 100))
        var broken = team
        broken.policy = #"{"requestsPerMinute": "five"}"#
        try await store.save(broken)
        var brokenRecord = brokenKeyRecord
        brokenRecord.policy = "not json"
        try await store.save(brokenRecord)

        let logged = Mutex<[String]>([])
        let refusals = Atomic<Int>(0)
        let access = AccessControl(store: store, log: { line in logged.withLock { $0.append(line) } }, refused: { refusals.add(1, ordering: .relaxed) })
        try await access.load()
        #expect(logged.withLock { $0.count } == 2 && logged.withLock { $0 }.contains { $0.contains("team 'a'") })
        let caller = try access.authenticate(key)
        do {
            _ = try await access.admit(caller, model: ["chat"], tokens: 10)
            Issue.record("an unreadable policy admitted a request")
        } catch {
            #expect(error.status == 500 && error.kind == "policy_unreadable")
        }
        #expect(refusals.load(ordering: .relaxed) == 1)
        #expect(!access.allows(caller, model: ["chat"]))
        #expect(try await access.admit(try access.authenticate(other), model: ["chat"], tokens: 10) != nil)
        await #expect(throws: AccessError.self) { _ = try await access.admit(try access.authenticate(brokenKey), model: ["chat"], tokens: 10) }
        #expect(refusals.load(ordering: .relaxed) == 2)
        // Rotation keeps the key's stored policy or fails: never a new key without limits.
        await #expect(throws: AccessError.self) { _ = try await access.rotateKey(brokenKeyRecord.prefix) }
        let teamB = try await store.keys().filter { $0.teamID == brokenKeyRecord.teamID }
        #expect(teamB.count == 2 && teamB.allSatisfy { $0.revokedAt == nil })
        let rotated = try await access.rotateKey(keyRecord.prefix)
        #expect(try Policy.decode(rotated.record.policy) == Policy())
        // Setting the policy again mends it.
        _ = try await access.updateTeam("a", policy: Policy(models: ["chat"]))
        #expect(try await access.admit(caller, model: ["chat"], tokens: 10) != nil)
    }

    /// The ledger's positional insert writes every column where `LedgerRow` reads it back,
    /// nil fields as NULL, and keeps the first row of a request ID it sees twice.
    @Test func ledgerRowsRoundTripThroughTheInsertStatement() async throws {
        let store = try Store.inMemory()
        let ts = Date(timeIntervalSince1970: 1_800_000_000.125)  // GRDB keeps milliseconds
        let full = LedgerRow(
            requestID: "req-1", ts: ts, team: "t1", keyPrefix: "ck-abc", model: "chat", route: "/v1/chat/completions", status: 200,
            errorKind: nil, promptTokens: 12, cachedTokens: 3, completionTokens: 7, queueMs: 0.5, loadMs: 120.25, ttftMs: 9.75,
            totalMs: 30.5, promptTPS: 800.5, generationTPS: 42.25, clientDisconnected: true)
        let sparse = LedgerRow(
            requestID: "req-2", ts: ts.addingTimeInterval(1), team: nil, keyPrefix: nil, model: "gone", route: "/v1/embeddings", status: 502,
            errorKind: "upstream_unreachable", promptTokens: nil, cachedTokens: nil, completionTokens: nil, queueMs: 0, loadMs: 0, ttftMs: nil,
            totalMs: 1, promptTPS: nil, generationTPS: nil, clientDisconnected: false)
        try await store.appendUsage([full, sparse])
        var again = full
        again.status = 500
        try await store.appendUsage([again])
        let rows = try await store.usageRows(from: ts.addingTimeInterval(-1), to: ts.addingTimeInterval(10))
        #expect(rows == [sparse, full])
    }

    @Test func modelGlobsAndTheSmallerOfTeamAndKey() async throws {
        let (access, caller, _) = try await make(Policy(models: ["chat*", "Embed"]), key: Policy(models: ["chat-*", "embed"]))
        #expect(access.allows(caller, model: ["chat-small"]))
        #expect(access.allows(caller, model: ["other", "embed"]))
        #expect(!access.allows(caller, model: ["chatty"]))  // team allows, key does not
        #expect(!access.allows(caller, model: ["llama"]))
        #expect(Policy.glob("a?c*", "abcdef") && !Policy.glob("a?c", "abcd"))
    }

    @Test func requestsPerMinuteIsASlidingWindow() async throws {
        let (access, caller, clock) = try await make(Policy(requestsPerMinute: 2))
        _ = try access.admitLocally(caller, model: ["m"], tokens: 1)
        clock.advance(30)
        _ = try access.admitLocally(caller, model: ["m"], tokens: 1)
        guard case .limited(_, let after, let headers) = refusal({ () throws(AccessError) in try access.admitLocally(caller, model: ["m"], tokens: 1) }) else {
            Issue.record("third request admitted")
            return
        }
        #expect(after == 30)
        #expect(headers["x-ratelimit-remaining-requests"] == "0")
        clock.advance(30.5)
        #expect(try access.admitLocally(caller, model: ["m"], tokens: 1) != nil)
    }

    @Test func reservationsHoldUntilReconciledWithRealUsage() async throws {
        let (access, caller, _) = try await make(Policy(tokensPerMinute: 100, maxParallel: 5))
        let a = try #require(try access.admitLocally(caller, model: ["m"], tokens: 60))
        #expect(throws: AccessError.self) { try access.admitLocally(caller, model: ["m"], tokens: 50) }
        access.reconcile(a, actualTokens: 20)
        let b = try #require(try access.admitLocally(caller, model: ["m"], tokens: 50))
        #expect(b.headers["x-ratelimit-remaining-tokens"] == "30")
        #expect(throws: AccessError.invalid("this request may use 101 tokens (prompt + max_tokens), more than team 't''s limit of 100 per minute; lower max_tokens")) {
            try access.admitLocally(caller, model: ["m"], tokens: 101)
        }
    }

    @Test func parallelLimitCountsInFlight() async throws {
        let (access, caller, _) = try await make(Policy(maxParallel: 1))
        let first = try #require(try access.admitLocally(caller, model: ["m"], tokens: 1))
        #expect(throws: AccessError.self) { try access.admitLocally(caller, model: ["m"], tokens: 1) }
        access.reconcile(first, actualTokens: 1)
        #expect(try access.admitLocally(caller, model: ["m"], tokens: 1) != nil)
    }

    @Test func dailyAndMonthlyBudgetsResetExactlyAtUTCBoundaries() async throws {
        let clock = TestClock(Self.lastMinuteOfMarch)
        let (access, caller, _) = try await make(Policy(tokensPerDay: 100, tokensPerMonth: 150), clock: clock)
        let r = try #require(try access.admitLocally(caller, model: ["m"], tokens: 90))
        access.reconcile(r, actualTokens: 90)
        guard case .limited(let message, let after, _) = refusal({ () throws(AccessError) in try access.admitLocally(caller, model: ["m"], tokens: 20) }) else {
            Issue.record("over the daily budget")
            return
        }
        #expect(message.contains("daily budget"))
        #expect(after == 60)  // 23:59:00 → midnight
        clock.advance(60)  // 2026-04-01 00:00:00 UTC: a new day and a new month
        let april = try #require(try access.admitLocally(caller, model: ["m"], tokens: 100))
        access.reconcile(april, actualTokens: 100)
        #expect(access.localUsage(team: caller.teamID!).day == 100)
        clock.advance(86_400)  // April 2: the day resets, April's month total (100) stays
        guard case .limited(let monthly, _, _) = refusal({ () throws(AccessError) in try access.admitLocally(caller, model: ["m"], tokens: 60) }) else {
            Issue.record("over the monthly budget")
            return
        }
        #expect(monthly.contains("monthly budget"))
    }

    @Test func concurrentAdmissionNeverOvershoots() async throws {
        let (access, caller, _) = try await make(Policy(tokensPerMinute: 1000))
        let admitted = await withTaskGroup(of: Bool.self) { group in
            for _ in 0..<200 {
                group.addTask { (try? access.admitLocally(caller, model: ["m"], tokens: 7)) != nil }
            }
            return await group.reduce(0) { $0 + ($1 ? 1 : 0) }
        }
        #expect(admitted == 1000 / 7)
    }
}

/// `store.url`: which backend, and what is refused before anything connects.
@Suite struct StoreLocationTests {
    @Test func parsesBothBackends() throws {
        #expect(try StoreLocation.parse("", defaultSQLitePath: "/d/corral.sqlite") == .sqlite(path: "/d/corral.sqlite"))
        #expect(try StoreLocation.parse("sqlite:/x/y.sqlite", defaultSQLitePath: "/d") == .sqlite(path: "/x/y.sqlite"))
        #expect(try StoreLocation.parse("sqlite:///x/y.sqlite", defaultSQLitePath: "/d") == .sqlite(path: "/x/y.sqlite"))
        #expect(try StoreLocation.parse("postgres://corral@db.internal:6543/corral", defaultSQLitePath: "/d")
            == .postgres(PostgresLocation(user: "corral", host: "db.internal", port: 6543, database: "corral")))
        #expect(try StoreLocation.parse("postgresql://u@h/db", defaultSQLitePath: "/d") == .postgres(PostgresLocation(user: "u", host: "h", port: 5432, database: "db")))
        #expect(try StoreLocation.parse("postgres://u@/db?host=/run/pg", defaultSQLitePath: "/d")
            == .postgres(PostgresLocation(user: "u", host: "", port: 5432, database: "db", socketDirectory: "/run/pg")))
    }

    @Test func refusesPasswordsAndIncompleteURLs() {
        for (url, words) in [("postgres://u:secret@h/db", "password"), ("postgres://h/db", "user"), ("postgres://u@h/", "database"),
                             ("mysql://u@h/db", "sqlite:PATH or postgres://")] {
            do {
                _ = try StoreLocation.parse(url, defaultSQLitePath: "/d")
                Issue.record("accepted \(url)")
            } catch {
                #expect(error.description.contains(words), "\(url): \(error)")
                #expect(!error.description.contains("secret"))
            }
        }
    }
}
