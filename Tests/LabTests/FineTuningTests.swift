import Files
import Foundation
import Testing

@testable import Lab

/// Fine-tuning's pure parts (the data formats are FilesTests'): llama-finetune's progress lines, the learning-rate schedule across one-epoch
/// invocations, the trainer's first-come turns, and the data the trainer needs.
@Suite struct FineTuningTests {
    @Test func anEpochsValidationLossIsReportedOnlyOnceItsPhaseEnded() {
        var state = FineTuneState()
        state.stepsPerEpoch = 10
        let train = TrainerProgress(phase: "train", batch: 10, batches: 10, loss: 2.5, accuracy: 0.4)
        state.current = TrainerProgress(phase: "val", batch: 1, batches: 4, loss: 9.9, accuracy: 0.1)
        let partial = FineTuneJob.metrics(state: state, train: train, epoch: 2, epochs: 3)
        #expect(partial.validLoss == nil && partial.step == 20 && partial.totalSteps == 30)
        state.current = TrainerProgress(phase: "val", batch: 4, batches: 4, loss: 3.1, accuracy: 0.3)
        let ended = FineTuneJob.metrics(state: state, train: train, epoch: 2, epochs: 3)
        #expect(ended.validLoss == 3.1 && ended.validMeanTokenAccuracy == 0.3 && ended.trainLoss == 2.5)
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
