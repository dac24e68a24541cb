import Files
import Foundation
import Testing

@testable import Lab

/// Fine-tuning's pure parts: every data format read into examples with the file and line of each
/// problem, llama-finetune's progress lines, the learning-rate schedule across one-epoch
/// invocations, the trainer's first-come turns, and the data the trainer needs.
@Suite struct FineTuningTests {
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

    @Test func readsTheTrainersProgressLines() {
        var output = TrainerOutput()
        let train = output.read("train: [▍       ] data=0000012/0000324 loss=4.67697±0.08477 acc=20.44±0.73% t=00:00:00 ETA=00:01:03 ")
        #expect(train == TrainerProgress(phase: "train", batch: 12, batches: 324, loss: 4.67697, accuracy: 20.44 / 100, etaSeconds: 63))
        let first = output.read("train: [        ] data=0000001/0000324 loss=4.82969±nan acc=21.09±2.55% t=00:00:00 ETA=00:00:05 ")
        #expect(first?.loss == 4.82969)
        output.read("val:   [███████▉] data=0000018/0000018 loss=3.70240±0.04045 acc=22.98±0.62% t=00:00:00 ETA=00:00:00 ")
        #expect(output.lastValidation?.loss == 3.70240 && output.lastValidation?.batches == 18 && output.lastTrain?.batch == 1)
        output.read("0.00.100.000 E gguf_write_to_file: failed to open file '' for writing GGUF data")
        #expect(output.errors == ["gguf_write_to_file: failed to open file '' for writing GGUF data"])
        #expect(output.read("0.00.100.000 W something") == nil && output.errors.count == 1)
    }

    @Test func theScheduleIsTheTrainersOwnComputedPerEpoch() {
        // lr0 · (lrMin / lr0)^(e / D): halving log2(lr0 / lrMin) / D times per epoch, then lrMin.
        let schedule = LearningRateSchedule(lr: 1e-4, lrMin: 1e-5, decayEpochs: nil)
        let rates = (0..<4).map { schedule.rate(epoch: $0, of: 4) }
        #expect(abs(rates[0] - 1e-4) < 1e-12)
        #expect(abs(rates[2] - 1e-4 * pow(0.1, 0.5)) < 1e-12)
        #expect(rates == rates.sorted(by: >))
        #expect(schedule.rate(epoch: 4, of: 4) == 1e-5)
        #expect(LearningRateSchedule(lr: 1e-4, lrMin: 1e-5, decayEpochs: 2).rate(epoch: 2, of: 4) == 1e-5)
        #expect(LearningRateSchedule(lr: 1e-4, lrMin: 0, decayEpochs: nil).rate(epoch: 3, of: 4) == 1e-4)
    }

    @Test func theTrainerNeedsAFewWindowsOfData() {
        // (tokens − c − 1) / (c / 2) windows, of which 1 − split train: 4 at least.
        let needed = FineTuneJob.minimumTokens(context: 256, validationSplit: 0.05)
        let windows = (needed - 256 - 1) / 128
        #expect(Int(Double(windows) * 0.95) >= FineTuneJob.minimumWindows)
        #expect(Int(Double((needed - 128 - 256 - 1) / 128) * 0.95) < FineTuneJob.minimumWindows)
        #expect(FineTuneJob.modelName(base: "chat", suffix: "x", job: "ftjob-abc") == "ft:chat:x:abc")
        #expect(FineTuneJob.modelName(base: "chat", suffix: nil, job: "ftjob-abc") == "ft:chat::abc")
    }

    @Test func trainerTurnsGoFirstComeFirstServedAndACancelledWaiterLeaves() async throws {
        let turns = TrainerTurns(limit: 1)
        let order = OrderLog()
        let (hold, release) = AsyncStream<Void>.makeStream()
        let first = Task { try await turns.holding { await order.add("first"); for await _ in hold { break } } }
        while await order.entries.isEmpty { await Task.yield() }
        let cancelled = Task { try await turns.holding { await order.add("cancelled") } }
        try await Task.sleep(for: .milliseconds(20))
        let second = Task { try await turns.holding { await order.add("second") } }
        try await Task.sleep(for: .milliseconds(20))
        cancelled.cancel()
        #expect(await (try? cancelled.value) == nil)
        release.yield()
        try await first.value
        try await second.value
        #expect(await order.entries == ["first", "second"])
    }
}

actor OrderLog {
    var entries: [String] = []
    func add(_ entry: String) { entries.append(entry) }
}
