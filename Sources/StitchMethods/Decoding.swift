import Foundation
import StitchModels
import StitchTensor

/// When generation ends.
public struct StopConditions: Sendable {
    /// At most this many new tokens.
    public var maxTokens: Int
    /// Stop after the model's end token (which is kept in the output, as transformers keeps it).
    public var atEndToken: Bool
    /// Stop once the decoded continuation contains one of these (e.g. "." for one-sentence captions).
    public var strings: [String]
    /// Tokens that end the generation besides the model's end token (a chat template's end of turn), kept as it is.
    public var endTokens: [Int]

    public init(maxTokens: Int, atEndToken: Bool = true, strings: [String] = [], endTokens: [Int] = []) {
        self.maxTokens = maxTokens
        self.atEndToken = atEndToken
        self.strings = strings
        self.endTokens = endTokens
    }

    /// Whether `generated` (the new tokens so far) ends the generation.
    func isFinished<M: CausalLanguageModel>(_ generated: [Int], model: M) throws -> Bool {
        if generated.count >= maxTokens { return true }
        if atEndToken, let last = generated.last, last == model.endTokenID || endTokens.contains(last) { return true }
        if strings.isEmpty { return false }
        let text = try model.decode(generated)
        return strings.contains { text.contains($0) }
    }

    /// The text of a continuation: up to the end token, and cut after the first stop string.
    public func text<M: CausalLanguageModel>(of generated: [Int], model: M) throws -> String {
        cut(try model.decode(Array(generated.prefix { $0 != model.endTokenID })))
    }

    /// `text` cut after the first stop string in it.
    public func cut(_ text: String) -> String {
        guard let cut = strings.compactMap({ text.range(of: $0) }).min(by: { $0.upperBound < $1.upperBound }) else { return text }
        return String(text[..<cut.upperBound])
    }
}

enum DecodingError: Error, CustomStringConvertible {
    case emptyPrompt
    case invalidSetting(String)

    var description: String {
        switch self {
        case .emptyPrompt: return "decoding needs a prompt of at least one token (e.g. the model's start token)"
        case .invalidSetting(let detail): return "invalid decoding setting: \(detail)"
        }
    }
}

/// A decoding strategy with its settings, for callers that choose one at run time.
public enum DecodingStrategy: Sendable {
    case greedy
    case sample(SamplingSettings)
    case beam(BeamSettings)
    case contrastive(ContrastiveSettings)
}

/// How to continue a prompt: a strategy, every strategy's settings and when to stop, with one set of defaults
/// (greedy, 32 new tokens, no stop strings, temperature 1 without top-k / top-p, 4 beams, contrastive k 4 and
/// alpha 0.6). `stitch generate`, `stitch caption --method captioner`, the graph's `lm_generate` and `caption`
/// and the local completion backend all decode through it; each may start from its own defaults (a captioner
/// beam-searches 15 tokens).
public struct DecodingOptions: Sendable {
    public enum Strategy: String, Sendable, CaseIterable { case greedy, sample, beam, contrastive }

    public var strategy: Strategy
    public var maxTokens: Int
    public var stop: [String]
    public var sampling: SamplingSettings
    public var beam: BeamSettings
    public var contrastive: ContrastiveSettings

    public init(strategy: Strategy = .greedy, maxTokens: Int = 32, stop: [String] = [], sampling: SamplingSettings = SamplingSettings(),
                beam: BeamSettings = BeamSettings(), contrastive: ContrastiveSettings = ContrastiveSettings()) {
        self.strategy = strategy
        self.maxTokens = maxTokens
        self.stop = stop
        self.sampling = sampling
        self.beam = beam
        self.contrastive = contrastive
    }

    /// A captioner's defaults: beam search with 4 beams over 15 new tokens (the published checkpoints' max_length 16 with the start token).
    public static let captioner = DecodingOptions(strategy: .beam, maxTokens: 15)

    public var stopConditions: StopConditions { StopConditions(maxTokens: maxTokens, strings: stop) }

    public var decodingStrategy: DecodingStrategy {
        switch strategy {
        case .greedy: return .greedy
        case .sample: return .sample(sampling)
        case .beam: return .beam(beam)
        case .contrastive: return .contrastive(contrastive)
        }
    }
}

/// New tokens after `prompt` as `options` say.
public func decode<M: CausalLanguageModel>(_ model: M, prompt: [Int], options: DecodingOptions) throws -> [Int] {
    try decode(model, prompt: prompt, strategy: options.decodingStrategy, stop: options.stopConditions)
}

/// New tokens after `prompt` by `strategy`.
public func decode<M: CausalLanguageModel>(_ model: M, prompt: [Int], strategy: DecodingStrategy, stop: StopConditions) throws -> [Int] {
    switch strategy {
    case .greedy: return try greedyDecode(model, prompt: prompt, stop: stop)
    case .sample(let settings): return try sampleDecode(model, prompt: prompt, settings: settings, stop: stop)
    case .beam(let settings): return try beamSearch(model, prompt: prompt, settings: settings, maxTokens: stop.maxTokens, stopStrings: stop.strings)
    case .contrastive(let settings): return try contrastiveSearch(model, prompt: prompt, settings: settings, stop: stop)
    }
}

