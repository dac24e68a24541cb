import Foundation
import Testing

@testable import Lab

/// The evaluation console's watchers: cancelling one ends its stream and forgets it. Cancelling
/// used to finish the stream inside the watchers' lock, and finishing calls the cancel again:
/// a recursive lock that crashed Corral when a console client left (seen with two test runs at once).
@Suite struct EvalConsoleTests {
    @Test func cancellingAWatcherEndsItsStreamAndForgetsIt() async {
        let console = EvalConsole()
        let (events, cancel) = console.watch("evalrun-1")
        let (kept, other) = console.watch("evalrun-1")
        #expect(console.isWatched("evalrun-1"))
        cancel()
        var iterator = events.makeAsyncIterator()
        #expect(await iterator.next() == nil)
        #expect(console.isWatched("evalrun-1"))
        other()
        #expect(!console.isWatched("evalrun-1"))
        withExtendedLifetime(kept) {}
    }

    @Test func aWatcherWhoStopsListeningIsForgotten() async {
        let console = EvalConsole()
        do {
            let (events, _) = console.watch("evalrun-2")
            let task = Task { for await _ in events {} }
            task.cancel()
            await task.value
        }
        // The stream's termination removed it.
        for _ in 0..<100 where console.isWatched("evalrun-2") { try? await Task.sleep(for: .milliseconds(10)) }
        #expect(!console.isWatched("evalrun-2"))
    }
}
