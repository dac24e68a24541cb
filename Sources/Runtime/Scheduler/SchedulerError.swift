/// Why the scheduler could not hand out a model instance.
public enum SchedulerError: Error, Sendable, Equatable, CustomStringConvertible {
    case unknownModel(String)
    /// The model's queue is full; retry after the given seconds.
    case queueFull(String, retryAfter: Int)
    /// The model cannot fit even with every other model unloaded.
    case insufficientMemory(String, neededMiB: Int, availableMiB: Int, device: String)
    /// llama-server could not start or become ready.
    case loadFailed(String, String)
    /// The model crashed repeatedly and is marked failed.
    case modelFailed(String, String)
    /// The instance died while the request waited or ran.
    case instanceCrashed(String)
    /// No room can ever be made (every loaded model is pinned).
    case noCapacity(String, String)
    case noLlamaServer
    case shuttingDown
    /// A new name (alias) is already used by another model.
    case nameTaken(String)

    /// Whether another model could answer instead (the model cannot be loaded now, or its
    /// queue is full), so a configured fallback is tried.
    public var allowsFallback: Bool {
        switch self {
        case .queueFull, .insufficientMemory, .loadFailed, .modelFailed, .noCapacity: true
        case .unknownModel, .instanceCrashed, .noLlamaServer, .shuttingDown, .nameTaken: false
        }
    }

    /// A stable word for the failure: the API error's `code` and the ledger's `errorKind`.
    public var kind: String {
        switch self {
        case .unknownModel: "model_not_found"
        case .queueFull: "queue_full"
        case .insufficientMemory: "insufficient_memory"
        case .loadFailed: "model_load_failed"
        case .modelFailed: "model_failed"
        case .instanceCrashed: "upstream_crashed"
        case .noCapacity: "no_capacity"
        case .noLlamaServer: "llama_server_missing"
        case .shuttingDown: "shutting_down"
        case .nameTaken: "name_taken"
        }
    }

    public var description: String {
        switch self {
        case .unknownModel(let m): "model '\(m)' not found"
        case .queueFull(let m, _): "too many requests queued for model '\(m)'"
        case .insufficientMemory(let m, let need, let have, let device):
            "model '\(m)' needs \(need) MiB on \(device) but at most \(have) MiB can be made available"
        case .loadFailed(let m, let why): "model '\(m)' failed to load: \(why)"
        case .modelFailed(let m, let why): "model '\(m)' is marked failed after repeated crashes: \(why)"
        case .instanceCrashed(let m): "model '\(m)' stopped unexpectedly"
        case .noCapacity(let m, let why): "cannot load model '\(m)': \(why)"
        case .noLlamaServer: "llama-server not found: run `make llama` or set llama.server in routes.json"
        case .shuttingDown: "Corral is shutting down"
        case .nameTaken(let n): "the name '\(n)' is already used by another model"
        }
    }
}
