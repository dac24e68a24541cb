import Runtime
import Testing

/// `Outcome`: a value set once and awaited with a time limit per wait.
@Suite struct OutcomeTests {
    @Test func aWaitEndsWithTheValueOrNilAtItsLimit() async {
        let outcome = Outcome<Int>()
        #expect(await outcome.wait(upTo: .milliseconds(20)) == nil)  // nothing yet
        Task {
            try? await Task.sleep(for: .milliseconds(30))
            outcome.set(7)
        }
        #expect(await outcome.wait(upTo: .seconds(10)) == 7)  // set during the wait
        #expect(await outcome.wait(upTo: .zero) == 7)  // and kept for later waits
        #expect(await outcome.value() == 7)
    }
}
