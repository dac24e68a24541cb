import Foundation
import Store
import Synchronization
import Testing

@testable import Access

/// A shared store that holds each admission call until the test lets it answer: the faults a
/// real PostgreSQL does not produce on demand (an answer after the deadline, a call still out
/// while others arrive). Admits everything; records the batches and settlements it saw.
final class GatedQuotaStore: SharedQuotaStore {
    struct State {
        var batches: [[String]] = []
        var gates: [CheckedContinuation<Void, Never>] = []
        var settled: [QuotaSettlement] = []
    }
    let state = Mutex(State())

    var batches: [[String]] { state.withLock { $0.batches } }
    var settled: [QuotaSettlement] { state.withLock { $0.settled } }

    /// Lets the oldest held call answer.
    func openOne() {
        let gate = state.withLock { $0.gates.isEmpty ? nil : $0.gates.removeFirst() }
        gate?.resume()
    }

    var held: Int { state.withLock { $0.gates.count } }

    func admit(_ batch: [QuotaAdmission], node: String, lease: Double) async throws -> [QuotaDecision] {
        await withCheckedContinuation { gate in
            state.withLock { s in
                s.batches.append(batch.map(\.request.id))
                s.gates.append(gate)
            }
        }
        let minute = QuotaMinute(requests: 1, tokens: 1, resetSeconds: 60)
        return batch.map { _ in QuotaDecision(refusal: nil, refusedTeam: false, retryAfter: 0, team: minute, key: minute) }
    }

    func settle(_ settlements: [QuotaSettlement]) async throws { state.withLock { $0.settled += settlements } }
    func renewLeases(node: String, lease: Double) async throws {}
    func releaseExpiredLeases() async throws {}
    func recoverLostRequests(staleAfter: Double) async throws -> Int { 0 }
    func quotaUse(subject: String) async throws -> (day: Int, month: Int, inFlight: Int) { (0, 0, 0) }
}

func admission(_ id: String) -> QuotaAdmission {
    QuotaAdmission(request: QuotaRequest(id: id, team: "team", key: "key", model: "m", route: "/v1/chat/completions"), tokens: 10,
                   team: QuotaLimits(tokensPerMinute: 100), key: QuotaLimits())
}

func eventually(_ what: String, within seconds: Double = 5, _ condition: () -> Bool) async throws {
    let deadline = ContinuousClock.now + .seconds(seconds)
    while !condition() {
        guard ContinuousClock.now < deadline else { Issue.record("timed out waiting for \(what)"); return }
        try await Task.sleep(for: .milliseconds(10))
    }
}

@Suite struct SharedQuotaTests {
    @Test func admissionsArrivingWhileOneIsOutGoTogetherInTheNextCall() async throws {
        let store = GatedQuotaStore()
        let quota = SharedQuota(store: store, node: "n", deadline: .seconds(30))
        let first = Task { try await quota.admit(admission("r0")) }
        try await eventually("the first call") { store.held == 1 }
        let rest = (1...9).map { i in Task { try await quota.admit(admission("r\(i)")) } }
        // Nothing more reaches the store while the first call is out.
        try await Task.sleep(for: .milliseconds(100))
        #expect(store.batches.count == 1)
        store.openOne()
        _ = try await first.value
        try await eventually("the second call") { store.held == 1 }
        store.openOne()
        for task in rest { #expect(try await task.value.refusal == nil) }
        #expect(store.batches.map(\.count) == [1, 9])
        #expect(Set(store.batches[1]) == Set((1...9).map { "r\($0)" }))
    }

    @Test func anAdmissionTheStoreDoesNotAnswerInTimeFailsAndIsUndoneWhenTheAnswerComes() async throws {
        let store = GatedQuotaStore()
        let quota = SharedQuota(store: store, node: "n", deadline: .milliseconds(300), settleWindow: .milliseconds(1))
        let started = ContinuousClock.now
        await #expect(throws: DeadlinePassed.self) { try await quota.admit(admission("late")) }
        let waited = ContinuousClock.now - started
        #expect(waited >= .milliseconds(300) && waited < .seconds(3))
        // One queued behind the held call is answered too, without reaching the store.
        await #expect(throws: DeadlinePassed.self) { try await quota.admit(admission("queued")) }
        #expect(store.batches == [["late"]])
        // The store admits "late" after all: its reservation is settled at zero tokens.
        store.openOne()
        try await eventually("the late reservation to be undone") { store.settled.contains(QuotaSettlement(reservation: "late", tokens: 0)) }
        #expect(!store.settled.contains { $0.reservation == "queued" })
    }
}
