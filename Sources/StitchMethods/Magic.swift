import StitchImaging
import StitchModels
import StitchTensor

/// MAGiC's magic score (Su et al. 2022, "Language Models Can See"): a softmax over the k
/// candidates of CLIP's image-text logits, each candidate's text being the generated tokens
/// (prompt excluded, at most `window` of them) decoded and re-tokenised for CLIP.
///
/// With `sharesPrefixes`, CLIP's causal text tower runs only what the texts do not share: the
/// states of the text kept last step stay cached, each candidate runs just its differing tail
/// (plus the end token), and identical texts run once.
public final class MagicScorer: CandidateScorer {
    let clip: CLIP
    let imageFeatures: Tensor
    let decode: ([Int]) throws -> String
    let window: Int
    let sharesPrefixes: Bool
    private var prefix: CLIPTextCache
    private var lastTokens: [[Int]] = []

    /// `imageFeatures` [1, projectionDim] as CLIP.imageFeatures gives them; `decode` turns LM ids into text.
    public init(clip: CLIP, imageFeatures: Tensor, decode: @escaping ([Int]) throws -> String, window: Int = 60, sharesPrefixes: Bool = true) {
        self.clip = clip
        self.imageFeatures = imageFeatures
        self.decode = decode
        self.window = window
        self.sharesPrefixes = sharesPrefixes
        prefix = clip.makeTextCache()
    }

    public func scores(generated: [Int], candidates: [Int]) throws -> [Float] {
        let texts = try candidates.map { try decode(Array((generated + [$0]).suffix(window))) }
        lastTokens = try clip.tokenize(texts)
        let features = sharesPrefixes ? try sharedTextFeatures(lastTokens) : try clip.textFeatures(lastTokens)
        var logits = clip.logits(imageFeatures: imageFeatures, textFeatures: features)   // [1, k]
        softmaxLastDimension(&logits)
        return logits.scalars
    }

    public func chose(_ index: Int) throws {
        guard sharesPrefixes else { return }
        // Next step's texts all extend this one (up to its last word, which a candidate may continue).
        let tokens = lastTokens[index]
        try clip.extendTextCache(&prefix, to: Array(tokens[..<clip.poolPosition(tokens)]))
    }

    /// CLIP text features [texts, projectionDim] computed from the cached prefix: each distinct
    /// text runs only what follows the part of the prefix it shares, all in one packed batch.
    private func sharedTextFeatures(_ tokens: [[Int]]) throws -> Tensor {
        var unique: [[Int]: Int] = [:]
        var sequences: [[Int]] = []
        let rowOfText = tokens.map { sequence in
            if let row = unique[sequence] { return row }
            unique[sequence] = sequences.count
            sequences.append(sequence)
            return sequences.count - 1
        }
        let pools = sequences.map(clip.poolPosition)
        // The pooled position must be computed per text, so it is never part of the shared prefix.
        let shared = zip(sequences, pools).map { sequence, pool in min(zip(prefix.tokens, sequence).prefix { $0 == $1 }.count, pool) }
        let features = try clip.textFeatures(tails: zip(sequences, shared).map { Array($0[$1...]) }, sharedLengths: shared,
                                             poolPositions: zip(pools, shared).map { $0 - $1 }, after: prefix)
        return concatenate(rowOfText.map { features.rows($0..<$0 + 1) }, axis: 0)
    }
}

/// MAGiC captioning: a language model guided by CLIP towards an image, with one LM and one CLIP
/// loaded for any number of images.
public final class MagicCaptioner<LM: CausalLanguageModel> {
    public let lm: LM
    public let clip: CLIP

    public init(lm: LM, clip: CLIP) {
        self.lm = lm
        self.clip = clip
    }

    /// New tokens after `prompt` for an image given as CLIP image features [1, projectionDim].
    /// beta = 0 ignores the image (contrastive search).
    public func generate(imageFeatures: Tensor, prompt: [Int], settings: ContrastiveSettings, stop: StopConditions,
                         window: Int = 60) throws -> [Int] {
        let scorer = MagicScorer(clip: clip, imageFeatures: imageFeatures, decode: lm.decode, window: window,
                                 sharesPrefixes: settings.speedups)
        return try contrastiveSearch(lm, prompt: prompt, settings: settings, stop: stop, scorer: scorer)
    }

    /// A caption (or, with a title as `prompt`, a story) for `image`: its new tokens, and their text
    /// with whitespace runs collapsed as MAGiC's reference prints its captions.
    public func caption(_ image: RGBImage, prompt: [Int], settings: ContrastiveSettings, stop: StopConditions) throws -> (tokens: [Int], text: String) {
        let features = try clip.imageFeatures(clip.preprocessor.batch([image]))
        let tokens = try generate(imageFeatures: features, prompt: prompt, settings: settings, stop: stop)
        return (tokens, try stop.text(of: tokens, model: lm).split(whereSeparator: \.isWhitespace).joined(separator: " "))
    }
}

extension GPT2 {
    /// MAGiC's prompt: a story's title, else the LM's start token (`<-start_of_text->` in MAGiC's
    /// caption models, `<|endoftext|>` in other GPT-2s).
    public func magicPrompt(title: String?) throws -> [Int] {
        let tokenizer = try requireTokenizer()
        return try title.map(encode) ?? [tokenizer.id(of: "<-start_of_text->") ?? tokenizer.endOfTextID]
    }
}
