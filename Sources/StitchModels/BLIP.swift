import Foundation
import StitchImaging
import StitchModelIO
import StitchTensor
import StitchTokenizers

/// transformers' BlipConfig: a ViT vision tower (BlipVisionConfig) and a BERT text model whose layers also attend to
/// the image (BlipTextConfig), with their defaults (Salesforce/blip-image-captioning-base's).
public struct BLIPConfig: Decodable, Sendable {
    public var vision: ViTConfig
    public var text: BERTConfig
    /// [DEC]: the token captions start from.
    public var beginID: Int
    /// [SEP]: the token that ends a caption.
    public var separatorID: Int
    public var paddingID: Int
    /// Width of the retrieval model's image and text features.
    public var imageTextHiddenSize: Int
    public var architectures: [String]

    public init(from decoder: Decoder) throws {
        let root = try decoder.container(keyedBy: AnyKey.self)
        struct Vision: Decodable { let config: ViTConfig; init(from d: Decoder) throws { config = try ViTConfig(d, defaults: .blip) } }
        struct Text: Decodable {
            let config: BERTConfig, beginID: Int, separatorID: Int, paddingID: Int, isDecoder: Bool
            init(from d: Decoder) throws {
                config = try BERTConfig(d, vocabularySize: 30524, heads: 8)
                let c = try d.container(keyedBy: AnyKey.self)
                beginID = try c.value("bos_token_id", default: 30522)
                separatorID = try c.value("sep_token_id", default: 102)
                paddingID = try c.value("pad_token_id", default: 0)
                isDecoder = try c.value("is_decoder", default: true)
            }
        }
        let empty = Data("{}".utf8)
        vision = try within("vision_config") { try root.decodeIfPresent(Vision.self, forKey: AnyKey("vision_config")) ?? JSONDecoder().decode(Vision.self, from: empty) }.config
        let text = try within("text_config") { try root.decodeIfPresent(Text.self, forKey: AnyKey("text_config")) ?? JSONDecoder().decode(Text.self, from: empty) }
        // BLIP's text layers attend to the image only when built as a decoder (BlipTextLayer's crossattention).
        guard text.isDecoder else {
            throw DecodingError.dataCorrupted(.init(codingPath: [AnyKey("text_config"), AnyKey("is_decoder")], debugDescription: "BLIP's text model needs its cross-attention (true)"))
        }
        self.text = text.config
        (beginID, separatorID, paddingID) = (text.beginID, text.separatorID, text.paddingID)
        for (id, name) in [(beginID, "bos_token_id"), (separatorID, "sep_token_id"), (paddingID, "pad_token_id")] {
            try checkSize(id, "text_config", name, in: 0...(self.text.vocabularySize - 1))
        }
        imageTextHiddenSize = try root.value("image_text_hidden_size", default: 256)
        try checkSize(imageTextHiddenSize, "image_text_hidden_size", in: ConfigLimits.width)
        architectures = try root.value("architectures", default: [])
    }
}

/// BLIP's text model (BlipTextModel, or BlipTextLMHeadModel's `bert`): word and position embeddings under a layer norm,
/// then BERT layers that attend to the image's last hidden states.
struct BLIPTextModel {
    let config: BERTConfig
    let wordEmbeddings, positionEmbeddings: Tensor
    let embeddingNorm: LayerNorm
    let layers: [BERTLayer]

    init(_ store: WeightStore, root: String, config: BERTConfig, imageWidth: Int) {
        self.config = config
        let d = config.hiddenSize
        wordEmbeddings = store.take("\(root)embeddings.word_embeddings.weight", shape: [config.vocabularySize, d])
        positionEmbeddings = store.take("\(root)embeddings.position_embeddings.weight", shape: [config.maxPositions, d])
        embeddingNorm = LayerNorm(store, "\(root)embeddings.LayerNorm", size: d, epsilon: config.layerNormEpsilon)
        layers = (0..<config.layers).map { BERTLayer(store, "\(root)encoder.layer.\($0)", config, crossWidth: imageWidth) }
    }

    /// Embeddings [batch, t, d] of equal-length rows at positions offset..<offset + t.
    func embed(_ tokens: [[Int]], offset: Int) throws -> Tensor {
        let t = tokens.first?.count ?? 0
        guard !tokens.isEmpty, t > 0, tokens.allSatisfy({ $0.count == t }) else {
            throw ModelError.invalidInput(model: "BLIP text", detail: "expected rows of one non-zero length, got lengths \(tokens.map(\.count))")
        }
        guard offset + t <= config.maxPositions else {
            throw ModelError.invalidInput(model: "BLIP text", detail: "\(offset + t) positions exceed the \(config.maxPositions) of the text model")
        }
        let d = config.hiddenSize
        var hidden: Tensor
        do {
            hidden = try embedding(tokens.flatMap { $0 }, table: wordEmbeddings).reshaped([tokens.count, t, d])
        } catch {
            throw ModelError.invalidInput(model: "BLIP text", detail: error.description)
        }
        addInPlace(&hidden, concatenate(Array(repeating: positionEmbeddings.rows(offset..<offset + t).reshaped([1, t, d]), count: tokens.count), axis: 0))
        return embeddingNorm(hidden)
    }

