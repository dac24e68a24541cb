import Foundation
import Runtime
import Testing

/// A model split over cluster RPC workers as decisions over numbers, without a process: how many
/// layers stay on this node and go to each worker, the arguments that say so, refusals with the
/// reason, the registry's reservation rule, the worker handshake and the `cluster.rpc` key.
@Suite struct SplitPlanTests {
    /// 8 layers of 10 MiB, 30 MiB that stay here, 5 MiB of overhead per worker.
    let need = SplitPlanner.Need(layerMiB: Array(repeating: 10, count: 8), hostFixedMiB: 30, workerOverheadMiB: 5)

    func worker(_ node: String, _ free: Int, devices: [String] = ["CPU"]) -> SplitPlanner.Worker {
        SplitPlanner.Worker(node: node, endpoint: "10.0.0.\(node.count):50052", devices: devices, freeMiB: free)
    }

    @Test func theHostKeepsTheLeadingLayersItHoldsAndWorkersShareTheRestByFreeMemory() throws {
        let plan = try SplitPlanner.plan(need, hostFreeMiB: 50, workers: [worker("a", 1000), worker("bb", 1000)]).get()
        #expect(plan.parts.first == SplitPart(node: "Host", layers: 2, memoryMiB: 50))
        #expect(plan.offloadedLayers == 6)
        #expect(plan.tensorSplit == [3, 3])
        #expect(plan.reservations == ["a": 35, "bb": 35])
        #expect(plan.hostMiB == 50)
        #expect(plan.arguments(endpoints: ["127.0.0.1:1", "127.0.0.1:2"]) == ["--rpc", "127.0.0.1:1,127.0.0.1:2", "-ngl", "6", "-ts", "3,3"])
    }

    @Test func sharesFollowFreeMemoryAndTheRoomiestWorkerComesFirst() throws {
        let plan = try SplitPlanner.plan(need, hostFreeMiB: 30, workers: [worker("small", 25), worker("big", 65)]).get()
        #expect(plan.workers.map(\.node) == ["big", "small"])
        #expect(plan.tensorSplit == [6, 2])
        #expect(plan.reservations == ["big": 65, "small": 25])
        #expect(plan.parts.map(\.layers) == [0, 6, 2])
    }

    @Test func aShareLargerThanAWorkerHoldsIsFilledInOrderInstead() throws {
        // Proportional shares would give the 14 MiB worker one layer of 10 MiB plus 5 of overhead.
        let plan = try SplitPlanner.plan(need, hostFreeMiB: 30, workers: [worker("a", 100), worker("bb", 14)]).get()
        #expect(plan.workers.map(\.node) == ["a"])
        #expect(plan.tensorSplit == [8])
        #expect(plan.reservations == ["a": 85])
    }

    @Test func aWorkerWithSeveralDevicesSharesItsLayersAmongThem() throws {
        let plan = try SplitPlanner.plan(need, hostFreeMiB: 30, workers: [worker("a", 1000, devices: ["CUDA0", "CUDA1", "CUDA2"])]).get()
        #expect(plan.tensorSplit == [3, 3, 2])
        #expect(plan.offloadedLayers == 8)
    }

    @Test func refusedWhenTheHostCannotKeepItsPart() {
        guard case .failure(let refusal) = SplitPlanner.plan(need, hostFreeMiB: 20, workers: [worker("a", 1000)]) else {
            Issue.record("planned")
            return
        }
        #expect(refusal.description.contains("must keep 30 MiB"))
    }

    @Test func refusedWithWhatIsMissingWhenTheWorkersHaveTooLittle() {
        guard case .failure(let refusal) = SplitPlanner.plan(need, hostFreeMiB: 30, workers: [worker("a", 40), worker("bb", 3)]) else {
            Issue.record("planned")
            return
        }
        #expect(refusal.description.contains("1 RPC workers with 40 MiB free"), "\(refusal)")
        #expect(refusal.description.contains("50 MiB more are missing"), "\(refusal)")
        guard case .failure(let none) = SplitPlanner.plan(need, hostFreeMiB: 30, workers: []) else {
            Issue.record("planned")
            return
        }
        #expect(none.description.contains("no RPC worker has room"))
    }

