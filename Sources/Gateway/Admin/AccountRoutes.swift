import Access
import Foundation
import Hummingbird
import Runtime
import Store

/// Teams, keys, usage and stats under `/admin` (the admin token is checked by `AuthMiddleware`).
struct AccountRoutes: Sendable {
    let access: AccessControl
    let store: (any AccountStore)?

    /// The limit fields teams and keys share.
    static let limits: [String: JSONSchema] = [
        "models": .nullableStrings, "requestsPerMinute": .nullableCount, "tokensPerMinute": .nullableCount, "maxParallel": .nullableCount,
        "tokensPerDay": .nullableCount, "tokensPerMonth": .nullableCount,
    ]

    func register(on admin: AdminAPIGroup) {
        let team = ["team": "team id or name"], prefix = ["prefix": "visible key prefix"]
        let keyBody = JSONSchema.object(Self.limits.merging(["name": .string, "expiresIn": .string, "expiresAt": .nullableDateTime]) { a, _ in a })
        admin.get("teams", .init("Teams with today's and this month's tokens", errors: [])) { _, _ in
            var teams: [[String: Any]] = []
            for team in access.teams() { teams.append(await teamObject(team)) }
            return jsonResponse(["teams": teams])
        }
        admin.post("teams", .init("Create a team", body: .object(Self.limits.merging(["name": .string]) { a, _ in a }, required: ["name"]), status: 201, errors: [400, 409])) { request, context in
            let body = try await Relay.readJSON(request, context: context).1
            guard let name = body["name"] as? String else { throw OpenAIError.badRequest("name is required", param: "name") }
            let team = try await mapped { try await access.createTeam(name: name, policy: try Policy.parse(body)) }
            return jsonResponse(await teamObject(team), status: .created)
        }
        admin.get("teams/{team}", .init("A team and its keys", path: team)) { _, context in
            let id = try context.parameters.require("team")
            guard let team = access.team(id) else { throw OpenAIError(.notFound, "no team '\(id)'", code: "not_found") }
            var object = await teamObject(team)
            object["keys"] = access.keys(team: team.id).map(keyObject)
            return jsonResponse(object)
        }
        admin.patch("teams/{team}", .init("Rename, change limits, disable or enable", path: team,
                                          body: .object(Self.limits.merging(["name": .string, "disabled": .boolean]) { a, _ in a }), errors: [400, 404, 409])) { request, context in
            let id = try context.parameters.require("team")
            let body = try await Relay.readJSON(request, context: context).1
            guard let current = access.team(id) else { throw OpenAIError(.notFound, "no team '\(id)'", code: "not_found") }
            if let d = body["disabled"], !(d is Bool) { throw OpenAIError.badRequest("disabled must be a boolean", param: "disabled") }
            let team = try await mapped {
                try await access.updateTeam(
                    id, name: body["name"] as? String, policy: try Policy.parse(body, base: Self.updatable(current.policy)),
                    disabled: body["disabled"] as? Bool)
            }
            return jsonResponse(await teamObject(team))
        }
        admin.delete("teams/{team}", .init("Delete a team and its keys", path: team, status: 204, errors: [404])) { _, context in
            let id = try context.parameters.require("team")
            try await mapped { try await access.deleteTeam(id) }
            return Response(status: .noContent)
        }
        admin.post("teams/{team}/keys", .init("Create a key (the key is in this answer only)", path: team, body: keyBody, status: 201)) { request, context in
            let id = try context.parameters.require("team")
            let body = (try? await Relay.readJSON(request, context: context).1) ?? [:]
            let expiresAt = try Self.expiry(body)
            let (key, record) = try await mapped {
                try await access.createKey(team: id, name: body["name"] as? String ?? "", expiresAt: expiresAt ?? nil, policy: try Policy.parse(body))
            }
            var object = keyObject(record)
            object["key"] = key  // the only time the key is shown
            return jsonResponse(object, status: .created)
        }
        admin.get("keys", .init("Keys (never the key itself)", query: [.init("team", .string)], errors: [])) { request, _ in
            let team = request.uri.queryParameters.get("team").flatMap { access.team($0)?.id ?? $0 }
            return jsonResponse(["keys": access.keys(team: team).map(keyObject)])
        }
        admin.patch("keys/{prefix}", .init("Change a key's limits or expiry", path: prefix,
                                           body: .object(Self.limits.merging(["expiresIn": .string, "expiresAt": .nullableDateTime]) { a, _ in a }))) { request, context in
            let prefix = try context.parameters.require("prefix")
            let body = try await Relay.readJSON(request, context: context).1
            guard let current = access.key(prefix) else { throw OpenAIError(.notFound, "no key '\(prefix)'", code: "not_found") }
            let expiresAt = try Self.expiry(body)
            let record = try await mapped {
                try await access.updateKey(prefix, policy: try Policy.parse(body, base: Self.updatable(current.policy)), expiresAt: expiresAt)
            }
            return jsonResponse(keyObject(record))
        }
        admin.post("keys/{prefix}/rotate", .init("Revoke a key and issue a new one with the same settings", path: prefix, status: 201, errors: [404, 409])) { _, context in
            let prefix = try context.parameters.require("prefix")
            let (key, record) = try await mapped { try await access.rotateKey(prefix) }
            var object = keyObject(record)
            object["key"] = key
            return jsonResponse(object, status: .created)
        }
        for method in ["revoke", ""] {
            let handler: @Sendable (Request, GatewayRequestContext) async throws -> Response = { _, context in
                let prefix = try context.parameters.require("prefix")
                let record = try await mapped { try await access.revokeKey(prefix) }
                return jsonResponse(keyObject(record))
            }
            if method.isEmpty {
                admin.delete("keys/{prefix}", .init("Revoke a key", path: prefix), use: handler)
            } else {
                admin.post("keys/{prefix}/revoke", .init("Revoke a key", path: prefix), use: handler)
            }
        }
        admin.get("usage", .init("Ledger sums by team, key or model and day or hour", query: [
            .init("group", .enumeration(["team", "key", "model"])), .init("bucket", .enumeration(["day", "hour"])),
            .init("from", .dateTime), .init("to", .dateTime),
        ], errors: [400])) { request, _ in try await usage(request) }
        admin.get("usage/requests", .init("Ledger rows, newest first", query: [
            .init("from", .dateTime), .init("to", .dateTime), .init("team", .string), .init("model", .string),
            .init("limit", .integer(minimum: 1, maximum: 10_000)),
        ], errors: [400])) { request, _ in try await requests(request) }
        admin.get("stats", .init("Per-model latency, time to first token and tokens/s percentiles over a window",
                                 query: [.init("window", .string, "e.g. 1h, 30m")], errors: [])) { request, _ in try await stats(request) }
    }

