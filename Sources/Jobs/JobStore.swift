import Foundation
import Store

/// Where the engine keeps jobs and their event logs. ``Store`` is the implementation; the
/// protocol exists so that a test can make writes fail on demand.
public protocol JobStore: Sendable {
    func putJob(_ job: StoredJob) async throws
    func job(id: String) async throws -> StoredJob?
    func jobs(kind: String?, states: [String]?, model: String?, after: String?, limit: Int) async throws -> [StoredJob]
    func appendJobEvent(sequence: Int64, job: String, type: String, data: Data, at: Date) async throws
    func lastJobEventSequence() async throws -> Int64
    func jobEvents(job: String, after sequence: Int64, limit: Int) async throws -> [StoredJobEvent]
    func pruneJobs(kind: String, finishedStates: [String], keep: Int, olderThan: Date?) async throws -> Int
    func deleteJob(id: String) async throws -> Bool
}

extension Store: JobStore {}

import Runtime

extension Scheduler: MemoryClaims {
    public func claim(owner: String, mib: [String: Int], wait: Bool) async throws {
        try await claimMemory(owner: owner, mib: mib, wait: wait)
    }

    public func releaseClaims(owner: String) async {
        releaseMemoryClaims(owner: owner)
    }
}
