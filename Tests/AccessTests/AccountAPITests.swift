import Foundation
import Store
import Testing

@testable import Access

/// The admin API's team and key bodies (each refusal with the message and `param` it always
/// gave) and what it shows of teams and keys (the keys the dictionaries wrote).
struct AccountAPITests {
    func decode(_ text: String) throws -> AccountRequest { try JSONDecoder().decode(AccountRequest.self, from: Data(text.utf8)) }
    func object(_ value: some Encodable) throws -> [String: Any] {
        try #require(try JSONSerialization.jsonObject(with: JSONEncoder().encode(value)) as? [String: Any])
    }

    @Test func aBodyIsCheckedFieldByField() throws {
        let cases: [(String, AccessError)] = [
            (#"{"disabled":"yes"}"#, .badField("disabled must be a boolean", param: "disabled")),
            (#"{"disabled":null}"#, .badField("disabled must be a boolean", param: "disabled")),
            (#"{"expiresIn":true}"#, .badField(AccountRequest.expiresInProblem, param: "expiresIn")),
            (#"{"expiresIn":null}"#, .badField(AccountRequest.expiresInProblem, param: "expiresIn")),
            (#"{"expiresAt":"tomorrow"}"#, .badField("expiresAt must be an RFC 3339 time or null", param: "expiresAt")),
            (#"{"tokensPerMinute":-1}"#, .invalid("tokensPerMinute must be a non-negative integer or null")),
            (#"{"maxParallel":1.5}"#, .invalid("maxParallel must be a non-negative integer or null")),
            (#"{"tokensPerDay":true}"#, .invalid("tokensPerDay must be a non-negative integer or null")),
            (#"{"requestsPerMinute":"5"}"#, .invalid("requestsPerMinute must be a non-negative integer or null")),
            (#"{"models":["a",1]}"#, .invalid("models must be a list of names or globs, or null")),
        ]
        for (text, error) in cases {
            #expect(throws: error) { try decode(text) }
        }
        let body = try decode(#"{"name":"t","disabled":false,"models":["chat*"],"tokensPerDay":null,"maxParallel":2,"expiresIn":3600}"#)
        #expect(body.name == "t" && body.disabled == false && body.expiresIn == "3600.0")
        let base = Policy(models: nil, tokensPerDay: 10, tokensPerMonth: 20)
        #expect(body.limits.applied(to: base) == Policy(models: ["chat*"], maxParallel: 2, tokensPerDay: nil, tokensPerMonth: 20))
        // A name of another type reads as absent; expiresIn wins over expiresAt.
        #expect(try decode(#"{"name":3}"#).name == nil)
        #expect(try decode(#"{"expiresIn":"30d","expiresAt":"x"}"#).expiresIn == "30d")
        #expect(try decode(#"{"expiresAt":null}"#).expiresAt == .some(nil))
        #expect(try decode(#"{"expiresAt":"2026-01-02T03:04:05Z"}"#).expiresAt == .some(Date(timeIntervalSince1970: 1_767_323_045)))
        #expect(try decode("{}").expiresAt == .none)
    }

    @Test func teamsNeedANameAndChangesStartFromTheStoredPolicy() async throws {
        let access = AccessControl(store: try Store.inMemory())
        try await access.load()
        await #expect(throws: AccessError.badField("name is required", param: "name")) { try await access.createTeam(try decode("{}")) }
        let team = try await access.createTeam(try decode(#"{"name":"t","tokensPerDay":100}"#))
        #expect(try Policy.decode(team.policy) == Policy(tokensPerDay: 100))
        let changed = try await access.updateTeam("t", try decode(#"{"maxParallel":3,"disabled":true}"#))
        #expect(try Policy.decode(changed.policy) == Policy(maxParallel: 3, tokensPerDay: 100) && changed.disabled)
        await #expect(throws: AccessError.notFound("no team 'nobody'")) { try await access.updateTeam("nobody", try decode("{}")) }
        await #expect(throws: AccessError.notFound("no key 'ck-none'")) { try await access.updateKey("ck-none", try decode("{}"), expiresAt: nil) }
    }

    @Test func teamsAndKeysShowEveryLimitAndTheirState() async throws {
        let access = AccessControl(store: try Store.inMemory())
        try await access.load()
        let team = try await access.createTeam(name: "t", policy: Policy(models: ["a"]))
        let (secret, record) = try await access.createKey(team: "t", name: "k", expiresAt: Date(timeIntervalSince1970: 0), policy: Policy())

        let shown = try object(await access.view(team, withKeys: true))
        #expect(Set(shown.keys) == ["id", "name", "disabled", "createdAt", "limits", "usage", "keys"])
        let limits = try #require(shown["limits"] as? [String: Any])
        #expect(Set(limits.keys) == ["models", "requestsPerMinute", "tokensPerMinute", "maxParallel", "tokensPerDay", "tokensPerMonth"])
        #expect(limits["models"] as? [String] == ["a"] && limits["tokensPerDay"] is NSNull)
        #expect(shown["usage"] as? [String: Int] == ["tokensToday": 0, "tokensThisMonth": 0, "inFlight": 0])
        #expect(try object(await access.view(team))["keys"] == nil)

        let key = try object(KeyView(record, key: secret))
        #expect(Set(key.keys) == ["prefix", "team", "name", "createdAt", "state", "limits", "expiresAt", "revokedAt", "key"])
        #expect(key["state"] as? String == "expired" && key["revokedAt"] is NSNull && key["expiresAt"] as? String == "1970-01-01T00:00:00.000Z")
        #expect(try object(KeyView(record))["key"] == nil)

        var unreadable = record
        unreadable.policy = "{"
        let refused = try #require(try object(KeyView(unreadable))["limits"] as? [String: Any])
        #expect(Array(refused.keys) == ["unreadable"])
    }

    @Test func usageTakesAKnownGroupAndBucket() async throws {
        let store = try Store.inMemory()
        let now = Date()
        let report = try object(try await store.usageReport(from: now.addingTimeInterval(-60), to: now, group: "model", bucket: nil))
        #expect(report["group"] as? String == "model" && report["bucket"] as? String == "day" && (report["data"] as? [Any])?.isEmpty == true)
        await #expect(throws: AccessError.invalid("group must be team, key or model; bucket day or hour")) {
            try await store.usageReport(from: now, to: now, group: "nope", bucket: nil)
        }
        let stats = try object(try await store.statsReport(window: .seconds(3600)))
        #expect(Set(stats.keys) == ["window", "from", "to", "models"])
    }
}