    /// `expiresAt` (RFC 3339 or null) or `expiresIn` (a duration) from a body; nil when absent.
    static func expiry(_ body: [String: Any]) throws -> Date?? {
        if let s = body["expiresIn"] {
            guard let d = parseDuration(s), d > .zero else { throw OpenAIError.badRequest("expiresIn must be a duration like \"30d\", \"12h\" or seconds", param: "expiresIn") }
            return .some(Date().addingTimeInterval(Double(d.components.seconds)))
        }
        guard body.keys.contains("expiresAt") else { return .none }
        if body["expiresAt"] is NSNull { return .some(nil) }
        guard let s = body["expiresAt"] as? String, let date = parseDate(s) else {
            throw OpenAIError.badRequest("expiresAt must be an RFC 3339 time or null", param: "expiresAt")
        }
        return .some(date)
    }

    func teamObject(_ t: TeamRecord) async -> [String: Any] {
        let usage = await access.usage(team: t.id)
        return [
            "id": t.id, "name": t.name, "disabled": t.disabled, "createdAt": iso(t.createdAt), "limits": limits(t.policy),
            "usage": ["tokensToday": usage.day, "tokensThisMonth": usage.month, "inFlight": usage.inFlight],
        ]
    }

    /// A stored policy as the admin API shows it; one that cannot be read says so (its requests are refused).
    func limits(_ json: String) -> Any {
        do { return policyObject(try Policy.decode(json)) } catch { return ["unreadable": error.description] }
    }

