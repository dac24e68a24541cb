/// Where a cold load goes in a cluster: a request for a model that no node has loaded (or is
/// loading) loads it on the node with the most free memory for it, not necessarily on the node
/// that received it (issue 35, part 3; docs/clusters.md, "Cold loads"). A pure function of what
/// the heartbeats say.
public enum ColdPlacement {
    /// One node as the decision sees it: its free memory per device (`Host` for RAM, the others
    /// accelerators, as `Scheduler.memoryRoom()` names them) and its load.
    public struct Candidate: Sendable, Equatable {
        public var name: String
        /// Free MiB per device: the scheduler's budget less what loaded models and jobs hold.
        public var freeMiB: [String: Int]
        /// Requests in flight and queued on the node, all models together.
        public var load: Int

        public init(name: String, freeMiB: [String: Int], load: Int) {
            self.name = name
            self.freeMiB = freeMiB
            self.load = load
        }

        /// Where the model would go and the room there: the accelerator with most free memory
        /// when the whole model fits on it (`accelerator` true), else the host's RAM when it fits
        /// there; nil when it fits on neither without evicting anything.
        func room(for needMiB: Int) -> (free: Int, accelerator: Bool)? {
            let accelerator = freeMiB.filter { $0.key != "Host" }.values.max()
            if let accelerator, accelerator >= needMiB { return (accelerator, true) }
            if let host = freeMiB["Host"], host >= needMiB { return (host, false) }
            return nil
        }
    }

    /// The decision: load here, or send the request to a peer that loads it.
    public enum Decision: Sendable, Equatable {
        case here(reason: String)
        case peer(String, reason: String)

        public var reason: String {
            switch self {
            case .here(let r), .peer(_, let r): r
            }
        }
    }

    /// Free memories within this fraction of the largest count as a tie, settled by load.
    public static let tieFraction = 0.05

    /// Picks the node for a model needing `needMiB`: among the nodes it fits on without evicting
    /// anything — on an accelerator wherever some node can take it whole on one, else in RAM —
    /// the one with the most free memory; free memories within ``tieFraction`` of the most are a
    /// tie, won by the node with the least load, and by this node (`here`) among equals, so
    /// nothing is relayed without a reason. When it fits nowhere it loads here (the scheduler
    /// evicts or waits as on one node). `peers` are the live serving peers that list the model
    /// in their catalog.
    public static func decide(needMiB: Int, here: Candidate, peers: [Candidate], tieFraction: Double = tieFraction) -> Decision {
        let all = [here] + peers.filter { $0.name != here.name }
        let fitting = all.compactMap { c in c.room(for: needMiB).map { (candidate: c, free: $0.free, accelerator: $0.accelerator) } }
        guard !fitting.isEmpty else {
            return .here(reason: "\(needMiB) MiB fits on no node's free memory; loading here, evicting idle models as needed")
        }
        let onAccelerator = fitting.contains { $0.accelerator }
        let tier = fitting.filter { $0.accelerator == onAccelerator }
        let most = tier.map(\.free).max() ?? 0
        let floor = Double(most) * (1 - tieFraction)
        let tied = tier.filter { Double($0.free) >= floor }
        let least = tied.map(\.candidate.load).min() ?? 0
        let where_ = onAccelerator ? "on an accelerator" : "in RAM"
        if let mine = tied.first(where: { $0.candidate.name == here.name }), mine.candidate.load == least {
            let others = tied.count > 1 ? " (ties with \(tied.count - 1) other node(s) within \(Int(tieFraction * 100))%, none less loaded)" : ""
            return .here(reason: "most free memory \(where_): \(mine.free) MiB for \(needMiB) MiB\(others)")
        }
        // Least loaded first, then most free, then by name so every node decides alike.
        let best = tied.filter { $0.candidate.load == least }.sorted { ($0.free, $1.candidate.name) > ($1.free, $0.candidate.name) }[0]
        let mine = fitting.first { $0.candidate.name == here.name }
        let local = mine.map { "\($0.free) MiB free here" } ?? "\(needMiB) MiB does not fit here"
        let tie = tied.count > 1 ? ", the least loaded of \(tied.count) within \(Int(tieFraction * 100))% (\(best.candidate.load) in flight)" : ""
        return .peer(best.candidate.name, reason: "most free memory \(where_): \(best.free) MiB for \(needMiB) MiB on \(best.candidate.name)\(tie); \(local)")
    }
}
