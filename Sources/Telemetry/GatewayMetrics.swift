import Foundation
import Runtime
import Synchronization
import Usage

/// Corral's own metrics in Prometheus text format: counters and histograms fed by every
/// request's record, and fleet gauges read from the scheduler at scrape time.
public final class GatewayMetrics: Sendable {
    /// Buckets in seconds, from sub-millisecond gateway overhead to multi-minute generations.
    static let latencyBuckets: [Double] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300]
    static let tokenTimeBuckets: [Double] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1]

    struct Histogram {
        var buckets: [Int]
        var sum = 0.0
        var count = 0
        init(_ n: Int) { buckets = Array(repeating: 0, count: n) }

        mutating func record(_ value: Double, bounds: [Double]) {
            for (i, b) in bounds.enumerated() where value <= b { buckets[i] += 1 }
            sum += value
            count += 1
        }
    }

    /// One metric family: name, help, type, and series by rendered label set.
    struct Family {
        let help: String
        let type: String
        var counters: [String: Double] = [:]
        var histograms: [String: Histogram] = [:]
        let bounds: [Double]
    }

    /// Sums over every request since start, whatever its labels: what the dashboard's live
    /// rates and windowed percentiles are differences of.
    public struct Totals: Sendable, Equatable {
        public var requests = 0
        /// Requests answered with a status of 400 or more.
        public var errors = 0
        public var completionTokens = 0
        /// Cumulative counts per bound of `latencyBuckets`, then the count of every observation.
        public var duration = [Int](repeating: 0, count: GatewayMetrics.latencyBuckets.count + 1)
        public var timeToFirstToken = [Int](repeating: 0, count: GatewayMetrics.latencyBuckets.count + 1)
    }

    private let families: Mutex<[String: Family]>
    /// Requests answered by the fast lane (the rest of the proxied ones went through the router).
    public let fastLaneRequests = Atomic<Int>(0)
    /// Writes of the job store that failed (each failed its job, or was logged when none ran).
    let jobPersistenceFailures = Atomic<Int>(0)
    let cacheWriteFailures = Atomic<Int>(0)
    let policyRefusals = Atomic<Int>(0)
    private let runningTotals = Mutex(Totals())
    /// Per model (served here, not by a peer): prompt tokens taken from llama-server's cache,
    /// and every prompt token, of the requests that reported both.
    /// Prompt tokens and those taken from the prompt cache, by model and replica.
    private let promptCacheByInstance = Mutex<[InstanceKey: (cached: Int, prompt: Int)]>([:])

    private struct InstanceKey: Hashable {
        var model: String
        var replica: Int
    }
    /// Reads the ledger's backlog for the `corral_ledger_pending_rows` gauge (set at start-up).
    nonisolated(unsafe) public static var ledgerPending: (@Sendable () -> Int)?
    /// Reads the ledger's counters (set at start-up): requests refused while it was full, and
    /// retention rounds that failed.
    nonisolated(unsafe) public static var ledgerCounters: (@Sendable () -> (refused: Int, pruneFailures: Int))?

    public init() {
        var f: [String: Family] = [:]
        func add(_ name: String, _ type: String, _ help: String, _ bounds: [Double] = []) {
            f[name] = Family(help: help, type: type, bounds: bounds)
        }
        add("corral_requests_total", "counter", "Requests proxied to a model, by model, team, route and status.")
        add("corral_prompt_tokens_total", "counter", "Prompt tokens processed, by model and team.")
        add("corral_completion_tokens_total", "counter", "Tokens generated, by model and team.")
        add("corral_prompt_cached_tokens_total", "counter", "Prompt tokens llama-server took from its prompt cache instead of computing them, by model and team.")
        add("corral_client_disconnects_total", "counter", "Requests whose client went away before the answer ended.")
        add("corral_request_duration_seconds", "histogram", "Arrival at Corral to the end of the answer.", Self.latencyBuckets)
        add("corral_time_to_first_token_seconds", "histogram", "Arrival at Corral to the first byte from the model.", Self.latencyBuckets)
        add("corral_time_per_output_token_seconds", "histogram", "llama-server's time per generated token.", Self.tokenTimeBuckets)
        add("corral_queue_seconds", "histogram", "Time waiting for a free slot, loading excluded.", Self.latencyBuckets)
        add("corral_load_seconds", "histogram", "Time spent loading the model for the request (0 when ready).", Self.latencyBuckets)
        add("corral_gateway_overhead_seconds", "histogram", "Time Corral spent before forwarding, queue and load excluded.", Self.latencyBuckets)
        families = Mutex(f)
    }

    /// Escapes a label value for the text format.
    static func escape(_ v: String) -> String {
        guard v.utf8.contains(where: { $0 == UInt8(ascii: "\\") || $0 == UInt8(ascii: "\"") || $0 == UInt8(ascii: "\n") }) else { return v }
        return v.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "\"", with: "\\\"").replacingOccurrences(of: "\n", with: "\\n")
    }

    static func labels(_ pairs: [(String, String)]) -> String {
        pairs.map { "\($0.0)=\"\(escape($0.1))\"" }.joined(separator: ",")
    }

    /// Adds one request's numbers.
    public func observe(_ r: RequestRecord) {
        var r = r
        // Names nobody serves are one series, not one per invented name.
        if r.status == 404 { r.model = "_unknown" }
        let team = r.team ?? ""
        let byModelTeam = Self.labels([("model", r.model), ("team", team)])
        let byModel = Self.labels([("model", r.model)])
        families.withLock { f in
            func count(_ name: String, _ labels: String, _ by: Double = 1) { f[name]!.counters[labels, default: 0] += by }
            func observe(_ name: String, _ labels: String, _ seconds: Double?) {
                guard let seconds, seconds.isFinite, seconds >= 0 else { return }
                let bounds = f[name]!.bounds
                // In place: copying the series out and back would copy its buckets every time.
                f[name]!.histograms[labels, default: Histogram(bounds.count)].record(seconds, bounds: bounds)
            }
            count("corral_requests_total", Self.labels([("model", r.model), ("team", team), ("route", r.route), ("status", String(r.status))]))
            if let p = r.promptTokens { count("corral_prompt_tokens_total", byModelTeam, Double(p)) }
            if let c = r.completionTokens { count("corral_completion_tokens_total", byModelTeam, Double(c)) }
            if let c = r.cachedTokens { count("corral_prompt_cached_tokens_total", byModelTeam, Double(c)) }
            if r.clientDisconnected { count("corral_client_disconnects_total", byModelTeam) }
            observe("corral_request_duration_seconds", byModelTeam, r.totalMs / 1000)
            observe("corral_time_to_first_token_seconds", byModelTeam, r.timeToFirstByteMs.map { $0 / 1000 })
            observe("corral_time_per_output_token_seconds", byModel, r.timePerOutputTokenMs.map { $0 / 1000 })
            observe("corral_queue_seconds", byModel, r.queueMs / 1000)
            observe("corral_load_seconds", byModel, r.loadMs / 1000)
            observe("corral_gateway_overhead_seconds", byModel, r.gatewayOverheadMs.map { $0 / 1000 })
        }
        if r.node == nil, let prompt = r.promptTokens, let cached = r.cachedTokens, prompt > 0 {
            promptCacheByInstance.withLock { use in
                let key = InstanceKey(model: r.model, replica: r.replica)
                let old = use[key] ?? (0, 0)
                use[key] = (old.cached + min(cached, prompt), old.prompt + prompt)
            }
        }
        runningTotals.withLock { t in
            func add(_ counts: inout [Int], _ ms: Double?) {
                guard let ms, ms.isFinite, ms >= 0 else { return }
                for (i, b) in Self.latencyBuckets.enumerated() where ms / 1000 <= b { counts[i] += 1 }
                counts[counts.count - 1] += 1
            }
            t.requests += 1
            if r.status >= 400 { t.errors += 1 }
            t.completionTokens += r.completionTokens ?? 0
            add(&t.duration, r.totalMs)
            add(&t.timeToFirstToken, r.timeToFirstByteMs)
        }
    }

    /// Counts a failed write of the job store.
    public func jobStoreWriteFailed() { jobPersistenceFailures.add(1, ordering: .relaxed) }

    /// Counts a failed write of a cache kept in the store (fit plans, learned allocations): the
    /// answer is still given, the next load computes it again.
    public func cacheWriteFailed() { cacheWriteFailures.add(1, ordering: .relaxed) }

    /// Counts a request refused because a stored team or key policy could not be read.
    public func unreadablePolicyRefused() { policyRefusals.add(1, ordering: .relaxed) }

    /// Each instance with its prompt-cache use filled in (where requests reported it).
    public func withPromptCache(_ instances: [InstanceInfo]) -> [InstanceInfo] {
        let use = promptCacheByInstance.withLock { $0 }
        return instances.map { info in
            var info = info
            info.promptCache = use[InstanceKey(model: info.model, replica: info.replica)].map { PromptCacheUse(cachedTokens: $0.cached, promptTokens: $0.prompt) }
            return info
        }
    }

    /// The running sums now.
    public func totals() -> Totals { runningTotals.withLock { $0 } }

    /// The exposition text, with fleet gauges from `instances`.
    public func render(instances: [InstanceInfo], ledgerPending: Int? = nil, warmSwap: WarmSwapCounts? = nil) -> String {
        var out = ""
        let snapshot = families.withLock { $0 }
        for name in snapshot.keys.sorted() {
            let family = snapshot[name]!
            out += "# HELP \(name) \(family.help)\n# TYPE \(name) \(family.type)\n"
            if family.type == "counter" {
                for (labels, value) in family.counters.sorted(by: { $0.key < $1.key }) { out += "\(name){\(labels)} \(Self.number(value))\n" }
            } else {
                for (labels, h) in family.histograms.sorted(by: { $0.key < $1.key }) {
                    for (i, bound) in family.bounds.enumerated() {
                        out += "\(name)_bucket{\(labels),le=\"\(Self.number(bound))\"} \(h.buckets[i])\n"
                    }
                    out += "\(name)_bucket{\(labels),le=\"+Inf\"} \(h.count)\n"
                    out += "\(name)_sum{\(labels)} \(Self.number(h.sum))\n\(name)_count{\(labels)} \(h.count)\n"
                }
            }
        }
        out += Self.single("corral_fast_lane_requests_total", "counter", "Requests answered by the fast lane in front of the router.", fastLaneRequests.load(ordering: .relaxed))
        out += Self.single("corral_job_store_failures_total", "counter", "Job store writes that failed (the job failed with the reason).", jobPersistenceFailures.load(ordering: .relaxed))
        out += Self.single("corral_cache_write_failures_total", "counter", "Writes of the fit-plan and allocation caches that failed (logged; the cache is recomputed).",
                           cacheWriteFailures.load(ordering: .relaxed))
        out += Self.single("corral_policy_unreadable_refusals_total", "counter", "Requests refused because a stored team or key policy could not be read.",
                           policyRefusals.load(ordering: .relaxed))
        let loaded = instances.filter { $0.state == "loaded" }
        out += "# HELP corral_loaded_models Models with a running llama-server.\n# TYPE corral_loaded_models gauge\ncorral_loaded_models \(Set(loaded.map(\.model)).count)\n"
        out += "# HELP corral_loaded_instances Running llama-servers (a model with replicas has several).\n# TYPE corral_loaded_instances gauge\ncorral_loaded_instances \(loaded.count)\n"
        out += "# HELP corral_instance_in_flight Requests running on a model.\n# TYPE corral_instance_in_flight gauge\n"
        for i in instances { out += "corral_instance_in_flight{\(Self.labels([("model", i.model), ("replica", String(i.replica))]))} \(i.inFlight)\n" }
        out += "# HELP corral_instance_queued Requests waiting for a slot of a model.\n# TYPE corral_instance_queued gauge\n"
        for i in instances { out += "corral_instance_queued{\(Self.labels([("model", i.model), ("replica", String(i.replica))]))} \(i.queued)\n" }
        out += "# HELP corral_instance_memory_bytes Memory llama-server reported allocating, by device and buffer kind.\n# TYPE corral_instance_memory_bytes gauge\n"
        for i in loaded {
            for (key, mib) in i.allocatedMiB.sorted(by: { $0.key < $1.key }) {
                let parts = key.split(separator: " ", maxSplits: 1).map(String.init)
                out += "corral_instance_memory_bytes{\(Self.labels([("model", i.model), ("replica", String(i.replica)), ("device", parts.first ?? key), ("kind", parts.count > 1 ? parts[1] : "")]))} \(Int(mib * 1_048_576))\n"
            }
        }
        out += "# HELP corral_instance_prompt_cache_hit_ratio Prompt tokens taken from llama-server's prompt cache over all prompt tokens, per instance since Corral started.\n# TYPE corral_instance_prompt_cache_hit_ratio gauge\n"
        for i in withPromptCache(instances) {
            if let use = i.promptCache { out += "corral_instance_prompt_cache_hit_ratio{\(Self.labels([("model", i.model), ("replica", String(i.replica))]))} \(Self.number(use.hitRate))\n" }
        }
        out += "# HELP corral_instance_projected_memory_bytes Memory the fit plan projected for a model.\n# TYPE corral_instance_projected_memory_bytes gauge\n"
        for i in loaded { if let p = i.projectedMiB { out += "corral_instance_projected_memory_bytes{\(Self.labels([("model", i.model), ("replica", String(i.replica))]))} \(p * 1_048_576)\n" } }
        if let warmSwap {
            out += Self.single("corral_warm_swap_slots_saved_total", "counter", "KV caches of slots saved before their instance stopped (warm swaps).", warmSwap.slotsSaved)
            out += Self.single("corral_warm_swap_slots_restored_total", "counter", "Saved KV caches restored when their model loaded again.", warmSwap.slotsRestored)
            out += Self.single("corral_warm_swap_save_failures_total", "counter", "Stops whose KV caches could not be saved in cache.saveTimeout (the stop went on without them).",
                               warmSwap.saveFailures)
        }
        if let ledgerPending {
            out += "# HELP corral_ledger_pending_rows Usage rows waiting to be written to the store.\n# TYPE corral_ledger_pending_rows gauge\ncorral_ledger_pending_rows \(ledgerPending)\n"
        }
        if let counters = Self.ledgerCounters?() {
            out += "# HELP corral_ledger_refused_total Requests refused with 503 because the usage ledger's queue was at its bound.\n"
            out += "# TYPE corral_ledger_refused_total counter\ncorral_ledger_refused_total \(counters.refused)\n"
            out += "# HELP corral_ledger_prune_failures_total Usage retention rounds that failed (retried next round).\n"
            out += "# TYPE corral_ledger_prune_failures_total counter\ncorral_ledger_prune_failures_total \(counters.pruneFailures)\n"
        }
        return out
    }

    /// A metric family of one unlabelled series.
    static func single(_ name: String, _ type: String, _ help: String, _ value: Int) -> String {
        "# HELP \(name) \(help)\n# TYPE \(name) \(type)\n\(name) \(value)\n"
    }

    static func number(_ v: Double) -> String {
        if v == v.rounded() && abs(v) < 1e15 { return String(Int64(v)) }
        return String(v)
    }
}
