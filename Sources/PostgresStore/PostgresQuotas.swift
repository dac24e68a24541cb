import Foundation
import PostgresNIO
import Store

extension PostgresStore: SharedQuotaStore {
    public func reserve<Refusal: Error>(
        _ request: QuotaRequest, node: String, lease: Double,
        decide: (_ now: Double, _ credentials: QuotaCredentials, _ team: QuotaWindow, _ key: QuotaWindow) -> Result<QuotaGrant, Refusal>
    ) async throws -> Result<QuotaGrant, Refusal> {
        let (reservation, team, key) = (request.id, request.team, request.key)
        return try await client.withTransaction(logger: logger) { tx in
            // The team first, then the key: every node locks in this order, so two admissions
            // never wait on each other in a cycle. The locks end with the transaction.
            var now = 0.0
            var credentials = QuotaCredentials(keyExists: false, keyRevoked: false, teamDisabled: false)
            let head = try await tx.query("""
                SELECT pg_advisory_xact_lock(hashtext(\(team))), pg_advisory_xact_lock(hashtext(\(key))),
                  EXTRACT(EPOCH FROM clock_timestamp())::FLOAT8,
                  (SELECT revoked_at IS NOT NULL FROM api_key WHERE prefix = \(key)),
                  (SELECT disabled FROM team WHERE id = \(team))
                """, logger: logger)
            for try await row in head {
                let r = row.makeRandomAccess()
                now = try r[2].decode(Double.self)
                let revoked = try r[3].decode(Bool?.self)
                credentials = QuotaCredentials(keyExists: revoked != nil, keyRevoked: revoked ?? false, teamDisabled: try r[4].decode(Bool?.self) ?? true)
            }
            let (day, month) = Self.periodKeys(now)
            var windows = [team: QuotaWindow(), key: QuotaWindow()]
            let rows = try await tx.query("""
                SELECT subject, at, tokens, settled, lease_until > \(now) FROM quota_entry
                WHERE subject IN (\(team), \(key)) AND (at > \(now - 60) OR (NOT settled AND lease_until > \(now)))
                """, logger: logger)
            for try await (subject, at, tokens, settled, live) in rows.decode((String, Double, Int, Bool, Bool).self) {
                guard settled || live else { continue }  // a dead node's reservation: released
                if at > now - 60 {
                    windows[subject]?.requestTimes.append(at)
                    windows[subject]?.tokenEntries.append(QuotaEntry(at: at, tokens: tokens))
                }
                if !settled {
                    windows[subject]?.inFlight += 1
                    windows[subject]?.reserved += tokens
                }
            }
            let used = try await tx.query("""
                SELECT subject, period, used FROM quota_usage WHERE subject IN (\(team), \(key)) AND period IN (\(day), \(month))
                """, logger: logger)
            for try await (subject, period, n) in used.decode((String, String, Int).self) {
                if period == day { windows[subject]?.dayUsed = n } else { windows[subject]?.monthUsed = n }
            }
            for k in [team, key] {
                windows[k]?.requestTimes.sort()
                windows[k]?.tokenEntries.sort { $0.at < $1.at }
            }
            let decision = decide(now, credentials, windows[team]!, windows[key]!)
            if case .success(let grant) = decision {
                let tokens = grant.tokens
                try await tx.query("""
                    INSERT INTO quota_entry (reservation, subject, node, at, tokens, lease_until, team, key_prefix, model, route)
                    SELECT \(reservation), s, \(node), \(now), \(tokens), \(now + lease), \(team), \(key), \(request.model), \(request.route)
                    FROM unnest(ARRAY[\(team), \(key)]) AS s
                    """, logger: logger)
            }
            return decision
        }
    }

