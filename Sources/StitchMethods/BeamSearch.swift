import Foundation
import StitchModels
import StitchTensor

/// Beam search as transformers' generate(num_beams=...) runs it (BeamSearchScorer), so the
/// same model gives the same sequence.
public struct BeamSettings: Sendable {
    public var beams: Int
    /// Finished hypotheses score sum(log p) / length^lengthPenalty: > 0 favours longer ones.
    public var lengthPenalty: Double
    /// Stop as soon as `beams` hypotheses have finished, instead of when none can improve.
    public var earlyStopping: Bool

    public init(beams: Int = 4, lengthPenalty: Double = 1, earlyStopping: Bool = false) {
        self.beams = beams
        self.lengthPenalty = lengthPenalty
        self.earlyStopping = earlyStopping
    }
}

/// The best sequence's new tokens, ending with `endToken` if it finished with it.
/// `endToken` defaults to the model's; the scores are float32 sums like transformers'. A hypothesis whose
/// text comes to contain one of `stopStrings` finishes there, as one ending with the end token does.
public func beamSearch<M: CausalLanguageModel>(_ model: M, prompt: [Int], settings: BeamSettings, maxTokens: Int,
                                               endToken: Int? = nil, stopStrings: [String] = []) throws -> [Int] {
    guard !prompt.isEmpty else { throw DecodingError.emptyPrompt }
    guard settings.beams >= 1 else { throw DecodingError.invalidSetting("beam search needs at least one beam") }
    let (count, vocabulary, end) = (settings.beams, model.vocabularySize, endToken ?? model.endTokenID)
    var finished = FinishedHypotheses(capacity: count, lengthPenalty: settings.lengthPenalty, earlyStopping: settings.earlyStopping)
    var cache = model.makeCache(batch: 1)
    let promptHidden = try model.forward([prompt], cache: &cache)
    let lastPosition = promptHidden.row(0).row(prompt.count - 1)
    // All beams start as the prompt; only the first counts at the first step.
    var logits = model.logits(concatenate(Array(repeating: lastPosition.reshaped([1, lastPosition.shape[0]]), count: count), axis: 0))
    cache = cache.repeated(count)
    var beamScores = [Float](repeating: -1e9, count: count)
    beamScores[0] = 0
    var sequences = [[Int]](repeating: [], count: count)
    var done = false

    while true {
        logSoftmaxLastDimension(&logits)
        var scores = logits.scalars
        for beam in 0..<count {
            for token in 0..<vocabulary { scores[beam * vocabulary + token] += beamScores[beam] }
        }
        let ranked = topIndices(scores, 2 * count)
        var next: [(beam: Int, token: Int, score: Float)] = []
        let step = sequences[0].count + 1   // the length a hypothesis has with this step's token
        for (rank, flat) in ranked.enumerated() {
            let (beam, token) = (flat / vocabulary, flat % vocabulary)
            if token == end {
                // An end token ranked below the top `beams` does not finish a hypothesis.
                if rank < count { finished.add(sequences[beam], score: Double(scores[flat]), length: step) }
            } else if !stopStrings.isEmpty, case let text = try model.decode(sequences[beam] + [token]), stopStrings.contains(where: text.contains) {
                if rank < count { finished.add(sequences[beam] + [token], score: Double(scores[flat]), length: step) }
            } else {
                next.append((beam, token, scores[flat]))
            }
            if next.count == count { break }
        }
        done = done || finished.isDone(bestScore: Double(scores[ranked[0]]), length: step)
        sequences = next.map { sequences[$0.beam] + [$0.token] }
        beamScores = next.map(\.score)
        if done || step >= maxTokens || cache.length + 1 > model.contextLength { break }
        cache = cache.gathering(next.map(\.beam))
        let hidden = try model.forward(next.map { [$0.token] }, cache: &cache)
        logits = model.logits(hidden.reshaped([count, hidden.shape[2]]))
    }
    if !done {
        for (sequence, score) in zip(sequences, beamScores) { finished.add(sequence, score: Double(score), length: sequence.count) }
    }
    let best = finished.best
    // transformers writes the end token after a hypothesis shorter than the length limit.
    return best.count < maxTokens ? best + [end] : best
}

/// transformers' BeamHypotheses: the best `capacity` finished sequences by length-normalised score.
struct FinishedHypotheses {
    let capacity: Int
    let lengthPenalty: Double
    let earlyStopping: Bool
    private var hypotheses: [(score: Double, tokens: [Int])] = []
    private var worstScore = 1e9

    init(capacity: Int, lengthPenalty: Double, earlyStopping: Bool) {
        self.capacity = capacity
        self.lengthPenalty = lengthPenalty
        self.earlyStopping = earlyStopping
    }

    mutating func add(_ tokens: [Int], score sum: Double, length: Int) {
        let score = sum / pow(Double(length), lengthPenalty)
        guard hypotheses.count < capacity || score > worstScore else { return }
        hypotheses.append((score, tokens))
        if hypotheses.count > capacity {
            let order = hypotheses.indices.sorted { (hypotheses[$0].score, $0) < (hypotheses[$1].score, $1) }
            worstScore = hypotheses[order[1]].score
            hypotheses.remove(at: order[0])
        } else {
            worstScore = min(score, worstScore)
        }
    }

    /// Whether no running beam can beat the worst kept hypothesis any more.
    func isDone(bestScore: Double, length: Int) -> Bool {
        guard hypotheses.count >= capacity else { return false }
        return earlyStopping || worstScore >= bestScore / pow(Double(length), lengthPenalty)
    }

    /// The highest score; among equal scores the latest added (Python's stable sort, then pop()).
    var best: [Int] {
        var index = 0
        for i in hypotheses.indices where hypotheses[i].score >= hypotheses[index].score { index = i }
        return hypotheses[index].tokens
    }
}