    /// Each layer's keys and values of image states [1, 1 + patches, vision width].
    func memory(_ imageStates: Tensor) -> [CrossMemory] { layers.map { $0.cross!.memory(imageStates) } }
}

/// BLIP's heads, by the architecture a config names: a captioner (BlipForConditionalGeneration, also when none is
/// named) or an image-text scorer (BlipForImageTextRetrieval).
public enum BLIP {
    /// The files a BLIP folder holds: the tokenizer (BERT's vocab.txt) is optional, ids can still be run.
    public static let files = ModelFiles(required: ["config.json"], optional: ["vocab.txt"] + ModelFiles.tokenizerAndProcessorFiles)

    public static func load(folder: URL) throws -> AnyObject {
        let config = try loadConfig(BLIPConfig.self, from: folder.appendingPathComponent("config.json"))
        return config.architectures.contains("BlipForImageTextRetrieval") ? try BLIPRetrieval(folder: folder) : try BLIPCaptioner(folder: folder)
    }
}

/// A BLIP folder's config (which must name `architecture`, or none), image processor (BlipImageProcessor: the image
/// resized to the square, bicubic, CLIP's mean and std) and tokenizer (BERT's uncased WordPiece).
private func blipFolder(_ folder: URL, architecture: String) throws -> (BLIPConfig, ImagePreprocessor, WordPieceTokenizer?) {
    let configFile = folder.appendingPathComponent("config.json")
    try ArchitectureHeader.require([architecture, "blip"], in: configFile)
    let config = try loadConfig(BLIPConfig.self, from: configFile)
    if let other = config.architectures.first, !config.architectures.contains(architecture) {
        throw ModelIOError.unsupportedArchitecture(file: configFile.path, found: other, expected: [architecture])
    }
    let preprocessor = try SquarePreprocessing.preprocessor(in: folder, defaults: ImagePreprocessor(squareSize: config.vision.imageSize, filter: .bicubic,
                                                                                                    mean: ImagePreprocessor.clip.mean, std: ImagePreprocessor.clip.std))
    let hasVocabulary = FileManager.default.fileExists(atPath: folder.appendingPathComponent("vocab.txt").path)
    return (config, preprocessor, hasVocabulary ? try WordPieceTokenizer(folder: folder, maximumLength: config.text.maxPositions) : nil)
}

/// The tokenizer a BLIP model needs for text.
private func requireVocabulary(_ tokenizer: WordPieceTokenizer?) throws -> WordPieceTokenizer {
    guard let tokenizer else { throw ModelError.invalidInput(model: "BLIP", detail: "the model folder has no vocab.txt for text") }
    return tokenizer
}

/// BLIP captioning (transformers BlipForConditionalGeneration, e.g. Salesforce/blip-image-captioning-base / -large):
/// a ViT encodes the image, a BERT decoder that cross-attends to it writes the caption from [DEC], optionally
/// continuing a text prompt ("a picture of"), until [SEP].
public final class BLIPCaptioner: ImageCaptioner, @unchecked Sendable {
    public let config: BLIPConfig
    public let tokenizer: WordPieceTokenizer?
    public let preprocessor: ImagePreprocessor
    public let vision: ViT
    let text: BLIPTextModel
    /// BlipTextLMPredictionHead: dense, activation, layer norm, then the vocabulary projection with its bias.
    let headTransform: Linear
    let headNorm: LayerNorm
    let headWeight, headBias: Tensor

    public convenience init(folder: URL) throws {
        let (config, preprocessor, tokenizer) = try blipFolder(folder, architecture: "BlipForConditionalGeneration")
        try self.init(config: config, weights: WeightStore(folder: folder), tokenizer: tokenizer, preprocessor: preprocessor)
    }

