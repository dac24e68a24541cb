import Foundation
import Store
import Testing

@testable import Files

/// Fine-tuning data in every accepted format read into examples, each problem named by file and
/// line; the checks an upload gets per purpose; and the file library on a real SQLite store:
/// team scoping, paging, the digest check on read, and delete.
@Suite struct TrainingDataTests {
    func read(_ text: String, _ format: TrainingFormat) throws(TrainingDataError) -> [TrainingExample] {
        try TrainingData.read(Data(text.utf8), format: format, name: "f")
    }

    func problem(_ text: String, _ format: TrainingFormat) -> TrainingDataError? {
        do { _ = try read(text, format); return nil } catch { return error }
    }

    @Test func readsEachFormatIntoExamples() throws {
        let chat = #"{"messages":[{"role":"developer","content":"be brief"},{"role":"user","content":[{"type":"text","text":"hi"}]},{"role":"assistant","content":"hello"}]}"#
        let examples = try read(chat + "\n\n" + #"{"prompt":"a ","completion":"b"}"# + "\n" + #"{"conversations":[{"from":"human","value":"q"},{"from":"gpt","value":"r"}]}"# + "\n" + #"{"text":"plain"}"#, .jsonl)
        #expect(examples == [
            .chat([.init(role: "system", content: "be brief"), .init(role: "user", content: "hi"), .init(role: "assistant", content: "hello")], line: 1),
            .text("a b", line: 3),
            .chat([.init(role: "user", content: "q"), .init(role: "assistant", content: "r")], line: 4),
            .text("plain", line: 5),
        ])
        // Quoted CSV fields keep commas, doubled quotes and line breaks; records are named by
        // the line they start on.
        #expect(try read("prompt,completion\n\"Q, one\",\"say \"\"yes\"\"\nnow\"\nq2,a2\n", .csv) == [.text("Q, onesay \"yes\"\nnow", line: 2), .text("q2a2", line: 4)])
        #expect(try read("\u{FEFF}Text\r\nfirst\r\nsecond\r\n", .csv) == [.text("first", line: 2), .text("second", line: 3)])
        #expect(try read("one\ntwo\n\n\nthree\n", .text) == [.text("one\ntwo", line: 1), .text("three", line: 5)])
    }

    @Test func namesTheLineOfEachProblem() {
        let ok = #"{"messages":[{"role":"user","content":"q"},{"role":"assistant","content":"a"}]}"#
        #expect(problem(ok + "\nnot json\n", .jsonl) == TrainingDataError(file: "f", line: 2, "not a JSON object"))
        #expect(problem(ok + "\n" + #"{"messages":[{"role":"user","content":"q"}]}"#, .jsonl)?.line == 2)
        #expect(problem(#"{"messages":[{"role":"robot","content":"q"}]}"#, .jsonl)?.message.contains("robot") == true)
        #expect(problem(#"{"prompt":"q"}"#, .jsonl)?.message.contains("completion") == true)
        #expect(problem(#"{"conversations":[{"from":"alien","value":"q"}]}"#, .jsonl)?.message.contains("alien") == true)
        #expect(problem(#"{"question":"q"}"#, .jsonl)?.message.contains("none of") == true)
        #expect(problem("a,b\n1,2\n", .csv) == TrainingDataError(file: "f", line: 1, "the header must name 'prompt' and 'completion' columns, or a 'text' column (found: a,b)"))
        #expect(problem("prompt,completion\nq,a\nq,a,x\n", .csv)?.line == 3)
        #expect(problem("text\n\"open\nstill open\n", .csv)?.line == 2)
        #expect(problem("\n\n", .text)?.line == nil)
        #expect(problem("", .jsonl)?.message == "the file has no examples")
        #expect(throws: TrainingDataError.self) { try TrainingData.read(Data([0xff, 0xfe]), format: .text, name: "f") }
    }

    @Test func detectsTheFormatByNameThenByContent() {
        #expect(TrainingFormat.detect(filename: "a.JSONL", contents: Data("x".utf8)) == .jsonl)
        #expect(TrainingFormat.detect(filename: "a.csv", contents: Data("{".utf8)) == .csv)
        #expect(TrainingFormat.detect(filename: "data", contents: Data("  {\"text\":1}".utf8)) == .jsonl)
        #expect(TrainingFormat.detect(filename: "data", contents: Data("words".utf8)) == .text)
    }
}

@Suite struct FileLibraryTests {
    let folder = FileManager.default.temporaryDirectory.appendingPathComponent("corral-files-\(UUID().uuidString)").path

    func library(maxBytes: Int = 1 << 20) throws -> FileLibrary {
        try FileLibrary(store: try Store.inMemory(), directory: folder, maxBytes: maxBytes)
    }

