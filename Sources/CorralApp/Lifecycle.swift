import AsyncHTTPClient
import Runtime
import ServiceLifecycle

/// What Corral does once when it starts: the remote job control of a cluster node, the sampling
/// profiles and runtime profiles saved through the admin API, and the recovery of jobs a stop
/// interrupted. A `Service` that does it, then waits for shutdown.
public struct StartupWork: Service {
    let steps: [@Sendable () async -> Void]

    /// Does the steps in order (a caller that runs no service group, such as a test, calls this
    /// instead of running the service).
    public func work() async {
        for step in steps { await step() }
    }

    public func run() async throws {
        await work()
        try? await gracefulShutdown()
    }
}

/// Stops every llama-server when the service group shuts down (after the HTTP server drained),
/// then the upstream client.
public struct FleetService: Service {
    let scheduler: Scheduler
    let client: HTTPClient

    public init(scheduler: Scheduler, client: HTTPClient) {
        self.scheduler = scheduler
        self.client = client
    }

    public func run() async throws {
        try? await gracefulShutdown()
        await scheduler.shutdown()
        try await client.shutdown()
    }
}