    public init(config: BLIPConfig, weights store: WeightStore, tokenizer: WordPieceTokenizer?, preprocessor: ImagePreprocessor) throws {
        self.config = config
        self.tokenizer = tokenizer
        self.preprocessor = preprocessor
        vision = ViT(config: config.vision, weights: store, root: "vision_model.", naming: .blip)
        text = BLIPTextModel(store, root: "text_decoder.bert.", config: config.text, imageWidth: config.vision.hiddenSize)
        let (d, vocabulary) = (config.text.hiddenSize, config.text.vocabularySize)
        headTransform = Linear(store, "text_decoder.cls.predictions.transform.dense", inputs: d, outputs: d)
        headNorm = LayerNorm(store, "text_decoder.cls.predictions.transform.LayerNorm", size: d, epsilon: config.text.layerNormEpsilon)
        // BLIP's checkpoints keep the projection apart from the word embeddings (it is not tied).
        headWeight = store.take("text_decoder.cls.predictions.decoder.weight", shape: [vocabulary, d])
        headBias = store.take("text_decoder.cls.predictions.bias", shape: [vocabulary])
        // The decoder's bias is the same parameter as predictions.bias; position ids are buffers.
        try store.finish(ignoreUnused: { $0 == "text_decoder.cls.predictions.decoder.bias" || $0.hasSuffix("position_ids") })
    }

    /// The image's last hidden states [1, 1 + patches, vision width] (BlipVisionModel's last_hidden_state) of pixels [1, 3, s, s].
    public func imageStates(_ pixels: Tensor) throws -> Tensor { try vision.hiddenStates(pixels) }

    public func decoder(for image: RGBImage) throws -> BLIPDecoder {
        try decoder(pixels: preprocessor.batch([image]))
    }

    public func decoder(pixels: Tensor) throws -> BLIPDecoder {
        guard pixels.rank == 4, pixels.shape[0] == 1 else {
            throw ModelError.invalidInput(model: "BLIP", detail: "a decoder is conditioned on one image's pixels [1, 3, s, s], got \(pixels.shape)")
        }
        return BLIPDecoder(model: self, memory: text.memory(try imageStates(pixels)))
    }

    /// [DEC]: unconditional captioning.
    public var startTokens: [Int] { [config.beginID] }

    /// [DEC] and the prompt's word pieces, as generate() makes them of the processor's "[CLS] prompt [SEP]".
    public func startTokens(prompt: String) throws -> [Int] {
        [config.beginID] + (try requireTokenizer().tokens(prompt))
    }

    func requireTokenizer() throws -> WordPieceTokenizer { try requireVocabulary(tokenizer) }

    /// Vocabulary logits of decoder hidden states: [..., d] -> [..., vocabulary].
    func logits(_ hidden: Tensor) -> Tensor {
        linear(headNorm(headTransform(hidden, activation: config.text.activation)), weight: headWeight, bias: headBias)
    }
}

/// BLIP's text decoder with its cross-attention fixed to one image: a causal language model that every decoding
/// strategy (greedy, sampling, beam, contrastive) runs unchanged.
public final class BLIPDecoder: CausalLanguageModel, @unchecked Sendable {
    let model: BLIPCaptioner
    let memory: [CrossMemory]

    init(model: BLIPCaptioner, memory: [CrossMemory]) {
        self.model = model
        self.memory = memory
    }

    public var vocabularySize: Int { model.config.text.vocabularySize }
    /// [SEP], which generate() is given as the end token.
    public var endTokenID: Int { model.config.separatorID }
    public var contextLength: Int { model.config.text.maxPositions }

    public func makeCache(batch: Int) -> LayerKVCaches {
        LayerKVCaches(layers: model.text.layers.map { _ in KVCache(batch: batch, width: model.config.text.hiddenSize) })
    }

    /// The last layer's hidden states [batch, t, d] of `tokens` after the positions in `cache`.
    public func forward(_ tokens: [[Int]], cache: inout LayerKVCaches) throws -> Tensor {
        guard tokens.count == cache.batch else {
            throw ModelError.invalidInput(model: "BLIP text", detail: "expected \(cache.batch) rows, got \(tokens.count)")
        }
        var hidden = try model.text.embed(tokens, offset: cache.length)
        for (index, layer) in model.text.layers.enumerated() {
            hidden = layer(hidden, cache: &cache.layers[index], memory: memory[index])
        }
        return hidden
    }

    public func logits(_ hidden: Tensor) -> Tensor { model.logits(hidden) }
    public func decode(_ ids: [Int]) throws -> String { try model.requireTokenizer().decode(ids) }

    /// The word pieces of `text`, after [DEC] when special tokens are asked for (how captions begin).
    public func encode(_ text: String, specialTokens: Bool) throws -> [Int] {
        (specialTokens ? [model.config.beginID] : []) + (try model.requireTokenizer().tokens(text))
    }

    public func tokenID(of token: String) -> Int? { model.tokenizer?.id(of: token) }
}

/// BLIP image-text retrieval (transformers BlipForImageTextRetrieval, e.g. Salesforce/blip-itm-base-coco) as an image-text
/// scorer. Its features are the contrastive (ITC) ones, the class tokens projected to a shared space, and their logits
/// the cosines transformers gives with `use_itm_head=False`. Ranking uses the matching head (ITM), which reads each
/// text together with the image: the probability that they match.
public final class BLIPRetrieval: ImageTextScorer, TextEmbedder, ImageEmbedder, @unchecked Sendable {
    public let config: BLIPConfig
    public let tokenizer: WordPieceTokenizer?
    public let preprocessor: ImagePreprocessor
    public let vision: ViT
    let text: BLIPTextModel
    let visionProjection, textProjection, matchHead: Linear

