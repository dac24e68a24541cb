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
            var teams: [TeamView] = []
            for team in access.teams() { teams.append(await access.view(team)) }
            return try Wire.response(["teams": teams])
        }
        admin.post("teams", .init("Create a team", body: .object(Self.limits.merging(["name": .string]) { a, _ in a }, required: ["name"]), status: 201, errors: [400, 409])) { request, context in
            let body = try await mapped { try await Wire.decode(AccountRequest.self, request, context: context) }
            let team = try await mapped { try await access.createTeam(body) }
            return try Wire.response(await access.view(team), status: .created)
        }
        admin.get("teams/{team}", .init("A team and its keys", path: team)) { _, context in
            let id = try context.parameters.require("team")
            guard let team = access.team(id) else { throw OpenAIError(.notFound, "no team '\(id)'", code: "not_found") }
            return try Wire.response(await access.view(team, withKeys: true))
        }
        admin.patch("teams/{team}", .init("Rename, change limits, disable or enable", path: team,
                                          body: .object(Self.limits.merging(["name": .string, "disabled": .boolean]) { a, _ in a }), errors: [400, 404, 409])) { request, context in
            let id = try context.parameters.require("team")
            let body = try await mapped { try await Wire.decode(AccountRequest.self, request, context: context) }
            return try Wire.response(await access.view(try await mapped { try await access.updateTeam(id, body) }))
        }
        admin.delete("teams/{team}", .init("Delete a team and its keys", path: team, status: 204, errors: [404])) { _, context in
            let id = try context.parameters.require("team")
            try await mapped { try await access.deleteTeam(id) }
            return Response(status: .noContent)
        }
        admin.post("teams/{team}/keys", .init("Create a key (the key is in this answer only)", path: team, body: keyBody, status: 201)) { request, context in
            let id = try context.parameters.require("team")
            // No body, or one that is not a JSON object, makes a key with no limits of its own.
            let body = try await mapped { () async throws -> AccountRequest in
                do { return try await Wire.decode(AccountRequest.self, request, context: context) } catch is OpenAIError { return AccountRequest() }
            }
            let expiresAt = try Self.expiry(body)
            let (key, record) = try await mapped {
                try await access.createKey(team: id, name: body.name ?? "", expiresAt: expiresAt ?? nil, policy: body.limits.applied(to: Policy()))
            }
            return try Wire.response(KeyView(record, key: key), status: .created)
        }
        admin.get("keys", .init("Keys (never the key itself)", query: [.init("team", .string)], errors: [])) { request, _ in
            let team = request.uri.queryParameters.get("team").flatMap { access.team($0)?.id ?? $0 }
            return try Wire.response(["keys": access.keys(team: team).map { KeyView($0) }])
        }
        admin.patch("keys/{prefix}", .init("Change a key's limits or expiry", path: prefix,
                                           body: .object(Self.limits.merging(["expiresIn": .string, "expiresAt": .nullableDateTime]) { a, _ in a }))) { request, context in
            let prefix = try context.parameters.require("prefix")
            let body = try await mapped { try await Wire.decode(AccountRequest.self, request, context: context) }
            let expiresAt = try Self.expiry(body)
            return try Wire.response(KeyView(try await mapped { try await access.updateKey(prefix, body, expiresAt: expiresAt) }))
        }
        admin.post("keys/{prefix}/rotate", .init("Revoke a key and issue a new one with the same settings", path: prefix, status: 201, errors: [404, 409])) { _, context in
            let prefix = try context.parameters.require("prefix")
            let (key, record) = try await mapped { try await access.rotateKey(prefix) }
            return try Wire.response(KeyView(record, key: key), status: .created)
        }
        for method in ["revoke", ""] {
            let handler: @Sendable (Request, GatewayRequestContext) async throws -> Response = { _, context in
                let prefix = try context.parameters.require("prefix")
                return try Wire.response(KeyView(try await mapped { try await access.revokeKey(prefix) }))
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

    /// The body's expiry: `expiresIn` (a duration from now) or `expiresAt`; nil when absent.
    static func expiry(_ body: AccountRequest) throws(OpenAIError) -> Date?? {
        guard let text = body.expiresIn else { return body.expiresAt }
        guard let d = parseDuration(text), d > .zero else { throw .badRequest(AccountRequest.expiresInProblem, param: "expiresIn") }
        return .some(Date().addingTimeInterval(Double(d.components.seconds)))
    }

    // MARK: Usage and stats (from the ledger)

    /// `from`/`to` query parameters (RFC 3339), defaulting to the last `defaultSpan` seconds.
    static func range(_ request: Request, defaultSpan: TimeInterval) throws -> (Date, Date) {
        let q = request.uri.queryParameters
        let to = try q.get("to").map { s in guard let d = rfc3339Date(s) else { throw OpenAIError.badRequest("to must be an RFC 3339 time", param: "to") }; return d } ?? Date().addingTimeInterval(1)
        let from = try q.get("from").map { s in guard let d = rfc3339Date(s) else { throw OpenAIError.badRequest("from must be an RFC 3339 time", param: "from") }; return d } ?? to.addingTimeInterval(-defaultSpan)
        return (from, to)
    }

    func usage(_ request: Request) async throws -> Response {
        guard let store else { throw OpenAIError(.serviceUnavailable, "no database", code: "no_store") }
        let (from, to) = try Self.range(request, defaultSpan: 7 * 86_400)
        let q = request.uri.queryParameters
        // Encoded by `Codable`: `JSONSerialization` of a thousand dictionaries (a week by hour)
        // cost more than the query.
        return try Wire.response(try await mapped { try await store.usageReport(from: from, to: to, group: q.get("group"), bucket: q.get("bucket")) })
    }

    func requests(_ request: Request) async throws -> Response {
        guard let store else { throw OpenAIError(.serviceUnavailable, "no database", code: "no_store") }
        let (from, to) = try Self.range(request, defaultSpan: 86_400)
        let q = request.uri.queryParameters
        let limit = min(10_000, max(1, Int(q.get("limit") ?? "") ?? 200))
        let rows = try await store.usageRows(from: from, to: to, team: q.get("team"), model: q.get("model"), limit: limit)
        return try Wire.response(["data": rows])
    }

    /// Percentiles per model over a window (an hour by default), from rollups.
    func stats(_ request: Request) async throws -> Response {
        guard let store else { throw OpenAIError(.serviceUnavailable, "no database", code: "no_store") }
        let window = parseDuration(request.uri.queryParameters.get("window") ?? "1h") ?? .seconds(3600)
        return try Wire.response(try await store.statsReport(window: window))
    }
}

extension JSONEncoder {
    static var iso: JSONEncoder {
        let e = JSONEncoder()
        e.dateEncodingStrategy = .iso8601
        return e
    }
}
