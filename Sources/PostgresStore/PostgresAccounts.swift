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

    public func keyWithTeam(prefix: String) async throws -> (KeyRecord, TeamRecord)? {
        let rows = try await client.query("""
            SELECT k.prefix, k.team_id, k.name, k.hash, k.policy, k.created_at, k.expires_at, k.revoked_at, t.name, t.disabled, t.policy, t.created_at
            FROM api_key k JOIN team t ON t.id = k.team_id WHERE k.prefix = \(prefix)
            """, logger: logger)
        for try await (p, team, name, hash, policy, created, expires, revoked, teamName, disabled, teamPolicy, teamCreated) in rows.decode(
            (String, String, String, String, String, Date, Date?, Date?, String, Bool, String, Date).self)
        {
            return (KeyRecord(prefix: p, teamID: team, name: name, hash: hash, policy: policy, createdAt: created, expiresAt: expires, revokedAt: revoked),
                    TeamRecord(id: team, name: teamName, disabled: disabled, policy: teamPolicy, createdAt: teamCreated))
        }
        return nil
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
            var inserted = Set<String>()
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
                let sql = "INSERT INTO usage (\(Self.ledgerColumns)) VALUES \(values.joined(separator: ",")) ON CONFLICT (request_id) DO NOTHING RETURNING request_id"
                for try await id in try await tx.query(PostgresQuery(unsafeSQL: sql, binds: binds), logger: logger).decode(String.self) { inserted.insert(id) }
            }
            // Only rows written now are counted (a row already there came from an earlier try).
            try await applyRollups(tx, UsageRollups.aggregate(rows.filter { inserted.contains($0.requestID) }))
        }
    }

    public func usageRows(from: Date, to: Date, team: String?, model: String?, limit: Int) async throws -> [LedgerRow] {
        var out: [LedgerRow] = []
        let rows = try await client.query("""
            SELECT \(unescaped: Self.ledgerColumns) FROM usage WHERE ts >= \(from) AND ts < \(to)
              AND (\(team)::TEXT IS NULL OR team = \(team)) AND (\(model)::TEXT IS NULL OR model = \(model))
            ORDER BY ts DESC LIMIT \(limit)
            """, logger: logger)
        for try await row in rows { out.append(try Self.ledgerRow(row.makeRandomAccess())) }
        return out
    }

    static func ledgerRow(_ r: PostgresRandomAccessRow) throws -> LedgerRow {
        LedgerRow(
            requestID: try r.get("request_id"), ts: try r.get("ts"), team: try r.get("team"), keyPrefix: try r.get("key_prefix"),
            model: try r.get("model"), route: try r.get("route"), status: try r.get("status"), errorKind: try r.get("error_kind"),
            promptTokens: try r.get("prompt_tokens"), cachedTokens: try r.get("cached_tokens"), completionTokens: try r.get("completion_tokens"),
            queueMs: try r.get("queue_ms"), loadMs: try r.get("load_ms"), ttftMs: try r.get("ttft_ms"), totalMs: try r.get("total_ms"),
            promptTPS: try r.get("prompt_tps"), generationTPS: try r.get("generation_tps"), clientDisconnected: try r.get("client_disconnected"),
            node: try r.get("node"))
    }

    public func usageCount() async throws -> Int {
        for try await n in try await client.query("SELECT COUNT(*)::BIGINT FROM usage", logger: logger).decode(Int.self) { return n }
        return 0
    }
}
