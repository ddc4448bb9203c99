import StitchImaging
import StitchModels
import StitchTensor
import StitchTokenizers

/// MAGiC's magic score (Su et al. 2022, "Language Models Can See"): a softmax over the k
/// candidates of the scorer's image-text logits, each candidate's text being the generated tokens
/// (prompt excluded, at most `window` of them) decoded and re-tokenised for the scorer. With
/// `tokenization` `.transformers47` (the published code's), the decoded text gets transformers 4.7.0's
/// clean-up and the scorer tokenizes it as that version's slow tokenizer did.
///
/// With `sharesPrefixes`, a scorer that has an incremental text encoder (CLIP's causal text tower)
/// runs only what the candidates' texts do not share with the text kept last step.
public final class MagicScorer: CandidateScorer {
    let scorer: any ImageTextScorer
    let imageFeatures: Tensor
    let decode: ([Int]) throws -> String
    let window: Int
    let tokenization: Transformers47.Tokenization
    private let incremental: IncrementalTextEncoder?

    /// `imageFeatures` [1, d] as the scorer's `imageFeatures(of:)` gives them; `decode` turns LM ids into text.
    public init(scorer: any ImageTextScorer, imageFeatures: Tensor, decode: @escaping ([Int]) throws -> String, window: Int = 60,
                sharesPrefixes: Bool = true, tokenization: Transformers47.Tokenization) {
        self.scorer = scorer
        self.imageFeatures = imageFeatures
        self.decode = decode
        self.window = window
        self.tokenization = tokenization
        incremental = sharesPrefixes ? scorer.makeIncrementalTextEncoder(tokenization: tokenization) : nil
    }

    public func scores(generated: [Int], candidates: [Int]) throws -> [Float] {
        let texts = try candidates.map { candidate in
            let text = try decode(Array((generated + [candidate]).suffix(window)))
            return tokenization == .transformers47 ? Transformers47.cleanUpTokenization(text) : text
        }
        let features = try incremental?.features(of: texts) ?? scorer.textFeatures(of: texts, tokenization: tokenization)
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
        let magic = MagicScorer(scorer: scorer, imageFeatures: imageFeatures, decode: lm.decode, window: window, sharesPrefixes: settings.speedups,
                                tokenization: settings.textTokenization)
        return try magicSearch(lm, prompt: prompt, settings: settings, stop: stop, scorer: magic)
    }

    /// A caption (or, with `story`, the story after a title's prompt) for `image`: its new tokens and their text,
    /// made as the published code prints it (`publishedMagicText`) or, with `.current` text, decoded as today's
    /// transformers decodes it with whitespace runs collapsed.
    public func caption(_ image: RGBImage, prompt: [Int], settings: MagicSettings, stop: StopConditions, story: Bool = false) throws -> (tokens: [Int], text: String) {
        let features = try scorer.imageFeatures(of: [image])
        let tokens = try generate(imageFeatures: features, prompt: prompt, settings: settings, stop: stop)
        guard settings.textTokenization == .transformers47 else {
            return (tokens, try stop.text(of: tokens, model: lm).split(whereSeparator: \.isWhitespace).joined(separator: " "))
        }
        return (tokens, stop.cut(try lm.publishedMagicText(prompt: prompt, tokens: tokens, story: story)))
    }
}

/// MAGiC's caption of `image` (or, after a `title`, its story): the entry the CLI and graphs share.
public func magicCaption<LM: CausalLanguageModel>(_ lm: LM, scorer: any ImageTextScorer, image: RGBImage, title: String?,
                                                  settings: MagicSettings, stop: StopConditions) throws -> (tokens: [Int], text: String) {
    try MagicCaptioner(lm: lm, scorer: scorer).caption(image, prompt: try lm.magicPrompt(title: title), settings: settings, stop: stop, story: title != nil)
}

/// How MAGiC's candidate texts reach the scorer, by the names the CLI and graphs offer: as the published code formed
/// them (transformers 4.7.0) or as today's transformers would.
public enum MagicText: String, CaseIterable, Sendable {
    case published, current

    public var tokenization: Transformers47.Tokenization { self == .published ? .transformers47 : .current }
}

/// The settings of the published MAGiC scripts (cambridgeltl/MAGIC, sh_folder). Their decoding length counts the
/// prompt: the new tokens are that length less the prompt's (15 after the one start token of an MSCOCO caption).
public enum MagicPreset: String, CaseIterable, Sendable {
    case mscoco, flickr30k, story

    public var settings: MagicSettings {
        switch self {
        case .mscoco: return MagicSettings(k: 45, alpha: 0.1, beta: 2.0)
        case .flickr30k: return MagicSettings(k: 25, alpha: 0.1, beta: 2.0)
        case .story: return MagicSettings(k: 5, alpha: 0.6, beta: 0.15)
        }
    }

    /// Prompt and new tokens together.
    public var decodingLength: Int {
        switch self {
        case .mscoco: return 16
        case .flickr30k: return 20
        case .story: return 100
        }
    }

    public func maxNewTokens(promptLength: Int) -> Int { max(1, decodingLength - promptLength) }
}

extension CausalLanguageModel {
    /// MAGiC's prompt: for a story, its title, a space and the end token (as the published story code builds it from
    /// "title <|endoftext|>"); else the LM's start token (`<-start_of_text->` in MAGiC's caption models, the end token
    /// in other models).
    public func magicPrompt(title: String?) throws -> [Int] {
        guard let title else { return [tokenID(of: "<-start_of_text->") ?? endTokenID] }
        return try encode(title + " ") + [endTokenID]
    }

    /// MAGiC's text as the published code prints it from the new `tokens`, decoded with transformers 4.7.0's clean-up.
    /// A caption: MAGiC's start tokens dropped, cut at the first end token, stripped and whitespace runs made one
    /// space (parse_output_token_list). A story: prompt and tokens decoded, the text between the first end token
    /// and the next, stripped, at most five sentences (parse_generated_result).
    public func publishedMagicText(prompt: [Int], tokens: [Int], story: Bool) throws -> String {
        guard story else {
            let start = tokenID(of: "<-start_of_text->")
            let caption = Transformers47.cleanUpTokenization(try decode(tokens.filter { $0 != start }.prefix { $0 != endTokenID }))
            return PythonText.split(Array(caption.unicodeScalars)).map { String(String.UnicodeScalarView($0)) }.joined(separator: " ")
        }
        let text = Transformers47.cleanUpTokenization(try decode(prompt + tokens))
        let parts = text.components(separatedBy: try decode([endTokenID]))
        guard parts.count > 1 else { return "" }
        return Self.firstSentences(String(PythonText.strip(parts[1][...])), 5)
    }

    /// The published parse_sentences: the text split at ".", the first `count` pieces kept, dots stripped from the
    /// ends, and a final "." when pieces were dropped.
    static func firstSentences(_ text: String, _ count: Int) -> String {
        let pieces = text.components(separatedBy: ".")
        var kept = Substring(pieces.prefix(count).joined(separator: ".")).unicodeScalars[...]
        while kept.first == "." { kept = kept.dropFirst() }
        while kept.last == "." { kept = kept.dropLast() }
        return pieces.count > count ? String(kept) + "." : String(PythonText.strip(Substring(kept)))
    }
}
