import Foundation
import PostgresNIO
import Store

extension PostgresStore: AccountStore {
    public func adminTokenHash() async throws -> String? {
        for try await hash in try await client.query("SELECT hash FROM admin_token WHERE id = 1", logger: logger).decode(String.self) { return hash }
        return nil
    }

    public func saveAdminTokenHash(_ hash: String) async throws {
        try await write { tx in
            try await tx.query(
                "INSERT INTO admin_token (id, hash, created_at) VALUES (1, \(hash), now()) ON CONFLICT (id) DO UPDATE SET hash = EXCLUDED.hash, created_at = now()",
                logger: logger)
            try await announceChange(tx)
        }
    }

    public func saveAdminTokenHashIfAbsent(_ hash: String) async throws -> String {
        try await client.withTransaction(logger: logger) { tx in
            try await tx.query("INSERT INTO admin_token (id, hash, created_at) VALUES (1, \(hash), now()) ON CONFLICT (id) DO NOTHING", logger: logger)
            var stored = hash
            for try await h in try await tx.query("SELECT hash FROM admin_token WHERE id = 1", logger: logger).decode(String.self) { stored = h }
            if stored == hash { try await announceChange(tx) }
            return stored
        }
    }

    public func teams() async throws -> [TeamRecord] {
        var out: [TeamRecord] = []
        let rows = try await client.query("SELECT id, name, disabled, policy, created_at FROM team ORDER BY created_at", logger: logger)
        for try await (id, name, disabled, policy, createdAt) in rows.decode((String, String, Bool, String, Date).self) {
            out.append(TeamRecord(id: id, name: name, disabled: disabled, policy: policy, createdAt: createdAt))
        }
        return out
    }

    public func keys() async throws -> [KeyRecord] {
        var out: [KeyRecord] = []
        let rows = try await client.query(
            "SELECT prefix, team_id, name, hash, policy, created_at, expires_at, revoked_at FROM api_key ORDER BY created_at", logger: logger)
        for try await (prefix, team, name, hash, policy, created, expires, revoked) in rows.decode((String, String, String, String, String, Date, Date?, Date?).self) {
            out.append(KeyRecord(prefix: prefix, teamID: team, name: name, hash: hash, policy: policy, createdAt: created, expiresAt: expires, revokedAt: revoked))
        }
        return out
    }

    public func save(_ team: TeamRecord) async throws {
        try await write { tx in
            try await tx.query("""
                INSERT INTO team (id, name, disabled, policy, created_at) VALUES (\(team.id), \(team.name), \(team.disabled), \(team.policy), \(team.createdAt))
                ON CONFLICT (id) DO UPDATE SET name = EXCLUDED.name, disabled = EXCLUDED.disabled, policy = EXCLUDED.policy
                """, logger: logger)
            try await announceChange(tx)
        }
    }

    public func save(_ key: KeyRecord) async throws {
        try await write { tx in
            try await tx.query("""
                INSERT INTO api_key (prefix, team_id, name, hash, policy, created_at, expires_at, revoked_at)
                VALUES (\(key.prefix), \(key.teamID), \(key.name), \(key.hash), \(key.policy), \(key.createdAt), \(key.expiresAt), \(key.revokedAt))
                ON CONFLICT (prefix) DO UPDATE SET name = EXCLUDED.name, policy = EXCLUDED.policy, expires_at = EXCLUDED.expires_at,
                  revoked_at = EXCLUDED.revoked_at
                """, logger: logger)
            try await announceChange(tx)
        }
    }

    public func deleteTeam(id: String) async throws {
        try await write { tx in
            try await tx.query("DELETE FROM api_key WHERE team_id = \(id)", logger: logger)
            try await tx.query("DELETE FROM team WHERE id = \(id)", logger: logger)
            try await announceChange(tx)
        }
    }

    // MARK: Ledger

    static let ledgerColumns = """
        request_id, ts, team, key_prefix, model, route, status, error_kind, prompt_tokens, cached_tokens, completion_tokens,
        queue_ms, load_ms, ttft_ms, total_ms, prompt_tps, generation_tps, client_disconnected, node
        """

    public func appendUsage(_ rows: [LedgerRow]) async throws {
        guard !rows.isEmpty else { return }
        // 19 binds a row; PostgreSQL takes at most 65 535 binds per statement.
        try await write { tx in
            var start = 0
            while start < rows.count {
                let chunk = rows[start..<min(rows.count, start + 1000)]
                start += chunk.count
                var binds = PostgresBindings(capacity: chunk.count * 19)
                var values: [String] = []
                values.reserveCapacity(chunk.count)
                for (i, r) in chunk.enumerated() {
                    let base = i * 19
                    values.append("(" + (1...19).map { "$\(base + $0)" }.joined(separator: ",") + ")")
                    binds.append(r.requestID); binds.append(r.ts); binds.append(r.team); binds.append(r.keyPrefix)
                    binds.append(r.model); binds.append(r.route); binds.append(r.status); binds.append(r.errorKind)
                    binds.append(r.promptTokens); binds.append(r.cachedTokens); binds.append(r.completionTokens)
                    binds.append(r.queueMs); binds.append(r.loadMs); binds.append(r.ttftMs); binds.append(r.totalMs)
                    binds.append(r.promptTPS); binds.append(r.generationTPS); binds.append(r.clientDisconnected); binds.append(r.node)
                }
                let sql = "INSERT INTO usage (\(Self.ledgerColumns)) VALUES \(values.joined(separator: ",")) ON CONFLICT (request_id) DO NOTHING"
                try await tx.query(PostgresQuery(unsafeSQL: sql, binds: binds), logger: logger)
            }
        }
    }

