import Foundation
import StitchImaging
import StitchModelIO
import StitchTensor
import StitchTokenizers

/// transformers' SiglipConfig: CLIP-shaped towers (read by CLIPConfig's rules) with SigLIP's defaults
/// (google/siglip-base-patch16-224's).
public struct SigLIPConfig: Decodable, Sendable {
    public var towers: CLIPConfig

    public init(from decoder: Decoder) throws {
        towers = try CLIPConfig(decoder, defaults: .siglip)
        let root = try decoder.container(keyedBy: AnyKey.self)
        struct VisionHead: Decodable { var visionUseHead: Bool?; enum CodingKeys: String, CodingKey { case visionUseHead = "vision_use_head" } }
        // SiglipModel pools images with its attention head; towers kept without it (for other models' use) cannot score.
        if try root.decodeIfPresent(VisionHead.self, forKey: AnyKey("vision_config"))?.visionUseHead == false {
            throw DecodingError.dataCorrupted(.init(codingPath: [AnyKey("vision_config"), AnyKey("vision_use_head")],
                                                    debugDescription: "SigLIP scores images through its pooling head; this config has none"))
        }
    }
}

extension CLIPConfig.Defaults {
    /// SiglipTextConfig / SiglipVisionConfig: 64 text positions, 16-pixel patches, tanh GELU, eps 1e-6.
    static let siglip = CLIPConfig.Defaults(
        text: CLIPConfig.TowerFields(hiddenSize: 768, intermediateSize: 3072, numHiddenLayers: 12, numAttentionHeads: 12, hiddenAct: .geluPytorchTanh,
                                     layerNormEps: 1e-6, vocabSize: 32000, maxPositionEmbeddings: 64, eosTokenId: 1),
        vision: CLIPConfig.TowerFields(hiddenSize: 768, intermediateSize: 3072, numHiddenLayers: 12, numAttentionHeads: 12, hiddenAct: .geluPytorchTanh,
                                       layerNormEps: 1e-6, imageSize: 224, patchSize: 16, numChannels: 3))
}

/// SigLIP (transformers SiglipModel, e.g. google/siglip-base-patch16-224): a ViT image tower pooled by an attention
/// head and a bidirectional text tower pooled at its last position, scored pairwise by a sigmoid: each label's
/// probability is independent of the others, so zero-shot probabilities do not sum to one.
public final class SigLIP: ImageTextScorer, TextEmbedder, ImageEmbedder, @unchecked Sendable {
    public let config: SigLIPConfig
    /// Absent when the folder has no spiece.model: token ids can still be embedded.
    public let tokenizer: SentencePieceTokenizer?
    public let preprocessor: ImagePreprocessor
    let tokenEmbedding, textPositions: Tensor
    let textLayers: [TransformerBlock]
    let finalLayerNorm: LayerNorm
    let textHead: Linear
    let patchEmbedding: Linear
    let visionPositions: Tensor
    let visionLayers: [TransformerBlock]
    let postLayerNorm: LayerNorm
    let head: PoolingHead
    /// exp(logit_scale) and logit_bias: logits are scale · cos(image, text) + bias.
    public let logitScale, logitBias: Float

    /// SiglipMultiheadAttentionPoolingHead: a learned probe attends to the image tokens (torch's nn.MultiheadAttention,
    /// q/k/v in one in_proj weight), then a residual MLP.
    struct PoolingHead {
        let probe: Tensor
        let inProjection: Tensor, inBias: Tensor
        let out: Linear
        let layerNorm: LayerNorm
        let fc1, fc2: Linear
        let heads: Int
        let activation: Activation
    }

    public static let files = ModelFiles(required: ["config.json"], optional: SentencePieceTokenizer.modelFiles + ModelFiles.tokenizerAndProcessorFiles)

    public convenience init(folder: URL) throws {
        let configFile = folder.appendingPathComponent("config.json")
        try ArchitectureHeader.require(["SiglipModel", "siglip"], in: configFile)
        let config = try loadConfig(SigLIPConfig.self, from: configFile)
        // SiglipImageProcessor: the image resized to the square (bicubic), scaled to [-1, 1].
        let preprocessor = try SquarePreprocessing.preprocessor(in: folder, defaults: ImagePreprocessor(squareSize: config.towers.imageSize, filter: .bicubic,
                                                                                                        mean: [0.5, 0.5, 0.5], std: [0.5, 0.5, 0.5]))
        try self.init(config: config, weights: WeightStore(folder: folder),
                      tokenizer: SentencePieceTokenizer.isPresent(in: folder) ? SentencePieceTokenizer(folder: folder, style: .siglip) : nil,
                      preprocessor: preprocessor)
    }