/// Greedy decoding: the most likely next token each step (transformers' generate with do_sample=False).
/// `onToken` sees each token with the logits it was chosen from (a server streams them); throwing stops the generation.
public func greedyDecode<M: CausalLanguageModel>(_ model: M, prompt: [Int], stop: StopConditions,
                                                 onToken: ((Int, [Float]) throws -> Void)? = nil) throws -> [Int] {
    try decodeTokenByToken(model, prompt: prompt, stop: stop, onToken: onToken) { argmax($0) }
}

/// Sampling with temperature, top-k and nucleus (top-p) filtering, applied in that order
/// as transformers' logits warpers apply them; reproducible for a given seed.
public struct SamplingSettings: Sendable {
    public var temperature: Float
    /// Keep the k most likely tokens (0: no limit).
    public var topK: Int
    /// Keep the smallest set of most likely tokens whose probability reaches topP (1: no limit).
    public var topP: Float
    public var seed: UInt64

    public init(temperature: Float = 1, topK: Int = 0, topP: Float = 1, seed: UInt64 = 0) {
        self.temperature = temperature
        self.topK = topK
        self.topP = topP
        self.seed = seed
    }

    func validate() throws {
        guard temperature > 0 else { throw DecodingError.invalidSetting("temperature must be positive, got \(temperature)") }
        guard topK >= 0 else { throw DecodingError.invalidSetting("top-k must be 0 (off) or positive, got \(topK)") }
        guard topP > 0 && topP <= 1 else { throw DecodingError.invalidSetting("top-p must be in (0, 1], got \(topP)") }
    }

    /// Next-token probabilities after temperature, top-k and top-p; filtered tokens get 0.
    public func probabilities(_ logits: [Float]) -> [Float] {
        var scores = logits.map { $0 / temperature }
        if topK > 0 && topK < scores.count {
            // Everything below the k-th largest score goes, as TopKLogitsWarper does (ties with it stay).
            let threshold = scores[topIndices(scores, topK).last!]
            for i in scores.indices where scores[i] < threshold { scores[i] = -.infinity }
        }
        var probabilities = softmax(scores)
        if topP < 1 {
            // TopPLogitsWarper: drop the least likely tokens whose cumulative probability stays
            // within 1 - topP, keeping at least the most likely one.
            let ascending = probabilities.indices.sorted { (probabilities[$0], $0) < (probabilities[$1], $1) }
            var cumulative: Float = 0
            for (rank, index) in ascending.enumerated() where rank < ascending.count - 1 {
                cumulative += probabilities[index]
                if cumulative <= 1 - topP { scores[index] = -.infinity }
            }
            probabilities = softmax(scores)
        }
        return probabilities
    }
}

/// Sampled decoding (transformers' generate with do_sample=True, with Stitch's own seeded generator).
public func sampleDecode<M: CausalLanguageModel>(_ model: M, prompt: [Int], settings: SamplingSettings, stop: StopConditions,
                                                 onToken: ((Int, [Float]) throws -> Void)? = nil) throws -> [Int] {
    try settings.validate()
    var generator = SeededGenerator(seed: settings.seed)
    return try decodeTokenByToken(model, prompt: prompt, stop: stop, onToken: onToken) { logits in
        draw(from: settings.probabilities(logits), using: &generator)
    }
}

/// The shared loop of greedy and sampled decoding: one token per step through the KV cache,
/// the LM head only on the last position.
private func decodeTokenByToken<M: CausalLanguageModel>(_ model: M, prompt: [Int], stop: StopConditions, onToken: ((Int, [Float]) throws -> Void)?,
                                                         choose: ([Float]) -> Int) throws -> [Int] {
    guard !prompt.isEmpty else { throw DecodingError.emptyPrompt }
    var cache = model.makeCache(batch: 1)
    var generated: [Int] = []
    var hidden = try model.forward([prompt], cache: &cache)
    while generated.count < stop.maxTokens {
        let last = hidden.row(0).row(hidden.shape[1] - 1)
        let logits = model.logits(last.reshaped([1, last.shape[0]])).scalars
        generated.append(choose(logits))
        try onToken?(generated.last!, logits)
        // No forward for a token nothing will follow.
        if try stop.isFinished(generated, model: model) || cache.length >= model.contextLength { break }
        hidden = try model.forward([[generated.last!]], cache: &cache)
    }
    return generated
}

/// The index of the largest value, the first of equal maxima (as torch.argmax).
func argmax(_ values: [Float]) -> Int {
    var best = 0
    for i in values.indices where values[i] > values[best] { best = i }
    return best
}

func softmax(_ values: [Float]) -> [Float] {
    var tensor = Tensor(shape: [values.count], scalars: values)
    softmaxLastDimension(&tensor)
    return tensor.scalars
}

/// Inverse-CDF draw of an index from probabilities that sum to 1.
func draw(from probabilities: [Float], using generator: inout SeededGenerator) -> Int {
    let target = Double.random(in: 0..<1, using: &generator) * probabilities.reduce(0) { $0 + Double($1) }
    var cumulative = 0.0
    var last = 0
    for (index, p) in probabilities.enumerated() where p > 0 {
        cumulative += Double(p)
        last = index
        if target < cumulative { return index }
    }
    return last
}
