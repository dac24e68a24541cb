/// How many instances of one model may run, when more start and stop, and how requests choose
/// among them (`models[].replicas`).
public struct ReplicaPolicy: Sendable, Equatable {
    /// How a request picks one of a model's instances.
    public enum Routing: String, Sendable, CaseIterable {
        /// To the instance whose cache most likely holds the prompt's leading blocks (or the
        /// session's last instance), within a load bound; the least busy one otherwise.
        case prefixAffinity = "prefix-affinity"
        /// Each request to the next instance with a free slot, regardless of its prompt (the
        /// baseline prefix affinity is measured against).
        case roundRobin = "round-robin"
    }

    /// Instances kept while the model is loaded (the first request starts one, the rest follow).
    public var min = 1
    /// Most instances at once.
    public var max = 1
    /// A queued request waiting this long starts another instance (within `max` and the memory
    /// budget, never evicting a busy model).
    public var scaleUpAfter: Duration = .seconds(2)
    /// An instance beyond `min` idle this long stops (the model's own idle TTL applies to the rest).
    public var scaleDownAfter: Duration = .seconds(60)
    public var routing: Routing = .prefixAffinity

    public init(min: Int = 1, max: Int = 1, scaleUpAfter: Duration = .seconds(2), scaleDownAfter: Duration = .seconds(60),
                routing: Routing = .prefixAffinity) {
        self.min = min
        self.max = Swift.max(min, max)
        self.scaleUpAfter = scaleUpAfter
        self.scaleDownAfter = scaleDownAfter
        self.routing = routing
    }

    /// One instance, as every model had before replicas.
    public static let single = ReplicaPolicy()
}