    public init(config: SigLIPConfig, weights store: WeightStore, tokenizer: SentencePieceTokenizer?, preprocessor: ImagePreprocessor) throws {
        self.config = config
        self.tokenizer = tokenizer
        self.preprocessor = preprocessor
        let towers = config.towers
        let (t, v) = (towers.text, towers.vision)
        if let tokenizer, tokenizer.maximumLength > towers.maxPositions {
            throw ModelError.invalidInput(model: "SigLIP", detail: "its tokenizer pads to \(tokenizer.maximumLength) tokens but the text tower has \(towers.maxPositions) positions")
        }
        tokenEmbedding = store.take("text_model.embeddings.token_embedding.weight", shape: [towers.vocabularySize, t.hiddenSize])
        textPositions = store.take("text_model.embeddings.position_embedding.weight", shape: [towers.maxPositions, t.hiddenSize])
        textLayers = (0..<t.layers).map { TransformerBlock(clip: store, "text_model.encoder.layers.\($0)", t) }
        finalLayerNorm = LayerNorm(store, "text_model.final_layer_norm", size: t.hiddenSize, epsilon: t.layerNormEpsilon)
        textHead = Linear(store, "text_model.head", inputs: t.hiddenSize, outputs: t.hiddenSize)
        let (p, c, d) = (towers.patchSize, towers.channels, v.hiddenSize)
        // Conv weight [d, channels, p, p] used as a linear map of flattened patches [d, channels * p * p], packed at the loading precision.
        patchEmbedding = Linear(weight: store.take("vision_model.embeddings.patch_embedding.weight", shape: [d, c, p, p]).reshaped([d, c * p * p]),
                                bias: store.take("vision_model.embeddings.patch_embedding.bias", shape: [d]), from: store)
        let grid = towers.imageSize / p
        visionPositions = store.take("vision_model.embeddings.position_embedding.weight", shape: [grid * grid, d])
        visionLayers = (0..<v.layers).map { TransformerBlock(clip: store, "vision_model.encoder.layers.\($0)", v) }
        postLayerNorm = LayerNorm(store, "vision_model.post_layernorm", size: d, epsilon: v.layerNormEpsilon)
        head = PoolingHead(probe: store.take("vision_model.head.probe", shape: [1, 1, d]),
                           inProjection: store.take("vision_model.head.attention.in_proj_weight", shape: [3 * d, d]),
                           inBias: store.take("vision_model.head.attention.in_proj_bias", shape: [3 * d]),
                           out: Linear(store, "vision_model.head.attention.out_proj", inputs: d, outputs: d),
                           layerNorm: LayerNorm(store, "vision_model.head.layernorm", size: d, epsilon: v.layerNormEpsilon),
                           fc1: Linear(store, "vision_model.head.mlp.fc1", inputs: d, outputs: v.intermediateSize),
                           fc2: Linear(store, "vision_model.head.mlp.fc2", inputs: v.intermediateSize, outputs: d),
                           heads: v.heads, activation: v.activation)
        logitScale = expf(store.take("logit_scale", shape: [1]).scalars[0])
        logitBias = store.take("logit_bias", shape: [1]).scalars[0]
        try store.finish(ignoreUnused: { $0.hasSuffix("embeddings.position_ids") })
    }

    // MARK: text

    /// Token ids of `texts` as SigLIP's processor gives them with `padding="max_length"` (how the model was trained):
    /// "</s>" at the end, cut and padded to the tokenizer's 64 tokens.
    public func tokenize(_ texts: [String]) throws -> [[Int]] {
        guard let tokenizer else { throw ModelError.invalidInput(model: "SigLIP", detail: "the model folder has no spiece.model to tokenize text") }
        return texts.map(tokenizer.padded)
    }