    /// The FileError `body` threw (nil when it threw none; any other error fails the test).
    func refusal(_ body: () async throws -> Void) async -> FileError? {
        do { try await body(); return nil } catch let error as FileError { return error } catch {
            Issue.record("not a FileError: \(error)")
            return nil
        }
    }

    @Test func anUploadIsCheckedForItsPurpose() async throws {
        let files = try library(maxBytes: 64)
        defer { try? FileManager.default.removeItem(atPath: folder) }
        #expect(await refusal { _ = try await files.create(Data("x".utf8), filename: "a", purpose: "nonsense", team: nil) }
            == .badRequest("purpose must be one of evals, fine-tune, batch, user_data", param: "purpose"))
        #expect(await refusal { _ = try await files.create(Data(count: 65), filename: "a", purpose: "user_data", team: nil) } == .tooLarge(limit: 64))
        #expect(await refusal { _ = try await files.create(Data("{\"item\":{}}\n[1]\n".utf8), filename: "e.jsonl", purpose: "evals", team: nil) }
            == .badRequest("line 2 is not a JSON object", param: "file"))
        #expect(await refusal { _ = try await files.create(Data("{\"x\":1}".utf8), filename: "e.jsonl", purpose: "evals", team: nil) }
            == .badRequest("line 1 has no \"item\" object", param: "file"))
        #expect(await refusal { _ = try await files.create(Data("{}\nnope\n".utf8), filename: "t.jsonl", purpose: "fine-tune", team: nil) }
            == .badRequest("line 2: not a JSON object", param: "file"))
        // A path in the name is metadata only: the stored name is its last component.
        let kept = try await files.create(Data("{\"item\":{\"q\":1}}\n".utf8), filename: "../../etc/e.jsonl", purpose: "evals", team: nil)
        #expect(kept.filename == "e.jsonl")
        #expect(kept.sha256 == FileLibrary.sha256(Data("{\"item\":{\"q\":1}}\n".utf8)))
        #expect(FileManager.default.fileExists(atPath: folder + "/" + kept.id))
    }

    @Test func aTeamSeesOnlyItsOwnFilesAndTheAdminSeesAll() async throws {
        let files = try library()
        defer { try? FileManager.default.removeItem(atPath: folder) }
        var mine: [String] = []
        for i in 0..<3 { mine.append(try await files.create(Data("\(i)".utf8), filename: "m\(i)", purpose: "user_data", team: "a").id) }
        let theirs = try await files.create(Data("t".utf8), filename: "t", purpose: "user_data", team: "b")
        #expect(await refusal { _ = try await files.file(theirs.id, scope: .team("a")) } == .notFound(theirs.id))
        #expect(try await files.file(theirs.id, scope: .all).id == theirs.id)
        // Two pages cover the team's three files once each (files made in the same instant are
        // ordered by id, so the order within a tie is not the order of creation).
        let first = try await files.list(scope: .team("a"), purpose: nil, after: nil, limit: 2, newestFirst: false)
        #expect(first.files.count == 2 && first.hasMore)
        let rest = try await files.list(scope: .team("a"), purpose: nil, after: first.files.last!.id, limit: 2, newestFirst: false)
        #expect(rest.files.count == 1 && !rest.hasMore)
        #expect((first.files + rest.files).map(\.id).sorted() == mine.sorted())
        #expect(try await files.list(scope: .all, purpose: "user_data", after: nil, limit: 10, newestFirst: true).files.count == 4)
        // Another team cannot delete it; its owner can, and the bytes go with the row.
        #expect(await refusal { try await files.delete(mine[0], scope: .team("b")) } == .notFound(mine[0]))
        try await files.delete(mine[0], scope: .team("a"))
        #expect(!FileManager.default.fileExists(atPath: folder + "/" + mine[0]))
        #expect(await refusal { _ = try await files.file(mine[0], scope: .all) } == .notFound(mine[0]))
    }

    @Test func bytesThatNoLongerMatchTheirDigestAreNotServed() async throws {
        let files = try library()
        defer { try? FileManager.default.removeItem(atPath: folder) }
        let kept = try await files.create(Data("original".utf8), filename: "f", purpose: "user_data", team: nil)
        #expect(try await files.contents(kept.id, scope: .team(nil)).1 == Data("original".utf8))
        try Data("tampered".utf8).write(to: URL(fileURLWithPath: folder + "/" + kept.id))
        guard case .storage(let reason)? = await refusal({ _ = try await files.contents(kept.id, scope: .all) }) else {
            Issue.record("a changed file was served")
            return
        }
        #expect(reason.contains("SHA-256"))
        // Bytes missing on this node, and none in the store (SQLite keeps none): a clear error.
        try FileManager.default.removeItem(atPath: folder + "/" + kept.id)
        guard case .storage(let missing)? = await refusal({ _ = try await files.contents(kept.id, scope: .all) }) else {
            Issue.record("missing bytes were not reported")
            return
        }
        #expect(missing.contains("not in"))
    }
}