    public convenience init(folder: URL) throws {
        let (config, preprocessor, tokenizer) = try blipFolder(folder, architecture: "BlipForImageTextRetrieval")
        try self.init(config: config, weights: WeightStore(folder: folder), tokenizer: tokenizer, preprocessor: preprocessor)
    }

    public init(config: BLIPConfig, weights store: WeightStore, tokenizer: WordPieceTokenizer?, preprocessor: ImagePreprocessor) throws {
        self.config = config
        self.tokenizer = tokenizer
        self.preprocessor = preprocessor
        vision = ViT(config: config.vision, weights: store, root: "vision_model.", naming: .blip)
        text = BLIPTextModel(store, root: "text_encoder.", config: config.text, imageWidth: config.vision.hiddenSize)
        visionProjection = Linear(store, "vision_proj", inputs: config.vision.hiddenSize, outputs: config.imageTextHiddenSize)
        textProjection = Linear(store, "text_proj", inputs: config.text.hiddenSize, outputs: config.imageTextHiddenSize)
        matchHead = Linear(store, "itm_head", inputs: config.text.hiddenSize, outputs: 2)
        try store.finish(ignoreUnused: { $0.hasSuffix("position_ids") })
    }

    /// Token ids of `texts` as the processor gives them: [CLS] word pieces [SEP].
    public func tokenize(_ texts: [String]) throws -> [[Int]] { texts.map(try requireVocabulary(tokenizer).encode) }

    /// The text model's last hidden states at [CLS], [texts, d], of right-padded ids under their mask; reading `imageStates`
    /// [1, 1 + patches, vision width] when given (ITM), the text alone otherwise (ITC).
    func classStates(_ tokens: [[Int]], imageStates: Tensor?) throws -> Tensor {
        guard tokens.contains(where: { !$0.isEmpty }) else { throw ModelError.invalidInput(model: "BLIP text", detail: "no text to encode") }
        let (padded, mask) = rightPadded(tokens, with: config.paddingID)
        let memory = imageStates.map(text.memory)
        var hidden = try text.embed(padded, offset: 0)
        for (index, layer) in text.layers.enumerated() { hidden = layer(hidden, mask: mask, memory: memory?[index]) }
        return gatherRows(hidden, Array(repeating: 0, count: tokens.count)).reshaped([tokens.count, config.text.hiddenSize])
    }

    // MARK: contrastive features (ITC)

    /// Projected class-token features [images, imageTextHiddenSize], not normalised.
    public func imageFeatures(of images: [RGBImage]) throws -> Tensor {
        let states = try vision.hiddenStates(preprocessor.batch(images))   // [images, 1 + patches, d]
        return visionProjection(gatherRows(states, Array(repeating: 0, count: images.count)).reshaped([images.count, config.vision.hiddenSize]))
    }

    /// Projected [CLS] features of the texts alone [texts, imageTextHiddenSize], not normalised.
    public func textFeatures(of texts: [String]) throws -> Tensor {
        textProjection(try classStates(tokenize(texts), imageStates: nil))
    }

    /// The cosines [images, texts] of the normalised features (the ITC score, no temperature).
    public func logits(imageFeatures: Tensor, textFeatures: Tensor) -> Tensor {
        matmul(l2NormalizedRows(imageFeatures), l2NormalizedRows(textFeatures), transposeB: true)
    }

    // MARK: matching (ITM)

    /// The matching head's logits [texts, 2] (no match, match) of each text read with `image`.
    public func matchLogits(_ texts: [String], for image: RGBImage) throws -> Tensor {
        let states = try vision.hiddenStates(preprocessor.batch([image]))
        return matchHead(try classStates(tokenize(texts), imageStates: states))
    }

    /// The probability that each text describes `image`: softmax of the matching head's logits, the match column.
    public func matchProbabilities(_ texts: [String], for image: RGBImage) throws -> [Float] {
        var logits = try matchLogits(texts, for: image)
        softmaxLastDimension(&logits)
        return (0..<texts.count).map { logits.scalars[$0 * 2 + 1] }
    }

    /// Texts ranked by their match probability with `image` (ITM), best first (ties by index), with the probabilities.
    public func rank(_ texts: [String], for image: RGBImage) throws -> [(index: Int, logit: Float)] {
        let probabilities = try matchProbabilities(texts, for: image)
        return indicesByDescendingValue(probabilities).map { ($0, probabilities[$0]) }
    }
}
