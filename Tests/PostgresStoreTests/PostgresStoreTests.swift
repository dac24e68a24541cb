import Foundation
import Logging
import Store
import Testing

@testable import PostgresStore

/// The shared store on a real PostgreSQL: migrations once under the advisory lock, accounts and
/// the change version, exact quotas in the store's functions, the node registry, and the ledger
/// rows written for a lost node's requests.
@Suite(.serialized, .enabled(if: PostgresServer.available, "PostgreSQL is not installed"))
struct PostgresStoreTests {
    /// Runs `body` with a fresh server, then stops it whatever `body` did.
    func withServer(_ body: (PostgresServer) async throws -> Void) async throws {
        let server = try await PostgresServer.start()
        do { try await body(server) } catch {
            await server.stop()
            throw error
        }
        await server.stop()
    }

    /// Runs `body` with a migrated store on a fresh server, then stops both.
    func withStore(_ body: (PostgresStore, PostgresServer) async throws -> Void) async throws {
        try await withServer { server in
            let store = Self.client(server)
            try await withThrowingTaskGroup(of: Void.self) { group in
                group.addTask { try await store.run() }
                defer { group.cancelAll() }
                try await store.waitUntilReachable(timeout: .seconds(10))
                try await store.migrate()
                try await body(store, server)
            }
        }
    }

    static func client(_ server: PostgresServer) -> PostgresStore {
        PostgresStore(location: PostgresLocation(user: "corral", host: "127.0.0.1", port: server.port, database: "corral"),
                      password: PostgresServer.password, logger: Logger(label: "test"), maximumConnections: 4)
    }

    @Test func migrationsApplyOnceWhenNodesStartTogether() async throws {
        try await withServer { server in
            let (a, b) = (Self.client(server), Self.client(server))
            try await withThrowingTaskGroup(of: Void.self) { group in
                group.addTask { try await a.run() }
                group.addTask { try await b.run() }
                defer { group.cancelAll() }
                try await a.waitUntilReachable(timeout: .seconds(10))
                // Two nodes racing on an empty database: each migration is applied by exactly one.
                async let fromA = a.migrate()
                async let fromB = b.migrate()
                let (appliedA, appliedB) = try await (fromA, fromB)
                #expect(Set(appliedA).isDisjoint(with: appliedB))
                #expect(Set(appliedA + appliedB) == Set(PostgresStore.migrations.map(\.0)))
                #expect(try await a.migrate().isEmpty)
                #expect(try await b.appliedMigrations() == PostgresStore.migrations.map(\.0))
            }
        }
    }

    @Test func everyAccountWriteBumpsTheChangeVersion() async throws {
        try await withStore { store, _ in
            let before = try await store.changeVersion()
            let team = TeamRecord(id: "team-1", name: "one", disabled: false, policy: "{}", createdAt: Date(timeIntervalSince1970: 1_800_000_000))
            try await store.save(team)
            let key = KeyRecord(prefix: "ck-abc", teamID: "team-1", name: "k", hash: "h", policy: "{}", createdAt: team.createdAt, expiresAt: nil, revokedAt: nil)
            try await store.save(key)
            #expect(try await store.changeVersion() == before + 2)
            let found = try #require(try await store.keyWithTeam(prefix: "ck-abc"))
            #expect(found.0 == key && found.1 == team)
            #expect(try await store.saveAdminTokenHashIfAbsent("first") == "first")
            #expect(try await store.saveAdminTokenHashIfAbsent("second") == "first")
            try await store.deleteTeam(id: "team-1")
            #expect(try await store.keyWithTeam(prefix: "ck-abc") == nil)
            #expect(try await store.teams().isEmpty)
        }
    }

