import Foundation

/// Where one part of a model split over machines runs, as `/admin/instances` shows it.
public struct SplitPart: Sendable, Codable, Equatable {
    /// `Host` for this node's RAM, else the node whose RPC worker holds the part.
    public var node: String
    /// The worker's gate (`host:port`); nil for this node.
    public var endpoint: String?
    /// Repeating layers the part holds (this node also keeps the token embeddings and output).
    public var layers: Int
    /// MiB the part takes (reserved on the worker in the registry; projected here).
    public var memoryMiB: Int

    public init(node: String, endpoint: String? = nil, layers: Int, memoryMiB: Int) {
        self.node = node
        self.endpoint = endpoint
        self.layers = layers
        self.memoryMiB = memoryMiB
    }
}

/// Plans a model that does not fit this node across this node's RAM and cluster RPC workers:
/// a pure decision over numbers (tested without processes).
///
/// llama.cpp keeps the first `n_layer - ngl` repeating layers on the host and offloads the last
/// `ngl` to the devices in order, RPC devices first, sharing them by `--tensor-split`; the token
/// embeddings and, with `ngl <= n_layer`, the output layer stay on the host. So the host keeps
/// as many leading layers as its budget holds beside what it must keep anyway, and the rest go to
/// the workers in proportion to their free memory (as llama.cpp itself shares layers by default),
/// each worker's share capped by what it has free.
public enum SplitPlanner {
    /// What a model needs, MiB, as a split sees it.
    public struct Need: Sendable, Equatable {
        /// Per repeating layer: its weights plus its KV cache.
        public var layerMiB: [Double]
        /// What stays on this node whatever the split: embeddings, output, its compute buffer,
        /// the prompt cache.
        public var hostFixedMiB: Double
        /// What each worker needs beside its layers (its compute buffer).
        public var workerOverheadMiB: Double

        public init(layerMiB: [Double], hostFixedMiB: Double, workerOverheadMiB: Double) {
            self.layerMiB = layerMiB
            self.hostFixedMiB = hostFixedMiB
            self.workerOverheadMiB = workerOverheadMiB
        }

        /// From a fit plan's projection (all devices, MiB) of a model with `layers` repeating
        /// layers whose weights are `layerBytes` (from its GGUF header; empty: shared evenly).
        /// The KV cache is shared evenly among the layers; `extraHostMiB` (the prompt cache)
        /// stays on the host.
        public static func from(plan: FitPlan, layers: Int, layerBytes: [UInt64], extraHostMiB: Int = 0) -> Need {
            let model = Double(plan.projection.reduce(0) { $0 + $1.modelMiB })
            let context = Double(plan.projection.reduce(0) { $0 + $1.contextMiB })
            let compute = Double(plan.projection.reduce(0) { $0 + $1.computeMiB })
            let n = max(1, layers)
            let weights: [Double] = layerBytes.count == n
                ? layerBytes.map { Double($0) / 1_048_576 }
                : Array(repeating: model * 0.9 / Double(n), count: n)
            let perLayer = weights.map { $0 + context / Double(n) }
            let fixed = max(compute, model + context + compute + Double(extraHostMiB) - perLayer.reduce(0, +))
            return Need(layerMiB: perLayer, hostFixedMiB: fixed, workerOverheadMiB: max(1, compute))
        }

        public var totalMiB: Double { hostFixedMiB + layerMiB.reduce(0, +) }
    }

    /// A worker as the registry offers it.
    public struct Worker: Sendable, Equatable {
        /// The node offering it.
        public var node: String
        /// Its gate, `host:port`.
        public var endpoint: String
        /// Its devices as llama.cpp names them (each becomes one `--tensor-split` entry).
        public var devices: [String]
        /// What it has free now: offered less what others reserved.
        public var freeMiB: Int

        public init(node: String, endpoint: String, devices: [String], freeMiB: Int) {
            self.node = node
            self.endpoint = endpoint
            self.devices = devices
            self.freeMiB = freeMiB
        }
    }

    /// A split: what runs where and the llama-server arguments that say so.
    public struct Plan: Sendable, Equatable {
        /// This node's part first, then each worker's, in `--rpc` order.
        public var parts: [SplitPart]
        /// The workers used, in `--rpc` order.
        public var workers: [Worker]
        /// Layers offloaded to the workers (`-ngl`).
        public var offloadedLayers: Int
        /// Layers per worker device, in device order (`--tensor-split`).
        public var tensorSplit: [Int]
        /// MiB to reserve per worker node.
        public var reservations: [String: Int]
        /// MiB this node's part takes.
        public var hostMiB: Int

        /// `--rpc` (given the local endpoints that reach the workers, in order), `-ngl`, `-ts`.
        public func arguments(endpoints: [String]) -> [String] {
            ["--rpc", endpoints.joined(separator: ","), "-ngl", String(offloadedLayers), "-ts", tensorSplit.map(String.init).joined(separator: ",")]
        }
    }

    /// Why no split was possible.
    public struct Refusal: Error, Sendable, Equatable, CustomStringConvertible {
        public var description: String

        public init(description: String) { self.description = description }
    }

