import Foundation
import Store

/// A control action on a job.
public enum JobControl: String, Sendable, CaseIterable {
    case cancel, pause, resume
}

/// How a node changes a job that another node of its cluster runs: the action is carried out
/// there, by that node's engine, which answers with the job's record.
public protocol RemoteJobControl: Sendable {
    func control(_ action: JobControl, job: String, on node: String) async throws -> JobRecord
}

