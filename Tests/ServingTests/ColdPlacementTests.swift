import Foundation
import Runtime
import Store
import Testing

@testable import Serving

/// Where a cold load goes in a cluster: the node with the most free memory for the model, ties
/// (within 5%) by load, this node among equals; the heartbeat detail it is read from.
@Suite struct ColdPlacementTests {
    typealias Candidate = ColdPlacement.Candidate

    static func node(_ name: String, host: Int, gpu: Int? = nil, load: Int = 0) -> Candidate {
        var free = ["Host": host]
        if let gpu { free["CUDA0"] = gpu }
        return Candidate(name: name, freeMiB: free, load: load)
    }

    static func chosen(_ d: ColdPlacement.Decision) -> String? {
        if case .peer(let name, _) = d { return name }
        return nil
    }

    @Test func threeNodesOfDifferentFreeMemoryLoadOnTheRoomiest() {
        let here = Self.node("small", host: 1000)
        let d = ColdPlacement.decide(needMiB: 300, here: here, peers: [Self.node("mid", host: 2000), Self.node("big", host: 4000)])
        #expect(Self.chosen(d) == "big")
        #expect(d.reason.contains("4000 MiB for 300 MiB on big"))
        #expect(d.reason.contains("1000 MiB free here"))
        // Received by the roomiest itself: loaded there, nothing relayed.
        let there = ColdPlacement.decide(needMiB: 300, here: Self.node("big", host: 4000), peers: [Self.node("mid", host: 2000), Self.node("small", host: 1000)])
        #expect(there == .here(reason: "most free memory in RAM: 4000 MiB for 300 MiB"))
    }

    @Test func onlyNodesItFitsOnCount() {
        // No node has the room: here, evicting as on one node.
        let none = ColdPlacement.decide(needMiB: 5000, here: Self.node("a", host: 1000), peers: [Self.node("b", host: 4000)])
        #expect(Self.chosen(none) == nil)
        #expect(none.reason.contains("fits on no node"))
        // Not here: the roomiest of the peers it fits on.
        let one = ColdPlacement.decide(needMiB: 1500, here: Self.node("a", host: 1000), peers: [Self.node("b", host: 1600), Self.node("c", host: 1200)])
        #expect(Self.chosen(one) == "b")
        #expect(one.reason.contains("does not fit here"))
    }

    @Test func tiesWithinFivePercentGoToTheLeastLoadedAndToThisNodeAmongEquals() {
        // 4000 and 3900 are a tie (within 5%): this node wins it when no less loaded.
        let mine = ColdPlacement.decide(needMiB: 100, here: Self.node("a", host: 3900, load: 2), peers: [Self.node("b", host: 4000, load: 2)])
        #expect(Self.chosen(mine) == nil)
        #expect(mine.reason.contains("ties with 1 other node"))
        // ... and loses it to a peer with less load.
        let busy = ColdPlacement.decide(needMiB: 100, here: Self.node("a", host: 4000, load: 3), peers: [Self.node("b", host: 3900, load: 1)])
        #expect(Self.chosen(busy) == "b")
        #expect(busy.reason.contains("the least loaded of 2"))
        // Past 5% memory decides, whatever the load.
        let apart = ColdPlacement.decide(needMiB: 100, here: Self.node("a", host: 3000, load: 0), peers: [Self.node("b", host: 4000, load: 9)])
        #expect(Self.chosen(apart) == "b")
        // Among tied peers (this node out of the tie): least loaded, then most free, then name.
        let peers = [Self.node("c", host: 3950, load: 1), Self.node("b", host: 4000, load: 1), Self.node("d", host: 3990, load: 0)]
        #expect(Self.chosen(ColdPlacement.decide(needMiB: 100, here: Self.node("a", host: 1000), peers: peers)) == "d")
        let even = [Self.node("c", host: 4000, load: 0), Self.node("b", host: 4000, load: 0)]
        #expect(Self.chosen(ColdPlacement.decide(needMiB: 100, here: Self.node("a", host: 1000), peers: even)) == "b")
        // A peer reported under this node's own name is this node.
        #expect(Self.chosen(ColdPlacement.decide(needMiB: 100, here: Self.node("a", host: 1000), peers: [Self.node("a", host: 9000)])) == nil)
    }

