import Foundation
import GGUF

/// One value of a search dimension.
public enum SearchValue: Sendable, Hashable, Codable, CustomStringConvertible {
    case category(String)
    case int(Int)
    case double(Double)

    public var number: Double? {
        switch self {
        case .int(let i): Double(i)
        case .double(let d): d
        case .category: nil
        }
    }

    public var description: String {
        switch self {
        case .category(let s): s
        case .int(let i): String(i)
        case .double(let d): String(d)
        }
    }
}

/// A point of a search space: a value per dimension name.
public typealias SearchPoint = [String: SearchValue]

/// What a search may choose: categorical, integer and float dimensions (numeric ones optionally on
/// a log scale, as Optuna's `log=True`).
public struct SearchSpace: Sendable, Equatable {
    public enum Dimension: Sendable, Equatable {
        case categorical(String, [String])
        case integer(String, ClosedRange<Int>, log: Bool = false)
        case float(String, ClosedRange<Double>, log: Bool = false)

        public var name: String {
            switch self {
            case .categorical(let n, _), .integer(let n, _, _), .float(let n, _, _): n
            }
        }
    }

    public var dimensions: [Dimension]

    public init(_ dimensions: [Dimension]) { self.dimensions = dimensions }

    /// A uniformly random point (log-uniform on log dimensions).
    public func random(_ rng: inout SplitMix64) -> SearchPoint {
        var point: SearchPoint = [:]
        for d in dimensions { point[d.name] = d.value(atUnit: rng.nextUnit()) }
        return point
    }
}

extension SearchSpace.Dimension {
    /// The value at `u` ∈ [0, 1] along the dimension (categories by index; log scale in log space).
    func value(atUnit u: Double) -> SearchValue {
        let u = min(max(u, 0), 1)
        switch self {
        case .categorical(_, let choices):
            return .category(choices[min(choices.count - 1, Int(u * Double(choices.count)))])
        case .integer(_, let range, let log):
            let (lo, hi) = (Double(range.lowerBound), Double(range.upperBound))
            let x = log ? Foundation.exp(Foundation.log(lo) + u * (Foundation.log(hi + 1) - Foundation.log(lo))) - (u == 1 ? 1 : 0) : lo + u * (hi + 1 - lo)
            return .int(Swift.min(range.upperBound, Swift.max(range.lowerBound, Int(x.rounded(.down)))))
        case .float(_, let range, let log):
            let (lo, hi) = (range.lowerBound, range.upperBound)
            return .double(log ? Foundation.exp(Foundation.log(lo) + u * (Foundation.log(hi) - Foundation.log(lo))) : lo + u * (hi - lo))
        }
    }

    /// Where a value lies along the dimension, in [0, 1] (log space on log dimensions).
    func unit(of value: SearchValue) -> Double {
        switch (self, value) {
        case (.categorical(_, let choices), .category(let c)):
            return (Double(choices.firstIndex(of: c) ?? 0) + 0.5) / Double(choices.count)
        case (.integer(_, let range, let log), _):
            let (lo, hi) = (Double(range.lowerBound), Double(range.upperBound) + 1)
            let x = (value.number ?? lo) + 0.5
            return log ? (Foundation.log(x) - Foundation.log(lo)) / (Foundation.log(hi) - Foundation.log(lo)) : (x - lo) / (hi - lo)
        case (.float(_, let range, let log), _):
            let (lo, hi) = (range.lowerBound, range.upperBound)
            let x = value.number ?? lo
            return log ? (Foundation.log(x) - Foundation.log(lo)) / (Foundation.log(hi) - Foundation.log(lo)) : (x - lo) / max(hi - lo, .leastNonzeroMagnitude)
        default:
            return 0.5
        }
    }
}

extension SplitMix64 {
    /// A double uniformly in [0, 1).
    mutating func nextUnit() -> Double { Double(next() >> 11) / Double(1 << 53) }

    /// A standard normal draw (Box–Muller).
    mutating func nextGaussian() -> Double {
        let u1 = max(nextUnit(), 1e-300)
        let u2 = nextUnit()
        return (-2 * Foundation.log(u1)).squareRoot() * Foundation.cos(2 * .pi * u2)
    }
}

/// One evaluation a strategy asks for: a point, and how much of the full budget to spend on it
/// (1 for every strategy but Hyperband, whose early rungs are cheaper).
public struct SearchSuggestion: Sendable, Equatable {
    public var point: SearchPoint
    public var budget: Double
}

/// An ask/tell search strategy (as Optuna's samplers): `suggest` the next evaluation, `report`
/// its score (higher is better; nil for a failed or infeasible trial, which is never chosen).
/// Deterministic for a seed.
public protocol SearchStrategy {
    /// The next evaluation, or nil when the strategy has nothing more to try.
    mutating func suggest() -> SearchSuggestion?
    mutating func report(_ suggestion: SearchSuggestion, score: Double?)
}

/// Runs a strategy against an objective within a budget: at most `maxTrials` evaluations, and
/// stopping early once the best has not improved for `patience` full-budget trials.
public struct SearchRun {
    public struct Trial: Sendable, Equatable {
        public var suggestion: SearchSuggestion
        public var score: Double?
    }

    public private(set) var trials: [Trial] = []

    public init() {}

    /// The best full-budget trial so far.
    public var best: Trial? {
        trials.filter { $0.suggestion.budget >= 1 && $0.score != nil }.max { $0.score! < $1.score! }
    }

    public mutating func run(
        _ strategy: inout some SearchStrategy, maxTrials: Int, patience: Int? = nil, objective: (SearchSuggestion) -> Double?
    ) {
        var sinceImprovement = 0
        while trials.count < maxTrials, let suggestion = strategy.suggest() {
            let before = best?.score
            let score = objective(suggestion)
            strategy.report(suggestion, score: score)
            trials.append(Trial(suggestion: suggestion, score: score))
            if suggestion.budget >= 1 {
                if let now = best?.score, before == nil || now > before! { sinceImprovement = 0 } else { sinceImprovement += 1 }
                if let patience, sinceImprovement >= patience { return }
            }
        }
    }
}
