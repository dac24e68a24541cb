import Foundation
import Testing

@testable import Runtime

/// Routing among a model's replicas as pure decisions: prompt prefixes hashed into blocks, which
/// instance served which, and the choice with its load bound.
@Suite struct ReplicaRoutingTests {
    static func affinity(_ text: String, session: String? = nil) -> PromptAffinity {
        Array(text.utf8).withUnsafeBytes { PromptAffinity(prompt: $0, session: session) }
    }

    static let system = String(repeating: "You answer questions about the inventory. ", count: 40)

    @Test func aLongerPromptRepeatsTheLeadingBlocksOfItsStart() {
        let turn1 = Self.affinity(Self.system + "first question")
        let turn2 = Self.affinity(Self.system + "first question, its answer, and a second question " + String(repeating: "x", count: 600))
        #expect(turn1.blocks.count == (Self.system.utf8.count + 14) / PromptAffinity.blockBytes)
        #expect(turn2.blocks.count > turn1.blocks.count)
        #expect(Array(turn2.blocks.prefix(turn1.blocks.count)) == turn1.blocks)
        // A different first block changes every later hash: chained, not per block.
        let other = Self.affinity("X" + Self.system.dropFirst() + "first question")
        #expect(Set(other.blocks).isDisjoint(with: turn1.blocks))
        // Shorter than a block: nothing to match on.
        #expect(Self.affinity("hi").blocks.isEmpty)
        #expect(Self.affinity(String(repeating: "y", count: 1 << 20)).blocks.count == PromptAffinity.maxBlocks)
    }

    @Test func theInstanceHoldingTheLongestPrefixWinsAndSessionsWinOverPrefixes() {
        var table = AffinityTable()
        let shared = Self.affinity(Self.system)
        let conversationA = Self.affinity(Self.system + String(repeating: "a", count: 700))
        let conversationB = Self.affinity(Self.system + String(repeating: "b", count: 700))
        table.record(conversationA, replica: 0)
        table.record(conversationB, replica: 1)
        // Both hold the system prompt's blocks: a new conversation prefers neither.
        #expect(table.matches(shared) == [0: shared.blocks.count, 1: shared.blocks.count])
        #expect(table.preferred(shared) == nil)
        let nextA = Self.affinity(Self.system + String(repeating: "a", count: 900))
        #expect(table.preferred(nextA)?.replica == 0)
        #expect(table.preferred(nextA)?.matchedBlocks == conversationA.blocks.count)
        #expect(table.matches(nextA)[1] == shared.blocks.count)
        #expect(table.preferred(Self.affinity(String(repeating: "z", count: 2000))) == nil)
        table.record(Self.affinity("short", session: "user-7"), replica: 1)
        #expect(table.preferred(Self.affinity(Self.system + String(repeating: "a", count: 900), session: "user-7"))?.replica == 1)
        // A stopped instance's cache is gone: replica 1 holds only the system prompt of A's prefix.
        table.forget(replica: 0)
        #expect(table.matches(nextA) == [1: shared.blocks.count])
        #expect(table.preferred(nextA)?.replica == 1)
    }

    @Test func theTableKeepsTheNewerHalfPastItsCapacity() {
        var table = AffinityTable(capacity: 8)
        for i in 0..<20 { table.record(PromptAffinity(blocks: [i]), replica: i % 2) }
        #expect(table.blockCount <= 8)
        #expect(table.preferred(PromptAffinity(blocks: [19]))?.replica == 1)
        #expect(table.preferred(PromptAffinity(blocks: [0])) == nil)
        // A block two instances served is held by both.
        table.record(PromptAffinity(blocks: [19]), replica: 0)
        #expect(table.matches(PromptAffinity(blocks: [19])) == [0: 1, 1: 1])
    }

    typealias C = ReplicaChoice.Candidate

