import Foundation
import HTTPTypes
import Hummingbird

/// DNS-rebinding guard: when Corral listens on loopback only, a request must name a local host
/// (`localhost`, `*.localhost`, `127.x.x.x`, `[::1]`) or one listed in `security.allowedHosts`;
/// a page on another site that rebinds its name to 127.0.0.1 is refused with 403.
struct HostGuardMiddleware: RouterMiddleware {
    typealias Context = GatewayRequestContext
    let allowed: Set<String>

    static func isLocal(_ host: String) -> Bool {
        if host == "localhost" || host.hasSuffix(".localhost") || host == "[::1]" || host == "::1" { return true }
        // 127.0.0.0/8 as a dotted quad, nothing more (not `127.0.0.1.evil.example`).
        let octets = host.split(separator: ".", omittingEmptySubsequences: false)
        return octets.count == 4 && octets[0] == "127" && octets.allSatisfy { o in UInt8(o) != nil && o.allSatisfy(\.isNumber) }
    }

    /// The host part of a `Host` header (port and case removed).
    static func hostName(_ header: String) -> String {
        let h = header.lowercased()
        if h.hasPrefix("[") { return String(h.prefix { $0 != "]" }) + "]" }
        return String(h.split(separator: ":", maxSplits: 1).first ?? "")
    }

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        // :authority (HTTP/2) or Host (HTTP/1.1; swift-http-types maps it to authority). A request without one is local tooling.
        if let authority = request.head.authority {
            let host = Self.hostName(authority)
            guard Self.isLocal(host) || allowed.contains(host) else {
                throw OpenAIError(.forbidden, "host '\(host)' is not allowed: Corral listens on loopback (add it to security.allowedHosts)", code: "host_not_allowed")
            }
        }
        return try await next(request, context)
    }
}

/// CORS for browser clients: local origins (`http(s)://localhost`, `127.0.0.1`, `[::1]` on any
/// port, and app schemes such as `app://`, `tauri://`, `vscode-webview://`) plus
/// `security.corsOrigins` get CORS headers and preflight answers; any other origin gets none,
/// so browsers refuse to hand it the response.
struct CORSMiddleware: RouterMiddleware {
    typealias Context = GatewayRequestContext
    let extraOrigins: Set<String>

    static let appSchemes = ["app://", "tauri://", "vscode-webview://", "file://", "capacitor://"]

    func allows(_ origin: String) -> Bool {
        if extraOrigins.contains("*") || extraOrigins.contains(origin.lowercased()) { return true }
        if Self.appSchemes.contains(where: { origin.hasPrefix($0) }) { return true }
        guard let url = URL(string: origin), let scheme = url.scheme, scheme == "http" || scheme == "https", let host = url.host else { return false }
        return HostGuardMiddleware.isLocal(host.lowercased()) || HostGuardMiddleware.isLocal("[\(host)]")
    }

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        guard let origin = request.headers[.origin] else { return try await next(request, context) }
        let allowed = allows(origin)
        if request.method == .options, request.headers[.accessControlRequestMethod] != nil {
            guard allowed else { return Response(status: .forbidden) }
            return Response(status: .noContent, headers: [
                .accessControlAllowOrigin: origin, .accessControlAllowMethods: "GET, POST, PUT, PATCH, DELETE, OPTIONS, HEAD",
                .accessControlAllowHeaders: request.headers[.accessControlRequestHeaders] ?? "authorization, content-type, x-api-key",
                .accessControlMaxAge: "600", .vary: "Origin",
            ])
        }
        var response = try await next(request, context)
        if allowed {
            response.headers[.accessControlAllowOrigin] = origin
            response.headers[.accessControlExposeHeaders] = "x-request-id, retry-after, x-ratelimit-limit-requests, x-ratelimit-remaining-requests, x-ratelimit-reset-requests, x-ratelimit-limit-tokens, x-ratelimit-remaining-tokens, x-ratelimit-reset-tokens"
            response.headers[.vary] = "Origin"
        }
        return response
    }
}
