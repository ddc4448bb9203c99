import StitchImaging
import StitchModels
import StitchTensor

/// MAGiC's magic score (Su et al. 2022, "Language Models Can See"): a softmax over the k
/// candidates of the scorer's image-text logits, each candidate's text being the generated tokens
/// (prompt excluded, at most `window` of them) decoded and re-tokenised for the scorer.
///
/// With `sharesPrefixes`, a scorer that has an incremental text encoder (CLIP's causal text tower)
/// runs only what the candidates' texts do not share with the text kept last step.
public final class MagicScorer: CandidateScorer {
    let scorer: any ImageTextScorer
    let imageFeatures: Tensor
    let decode: ([Int]) throws -> String
    let window: Int
    private let incremental: IncrementalTextEncoder?

    /// `imageFeatures` [1, d] as the scorer's `imageFeatures(of:)` gives them; `decode` turns LM ids into text.
    public init(scorer: any ImageTextScorer, imageFeatures: Tensor, decode: @escaping ([Int]) throws -> String, window: Int = 60, sharesPrefixes: Bool = true) {
        self.scorer = scorer
        self.imageFeatures = imageFeatures
        self.decode = decode
        self.window = window
        incremental = sharesPrefixes ? scorer.makeIncrementalTextEncoder() : nil
    }

    public func scores(generated: [Int], candidates: [Int]) throws -> [Float] {
        let texts = try candidates.map { try decode(Array((generated + [$0]).suffix(window))) }
        let features = try incremental?.features(of: texts) ?? scorer.textFeatures(of: texts)
        var logits = scorer.logits(imageFeatures: imageFeatures, textFeatures: features)   // [1, k]
        softmaxLastDimension(&logits)
        return logits.scalars
    }

    public func chose(_ index: Int) throws { try incremental?.keep(index) }
}

/// MAGiC captioning: a language model guided by CLIP towards an image, with one LM and one CLIP
/// loaded for any number of images.
public final class MagicCaptioner<LM: CausalLanguageModel> {
    public let lm: LM
    public let scorer: any ImageTextScorer

    public init(lm: LM, scorer: any ImageTextScorer) {
        self.lm = lm
        self.scorer = scorer
    }

    /// New tokens after `prompt` for an image given as CLIP image features [1, projectionDim].
    /// beta = 0 ignores the image (contrastive search).
    public func generate(imageFeatures: Tensor, prompt: [Int], settings: MagicSettings, stop: StopConditions,
                         window: Int = 60) throws -> [Int] {
        let magic = MagicScorer(scorer: scorer, imageFeatures: imageFeatures, decode: lm.decode, window: window, sharesPrefixes: settings.speedups)
        return try magicSearch(lm, prompt: prompt, settings: settings, stop: stop, scorer: magic)
    }

    /// A caption (or, with a title as `prompt`, a story) for `image`: its new tokens, and their text
    /// with whitespace runs collapsed as MAGiC's reference prints its captions.
    public func caption(_ image: RGBImage, prompt: [Int], settings: MagicSettings, stop: StopConditions) throws -> (tokens: [Int], text: String) {
        let features = try scorer.imageFeatures(of: [image])
        let tokens = try generate(imageFeatures: features, prompt: prompt, settings: settings, stop: stop)
        return (tokens, try stop.text(of: tokens, model: lm).split(whereSeparator: \.isWhitespace).joined(separator: " "))
    }
}

/// MAGiC's caption of `image` (or, after a `title`, its story): the entry the CLI and graphs share.
public func magicCaption<LM: CausalLanguageModel>(_ lm: LM, scorer: any ImageTextScorer, image: RGBImage, title: String?,
                                                  settings: MagicSettings, stop: StopConditions) throws -> (tokens: [Int], text: String) {
    try MagicCaptioner(lm: lm, scorer: scorer).caption(image, prompt: try lm.magicPrompt(title: title), settings: settings, stop: stop)
}

extension CausalLanguageModel {
    /// MAGiC's prompt: a story's title, else the LM's start token (`<-start_of_text->` in MAGiC's
    /// caption models, the end token in other models).
    public func magicPrompt(title: String?) throws -> [Int] {
        try title.map(encode) ?? [tokenID(of: "<-start_of_text->") ?? endTokenID]
    }
}