    public func tokensUsed(since start: Date) async throws -> (teams: [String: Int], keys: [String: Int]) {
        var teams: [String: Int] = [:]
        var keys: [String: Int] = [:]
        let rows = try await client.query("""
            SELECT team, key_prefix, SUM(COALESCE(prompt_tokens,0) + COALESCE(completion_tokens,0))::BIGINT FROM usage WHERE ts >= \(start)
            GROUP BY team, key_prefix
            """, logger: logger)
        for try await (team, key, n) in rows.decode((String?, String?, Int?).self) {
            if let team { teams[team, default: 0] += n ?? 0 }
            if let key { keys[key, default: 0] += n ?? 0 }
        }
        return (teams, keys)
    }

    public func usageRows(from: Date, to: Date, team: String?, model: String?, limit: Int) async throws -> [LedgerRow] {
        var out: [LedgerRow] = []
        let rows = try await client.query("""
            SELECT \(unescaped: Self.ledgerColumns) FROM usage WHERE ts >= \(from) AND ts < \(to)
              AND (\(team)::TEXT IS NULL OR team = \(team)) AND (\(model)::TEXT IS NULL OR model = \(model))
            ORDER BY ts DESC LIMIT \(limit)
            """, logger: logger)
        for try await row in rows {
            let r = row.makeRandomAccess()
            out.append(LedgerRow(
                requestID: try r.get("request_id"), ts: try r.get("ts"), team: try r.get("team"), keyPrefix: try r.get("key_prefix"),
                model: try r.get("model"), route: try r.get("route"), status: try r.get("status"), errorKind: try r.get("error_kind"),
                promptTokens: try r.get("prompt_tokens"), cachedTokens: try r.get("cached_tokens"), completionTokens: try r.get("completion_tokens"),
                queueMs: try r.get("queue_ms"), loadMs: try r.get("load_ms"), ttftMs: try r.get("ttft_ms"), totalMs: try r.get("total_ms"),
                promptTPS: try r.get("prompt_tps"), generationTPS: try r.get("generation_tps"), clientDisconnected: try r.get("client_disconnected"),
                node: try r.get("node")))
        }
        return out
    }

    public func usageSummary(from: Date, to: Date, group: String, bucketFormat: String) async throws -> [UsageBucket] {
        let column = ["team": "team", "keyPrefix": "key_prefix", "model": "model"][group]
        // SQLite's strftime patterns as PostgreSQL's to_char patterns.
        let format = ["%Y-%m-%d": "YYYY-MM-DD", "%Y-%m-%dT%H": "YYYY-MM-DD\"T\"HH24"][bucketFormat]
        guard let column, let format else { return [] }
        let rows = try await client.query("""
            SELECT \(unescaped: column) AS grp, to_char(ts AT TIME ZONE 'UTC', \(format)) AS bucket, COUNT(*)::BIGINT,
              SUM(CASE WHEN status >= 400 THEN 1 ELSE 0 END)::BIGINT, SUM(COALESCE(prompt_tokens,0))::BIGINT,
              SUM(COALESCE(completion_tokens,0))::BIGINT, SUM(COALESCE(cached_tokens,0))::BIGINT, AVG(total_ms)::FLOAT8
            FROM usage WHERE ts >= \(from) AND ts < \(to) GROUP BY grp, bucket ORDER BY bucket, grp
            """, logger: logger)
        var out: [UsageBucket] = []
        for try await (grp, bucket, requests, errors, prompt, completion, cached, average) in rows.decode((String?, String, Int, Int, Int, Int, Int, Double?).self) {
            out.append(UsageBucket(group: grp, bucket: bucket, requests: requests, errors: errors, promptTokens: prompt, completionTokens: completion,
                                   cachedTokens: cached, averageTotalMs: average ?? 0))
        }
        return out
    }

    public func usageTotalsByModel() async throws -> [String: (requests: Int, promptTokens: Int, completionTokens: Int)] {
        var out: [String: (Int, Int, Int)] = [:]
        let rows = try await client.query("""
            SELECT model, COUNT(*)::BIGINT, SUM(COALESCE(prompt_tokens,0))::BIGINT, SUM(COALESCE(completion_tokens,0))::BIGINT FROM usage GROUP BY model
            """, logger: logger)
        for try await (model, n, p, c) in rows.decode((String, Int, Int, Int).self) { out[model] = (n, p, c) }
        return out
    }

    public func usageCount() async throws -> Int {
        for try await n in try await client.query("SELECT COUNT(*)::BIGINT FROM usage", logger: logger).decode(Int.self) { return n }
        return 0
    }
}
