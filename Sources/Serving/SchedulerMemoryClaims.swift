import Jobs
import Runtime

/// Jobs claim memory from the fleet's budget: the scheduler is the job engine's `MemoryClaims`
/// (here, where both are known, so `Jobs` does not depend on `Runtime`).
extension Scheduler: MemoryClaims {
    public func claim(owner: String, mib: [String: Int], wait: Bool) async throws {
        try await claimMemory(owner: owner, mib: mib, wait: wait)
    }

    public func releaseClaims(owner: String) async {
        releaseMemoryClaims(owner: owner)
    }
}