    @Test func anAcceleratorThatHoldsTheWholeModelBeatsMoreRAM() {
        let d = ColdPlacement.decide(needMiB: 6000, here: Self.node("cpu", host: 60000), peers: [Self.node("gpu", host: 30000, gpu: 8000)])
        #expect(Self.chosen(d) == "gpu")
        #expect(d.reason.contains("on an accelerator: 8000 MiB"))
        // Too big for any accelerator: RAM, the roomiest.
        let big = ColdPlacement.decide(needMiB: 20000, here: Self.node("cpu", host: 60000), peers: [Self.node("gpu", host: 30000, gpu: 8000)])
        #expect(big == .here(reason: "most free memory in RAM: 60000 MiB for 20000 MiB"))
        // Several accelerators on a node: the one with most free memory counts.
        let two = Candidate(name: "two", freeMiB: ["Host": 1000, "CUDA0": 3000, "CUDA1": 7000], load: 0)
        #expect(Self.chosen(ColdPlacement.decide(needMiB: 6000, here: Self.node("one", host: 1000, gpu: 6500), peers: [two])) == "two")
    }

    @Test func aPeerIsReadFromItsHeartbeatDetail() {
        var detail = NodeDetail()
        detail.models = [.init(model: "chat", slots: 4, inFlight: 3, queued: 2, free: 1, instances: 2)]
        detail.memory = ["Host": .init(budgetMiB: 4000, usedMiB: 1000, freeMiB: 3000, totalMiB: 16000, availableMiB: 9000),
                         "CUDA0": .init(budgetMiB: 8000, usedMiB: 500, freeMiB: 7500)]
        detail.serves = ["chat", "cold"]
        detail.loading = ["cold"]
        let record = NodeRecord(name: "b", url: "http://b", version: "1", state: "serving", detail: detail.json, started: 0)
        let peer = Peer(record)
        #expect(peer.models["chat"]?.free == 1 && peer.models["chat"]?.queued == 2)
        #expect(peer.freeMiB == ["Host": 3000, "CUDA0": 7500])
        #expect(peer.load == 5)
        #expect(peer.serves == ["chat", "cold"])
        #expect(peer.loading == ["cold"])
        #expect(NodeDetail.parse(detail.json) == detail)
        // The shape /admin/cluster and the dashboard read: memory per device as numbers, no nulls.
        let object = try? JSONSerialization.jsonObject(with: Data(detail.json.utf8)) as? [String: Any]
        let gpu = (object?["memory"] as? [String: Any])?["CUDA0"] as? [String: Int]
        #expect(gpu == ["budgetMiB": 8000, "usedMiB": 500, "freeMiB": 7500])
        // A node of an older version: no catalog, so never chosen for a cold load; models still read.
        let old = #"{"memory":{"Host":{"budgetMiB":100,"freeMiB":90,"usedMiB":10}},"models":[{"model":"m","slots":1,"inFlight":0,"queued":0,"free":1,"instances":1}]}"#
        let older = Peer(NodeRecord(name: "c", url: "http://c", version: "0", state: "serving", detail: old, started: 0))
        #expect(older.serves == nil && older.models["m"]?.free == 1 && older.freeMiB == ["Host": 90])
        #expect(Peer(NodeRecord(name: "d", url: "http://d", version: "0", state: "serving", detail: "not json", started: 0)).models.isEmpty)
    }

    @Test func aNodesLoadCountsAModelsQueueOnce() {
        #expect(ClusterNode.load([("a", 2, 3), ("a", 1, 3), ("b", 1, 0)]) == 7)
        #expect(ClusterNode.catalogID("chat#embeddings") == "chat" && ClusterNode.catalogID("chat") == "chat")
    }
}
