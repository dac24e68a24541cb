import Foundation
import Runtime
import Testing

@testable import Serving

/// Prefix affinity among the cluster peers that have a model loaded: a conversation goes back to
/// the peer it went to, unless that peer is full or gone.
@Suite struct PeerAffinityTests {
    static func peer(_ name: String, free: Int, queued: Int = 0) -> Peer {
        Peer(name: name, url: "http://\(name)", state: "serving", age: 0, models: ["m": (free, queued)])
    }

    static func prompt(_ text: String) -> PromptAffinity {
        Array(text.utf8).withUnsafeBytes { PromptAffinity(prompt: $0, session: nil) }
    }

    @Test func aConversationReturnsToItsPeerUnlessItIsFull() {
        var routing = ClusterNode.PeerRouting()
        let conversation = Self.prompt(String(repeating: "the harbour inventory ", count: 60))
        let nextTurn = Self.prompt(String(repeating: "the harbour inventory ", count: 60) + String(repeating: "and more ", count: 60))
        // First turn: the peer with most free slots.
        let first = ClusterNode.choosePeer(for: "m", among: [Self.peer("a", free: 1), Self.peer("b", free: 3)], affinity: conversation, routing: &routing)
        #expect(first?.name == "b")
        // Next turn: back to b although a now has more free slots.
        let second = ClusterNode.choosePeer(for: "m", among: [Self.peer("a", free: 4), Self.peer("b", free: 1)], affinity: nextTurn, routing: &routing)
        #expect(second?.name == "b")
        // b full (or queueing): the other peer, which then holds the conversation.
        let third = ClusterNode.choosePeer(for: "m", among: [Self.peer("a", free: 1), Self.peer("b", free: 2, queued: 1)], affinity: nextTurn, routing: &routing)
        #expect(third?.name == "a")
        // Both have served the conversation now: neither stands out, the one with more free slots takes it.
        let fourth = ClusterNode.choosePeer(for: "m", among: [Self.peer("a", free: 1), Self.peer("b", free: 3)], affinity: nextTurn, routing: &routing)
        #expect(fourth?.name == "b")
        // A longer turn a served alone goes back to a.
        let longer = Self.prompt(String(repeating: "the harbour inventory ", count: 60) + String(repeating: "and more ", count: 120))
        routing = ClusterNode.PeerRouting()
        _ = ClusterNode.choosePeer(for: "m", among: [Self.peer("a", free: 3), Self.peer("b", free: 1)], affinity: longer, routing: &routing)
        #expect(ClusterNode.choosePeer(for: "m", among: [Self.peer("a", free: 1), Self.peer("b", free: 3)], affinity: longer, routing: &routing)?.name == "a")
        // Without a prompt to go by: most free slots; with no peer free: none.
        #expect(ClusterNode.choosePeer(for: "m", among: [Self.peer("a", free: 1), Self.peer("b", free: 3)], affinity: nil, routing: &routing)?.name == "b")
        #expect(ClusterNode.choosePeer(for: "m", among: [Self.peer("a", free: 0)], affinity: nextTurn, routing: &routing) == nil)
        #expect(ClusterNode.choosePeer(for: "other", among: [Self.peer("a", free: 2)], affinity: nextTurn, routing: &routing) == nil)
    }
}
