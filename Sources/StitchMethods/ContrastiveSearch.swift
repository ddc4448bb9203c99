import StitchModels
import StitchTensor
import StitchTokenizers

/// Contrastive search (Su et al. 2022) and its MAGiC extension: each step takes the LM's top-k
/// next tokens v and keeps the one maximising
///     (1 - alpha) * p(v | x<t)  -  alpha * max_j cos(h_v, h_j)  +  beta * s(v)
/// where h are last-layer hidden states and s is a candidate scorer (MAGiC: CLIP).
public struct ContrastiveSettings: Sendable {
    /// Candidates per step.
    public var k: Int
    /// Weight of the degeneration penalty.
    public var alpha: Double
    /// Exactness-preserving shortcuts (candidate pruning, LM head on the chosen row only, the
    /// scorer's own sharing). Off runs the reference's full computation, for testing.
    public var speedups: Bool

    /// k 4 and alpha 0.6, the settings of the contrastive search paper's open-ended generation.
    public init(k: Int = 4, alpha: Double = 0.6, speedups: Bool = true) {
        self.k = k
        self.alpha = alpha
        self.speedups = speedups
    }
}

/// MAGiC search: contrastive search plus `beta` times the image-text scorer's magic score.
public struct MagicSettings: Sendable {
    public var k: Int
    public var alpha: Double
    /// Weight of the magic score; 0 is plain contrastive search.
    public var beta: Double
    public var speedups: Bool
    /// How a candidate's text reaches the scorer: as the published code formed it (transformers 4.7.0: decode with
    /// its clean-up, then the slow CLIP tokenizer without ftfy), or as today's transformers would (`.current`).
    public var textTokenization: Transformers47.Tokenization

    /// The published MSCOCO settings: k 45, alpha 0.1, beta 2.0, the published text path.
    public init(k: Int = 45, alpha: Double = 0.1, beta: Double = 2.0, speedups: Bool = true,
                textTokenization: Transformers47.Tokenization = .transformers47) {
        self.k = k
        self.alpha = alpha
        self.beta = beta
        self.speedups = speedups
        self.textTokenization = textTokenization
    }
}

/// Scores the k candidates of a step against something outside the LM.
public protocol CandidateScorer: AnyObject {
    /// One score per candidate token, each appended to `generated` (the new tokens so far).
    func scores(generated: [Int], candidates: [Int]) throws -> [Float]
    /// The candidate the step kept, so that the scorer can carry state into the next step.
    func chose(_ index: Int) throws
}

/// Contrastive search (Su et al. 2022); returns the new tokens.
public func contrastiveSearch<M: CausalLanguageModel>(_ model: M, prompt: [Int], settings: ContrastiveSettings, stop: StopConditions) throws -> [Int] {
    try magicSearch(model, prompt: prompt, settings: MagicSettings(k: settings.k, alpha: settings.alpha, beta: 0, speedups: settings.speedups),
                    stop: stop, scorer: nil)
}

/// MAGiC search: contrastive search with `scorer`'s scores weighted by beta (none when beta is 0); returns the new tokens.
public func magicSearch<M: CausalLanguageModel>(_ model: M, prompt: [Int], settings: MagicSettings,
                                                stop: StopConditions, scorer: CandidateScorer?) throws -> [Int] {
    guard !prompt.isEmpty else { throw DecodingError.emptyPrompt }
    guard settings.k >= 1 && settings.k <= model.vocabularySize else {
        throw DecodingError.invalidSetting("k must be in 1...\(model.vocabularySize), got \(settings.k)")
    }
    guard settings.beta == 0 || scorer != nil else { throw DecodingError.invalidSetting("beta \(settings.beta) needs a candidate scorer (an image)") }
    // Scores are float32 as in torch, with the Python-side weights rounded once.
    let (keep, alpha, beta) = (Float(1 - settings.alpha), Float(settings.alpha), Float(settings.beta))
    var cache = model.makeCache(batch: 1)
    let promptHidden = try model.forward([prompt], cache: &cache)
    let width = promptHidden.shape[2]
    var context = promptHidden.reshaped([prompt.count, width])   // unit rows: the penalty's cosines
    l2NormalizeRows(&context)
    var logits = model.logits(promptHidden.row(0).rows(prompt.count - 1..<prompt.count))
    var generated: [Int] = []

    while true {
        let probabilities = softmax(logits.scalars)
        let candidates = topIndices(probabilities, settings.k)
        let visual = settings.beta == 0 ? [Float](repeating: 0, count: candidates.count)
            : try scorer!.scores(generated: generated, candidates: candidates)
        let confidence = candidates.map { keep * probabilities[$0] }
        // The penalty is a cosine, within [-1, 1]; candidates that cannot win whatever their
        // penalty need no hidden state. Margins cover float rounding of the cosine and sums.
        var rows = Array(candidates.indices)
        if settings.speedups {
            let bound = alpha * 1.001 + 1e-6
            let lowest = rows.map { confidence[$0] + beta * visual[$0] - bound }.max()!
            rows = rows.filter { confidence[$0] + beta * visual[$0] + bound >= lowest }
        }
        // The candidates read the cache in place; without speedups, through k copies of it as the reference does.
        let tokens = rows.map { candidates[$0] }
        let hidden: Tensor
        var kept: (Int) -> Void
        if settings.speedups {
            let (states, branch) = try model.forwardCandidates(tokens, after: cache)
            (hidden, kept) = (states, { model.keep($0, of: branch, in: &cache) })
        } else {
            let (states, branch) = try model.forwardCandidatesByCopying(tokens, after: cache)
            (hidden, kept) = (states, { cache = branch.gathering([$0]) })
        }
        var unit = hidden
        l2NormalizeRows(&unit)
        let cosines = matmul(unit, context, transposeB: true)   // [rows, context]
        var best = 0, bestScore = -Float.infinity
        for (row, candidate) in rows.enumerated() {
            let penalty = cosines.row(row).scalars.max()!
            let score = (confidence[candidate] - alpha * penalty) + beta * visual[candidate]
            if score > bestScore { (best, bestScore) = (row, score) }
        }
        generated.append(candidates[rows[best]])
        if let scorer, settings.beta != 0 { try scorer.chose(rows[best]) }
        if try stop.isFinished(generated, model: model) || cache.length + 1 >= model.contextLength { break }
        // The reference computes all k rows of logits; only the kept one is ever used.
        logits = settings.speedups ? model.logits(hidden.rows(best..<best + 1)) : model.logits(hidden).rows(best..<best + 1)
        kept(best)
        context = concatenate([context, unit.rows(best..<best + 1)], axis: 0)
    }
    return generated
}
