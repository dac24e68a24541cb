import Foundation
import PostgresNIO
import Store

/// A function that always returns a row returned none.
struct NoRow: Error, CustomStringConvertible {
    let function: String
    var description: String { "\(function) returned no row" }
}

extension PostgresStore: SharedQuotaStore {
    public func admit(_ batch: [QuotaAdmission], node: String, lease: Double) async throws -> [QuotaDecision] {
        guard !batch.isEmpty else { return [] }
        let json = String(decoding: try JSONEncoder().encode(batch.map(AdmissionJSON.init)), as: UTF8.self)
        var decisions = [QuotaDecision?](repeating: nil, count: batch.count)
        for try await (index, decision) in try await client.execute(AdmitMany(batch: json, node: node, lease: lease), logger: logger)
            where decisions.indices.contains(index)
        {
            decisions[index] = decision
        }
        return try decisions.map { decision in
            guard let decision else { throw NoRow(function: "corral_quota_admit_many") }
            return decision
        }
    }

    public func settle(_ settlements: [QuotaSettlement]) async throws {
        guard !settlements.isEmpty else { return }
        try await client.query(
            "SELECT corral_quota_settle_many(\(settlements.map(\.reservation))::TEXT[], \(settlements.map(\.tokens))::INT[])", logger: logger)
    }

    public func renewLeases(node: String, lease: Double) async throws {
        try await client.query("""
            UPDATE quota_lease SET lease_until = EXTRACT(EPOCH FROM clock_timestamp()) + \(lease) WHERE node = \(node) AND state = 'live'
            """, logger: logger)
    }

    public func releaseExpiredLeases() async throws {
        try await client.query("SELECT corral_quota_release_expired()", logger: logger)
    }

    public func recoverLostRequests(staleAfter: Double) async throws -> Int {
        // One statement: marking the leases and writing their rows commit together, so two
        // nodes recovering at once write each row once; a row the lost node wrote is kept.
        let rows = try await client.query("""
            WITH lost AS (
              UPDATE quota_lease SET recovered = true
              WHERE NOT recovered AND node IN (
                SELECT name FROM cluster_node WHERE heartbeat < EXTRACT(EPOCH FROM clock_timestamp()) - \(staleAfter))
              RETURNING reservation, node, at, team, key_prefix, model, route
            )
            INSERT INTO usage (request_id, ts, team, key_prefix, model, route, status, error_kind, queue_ms, load_ms, total_ms, client_disconnected, node)
            SELECT reservation, to_timestamp(at), team, key_prefix, model, route, 502, 'node_lost', 0, 0, 0, false, node FROM lost
            ON CONFLICT (request_id) DO NOTHING
            RETURNING request_id
            """, logger: logger)
        var n = 0
        for try await _ in rows { n += 1 }
        return n
    }

    public func quotaUse(subject: String) async throws -> (day: Int, month: Int, inFlight: Int) {
        let rows = try await client.query("""
            WITH per AS (SELECT * FROM corral_quota_periods(EXTRACT(EPOCH FROM clock_timestamp())::FLOAT8))
            SELECT
              COALESCE((SELECT used FROM quota_usage, per WHERE subject = \(subject) AND period = per.o_day), 0)::BIGINT,
              COALESCE((SELECT used FROM quota_usage, per WHERE subject = \(subject) AND period = per.o_month), 0)::BIGINT,
              COALESCE((SELECT reserved FROM quota_subject WHERE subject = \(subject)), 0)::BIGINT,
              COALESCE((SELECT in_flight FROM quota_subject WHERE subject = \(subject)), 0)::BIGINT
            """, logger: logger)
        for try await (day, month, reserved, inFlight) in rows.decode((Int, Int, Int, Int).self) {
            return (day + reserved, month + reserved, inFlight)
        }
        return (0, 0, 0)
    }
}

/// `corral_quota_admit_many` as a prepared statement: parsed once per connection, not per batch
/// (admission is on every request's path).
private struct AdmitMany: PostgresPreparedStatement {
    static let sql = "SELECT * FROM corral_quota_admit_many($1::JSONB, $2, $3::FLOAT8)"
    typealias Row = (Int, QuotaDecision)

    var batch: String
    var node: String
    var lease: Double

    func makeBindings() throws -> PostgresBindings {
        var bindings = PostgresBindings(capacity: 3)
        bindings.append(batch)
        bindings.append(node)
        bindings.append(lease)
        return bindings
    }

    func decodeRow(_ row: PostgresRow) throws -> Row {
        let (index, refusal, refusedTeam, retry, tRequests, tTokens, tReset, kRequests, kTokens, kReset) = try row.decode(
            (Int, String?, Bool, Double, Int, Int, Double, Int, Int, Double).self)
        return (index, QuotaDecision(
            refusal: refusal.map { QuotaRefusal(rawValue: $0) ?? .keyUnknown }, refusedTeam: refusedTeam, retryAfter: retry,
            team: QuotaMinute(requests: tRequests, tokens: tTokens, resetSeconds: tReset),
            key: QuotaMinute(requests: kRequests, tokens: kTokens, resetSeconds: kReset)))
    }
}

/// One admission as `corral_quota_admit_many` reads it (a missing limit is none).
private struct AdmissionJSON: Encodable {
    var id, team, key, model, route: String
    var tokens: Int
    var t_rpm, t_tpm, t_parallel, t_day, t_month: Int?
    var k_rpm, k_tpm, k_parallel, k_day, k_month: Int?

    init(_ a: QuotaAdmission) {
        (id, team, key, model, route, tokens) = (a.request.id, a.request.team, a.request.key, a.request.model, a.request.route, a.tokens)
        (t_rpm, t_tpm, t_parallel, t_day, t_month) = (a.team.requestsPerMinute, a.team.tokensPerMinute, a.team.maxParallel, a.team.tokensPerDay, a.team.tokensPerMonth)
        (k_rpm, k_tpm, k_parallel, k_day, k_month) = (a.key.requestsPerMinute, a.key.tokensPerMinute, a.key.maxParallel, a.key.tokensPerDay, a.key.tokensPerMonth)
    }
}

extension PostgresStore: NodeRegistryStore {
    public func heartbeat(_ node: NodeRecord) async throws {
        try await client.query("""
            INSERT INTO cluster_node (name, url, version, state, detail, heartbeat, started)
            VALUES (\(node.name), \(node.url), \(node.version), \(node.state), \(node.detail), EXTRACT(EPOCH FROM clock_timestamp()), \(node.started))
            ON CONFLICT (name) DO UPDATE SET url = EXCLUDED.url, version = EXCLUDED.version, state = EXCLUDED.state, detail = EXCLUDED.detail,
              heartbeat = EXCLUDED.heartbeat, started = EXCLUDED.started
            """, logger: logger)
    }

    public func nodes() async throws -> [NodeRecord] {
        var out: [NodeRecord] = []
        let rows = try await client.query("""
            SELECT name, url, version, state, detail, EXTRACT(EPOCH FROM clock_timestamp())::FLOAT8 - heartbeat, started FROM cluster_node ORDER BY name
            """, logger: logger)
        for try await (name, url, version, state, detail, age, started) in rows.decode((String, String, String, String, String, Double, Double).self) {
            out.append(NodeRecord(name: name, url: url, version: version, state: state, detail: detail, age: age, started: started))
        }
        return out
    }

    public func removeNode(_ name: String) async throws {
        try await client.query("DELETE FROM cluster_node WHERE name = \(name)", logger: logger)
    }
}
