import ArgumentParser
import CorralApp
import Foundation
import Runtime

#if canImport(FoundationNetworking)
    import FoundationNetworking
#endif

/// Where the running gateway is and how to authenticate as its operator.
struct AdminConnection: ParsableArguments {
    @Option(help: "Configuration file (for the listen address and data directory).")
    var config = "routes.json"

    @Option(help: "Gateway base URL (default: from routes.json).")
    var url: String?

    @Option(help: "Admin token (default: $CORRAL_ADMIN_TOKEN, else DATA_DIR/admin-token).")
    var token: String?

    /// The gateway's base URL and the admin token, from the options, the environment or routes.json.
    func endpoint() throws -> (base: String, token: String) {
        let cfg = try? CorralConfig.load(path: config)
        let base = url ?? cfg.map { c in
            let host = c.listen.host == "0.0.0.0" ? "127.0.0.1" : c.listen.host
            return "\(c.tls == nil ? "http" : "https")://\(host):\(c.listen.port)"
        } ?? "http://127.0.0.1:11434"
        let admin = token ?? ProcessInfo.processInfo.environment["CORRAL_ADMIN_TOKEN"]
            ?? cfg.flatMap { AdminTokenFile.read(from: $0.dataDirectory + "/admin-token") }
        guard let admin else { throw ValidationError("no admin token: pass --token, set CORRAL_ADMIN_TOKEN, or run where DATA_DIR/admin-token is readable") }
        return (base, admin)
    }

    /// Sends one admin request; prints the JSON answer or fails with the gateway's message.
    func call(_ method: String, _ path: String, body: [String: Any]? = nil) async throws -> Any {
        try await call(method, path, raw: try body.map { try JSONSerialization.data(withJSONObject: $0) }, contentType: "application/json")
    }

    /// A request with `raw` as its body (a multipart upload, say); the answer's JSON.
    func call(_ method: String, _ path: String, raw: Data?, contentType: String) async throws -> Any {
        let (base, admin) = try endpoint()
        guard let endpoint = URL(string: base + path) else { throw ValidationError("bad URL \(base + path)") }
        var request = URLRequest(url: endpoint)
        request.httpMethod = method
        request.setValue("Bearer \(admin)", forHTTPHeaderField: "authorization")
        if let raw {
            request.httpBody = raw
            request.setValue(contentType, forHTTPHeaderField: "content-type")
        }
        let (data, response) = try await URLSession.shared.data(for: request)
        let status = (response as? HTTPURLResponse)?.statusCode ?? 0
        let json = data.isEmpty ? [String: Any]() : (try? JSONSerialization.jsonObject(with: data)) ?? String(decoding: data, as: UTF8.self)
        guard (200..<300).contains(status) else {
            let message = ((json as? [String: Any])?["error"] as? [String: Any])?["message"] as? String ?? "\(json)"
            throw ValidationError("HTTP \(status): \(message)")
        }
        return json
    }

    func print(_ value: Any) {
        if let data = try? JSONSerialization.data(withJSONObject: value, options: [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]) {
            Swift.print(String(decoding: data, as: UTF8.self))
        }
    }
}

/// Limits shared by teams and keys.
struct LimitOptions: ParsableArguments {
    @Option(help: "Allowed models: comma-separated names or globs (\"none\" clears the list: all models).")
    var models: String?
    @Option(help: "Requests per minute.") var rpm: Int?
    @Option(help: "Tokens per minute.") var tpm: Int?
    @Option(help: "Parallel requests.") var parallel: Int?
    @Option(help: "Tokens per UTC day.") var daily: Int?
    @Option(help: "Tokens per UTC month.") var monthly: Int?

    var body: [String: Any] {
        var b: [String: Any] = [:]
        if let models { b["models"] = models == "none" ? NSNull() : models.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) } }
        if let rpm { b["requestsPerMinute"] = rpm }
        if let tpm { b["tokensPerMinute"] = tpm }
        if let parallel { b["maxParallel"] = parallel }
        if let daily { b["tokensPerDay"] = daily }
        if let monthly { b["tokensPerMonth"] = monthly }
        return b
    }
}

