import Foundation
import GGUF
import Testing

@testable import Lab

/// The search strategies on synthetic objectives with a known optimum (no llama-server): each is
/// deterministic for a seed and respects its budget; TPE and Hyperband find the optimum of a noisy
/// 2-D quadratic with less work than random search over 20 seeds.
@Suite struct SearchStrategyTests {
    let space = SearchSpace([.float("x", 0...1), .float("y", 0...1)])

    /// The true value (the optimum, 0, is at x = 0.3, y = 0.7).
    static func truth(_ p: SearchPoint) -> Double {
        let (x, y) = (p["x"]!.number!, p["y"]!.number!)
        return -((x - 0.3) * (x - 0.3) + (y - 0.7) * (y - 0.7))
    }

    /// The value measured with noise that shrinks with the budget spent (as a longer benchmark
    /// is a steadier one).
    static func measured(_ s: SearchSuggestion, _ rng: inout SplitMix64) -> Double {
        truth(s.point) + 0.02 * rng.nextGaussian() / s.budget.squareRoot()
    }

    func run(_ strategy: inout some SearchStrategy, trials: Int, seed: UInt64, patience: Int? = nil) -> SearchRun {
        var noise = SplitMix64(seed: seed &+ 1000)
        var run = SearchRun()
        run.run(&strategy, maxTrials: trials, patience: patience) { Self.measured($0, &noise) }
        return run
    }

    @Test func everyStrategyIsDeterministicForASeedAndKeepsItsBudget() {
        func points(_ make: () -> any SearchStrategy) -> [String] {
            var strategy = make()
            var run = SearchRun()
            var noise = SplitMix64(seed: 9)
            run.run(&strategy, maxTrials: 30) { Self.measured($0, &noise) }
            #expect(run.trials.count == 30)
            return run.trials.map { "\($0.suggestion.point["x"]!)/\($0.suggestion.point["y"]!)/\($0.suggestion.budget)" }
        }
        let makers: [() -> any SearchStrategy] = [
            { RandomSearch(space: space, seed: 5) }, { TPESearch(space: space, seed: 5) },
            { HyperbandSearch(space: space, seed: 5, maxBudget: 27) }, { EvolutionarySearch(space: space, seed: 5) },
        ]
        for make in makers {
            #expect(points(make) == points(make))
        }
        var other = TPESearch(space: space, seed: 6)
        #expect(points { TPESearch(space: space, seed: 5) } != points { other })
        _ = other.suggest()
    }

    @Test func patienceStopsAndConstraintsAreNeverTheBest() {
        var strategy = RandomSearch(space: space, seed: 1)
        var run = SearchRun()
        // x > 0.5 breaks a constraint: such a trial has no score.
        run.run(&strategy, maxTrials: 500, patience: 15) { s in s.point["x"]!.number! > 0.5 ? nil : Self.truth(s.point) }
        #expect(run.trials.count < 500)
        #expect(run.trials.contains { $0.score == nil })
        #expect(run.best!.suggestion.point["x"]!.number! <= 0.5)
    }

    @Test func tpeFindsTheOptimumInFewerTrialsThanRandomSearch() {
        // Trials until a point within 0.01 of the optimum's value, over 20 seeds (capped at 80).
        func trialsToReach(_ make: (UInt64) -> any SearchStrategy) -> Double {
            var total = 0
            for seed in 0..<20 as Range<UInt64> {
                var strategy = make(seed)
                let run = run(&strategy, trials: 80, seed: seed)
                total += (run.trials.firstIndex { Self.truth($0.suggestion.point) > -0.01 } ?? 79) + 1
            }
            return Double(total) / 20
        }
        let tpe = trialsToReach { TPESearch(space: space, seed: $0) }
        let random = trialsToReach { RandomSearch(space: space, seed: $0) }
        #expect(tpe < random, "TPE \(tpe) trials, random \(random)")
    }

    @Test func hyperbandFindsABetterOptimumThanRandomSearchForTheSameTotalBudget() {
        // The true value of the best full-budget trial, for a total budget of 20 full trials.
        func bestAtBudget(_ make: (UInt64) -> any SearchStrategy) -> Double {
            var sum = 0.0
            for seed in 0..<20 as Range<UInt64> {
                var strategy = make(seed)
                var noise = SplitMix64(seed: seed &+ 1000)
                var spent = 0.0
                var best: (measured: Double, truth: Double)?
                while spent < 20, let s = strategy.suggest() {
                    let value = Self.measured(s, &noise)
                    strategy.report(s, score: value)
                    spent += s.budget
                    if s.budget >= 1, best == nil || value > best!.measured { best = (value, Self.truth(s.point)) }
                }
                sum += best?.truth ?? -1
            }
            return sum / 20
        }
        let hyperband = bestAtBudget { HyperbandSearch(space: space, seed: $0, maxBudget: 9) }
        let random = bestAtBudget { RandomSearch(space: space, seed: $0) }
        #expect(hyperband > random, "Hyperband \(hyperband), random \(random)")
    }

    @Test func evolutionImprovesOnItsFirstGeneration() {
        var strategy = EvolutionarySearch(space: space, seed: 3)
        let run = run(&strategy, trials: 80, seed: 3)
        let first = run.trials.prefix(8).map { Self.truth($0.suggestion.point) }.max()!
        #expect(Self.truth(run.best!.suggestion.point) > first)
    }

    @Test func logAndIntegerAndCategoricalDimensionsStayInRange() {
        let mixed = SearchSpace([.integer("threads", 1...8), .float("lr", 1e-5...1e-1, log: true), .categorical("kv", ["f16", "q8_0", "q4_0"]),
                                 .integer("ctx", 512...32768, log: true)])
        var strategy = TPESearch(space: mixed, seed: 2)
        var run = SearchRun()
        run.run(&strategy, maxTrials: 40) { s in -abs(Foundation.log10(s.point["lr"]!.number!) + 3) }
        for t in run.trials {
            let p = t.suggestion.point
            #expect((1...8).contains(Int(p["threads"]!.number!)) && (512...32768).contains(Int(p["ctx"]!.number!)))
            #expect((1e-5...1e-1).contains(p["lr"]!.number!) && ["f16", "q8_0", "q4_0"].contains(p["kv"]!.description))
        }
        #expect(abs(Foundation.log10(run.best!.suggestion.point["lr"]!.number!) + 3) < 0.5)
    }
}

/// A tuning measure's 95 % interval: Student's t over the repetitions.
@Suite struct TuningIntervalTests {
    @Test func theIntervalIsTheMeanPlusOrMinusTTimesTheStandardError() {
        let interval = TuningSession.Interval([1, 2, 3])
        #expect(interval.mean == 2 && interval.n == 3)
        #expect(abs(interval.high - (2 + 4.303 / 3.0.squareRoot())) < 1e-9 && abs(interval.low - (2 - 4.303 / 3.0.squareRoot())) < 1e-9)
        let one = TuningSession.Interval([5])
        #expect(one.low == 5 && one.high == 5)
        #expect(TuningSession.Interval.t975(degreesOfFreedom: 200) == 1.96)
    }
}