    /// The split of `need` over `hostFreeMiB` of this node and `workers`, or why there is none.
    public static func plan(_ need: Need, hostFreeMiB: Int, workers: [Worker]) -> Result<Plan, Refusal> {
        func up(_ x: Double) -> Int { Int(x.rounded(.up)) }
        let layers = need.layerMiB
        guard need.hostFixedMiB <= Double(hostFreeMiB) else {
            return .failure(Refusal(description: "this node must keep \(up(need.hostFixedMiB)) MiB of it (embeddings, output, compute buffer, prompt cache) and has \(hostFreeMiB) MiB"))
        }
        // Leading layers on this node while they fit.
        var hostUsed = need.hostFixedMiB
        var kept = 0
        while kept < layers.count, hostUsed + layers[kept] <= Double(hostFreeMiB) {
            hostUsed += layers[kept]
            kept += 1
        }
        let rest = Array(layers[kept...])
        let usable = workers.filter { Double($0.freeMiB) >= need.workerOverheadMiB + (rest.min() ?? 0) && !$0.devices.isEmpty }
            .sorted { ($0.freeMiB, $1.node) > ($1.freeMiB, $0.node) }
        guard !rest.isEmpty else {
            return .success(Plan(parts: [SplitPart(node: "Host", layers: kept, memoryMiB: up(hostUsed))], workers: [], offloadedLayers: 0, tensorSplit: [],
                                 reservations: [:], hostMiB: up(hostUsed)))
        }
        // Shares in proportion to what each has free beyond its overhead, then capped by it.
        let capacity = usable.map { Double($0.freeMiB) - need.workerOverheadMiB }
        let total = capacity.reduce(0, +)
        var counts = capacity.map { total > 0 ? Int((Double(rest.count) * $0 / total).rounded(.down)) : 0 }
        var left = rest.count - counts.reduce(0, +)
        for i in capacity.indices.sorted(by: { capacity[$0] > capacity[$1] }) where left > 0 {
            counts[i] += 1
            left -= 1
        }
        func fits(_ counts: [Int]) -> Bool {
            var start = 0
            for (i, n) in counts.enumerated() {
                if rest[start..<(start + n)].reduce(0, +) > capacity[i] { return false }
                start += n
            }
            return true
        }
        if counts.reduce(0, +) != rest.count || !fits(counts) {
            // Fill in order instead: each worker takes what it can hold.
            counts = Array(repeating: 0, count: usable.count)
            var next = 0
            for i in usable.indices {
                var used = 0.0
                while next < rest.count, used + rest[next] <= capacity[i] {
                    used += rest[next]
                    counts[i] += 1
                    next += 1
                }
            }
            guard next == rest.count else {
                let missing = rest[next...].reduce(0, +)
                let offered = usable.isEmpty ? "no RPC worker has room" : "\(usable.count) RPC workers with \(usable.map(\.freeMiB).reduce(0, +)) MiB free"
                return .failure(Refusal(description: "it needs \(up(need.totalMiB)) MiB: \(up(hostUsed)) MiB fit on this node, \(offered), \(up(missing)) MiB more are missing"))
            }
        }
        var parts = [SplitPart(node: "Host", layers: kept, memoryMiB: up(hostUsed))]
        var chosen: [Worker] = []
        var split: [Int] = []
        var reservations: [String: Int] = [:]
        var start = 0
        for (i, worker) in usable.enumerated() where counts[i] > 0 {
            let mib = up(rest[start..<(start + counts[i])].reduce(0, +) + need.workerOverheadMiB)
            start += counts[i]
            chosen.append(worker)
            parts.append(SplitPart(node: worker.node, endpoint: worker.endpoint, layers: counts[i], memoryMiB: mib))
            reservations[worker.node] = mib
            // A worker's layers shared evenly among its devices, the first ones taking the remainder.
            let d = worker.devices.count
            for j in 0..<d { split.append(counts[i] / d + (j < counts[i] % d ? 1 : 0)) }
        }
        return .success(Plan(parts: parts, workers: chosen, offloadedLayers: rest.count, tensorSplit: split, reservations: reservations, hostMiB: up(hostUsed)))
    }
}

/// The registry's rule for workers' memory, as a value: a reservation is all or nothing, and a
/// worker's reservations never add up to more than it offers. PostgreSQL applies the same rule
/// under row locks (`PostgresStore.reserveRPCWorkers`); this is the rule's reference, for tests
/// and for a registry kept in memory.
public struct RPCReservationBook: Sendable, Equatable {
    /// MiB each worker offers.
    public var offered: [String: Int] = [:]
    /// MiB reserved: worker → (holder, instance) → MiB.
    public var reserved: [String: [String: Int]] = [:]

    public init(offered: [String: Int] = [:]) { self.offered = offered }

    /// What `worker` has free.
    public func freeMiB(_ worker: String) -> Int {
        (offered[worker] ?? 0) - (reserved[worker]?.values.reduce(0, +) ?? 0)
    }

    /// Reserves `parts` (worker → MiB) for `holder`, all or none; returns the first worker
    /// (by name) without room, nil when reserved.
    public mutating func reserve(holder: String, parts: [String: Int]) -> String? {
        for (worker, mib) in parts.sorted(by: { $0.key < $1.key }) where offered[worker] == nil || freeMiB(worker) < mib { return worker }
        for (worker, mib) in parts { reserved[worker, default: [:]][holder] = mib }
        return nil
    }

    /// Gives back what `holder` reserved.
    public mutating func release(holder: String) {
        for worker in reserved.keys { reserved[worker]?[holder] = nil }
    }
}
