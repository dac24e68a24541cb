import Foundation

/// What a node's heartbeat says about it beyond name and state (the registry's `detail` column,
/// JSON): its loaded models, its memory, the models it can serve and those it is loading.
/// `/admin/cluster` shows it as it is.
public struct NodeDetail: Codable, Sendable, Equatable {
    /// A model with at least one loaded instance (replicas add up; the queue is the model's).
    public struct LoadedModel: Codable, Sendable, Equatable {
        public var model: String
        public var slots: Int
        public var inFlight: Int
        public var queued: Int
        public var free: Int
        public var instances: Int
    }

    /// One device's memory, MiB: the scheduler's budget, what loaded models and jobs take of it
    /// and what is left for a new load; for `Host` also what the system has and reports available.
    public struct DeviceMemory: Codable, Sendable, Equatable {
        public var budgetMiB: Int?
        public var usedMiB: Int?
        public var freeMiB: Int?
        public var totalMiB: Int?
        public var availableMiB: Int?
    }

    public var models: [LoadedModel]
    public var memory: [String: DeviceMemory]
    /// The ids of the local models this node can load (its catalog's), for placing cold loads;
    /// nil from a node of a version before it was sent (never chosen for a cold load).
    public var serves: [String]?
    /// Models with an instance loading now (a cold load placed there goes on waiting for it).
    public var loading: [String]?

    public init(models: [LoadedModel] = [], memory: [String: DeviceMemory] = [:], serves: [String]? = nil, loading: [String]? = nil) {
        self.models = models
        self.memory = memory
        self.serves = serves
        self.loading = loading
    }

    enum CodingKeys: String, CodingKey { case models, memory, serves, loading }

    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        models = try c.decodeIfPresent([LoadedModel].self, forKey: .models) ?? []
        memory = try c.decodeIfPresent([String: DeviceMemory].self, forKey: .memory) ?? [:]
        serves = try c.decodeIfPresent([String].self, forKey: .serves)
        loading = try c.decodeIfPresent([String].self, forKey: .loading)
    }

    /// The detail read from the registry; an empty one when it is not this shape.
    public static func parse(_ json: String) -> NodeDetail {
        (try? JSONDecoder().decode(NodeDetail.self, from: Data(json.utf8))) ?? NodeDetail()
    }

    /// The JSON the registry keeps (keys sorted, so an unchanged node writes the same text).
    public var json: String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        return (try? encoder.encode(self)).map { String(decoding: $0, as: UTF8.self) } ?? "{}"
    }
}