    /// What an update of a stored policy starts from: the policy, or no model allowed when it
    /// cannot be read (the update names the models again).
    static func updatable(_ json: String) -> Policy {
        do { return try Policy.decode(json) } catch { return Policy.refuseAll }
    }

    func keyObject(_ k: KeyRecord) -> [String: Any] {
        let state = k.revokedAt != nil ? "revoked" : (k.expiresAt.map { $0 <= Date() } ?? false) ? "expired" : "active"
        var o: [String: Any] = [
            "prefix": k.prefix, "team": k.teamID, "name": k.name, "createdAt": iso(k.createdAt), "state": state,
            "limits": limits(k.policy),
        ]
        o["expiresAt"] = k.expiresAt.map(iso) ?? NSNull()
        o["revokedAt"] = k.revokedAt.map(iso) ?? NSNull()
        return o
    }

    func policyObject(_ p: Policy) -> [String: Any] {
        [
            "models": p.models ?? NSNull(), "requestsPerMinute": p.requestsPerMinute ?? NSNull(), "tokensPerMinute": p.tokensPerMinute ?? NSNull(),
            "maxParallel": p.maxParallel ?? NSNull(), "tokensPerDay": p.tokensPerDay ?? NSNull(), "tokensPerMonth": p.tokensPerMonth ?? NSNull(),
        ]
    }

    // MARK: Usage and stats (from the ledger)

    /// `from`/`to` query parameters (RFC 3339), defaulting to the last `defaultSpan` seconds.
    static func range(_ request: Request, defaultSpan: TimeInterval) throws -> (Date, Date) {
        let q = request.uri.queryParameters
        let to = try q.get("to").map { s in guard let d = parseDate(s) else { throw OpenAIError.badRequest("to must be an RFC 3339 time", param: "to") }; return d } ?? Date().addingTimeInterval(1)
        let from = try q.get("from").map { s in guard let d = parseDate(s) else { throw OpenAIError.badRequest("from must be an RFC 3339 time", param: "from") }; return d } ?? to.addingTimeInterval(-defaultSpan)
        return (from, to)
    }

    func usage(_ request: Request) async throws -> Response {
        guard let store else { throw OpenAIError(.serviceUnavailable, "no database", code: "no_store") }
        let (from, to) = try Self.range(request, defaultSpan: 7 * 86_400)
        let q = request.uri.queryParameters
        let group = ["team": "team", "key": "keyPrefix", "model": "model"][q.get("group") ?? "team"]
        let bucket = ["day": "%Y-%m-%d", "hour": "%Y-%m-%dT%H:00"][q.get("bucket") ?? "day"]
        guard let group, let bucket else { throw OpenAIError.badRequest("group must be team, key or model; bucket day or hour") }
        let rows = try await store.usageSummary(from: from, to: to, group: group, bucketFormat: bucket)
        // Encoded by `Codable` (sorted keys): `JSONSerialization` of a thousand dictionaries
        // (a week by hour) cost more than the query.
        return try Wire.response(UsageAnswer(from: iso(from), to: iso(to), group: q.get("group") ?? "team", bucket: q.get("bucket") ?? "day", data: rows))
    }

    /// `/admin/usage`'s answer: each bucket names its group under the group's own name.
    struct UsageAnswer: Encodable {
        let from: String
        let to: String
        let group: String
        let bucket: String
        let data: [UsageBucket]

        struct Key: CodingKey {
            var stringValue: String
            var intValue: Int? { nil }
            init(stringValue: String) { self.stringValue = stringValue }
            init?(intValue: Int) { nil }
        }

