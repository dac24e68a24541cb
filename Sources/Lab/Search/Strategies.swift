import Foundation
import GGUF

/// Uniform random search.
public struct RandomSearch: SearchStrategy {
    let space: SearchSpace
    var rng: SplitMix64

    public init(space: SearchSpace, seed: UInt64) {
        self.space = space
        self.rng = SplitMix64(seed: seed)
    }

    public mutating func suggest() -> SearchSuggestion? { SearchSuggestion(point: space.random(&rng), budget: 1) }
    public mutating func report(_ suggestion: SearchSuggestion, score: Double?) {}
}

/// The Tree-structured Parzen Estimator as Optuna does it (independent per dimension): 10 random
/// start-up trials; then the trials are split into the γ = min(⌈0.1·n⌉, 25) best and the rest,
/// each dimension gets a Parzen density of each group (a kernel per observation plus a prior over
/// the whole range), 24 candidates are drawn from the good density and the one with the largest
/// l(x)/g(x) is tried. Failed trials count as bad.
public struct TPESearch: SearchStrategy {
    let space: SearchSpace
    var rng: SplitMix64
    public var startupTrials = 10
    public var candidates = 24
    var observed: [(point: SearchPoint, score: Double?)] = []

    public init(space: SearchSpace, seed: UInt64) {
        self.space = space
        self.rng = SplitMix64(seed: seed)
    }

    public mutating func suggest() -> SearchSuggestion? {
        guard observed.count >= startupTrials else { return SearchSuggestion(point: space.random(&rng), budget: 1) }
        let ranked = observed.sorted { ($0.score ?? -.infinity) > ($1.score ?? -.infinity) }
        let gamma = min(Int((0.1 * Double(observed.count)).rounded(.up)), 25)
        let good = ranked.prefix(max(1, gamma)).map(\.point)
        let bad = ranked.dropFirst(max(1, gamma)).map(\.point)
        var best: (point: SearchPoint, ratio: Double)?
        for _ in 0..<candidates {
            var point: SearchPoint = [:]
            var ratio = 0.0
            for d in space.dimensions {
                let l = Parzen(d, good.compactMap { $0[d.name] })
                let g = Parzen(d, bad.compactMap { $0[d.name] })
                let u = l.sample(&rng)
                point[d.name] = d.value(atUnit: u)
                let x = d.unit(of: point[d.name]!)
                ratio += Foundation.log(max(l.density(x), 1e-300)) - Foundation.log(max(g.density(x), 1e-300))
            }
            if best == nil || ratio > best!.ratio { best = (point, ratio) }
        }
        return SearchSuggestion(point: best!.point, budget: 1)
    }

    public mutating func report(_ suggestion: SearchSuggestion, score: Double?) { observed.append((suggestion.point, score)) }

    /// A density on [0, 1] (a dimension's unit scale): Gaussian kernels at the observations, with
    /// bandwidths from the distance to their neighbours (clipped as Optuna's magic clip does), and
    /// a uniform prior weighted as one observation. Categories: counts plus the prior.
    struct Parzen {
        var centers: [Double] = []
        var sigmas: [Double] = []
        var categories: [Double]?

        init(_ dimension: SearchSpace.Dimension, _ values: [SearchValue]) {
            if case .categorical(_, let choices) = dimension {
                var weights = [Double](repeating: 1.0 / Double(choices.count), count: choices.count)
                for case .category(let c) in values { if let i = choices.firstIndex(of: c) { weights[i] += 1 } }
                let total = weights.reduce(0, +)
                categories = weights.map { $0 / total }
                return
            }
            centers = values.map { dimension.unit(of: $0) }.sorted()
            let n = Double(centers.count)
            let minimum = 1 / min(100, 1 + n)
            sigmas = centers.indices.map { i in
                let left = i > 0 ? centers[i] - centers[i - 1] : centers[i]
                let right = i + 1 < centers.count ? centers[i + 1] - centers[i] : 1 - centers[i]
                return min(max(max(left, right), minimum), 1)
            }
        }

        func density(_ x: Double) -> Double {
            if let categories { return categories[min(categories.count - 1, Int(x * Double(categories.count)))] * Double(categories.count) }
            var sum = 1.0  // the uniform prior
            for (c, s) in zip(centers, sigmas) { sum += Foundation.exp(-0.5 * ((x - c) / s) * ((x - c) / s)) / (s * (2 * Double.pi).squareRoot()) }
            return sum / Double(centers.count + 1)
        }

        func sample(_ rng: inout SplitMix64) -> Double {
            if let categories {
                var u = rng.nextUnit()
                for (i, w) in categories.enumerated() {
                    if u < w { return (Double(i) + 0.5) / Double(categories.count) }
                    u -= w
                }
                return 1 - 0.5 / Double(categories.count)
            }
            let pick = Int(rng.nextUnit() * Double(centers.count + 1))
            guard pick < centers.count else { return rng.nextUnit() }  // from the prior
            for _ in 0..<16 {
                let x = centers[pick] + sigmas[pick] * rng.nextGaussian()
                if (0...1).contains(x) { return x }
            }
            return min(max(centers[pick], 0), 1)
        }
    }
}

