import Foundation
import Synchronization

/// `operation` did not finish within its deadline.
public struct DeadlinePassed: Error, CustomStringConvertible, Sendable {
    public let deadline: Duration
    public init(deadline: Duration) { self.deadline = deadline }
    public var description: String { "no answer within \(deadline)" }
}

/// The result of `operation`, or ``DeadlinePassed`` once `deadline` has passed.
///
/// The operation is not awaited past the deadline (a task group would wait for it, and a
/// database client waiting for a server that is down need not notice cancellation); it goes on
/// in the background and `abandoned` gets its result if it ends after the deadline, so the
/// caller can undo what it did (a reservation made after all).
public func withDeadline<T: Sendable>(
    _ deadline: Duration, _ operation: @escaping @Sendable () async throws -> T, abandoned: @escaping @Sendable (T) -> Void = { _ in }
) async throws -> T {
    let decided = Decided()
    return try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<T, any Error>) in
        let work = Task {
            do {
                let value = try await operation()
                if decided.take() { continuation.resume(returning: value) } else { abandoned(value) }
            } catch {
                if decided.take() { continuation.resume(throwing: error) }
            }
        }
        Task {
            try? await Task.sleep(for: deadline)
            if decided.take() {
                continuation.resume(throwing: DeadlinePassed(deadline: deadline))
                work.cancel()
            }
        }
    }
}

/// Whichever comes first, once.
private final class Decided: Sendable {
    private let done = Mutex(false)
    func take() -> Bool {
        done.withLock { d in
            defer { d = true }
            return !d
        }
    }
}