    @Test func theNeedComesFromTheFitPlanAndTheLayerSizes() {
        let plan = FitPlan(arguments: [], projection: [FitPlan.DeviceProjection(device: "Host", modelMiB: 100, contextMiB: 40, computeMiB: 20)], source: .estimator)
        let need = SplitPlanner.Need.from(plan: plan, layers: 4, layerBytes: Array(repeating: 20 << 20, count: 4), extraHostMiB: 8)
        #expect(need.layerMiB == [30, 30, 30, 30])
        #expect(need.hostFixedMiB == 48)  // 100 + 40 + 20 + 8 - 120
        #expect(need.workerOverheadMiB == 20)
        #expect(need.totalMiB == 168)
    }

    // MARK: The registry's rule

    @Test func aReservationIsAllOrNothingAndNeverPromisesAWorkerTwice() {
        var book = RPCReservationBook(offered: ["a": 100, "b": 100])
        #expect(book.reserve(holder: "n1/m", parts: ["a": 60, "b": 60]) == nil)
        // A second node wanting 60 of each finds neither worker with room: nothing is taken.
        #expect(book.reserve(holder: "n2/m", parts: ["a": 60, "b": 10]) == "a")
        #expect(book.freeMiB("a") == 40)
        #expect(book.freeMiB("b") == 40)
        #expect(book.reserve(holder: "n2/m", parts: ["a": 40, "b": 40]) == nil)
        #expect(book.freeMiB("a") == 0)
        #expect(book.reserve(holder: "n3/m", parts: ["gone": 1]) == "gone")
        book.release(holder: "n1/m")
        #expect(book.freeMiB("a") == 60)
        #expect(book.reserve(holder: "n3/m", parts: ["a": 60]) == nil)
    }

    // MARK: The worker's handshake

    @Test func onlyTheClusterSecretAnswersTheChallenge() {
        let challenge: [UInt8] = Array(0..<32)
        let answer = RPCHandshake.answer(secret: "a-cluster-secret-0123456789", challenge: challenge)
        #expect(answer.count == RPCHandshake.size)
        #expect(RPCHandshake.verify(secret: "a-cluster-secret-0123456789", challenge: challenge, answer: answer))
        #expect(!RPCHandshake.verify(secret: "another-secret-0123456789", challenge: challenge, answer: answer))
        #expect(!RPCHandshake.verify(secret: "a-cluster-secret-0123456789", challenge: Array(1...32), answer: answer))
        #expect(!RPCHandshake.verify(secret: "a-cluster-secret-0123456789", challenge: challenge, answer: Array(answer.prefix(16))))
    }

    // MARK: cluster.rpc

    func config(_ rpc: String) throws -> CorralConfig {
        try CorralConfig.parse(Data("""
            {"cluster": {"nodeName": "w", "advertiseURL": "http://10.0.0.2:11434", "secretEnv": "S", "rpc": \(rpc)}}
            """.utf8), baseDirectory: "/tmp")
    }

    @Test func clusterRPCIsReadWithItsDefaults() throws {
        #expect(try config(#"{"port": 50052}"#).cluster?.rpc == CorralConfig.RPCWorker(port: 50052))
        #expect(try config(#"{"port": 50052, "devices": ["CUDA0"], "memoryMiB": 20000}"#).cluster?.rpc
            == CorralConfig.RPCWorker(port: 50052, devices: ["CUDA0"], memoryMiB: 20000))
        #expect(throws: (any Error).self) { try config(#"{"devices": ["CPU"]}"#) }
        #expect(throws: (any Error).self) { try config(#"{"port": 70000}"#) }
        #expect(throws: (any Error).self) { try config(#"{"port": 1, "memory": 3}"#) }
    }
}
