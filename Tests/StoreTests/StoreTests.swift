import Foundation
import Testing

@testable import Store

/// The SQLite store on real files: migrations survive a reopen, the job log keeps its order and
/// its events, pruning keeps the newest finished jobs, and the small tables round-trip.
@Suite struct StoreTests {
    let folder = FileManager.default.temporaryDirectory.appendingPathComponent("corral-store-\(UUID().uuidString)").path

    func job(_ id: String, kind: String = "bench", state: String = "succeeded", at seconds: Double, model: String? = nil) -> StoredJob {
        StoredJob(id: id, kind: kind, state: state, model: model, createdAt: Date(timeIntervalSince1970: 1_800_000_000 + seconds), body: Data("{\"id\":\"\(id)\"}".utf8))
    }

    @Test func aReopenedDatabaseKeepsItsRowsAndMigratesNothingTwice() async throws {
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: folder) }
        let path = folder + "/corral.sqlite"
        do {
            let store = try Store.open(path: path)
            try await store.saveModelAlias("fast", target: "chat")
            try await store.saveFileDigest(path: "/m/a.gguf", size: 10, modified: 1.5, digest: "abc")
            try await store.saveFitPlan(key: "k", model: "chat", plan: Data("{}".utf8))
            try await store.putDocument(kind: "profile", id: "p1", model: "chat", body: Data("{\"a\":1}".utf8))
        }
        let reopened = try Store.open(path: path)
        #expect(try await reopened.modelAliases() == ["fast": "chat"])
        #expect(try await reopened.fileDigests().map(\.digest) == ["abc"])
        #expect(try await reopened.fitPlan(key: "k") == Data("{}".utf8))
        #expect(try await reopened.fitPlanCount() == 1)
        #expect(try await reopened.document(kind: "profile", id: "p1") == Data("{\"a\":1}".utf8))
        try await reopened.deleteModelAlias("fast")
        #expect(try await reopened.modelAliases().isEmpty)
    }

    @Test func jobsListNewestFirstWithFiltersAndACursor() async throws {
        let store = try Store.inMemory()
        for (i, id) in ["j1", "j2", "j3", "j4"].enumerated() {
            try await store.putJob(job(id, kind: i == 3 ? "pull" : "bench", state: i == 0 ? "failed" : "succeeded", at: Double(i), model: i % 2 == 0 ? "a" : "b"))
        }
        #expect(try await store.jobs(kind: nil, states: nil, model: nil, after: nil, limit: 10).map(\.id) == ["j4", "j3", "j2", "j1"])
        #expect(try await store.jobs(kind: "bench", states: nil, model: nil, after: nil, limit: 10).map(\.id) == ["j3", "j2", "j1"])
        #expect(try await store.jobs(kind: nil, states: ["failed"], model: nil, after: nil, limit: 10).map(\.id) == ["j1"])
        #expect(try await store.jobs(kind: nil, states: nil, model: "a", after: nil, limit: 10).map(\.id) == ["j3", "j1"])
        let page = try await store.jobs(kind: nil, states: nil, model: nil, after: nil, limit: 2)
        #expect(try await store.jobs(kind: nil, states: nil, model: nil, after: page.last!.id, limit: 2).map(\.id) == ["j2", "j1"])
    }

    @Test func updatingAJobKeepsItsEvents() async throws {
        let store = try Store.inMemory()
        try await store.putJob(job("j1", state: "running", at: 0))
        for n in 1...3 { try await store.appendJobEvent(sequence: Int64(n), job: "j1", type: "progress", data: Data("\(n)".utf8), at: Date()) }
        // An upsert: INSERT OR REPLACE would have deleted the row and, by the cascade, its events.
        try await store.putJob(job("j1", state: "succeeded", at: 0))
        #expect(try await store.job(id: "j1")?.state == "succeeded")
        #expect(try await store.jobEvents(job: "j1", after: 1, limit: 10).map(\.sequence) == [2, 3])
        #expect(try await store.lastJobEventSequence() == 3)
    }

    @Test func pruningKeepsTheNewestFinishedJobsAndEveryRunningOne() async throws {
        let store = try Store.inMemory()
        for i in 0..<5 { try await store.putJob(job("done\(i)", at: Double(i))) }
        try await store.putJob(job("running", state: "running", at: -10))
        try await store.putJob(job("other-kind", kind: "pull", at: -10))
        try await store.appendJobEvent(sequence: 1, job: "done0", type: "x", data: Data(), at: Date())
        let removed = try await store.pruneJobs(kind: "bench", finishedStates: ["succeeded", "failed"], keep: 2, olderThan: nil)
        #expect(removed == 3)
        let left = Set(try await store.jobs(kind: nil, states: nil, model: nil, after: nil, limit: 10).map(\.id))
        #expect(left == ["done4", "done3", "running", "other-kind"])
        #expect(try await store.jobEvents(job: "done0", after: 0, limit: 10).isEmpty)
        // Older than a date: the kept ones go too once they are old enough.
        let cutoff = Date(timeIntervalSince1970: 1_800_000_000 + 3.5)
        #expect(try await store.pruneJobs(kind: "bench", finishedStates: ["succeeded"], keep: 10, olderThan: cutoff) == 1)
    }

    @Test func teamOwnedRowsAreScoped() async throws {
        let store = try Store.inMemory()
        let at = Date(timeIntervalSince1970: 1_800_000_000)
        for (id, team) in [("f1", "a"), ("f2", nil), ("f3", "b")] as [(String, String?)] {
            try await store.putFile(StoredFile(id: id, team: team, purpose: "user_data", filename: id, bytes: 1, sha256: "x", createdAt: at))
        }
        #expect(try await store.file(id: "f1", scope: .team("b")) == nil)
        #expect(try await store.file(id: "f2", scope: .team(nil))?.id == "f2")
        #expect(try await store.file(id: "f2", scope: .team("a")) == nil)
        #expect(try await store.files(scope: .all, purpose: nil, after: nil, limit: 10, newestFirst: false).count == 3)
        #expect(try await store.deleteFile(id: "f3", scope: .team("a")) == false)
        #expect(try await store.deleteFile(id: "f3", scope: .all) == true)
    }
}