        func encode(to encoder: any Encoder) throws {
            var top = encoder.container(keyedBy: Key.self)
            try top.encode(from, forKey: Key(stringValue: "from"))
            try top.encode(to, forKey: Key(stringValue: "to"))
            try top.encode(group, forKey: Key(stringValue: "group"))
            try top.encode(bucket, forKey: Key(stringValue: "bucket"))
            var list = top.nestedUnkeyedContainer(forKey: Key(stringValue: "data"))
            for b in data {
                var o = list.nestedContainer(keyedBy: Key.self)
                if let name = b.group { try o.encode(name, forKey: Key(stringValue: group)) } else { try o.encodeNil(forKey: Key(stringValue: group)) }
                try o.encode(b.bucket, forKey: Key(stringValue: "bucket"))
                try o.encode(b.requests, forKey: Key(stringValue: "requests"))
                try o.encode(b.errors, forKey: Key(stringValue: "errors"))
                try o.encode(b.promptTokens, forKey: Key(stringValue: "promptTokens"))
                try o.encode(b.completionTokens, forKey: Key(stringValue: "completionTokens"))
                try o.encode(b.cachedTokens, forKey: Key(stringValue: "cachedTokens"))
                try o.encode(b.averageTotalMs, forKey: Key(stringValue: "averageTotalMs"))
            }
        }
    }

    func requests(_ request: Request) async throws -> Response {
        guard let store else { throw OpenAIError(.serviceUnavailable, "no database", code: "no_store") }
        let (from, to) = try Self.range(request, defaultSpan: 86_400)
        let q = request.uri.queryParameters
        let limit = min(10_000, max(1, Int(q.get("limit") ?? "") ?? 200))
        let rows = try await store.usageRows(from: from, to: to, team: q.get("team"), model: q.get("model"), limit: limit)
        return try Wire.response(["data": rows])
    }

    /// Percentiles per model over a window, from rollups (minute resolution; each value within
    /// its histogram bucket's width, about 9 %), so the cost follows the window, not the ledger.
    func stats(_ request: Request) async throws -> Response {
        guard let store else { throw OpenAIError(.serviceUnavailable, "no database", code: "no_store") }
        let window = parseDuration(request.uri.queryParameters.get("window") ?? "1h") ?? .seconds(3600)
        let to = Date().addingTimeInterval(1)
        let from = to.addingTimeInterval(-Double(window.components.seconds))
        let models = try await store.modelStats(from: from, to: to)
        let data: [[String: Any]] = models.map { m in
            func pct(_ h: LogHistogram) -> [String: Any] {
                ["p50": h.quantile(0.5) ?? NSNull(), "p95": h.quantile(0.95) ?? NSNull(), "p99": h.quantile(0.99) ?? NSNull()]
            }
            let u = m.usage
            return [
                "model": m.model, "requests": u.requests, "errors": u.errors, "promptTokens": u.promptTokens, "completionTokens": u.completionTokens,
                "latencyMs": pct(u.totalMs), "timeToFirstTokenMs": pct(u.ttftMs),
                "generationTokensPerSecond": pct(u.generationTPS), "promptTokensPerSecond": pct(u.promptTPS),
            ]
        }
        return jsonResponse(["window": "\(window)", "from": iso(from), "to": iso(to), "models": data])
    }
}

/// Parses RFC 3339 with or without fractional seconds.
func parseDate(_ s: String) -> Date? {
    let f = ISO8601DateFormatter()
    f.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
    if let d = f.date(from: s) { return d }
    f.formatOptions = [.withInternetDateTime]
    return f.date(from: s)
}

func iso(_ d: Date) -> String {
    let f = ISO8601DateFormatter()
    f.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
    return f.string(from: d)
}

extension JSONEncoder {
    static var iso: JSONEncoder {
        let e = JSONEncoder()
        e.dateEncodingStrategy = .iso8601
        return e
    }
}
