import Foundation

/// Gives a model that does not fit this node's budget the help of cluster RPC workers: plans the
/// split, reserves the workers' memory in the shared registry and opens the way to them (a
/// cluster node's ``RPCSplitter`` in Serving). The scheduler asks it only for a model whose
/// projection is larger than this node's budget.
public protocol SplitProvider: Sendable {
    /// A split of `model` (needing `need`) with `hostBudgetMiB` of this node, reserved and
    /// reachable; `instance` names the instance (the reservation's holder). `onLost` is called
    /// when a worker goes away while the instance runs (it then cannot go on). Throws the reason
    /// when no split can be had.
    func split(model: String, instance: String, need: SplitPlanner.Need, hostBudgetMiB: Int,
               onLost: @escaping @Sendable (String) -> Void) async throws(SplitPlanner.Refusal) -> SplitLease
}

/// A split reserved for one instance: the llama-server arguments that use it, this node's part,
/// where each part runs, and how to give it back (when the instance stops or fails to load).
public struct SplitLease: Sendable {
    /// `--rpc`, `-ngl` and `--tensor-split`, appended last to the instance's arguments.
    public var arguments: [String]
    /// MiB this node's part takes (the instance's projection on `Host`).
    public var hostMiB: Int
    /// This node's part, then each worker's.
    public var parts: [SplitPart]
    /// Closes the ways to the workers and releases their reservations.
    public var release: @Sendable () async -> Void

    public init(arguments: [String], hostMiB: Int, parts: [SplitPart], release: @escaping @Sendable () async -> Void) {
        self.arguments = arguments
        self.hostMiB = hostMiB
        self.parts = parts
        self.release = release
    }
}
