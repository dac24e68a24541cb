import Synchronization

/// A value set once by one task and awaited, with a time limit per wait, by another: the wait
/// ends with nil when the limit passes first, and the value stays for the next wait.
public final class Outcome<Value: Sendable>: Sendable {
    private struct State {
        var value: Value?
        var waiter: CheckedContinuation<Value?, Never>?
        /// Which wait a timer belongs to, so a stale timer never ends a later wait.
        var generation = 0
    }
    private let state = Mutex(State())

    public init() {}

    /// Sets the value (once) and ends a wait in progress with it.
    public func set(_ value: Value) {
        let waiter = state.withLock { s -> CheckedContinuation<Value?, Never>? in
            s.value = value
            defer { s.waiter = nil }
            return s.waiter
        }
        waiter?.resume(returning: value)
    }

    /// The value, however long it takes to be set.
    public func value() async -> Value {
        while true {
            if let value = await wait(upTo: .seconds(3600)) { return value }
        }
    }

    /// The value, as soon as it is set, or nil when `limit` passes first.
    public func wait(upTo limit: Duration) async -> Value? {
        await withCheckedContinuation { continuation in
            let (ready, generation) = state.withLock { s -> (Value?, Int) in
                if let value = s.value { return (value, s.generation) }
                s.generation += 1
                s.waiter = continuation
                return (nil, s.generation)
            }
            if let ready { return continuation.resume(returning: ready) }
            Task {
                try? await Task.sleep(for: limit)
                let expired = self.state.withLock { s -> CheckedContinuation<Value?, Never>? in
                    guard s.generation == generation, let waiter = s.waiter else { return nil }
                    s.waiter = nil
                    return waiter
                }
                expired?.resume(returning: nil)
            }
        }
    }
}