/// `corral teams …`: the admin API's team routes from the command line.
struct TeamsCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "teams", abstract: "Create, list, update, disable and delete teams (talks to the running gateway).",
        subcommands: [Create.self, List.self, Update.self, Disable.self, Enable.self, Delete.self])

    struct Create: AsyncParsableCommand {
        @OptionGroup var connection: AdminConnection
        @OptionGroup var limits: LimitOptions
        @Argument(help: "Team name.") var name: String
        func run() async throws {
            var body = limits.body
            body["name"] = name
            connection.print(try await connection.call("POST", "/admin/teams", body: body))
        }
    }

    struct List: AsyncParsableCommand {
        @OptionGroup var connection: AdminConnection
        func run() async throws { connection.print(try await connection.call("GET", "/admin/teams")) }
    }

    struct Update: AsyncParsableCommand {
        @OptionGroup var connection: AdminConnection
        @OptionGroup var limits: LimitOptions
        @Argument(help: "Team id or name.") var team: String
        @Option(help: "New name.") var rename: String?
        func run() async throws {
            var body = limits.body
            if let rename { body["name"] = rename }
            connection.print(try await connection.call("PATCH", "/admin/teams/\(escaped(team))", body: body))
        }
    }

    struct Disable: AsyncParsableCommand {
        @OptionGroup var connection: AdminConnection
        @Argument(help: "Team id or name.") var team: String
        func run() async throws { connection.print(try await connection.call("PATCH", "/admin/teams/\(escaped(team))", body: ["disabled": true])) }
    }

    struct Enable: AsyncParsableCommand {
        @OptionGroup var connection: AdminConnection
        @Argument(help: "Team id or name.") var team: String
        func run() async throws { connection.print(try await connection.call("PATCH", "/admin/teams/\(escaped(team))", body: ["disabled": false])) }
    }

    struct Delete: AsyncParsableCommand {
        @OptionGroup var connection: AdminConnection
        @Argument(help: "Team id or name.") var team: String
        func run() async throws {
            _ = try await connection.call("DELETE", "/admin/teams/\(escaped(team))")
            print("deleted \(team)")
        }
    }
}

/// `corral keys …`: create (shown once), list, rotate and revoke API keys.
struct KeysCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "keys", abstract: "Create, list, rotate and revoke API keys (talks to the running gateway).",
        subcommands: [Create.self, List.self, Rotate.self, Revoke.self])

    struct Create: AsyncParsableCommand {
        @OptionGroup var connection: AdminConnection
        @OptionGroup var limits: LimitOptions
        @Argument(help: "Team id or name.") var team: String
        @Option(help: "A label for the key.") var name = ""
        @Option(help: "Expiry as a duration: 30d, 12h, 3600.") var expiresIn: String?
        func run() async throws {
            var body = limits.body
            body["name"] = name
            if let expiresIn { body["expiresIn"] = expiresIn }
            connection.print(try await connection.call("POST", "/admin/teams/\(escaped(team))/keys", body: body))
        }
    }

    struct List: AsyncParsableCommand {
        @OptionGroup var connection: AdminConnection
        @Option(help: "Only this team's keys.") var team: String?
        func run() async throws {
            connection.print(try await connection.call("GET", "/admin/keys" + (team.map { "?team=\(escaped($0))" } ?? "")))
        }
    }

    struct Rotate: AsyncParsableCommand {
        @OptionGroup var connection: AdminConnection
        @Argument(help: "Key prefix (ck-xxxxxxxx).") var prefix: String
        func run() async throws { connection.print(try await connection.call("POST", "/admin/keys/\(escaped(prefix))/rotate")) }
    }

    struct Revoke: AsyncParsableCommand {
        @OptionGroup var connection: AdminConnection
        @Argument(help: "Key prefix (ck-xxxxxxxx).") var prefix: String
        func run() async throws { connection.print(try await connection.call("POST", "/admin/keys/\(escaped(prefix))/revoke")) }
    }
}

func escaped(_ s: String) -> String { s.addingPercentEncoding(withAllowedCharacters: .urlPathAllowed.subtracting(CharacterSet(charactersIn: "/"))) ?? s }
