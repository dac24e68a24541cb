import Access
import Hummingbird

/// Per-request context: Hummingbird's core storage plus Corral's request limits.
public struct GatewayRequestContext: RequestContext {
    public var coreContext: CoreRequestContextStorage
    /// Largest body `request.decode`/`collect` accepts (set from `routes.json` maxBodyBytes).
    public var maxUploadSize: Int { GatewayLimits.maxBodyBytes }
    /// Who sent the request (set by the authentication middleware; anonymous without accounts).
    public var caller: Caller = .anonymous
    /// The request carries the admin token on a route that teams also use (`/v1/files`, `/v1/evals`): it sees
    /// every team's data there.
    public var isAdmin = false

    public init(source: ApplicationRequestContextSource) {
        self.coreContext = .init(source: source)
    }
}

/// Process-wide request limits, set once at start-up before the server runs.
public enum GatewayLimits {
    nonisolated(unsafe) public static var maxBodyBytes = 32 << 20  // written once in main before serving
}