    public func settle(reservation: String, tokens: Int) async throws {
        try await client.withTransaction(logger: logger) { tx in
            var settled: [(String, Double)] = []
            let rows = try await tx.query("""
                UPDATE quota_entry SET tokens = \(tokens), settled = true WHERE reservation = \(reservation) AND NOT settled RETURNING subject, at
                """, logger: logger)
            for try await (subject, at) in rows.decode((String, Double).self) { settled.append((subject, at)) }
            guard tokens > 0 else { return }
            for (subject, at) in settled {
                let (day, month) = Self.periodKeys(at)
                try await tx.query("""
                    INSERT INTO quota_usage (subject, period, used) VALUES (\(subject), \(day), \(tokens)), (\(subject), \(month), \(tokens))
                    ON CONFLICT (subject, period) DO UPDATE SET used = quota_usage.used + EXCLUDED.used
                    """, logger: logger)
            }
        }
    }

    public func renewLeases(node: String, lease: Double) async throws {
        try await client.query("""
            UPDATE quota_entry SET lease_until = EXTRACT(EPOCH FROM clock_timestamp()) + \(lease) WHERE node = \(node) AND NOT settled
            """, logger: logger)
        // Entries older than the minute window are needed no more once settled or released.
        try await client.query("""
            DELETE FROM quota_entry WHERE at < EXTRACT(EPOCH FROM clock_timestamp()) - 120
              AND (settled OR lease_until < EXTRACT(EPOCH FROM clock_timestamp()))
            """, logger: logger)
    }

    public func recoverLostRequests(staleAfter: Double) async throws -> Int {
        // One statement: marking the entries and writing their rows commit together, so two
        // nodes recovering at once write each row once; a row the lost node wrote is kept.
        let rows = try await client.query("""
            WITH lost AS (
              UPDATE quota_entry SET recovered = true
              WHERE NOT recovered AND node IN (
                SELECT name FROM cluster_node WHERE heartbeat < EXTRACT(EPOCH FROM clock_timestamp()) - \(staleAfter))
              RETURNING reservation, subject, node, at, tokens, settled, team, key_prefix, model, route
            )
            INSERT INTO usage (request_id, ts, team, key_prefix, model, route, status, error_kind, queue_ms, load_ms, total_ms, client_disconnected, node)
            SELECT DISTINCT ON (reservation) reservation, to_timestamp(at), team, key_prefix, model, route, 502, 'node_lost', 0, 0, 0, false, node
            FROM lost WHERE subject = team
            ON CONFLICT (request_id) DO NOTHING
            RETURNING request_id
            """, logger: logger)
        var n = 0
        for try await _ in rows { n += 1 }
        return n
    }

    /// The UTC day and month of an epoch time as `quota_usage` periods.
    static func periodKeys(_ t: Double) -> (day: String, month: String) {
        var calendar = Calendar(identifier: .gregorian)
        calendar.timeZone = TimeZone(identifier: "UTC")!
        let c = calendar.dateComponents([.year, .month], from: Date(timeIntervalSince1970: t))
        return ("d:\(Int((t / 86_400).rounded(.down)))", "m:\(c.year! * 12 + c.month!)")
    }

    /// Tokens reserved (live) and settled today and this month by a subject, for the admin view.
    public func quotaUse(subject: String) async throws -> (day: Int, month: Int, inFlight: Int) {
        var now = Date().timeIntervalSince1970
        for try await t in try await client.query("SELECT EXTRACT(EPOCH FROM clock_timestamp())::FLOAT8", logger: logger).decode(Double.self) { now = t }
        let (day, month) = Self.periodKeys(now)
        var result = (day: 0, month: 0, inFlight: 0)
        for try await (period, n) in try await client.query(
            "SELECT period, used FROM quota_usage WHERE subject = \(subject) AND period IN (\(day), \(month))", logger: logger
        ).decode((String, Int).self) {
            if period == day { result.day = n } else { result.month = n }
        }
        for try await (count, reserved) in try await client.query("""
            SELECT COUNT(*)::BIGINT, COALESCE(SUM(tokens), 0)::BIGINT FROM quota_entry WHERE subject = \(subject) AND NOT settled AND lease_until > \(now)
            """, logger: logger).decode((Int, Int).self) {
            result.inFlight = count
            result.day += reserved
            result.month += reserved
        }
        return result
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