    @Test func quotasAreExactAcrossAdmissionsAndSettlements() async throws {
        try await withStore { store, _ in
            let at = Date(timeIntervalSince1970: 1_800_000_000)
            try await store.save(TeamRecord(id: "t", name: "t", disabled: false, policy: "{}", createdAt: at))
            try await store.save(KeyRecord(prefix: "ck-k", teamID: "t", name: "k", hash: "h", policy: "{}", createdAt: at, expiresAt: nil, revokedAt: nil))
            func admission(_ id: String, tokens: Int, team: QuotaLimits = .init(), key: QuotaLimits = .init()) -> QuotaAdmission {
                QuotaAdmission(request: QuotaRequest(id: id, team: "t", key: "ck-k", model: "m", route: "/v1/chat/completions"), tokens: tokens, team: team, key: key)
            }
            let oneAtATime = QuotaLimits(maxParallel: 1, tokensPerDay: 100)
            // One batch: the first takes the only slot; the second is refused for it.
            let decisions = try await store.admit([admission("r1", tokens: 40, team: oneAtATime), admission("r2", tokens: 10, team: oneAtATime)], node: "n1", lease: 60)
            #expect(decisions.map(\.refusal) == [nil, .maxParallel])
            #expect(decisions[1].refusedTeam)
            #expect(try await store.quotaUse(subject: "t") == (day: 40, month: 40, inFlight: 1))
            // Settled at what it used: the slot is free and the day counts 30, not the 40 reserved.
            try await store.settle([QuotaSettlement(reservation: "r1", tokens: 30)])
            #expect(try await store.quotaUse(subject: "t") == (day: 30, month: 30, inFlight: 0))
            // 30 used + 80 asked is over the day's 100; 70 is exactly at it.
            #expect(try await store.admit([admission("r3", tokens: 80, team: oneAtATime)], node: "n1", lease: 60).map(\.refusal) == [.tokensPerDay])
            #expect(try await store.admit([admission("r4", tokens: 70, team: oneAtATime)], node: "n1", lease: 60).map(\.refusal) == [nil])
            // An unknown key is refused as such, whatever its limits.
            let stranger = QuotaAdmission(request: QuotaRequest(id: "r5", team: "t", key: "ck-none", model: "m", route: "/"), tokens: 1, team: .init(), key: .init())
            #expect(try await store.admit([stranger], node: "n1", lease: 60).map(\.refusal) == [.keyUnknown])
        }
    }

    @Test func aLostNodesRequestsAreWrittenOnceAndItsReservationsReleased() async throws {
        try await withStore { store, _ in
            let at = Date(timeIntervalSince1970: 1_800_000_000)
            try await store.save(TeamRecord(id: "t", name: "t", disabled: false, policy: "{}", createdAt: at))
            try await store.save(KeyRecord(prefix: "ck-k", teamID: "t", name: "k", hash: "h", policy: "{}", createdAt: at, expiresAt: nil, revokedAt: nil))
            try await store.heartbeat(NodeRecord(name: "n1", url: "http://127.0.0.1:1", version: "test", state: "serving", detail: "{}", started: 0))
            #expect(try await store.nodes().map(\.name) == ["n1"])
            let admission = QuotaAdmission(request: QuotaRequest(id: "lost-1", team: "t", key: "ck-k", model: "m", route: "/v1/chat/completions"),
                                           tokens: 5, team: QuotaLimits(maxParallel: 1), key: .init())
            #expect(try await store.admit([admission], node: "n1", lease: 0.05).map(\.refusal) == [nil])
            try await Task.sleep(for: .milliseconds(100))
            // n1 went silent: its request gets a node_lost row, once however often recovery runs.
            #expect(try await store.recoverLostRequests(staleAfter: 0.05) == 1)
            #expect(try await store.recoverLostRequests(staleAfter: 0.05) == 0)
            let rows = try await store.usageRows(from: .distantPast, to: .distantFuture, team: "t", model: nil, limit: 10)
            #expect(rows.map(\.requestID) == ["lost-1"] && rows.first?.errorKind == "node_lost")
            // Its lease expired: the slot it held is free again.
            try await store.releaseExpiredLeases()
            #expect(try await store.quotaUse(subject: "t").inFlight == 0)
            try await store.removeNode("n1")
            #expect(try await store.nodes().isEmpty)
        }
    }
}