    /// Text features [batch, d] (get_text_features: the head over the last position), not normalised. The tower is
    /// bidirectional and reads no mask, so the pads are part of the text; every sequence must have the same length.
    public func textFeatures(_ tokens: [[Int]]) throws -> Tensor {
        let length = tokens.first?.count ?? 0
        guard length > 0, length <= config.towers.maxPositions, tokens.allSatisfy({ $0.count == length }) else {
            throw ModelError.invalidInput(model: "SigLIP text", detail: "sequences must all hold the same 1...\(config.towers.maxPositions) tokens, got lengths \(Set(tokens.map(\.count)).sorted())")
        }
        let d = config.towers.text.hiddenSize
        var hidden: Tensor
        do {
            hidden = try embedding(tokens.flatMap { $0 }, table: tokenEmbedding).reshaped([tokens.count, length, d])
        } catch {
            throw ModelError.invalidInput(model: "SigLIP text", detail: error.description)
        }
        addInPlace(&hidden, concatenate(Array(repeating: textPositions.rows(0..<length).reshaped([1, length, d]), count: tokens.count), axis: 0))
        for layer in textLayers.dropLast() { layer(&hidden, causal: false) }
        // Only the last position is pooled, so the last layer runs for that row alone.
        let pooled = textLayers.last!.pooled(hidden, positions: Array(repeating: length - 1, count: tokens.count), causal: false)
        return textHead(finalLayerNorm(pooled.reshaped([tokens.count, d])))
    }

    public func textFeatures(of texts: [String]) throws -> Tensor { try textFeatures(tokenize(texts)) }

    // MARK: images

    /// Last hidden states [batch, patches, d] after the post-layer norm, of pixels [batch, channels, size, size].
    public func visionHiddenStates(_ pixels: Tensor) throws -> Tensor {
        let towers = config.towers
        let (s, p, c) = (towers.imageSize, towers.patchSize, towers.channels)
        guard pixels.rank == 4, Array(pixels.shape.dropFirst()) == [c, s, s] else {
            throw ModelError.invalidInput(model: "SigLIP vision", detail: "pixels must be [batch, \(c), \(s), \(s)], got \(pixels.shape)")
        }
        let (batch, patches, d) = (pixels.shape[0], (s / p) * (s / p), towers.vision.hiddenSize)
        var hidden = patchEmbedding(flattenPatches(pixels, patch: p)).reshaped([batch, patches, d])
        addInPlace(&hidden, concatenate(Array(repeating: visionPositions.reshaped([1, patches, d]), count: batch), axis: 0))
        for layer in visionLayers { layer(&hidden, causal: false) }
        return postLayerNorm(hidden)
    }

    /// Image features [batch, d] (get_image_features: the attention-pooling head), not normalised.
    public func imageFeatures(_ pixels: Tensor) throws -> Tensor {
        let hidden = try visionHiddenStates(pixels)   // [batch, patches, d]
        let (batch, d) = (hidden.shape[0], hidden.shape[2])
        let query = linear(head.probe.reshaped([1, d]), weight: head.inProjection.rows(0..<d), bias: head.inBias.rows(0..<d))   // [1, d]
        let keys = linear(hidden, weight: head.inProjection.rows(d..<2 * d), bias: head.inBias.rows(d..<2 * d))
        let values = linear(hidden, weight: head.inProjection.rows(2 * d..<3 * d), bias: head.inBias.rows(2 * d..<3 * d))
        let queries = concatenate(Array(repeating: query.reshaped([1, 1, d]), count: batch), axis: 0)   // [batch, 1, d]
        var pooled = head.out(multiHeadAttention(query: queries, key: keys, value: values, heads: head.heads, causal: false)).reshaped([batch, d])
        addInPlace(&pooled, head.fc2(head.fc1(head.layerNorm(pooled), activation: head.activation)))
        return pooled
    }

    public func imageFeatures(of images: [RGBImage]) throws -> Tensor { try imageFeatures(preprocessor.batch(images)) }

    // MARK: similarity

    /// logits_per_image [images, texts] = exp(logit_scale) · cos(image, text) + logit_bias, from unnormalised features.
    public func logits(imageFeatures: Tensor, textFeatures: Tensor) -> Tensor {
        pairLogits(l2NormalizedRows(imageFeatures), l2NormalizedRows(textFeatures))
    }

    /// exp(logit_scale) · images · textsᵀ + logit_bias for unit-length rows: [images, texts].
    private func pairLogits(_ images: Tensor, _ texts: Tensor) -> Tensor {
        var logits = matmul(images, texts, transposeB: true)
        mapInPlace(&logits) { $0 * self.logitScale + self.logitBias }
        return logits
    }

    /// Zero-shot probabilities [images, labels]: the sigmoid of each pair's logit, as SigLIP was trained (not a softmax over labels).
    public func labelProbabilities(imageEmbeddings: Tensor, labelEmbeddings: Tensor) -> Tensor {
        var probabilities = pairLogits(imageEmbeddings, labelEmbeddings)
        sigmoid(&probabilities)
        return probabilities
    }

    public var labelProbabilityKind: LabelProbabilityKind { .independent }
}