/// Hyperband (Li et al.) with η = 3: brackets of successive halving from the most exploratory (many
/// configurations at 1/η^s of the budget) to plain random search at the full budget, over and over
/// until the caller's budget runs out; in each rung the best 1/η go on with η times the budget. `maxBudget` is the full budget in the
/// smallest unit (e.g. requests × output length of a trial); budgets are reported as fractions.
public struct HyperbandSearch: SearchStrategy {
    let space: SearchSpace
    var rng: SplitMix64
    let eta = 3.0
    let sMax: Int
    var bracket: Int
    /// The current rung: configurations still to ask, and those answered with their scores.
    var pending: [SearchPoint] = []
    var answered: [(point: SearchPoint, score: Double?)] = []
    var rung = 0
    var rungSize = 0

    public init(space: SearchSpace, seed: UInt64, maxBudget: Double) {
        self.space = space
        self.rng = SplitMix64(seed: seed)
        self.sMax = max(0, Int((Foundation.log(max(maxBudget, 1)) / Foundation.log(3)).rounded(.down) + 1e-9))
        self.bracket = sMax
        startBracket()
    }

    /// The fraction of the full budget a configuration gets in rung `i` of bracket `s`.
    func budget(rung i: Int) -> Double { Foundation.pow(eta, Double(i - bracket)) }

    mutating func startBracket() {
        let n = Int((Double(sMax + 1) / Double(bracket + 1) * Foundation.pow(eta, Double(bracket))).rounded(.up))
        pending = (0..<n).map { _ in space.random(&rng) }
        answered = []
        rung = 0
        rungSize = n
    }

    public mutating func suggest() -> SearchSuggestion? {
        while pending.isEmpty {
            guard answered.count == rungSize else { return nil }  // waiting for reports
            let keep = Int((Double(rungSize) / eta).rounded(.down))
            let ranked = answered.filter { $0.score != nil }.sorted { $0.score! > $1.score! }
            if rung < bracket, keep >= 1, !ranked.isEmpty {
                pending = ranked.prefix(keep).map(\.point)
                answered = []
                rung += 1
                rungSize = pending.count
            } else {
                // The next bracket; after the last (plain random search), the cycle starts over
                // until the caller's budget runs out.
                bracket = bracket > 0 ? bracket - 1 : sMax
                startBracket()
            }
        }
        return SearchSuggestion(point: pending.removeFirst(), budget: budget(rung: rung))
    }

    public mutating func report(_ suggestion: SearchSuggestion, score: Double?) { answered.append((suggestion.point, score)) }
}

/// A seeded genetic search: a random first population, then generations of children made by
/// tournament selection (3), uniform crossover and mutation (each gene with probability 1/d: a
/// Gaussian step of a tenth of the range, or another category), the best `elites` kept.
public struct EvolutionarySearch: SearchStrategy {
    let space: SearchSpace
    var rng: SplitMix64
    public var populationSize: Int
    public var elites = 1
    var population: [(point: SearchPoint, score: Double?)] = []
    var generation: [SearchPoint] = []
    var children: [(point: SearchPoint, score: Double?)] = []

    public init(space: SearchSpace, seed: UInt64, populationSize: Int = 8) {
        self.space = space
        self.rng = SplitMix64(seed: seed)
        self.populationSize = max(2, populationSize)
        generation = (0..<self.populationSize).map { _ in space.random(&rng) }
    }

    public mutating func suggest() -> SearchSuggestion? {
        if generation.isEmpty {
            // The generation is done: the best of parents and children survive.
            population = (population + children).sorted { ($0.score ?? -.infinity) > ($1.score ?? -.infinity) }
            population = Array(population.prefix(populationSize))
            children = []
            generation = (0..<(populationSize - min(elites, populationSize - 1))).map { _ in child() }
        }
        return SearchSuggestion(point: generation.removeFirst(), budget: 1)
    }

    public mutating func report(_ suggestion: SearchSuggestion, score: Double?) { children.append((suggestion.point, score)) }

    mutating func tournament() -> SearchPoint {
        var best: (point: SearchPoint, score: Double?)?
        for _ in 0..<3 {
            let pick = population[Int(rng.nextUnit() * Double(population.count))]
            if best == nil || (pick.score ?? -.infinity) > (best!.score ?? -.infinity) { best = pick }
        }
        return best!.point
    }

    mutating func child() -> SearchPoint {
        let (a, b) = (tournament(), tournament())
        let rate = 1 / Double(max(1, space.dimensions.count))
        var point: SearchPoint = [:]
        for d in space.dimensions {
            var u = d.unit(of: (rng.nextUnit() < 0.5 ? a : b)[d.name] ?? .double(0))
            if rng.nextUnit() < rate {
                if case .categorical = d { u = rng.nextUnit() } else { u = min(max(u + 0.1 * rng.nextGaussian(), 0), 1) }
            }
            point[d.name] = d.value(atUnit: u)
        }
        return point
    }
}