    @Test func affinityStaysOnThePreferredInstanceWithinItsShare() {
        func decide(_ candidates: [C], _ preferred: Int?, queued: Int = 0, after: Int = -1) -> ReplicaChoice.Decision {
            ReplicaChoice.decide(among: candidates, preferred: preferred, routing: .prefixAffinity, after: after, queued: queued)
        }
        let idle = [C(replica: 0, inFlight: 0, slots: 4), C(replica: 1, inFlight: 0, slots: 4)]
        #expect(decide(idle, 1) == .instance(1))
        // One ahead of the other is within the bound (1.25 × the average, rounded up).
        let oneAhead = [C(replica: 0, inFlight: 0, slots: 4), C(replica: 1, inFlight: 1, slots: 4)]
        #expect(decide(oneAhead, 1) == .instance(1))
        // Two ahead is past it: the request is balanced away to the least busy instance.
        let twoAhead = [C(replica: 0, inFlight: 0, slots: 4), C(replica: 1, inFlight: 2, slots: 4)]
        #expect(decide(twoAhead, 1) == .instance(0))
        // The preferred instance full while the other idles: past the bound, so not worth waiting.
        let fullAndIdle = [C(replica: 0, inFlight: 1, slots: 1), C(replica: 1, inFlight: 0, slots: 1)]
        #expect(decide(fullAndIdle, 0) == .instance(1))
        // Both full: wait for the preferred one (its cache holds the prompt) within the bound...
        let bothFull = [C(replica: 0, inFlight: 2, slots: 2), C(replica: 1, inFlight: 2, slots: 2)]
        #expect(decide(bothFull, 0) == .queue(preferring: 0))
        // ...but not when enough others already wait for it: then whichever frees first.
        let crowded = [C(replica: 0, inFlight: 2, slots: 2, waiting: 3), C(replica: 1, inFlight: 2, slots: 2)]
        #expect(decide(crowded, 0, queued: 3) == .queue(preferring: nil))
        // No preference: the next instance with a free slot after the last one given, busier or
        // not (least busy would keep clients that finish together on one instance); nothing free: the queue.
        #expect(decide(oneAhead, nil) == .instance(0))
        #expect(decide(oneAhead, nil, after: 0) == .instance(1))
        #expect(decide(idle, nil, after: 1) == .instance(0))
        #expect(decide(bothFull, nil) == .queue(preferring: nil))
        // Balanced away past the bound the same way.
        #expect(decide(twoAhead, 1, after: 1) == .instance(0))
        let three = [C(replica: 0, inFlight: 0, slots: 4), C(replica: 1, inFlight: 4, slots: 4), C(replica: 2, inFlight: 1, slots: 4)]
        #expect(decide(three, nil, after: 0) == .instance(2))
    }

    @Test func roundRobinIgnoresThePromptAndTakesTurns() {
        func decide(_ candidates: [C], _ preferred: Int?, after: Int) -> ReplicaChoice.Decision {
            ReplicaChoice.decide(among: candidates, preferred: preferred, routing: .roundRobin, after: after)
        }
        let three = [C(replica: 0, inFlight: 0, slots: 2), C(replica: 1, inFlight: 1, slots: 2), C(replica: 2, inFlight: 2, slots: 2)]
        #expect(decide(three, 1, after: -1) == .instance(0))
        #expect(decide(three, 0, after: 0) == .instance(1))
        // Replica 2 is full: past 1 it wraps to 0.
        #expect(decide(three, nil, after: 1) == .instance(0))
        #expect(decide([C(replica: 0, inFlight: 2, slots: 2)], 0, after: -1) == .queue(preferring: nil))
    }

    @Test func replicasAreReadFromTheConfiguration() throws {
        let json = #"{"models":[{"name":"m","path":"/x.gguf","replicas":{"min":2,"max":3,"scaleUpAfter":"500ms","scaleDownAfter":"30s","routing":"round-robin"}},{"name":"n","path":"/y.gguf"}]}"#
        let config = try CorralConfig.parse(Data(json.utf8), baseDirectory: "/")
        #expect(config.models[0].replicas == ReplicaPolicy(min: 2, max: 3, scaleUpAfter: .milliseconds(500), scaleDownAfter: .seconds(30), routing: .roundRobin))
        #expect(config.models[1].replicas == .single)
        for (bad, key) in [(#"{"min":3,"max":2}"#, "max"), (#"{"routing":"random"}"#, "routing"), (#"{"min":0}"#, "min"), (#"{"maxx":2}"#, "maxx")] {
            let text = #"{"models":[{"name":"m","path":"/x.gguf","replicas":"# + bad + "}]}"
            #expect(throws: ConfigError.self) { try CorralConfig.parse(Data(text.utf8), baseDirectory: "/") }
            do { _ = try CorralConfig.parse(Data(text.utf8), baseDirectory: "/") } catch let error as ConfigError { #expect(error.key.hasSuffix("replicas.\(key)"), "\(error)") }
        }
    }
}
