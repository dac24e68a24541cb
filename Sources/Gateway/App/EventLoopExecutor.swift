import HummingbirdCore
import Logging
import NIOCore

/// Runs Swift tasks on one NIO event loop.
///
/// Hummingbird handles each connection in a task on Swift's global pool while the connection's
/// bytes (and the upstream client's) move on NIO event loops, so every suspension point on the
/// request path (reading the body, awaiting an actor, the upstream answer) crosses threads twice.
/// Each crossing wakes a parked thread, which on a small machine takes CPU from the requests
/// themselves (about 50 context switches per proxied chat request before). With this executor as the connection task's preference the whole
/// request runs on the loop that owns its socket: continuations resumed by the loop run on it,
/// and default actors (the scheduler) run their code on the caller's preferred executor too.
final class EventLoopExecutor: TaskExecutor {
    let eventLoop: any EventLoop

    /// The executor of the connection the current task serves (nil outside a connection).
    /// Unstructured tasks do not inherit an executor preference; work a request starts in one
    /// (settling a finished answer) can ask for its loop with `Task(executorPreference:)`.
    @TaskLocal static var current: EventLoopExecutor?

    init(_ eventLoop: any EventLoop) {
        self.eventLoop = eventLoop
    }

    func enqueue(_ job: consuming ExecutorJob) {
        let job = UnownedJob(job)
        eventLoop.execute {
            job.runSynchronously(on: self.asUnownedTaskExecutor())
        }
    }
}

/// One ``EventLoopExecutor`` per loop of a group, made once.
struct EventLoopExecutors: Sendable {
    private let byLoop: [ObjectIdentifier: EventLoopExecutor]

    init(group: any EventLoopGroup) {
        var byLoop: [ObjectIdentifier: EventLoopExecutor] = [:]
        for loop in group.makeIterator() { byLoop[ObjectIdentifier(loop)] = EventLoopExecutor(loop) }
        self.byLoop = byLoop
    }

    /// The executor of `loop`, if it belongs to the group.
    func executor(for loop: any EventLoop) -> EventLoopExecutor? {
        byLoop[ObjectIdentifier(loop)]
    }
}

/// A server child channel whose connection task prefers the connection's own event loop (see
/// ``EventLoopExecutor``). Set-up and handling are otherwise the wrapped channel's.
struct EventLoopPinnedChannel<Base: ServerChildChannel>: ServerChildChannel {
    typealias Value = Base.Value
    let base: Base
    let executors: EventLoopExecutors
    /// Answers the hottest requests in front of Hummingbird (plain HTTP/1 connections only).
    var fastLane: FastLane? = nil

    func setup(channel: any Channel, logger: Logger) -> EventLoopFuture<Value> {
        let future = base.setup(channel: channel, logger: logger)
        guard let fastLane else { return future }
        return future.flatMapThrowing { value in
            let pipeline = channel.pipeline.syncOperations
            // After the connection state handler, so idle timeouts and graceful shutdown count
            // the lane's requests; an HTTP/2 connection has none at this point and is left alone.
            if let state = try? pipeline.handler(type: HTTPConnectionStateHandler.self) {
                try pipeline.addHandler(FastLaneHandler(lane: fastLane), position: .after(state))
            }
            return value
        }
    }

    func handle(value: Value, logger: Logger) async {
        guard let executor = executors.executor(for: value.channel.eventLoop) else {
            return await base.handle(value: value, logger: logger)
        }
        await withTaskExecutorPreference(executor) {
            await EventLoopExecutor.$current.withValue(executor) {
                await base.handle(value: value, logger: logger)
            }
        }
    }
}
