import Foundation
import StitchImaging
import StitchModelIO
import StitchTensor
import StitchTokenizers

/// transformers' CLIPConfig (text_config, vision_config, projection_dim), with its defaults.
public struct CLIPConfig: Decodable, Sendable {
    public struct Tower: Sendable {
        public var hiddenSize: Int
        public var intermediateSize: Int
        public var layers: Int
        public var heads: Int
        public var activation: Activation
        public var layerNormEpsilon: Float
    }

    public var text: Tower
    public var vision: Tower
    public var vocabularySize: Int
    public var maxPositions: Int
    /// 2 in configs written before transformers 4.31: the end token is then found as the largest id.
    public var endTokenID: Int
    public var imageSize: Int
    public var patchSize: Int
    public var channels: Int
    public var projectionDim: Int

    public init(from decoder: Decoder) throws { try self.init(decoder, defaults: .clip) }

    /// transformers' defaults of a config family whose towers are CLIP's.
    struct Defaults {
        let text: TowerFields, vision: TowerFields

        static let clip = Defaults(
            text: TowerFields(hiddenSize: 512, intermediateSize: 2048, numHiddenLayers: 12, numAttentionHeads: 8, hiddenAct: .quickGelu,
                              layerNormEps: 1e-5, vocabSize: 49408, maxPositionEmbeddings: 77, eosTokenId: 2),
            vision: TowerFields(hiddenSize: 768, intermediateSize: 3072, numHiddenLayers: 12, numAttentionHeads: 12, hiddenAct: .quickGelu,
                                layerNormEps: 1e-5, imageSize: 224, patchSize: 32, numChannels: 3))
        /// OwlViTConfig: 16 text positions, 768-pixel images, pooled at the largest token id (eos 2 means that here).
        static let owlvit = Defaults(
            text: TowerFields(hiddenSize: 512, intermediateSize: 2048, numHiddenLayers: 12, numAttentionHeads: 8, hiddenAct: .quickGelu,
                              layerNormEps: 1e-5, vocabSize: 49408, maxPositionEmbeddings: 16, eosTokenId: 2),
            vision: TowerFields(hiddenSize: 768, intermediateSize: 3072, numHiddenLayers: 12, numAttentionHeads: 12, hiddenAct: .quickGelu,
                                layerNormEps: 1e-5, imageSize: 768, patchSize: 32, numChannels: 3))
    }

    init(_ decoder: Decoder, defaults: Defaults) throws {
        let root = try decoder.container(keyedBy: AnyKey.self)
        let text = try root.decodeIfPresent(TowerFields.self, forKey: AnyKey("text_config")) ?? defaults.text
        let vision = try root.decodeIfPresent(TowerFields.self, forKey: AnyKey("vision_config")) ?? defaults.vision
        self.text = text.tower(defaults: defaults.text)
        self.vision = vision.tower(defaults: defaults.vision)
        vocabularySize = text.vocabSize ?? defaults.text.vocabSize!
        maxPositions = text.maxPositionEmbeddings ?? defaults.text.maxPositionEmbeddings!
        endTokenID = text.eosTokenId ?? defaults.text.eosTokenId!
        imageSize = vision.imageSize ?? defaults.vision.imageSize!
        patchSize = vision.patchSize ?? defaults.vision.patchSize!
        channels = vision.numChannels ?? defaults.vision.numChannels!
        projectionDim = try root.value("projection_dim", default: 512)
        let names = (width: "hidden_size", layers: "num_hidden_layers", heads: "num_attention_heads", inner: "intermediate_size")
        for (tower, name) in [(self.text, "text_config"), (self.vision, "vision_config")] {
            try checkTransformer(width: tower.hiddenSize, layers: tower.layers, heads: tower.heads, inner: tower.intermediateSize, names: names, within: [name])
        }
        try checkSize(vocabularySize, "text_config", "vocab_size", in: ConfigLimits.vocabulary)
        try checkSize(maxPositions, "text_config", "max_position_embeddings", in: ConfigLimits.positions)
        try checkSize(imageSize, "vision_config", "image_size", in: ConfigLimits.imageSize)
        try checkSize(patchSize, "vision_config", "patch_size", in: 1...imageSize)
        try checkSize(channels, "vision_config", "num_channels", in: 1...4)
        try checkSize(projectionDim, "projection_dim", in: ConfigLimits.width)
    }

    /// One tower's fields as written in config.json; absent ones take transformers' defaults.
    struct TowerFields: Decodable {
        var hiddenSize: Int?, intermediateSize: Int?, numHiddenLayers: Int?, numAttentionHeads: Int?
        var hiddenAct: Activation?, layerNormEps: Float?
        var vocabSize: Int?, maxPositionEmbeddings: Int?, eosTokenId: Int?
        var imageSize: Int?, patchSize: Int?, numChannels: Int?

        enum CodingKeys: String, CodingKey {
            case hiddenSize = "hidden_size", intermediateSize = "intermediate_size", numHiddenLayers = "num_hidden_layers"
            case numAttentionHeads = "num_attention_heads", hiddenAct = "hidden_act", layerNormEps = "layer_norm_eps"
            case vocabSize = "vocab_size", maxPositionEmbeddings = "max_position_embeddings", eosTokenId = "eos_token_id"
            case imageSize = "image_size", patchSize = "patch_size", numChannels = "num_channels"
        }

        func tower(defaults: TowerFields) -> Tower {
            Tower(hiddenSize: hiddenSize ?? defaults.hiddenSize!, intermediateSize: intermediateSize ?? defaults.intermediateSize!,
                  layers: numHiddenLayers ?? defaults.numHiddenLayers!, heads: numAttentionHeads ?? defaults.numAttentionHeads!,
                  activation: hiddenAct ?? defaults.hiddenAct!, layerNormEpsilon: layerNormEps ?? defaults.layerNormEps!)
        }
    }
}

extension TransformerBlock {
    /// A layer of CLIP's towers (CLIPEncoderLayer), q/k/v fused into one product.
    init(clip store: WeightStore, _ prefix: String, _ tower: CLIPConfig.Tower) {
        let d = tower.hiddenSize
        self.init(layerNorm1: LayerNorm(store, "\(prefix).layer_norm1", size: d, epsilon: tower.layerNormEpsilon),
                  layerNorm2: LayerNorm(store, "\(prefix).layer_norm2", size: d, epsilon: tower.layerNormEpsilon),
                  qkv: Linear(store, fusing: ["q_proj", "k_proj", "v_proj"].map { "\(prefix).self_attn.\($0)" }, inputs: d, outputs: [d, d, d]),
                  out: Linear(store, "\(prefix).self_attn.out_proj", inputs: d, outputs: d),
                  fc1: Linear(store, "\(prefix).mlp.fc1", inputs: d, outputs: tower.intermediateSize),
                  fc2: Linear(store, "\(prefix).mlp.fc2", inputs: tower.intermediateSize, outputs: d),
                  heads: tower.heads, activation: tower.activation)
    }
}

/// Keys and values of a CLIP text prefix, per layer. The text tower is causal, so texts that
/// begin with the same tokens share these states and only their tails need computing.
public struct CLIPTextCache: Sendable {
    var layers: [KVCache]
    /// The tokens whose states the cache holds.
    public private(set) var tokens: [Int]

    init(layers: [KVCache], tokens: [Int]) {
        self.layers = layers
        self.tokens = tokens
    }

    /// Keeps the first `length` tokens.
    public mutating func truncate(to length: Int) {
        for i in layers.indices { layers[i].truncate(to: length) }
        tokens.removeLast(tokens.count - length)
    }

    mutating func append(_ more: [Int]) { tokens += more }
}

/// CLIP (transformers CLIPModel): a ViT image tower and a causal text tower
/// projected into one embedding space. Loads any CLIPModel folder
/// (openai/clip-vit-base-patch32, -patch16, -large-patch14, ...).
public final class CLIP: ImageTextScorer, TextEmbedder, ImageEmbedder, @unchecked Sendable {
    public let config: CLIPConfig
    /// Absent when the folder has no vocab.json / merges.txt: token ids can still be embedded.
    public let tokenizer: CLIPTokenizer?
    public let preprocessor: ImagePreprocessor
    let tokenEmbedding, textPositions: Tensor
    let textLayers: [TransformerBlock]
    let finalLayerNorm: LayerNorm
    let classEmbedding, visionPositions: Tensor
    let patchEmbedding: Linear
    let preLayerNorm, postLayerNorm: LayerNorm
    let visionLayers: [TransformerBlock]
    let visualProjection, textProjection: Linear
    /// exp(logit_scale): the temperature of image-text logits.
    public let logitScale: Float

    public convenience init(folder: URL) throws {
        let configFile = folder.appendingPathComponent("config.json")
        try ArchitectureHeader.require(["CLIPModel", "clip"], in: configFile)
        let config = try loadConfig(CLIPConfig.self, from: configFile)
        try self.init(config: config, weights: WeightStore(folder: folder),
                      tokenizer: CLIPTokenizer.isPresent(in: folder) ? CLIPTokenizer(folder: folder, contextLength: config.maxPositions) : nil)
    }

    /// The files a CLIP folder holds: the tokenizer is optional (ids can still be embedded), as Hugging Face's
    /// vocab.json and merges.txt or OpenAI's bpe_simple_vocab_16e6.txt.gz.
    public static let files = ModelFiles(required: ["config.json"],
                                         optional: ["vocab.json", "merges.txt", CLIPTokenizer.openAIVocabularyFile] + ModelFiles.tokenizerAndProcessorFiles)

    /// Where a checkpoint keeps CLIP's weights: CLIPModel's names, or OwlViTForObjectDetection's (under "owlvit.",
    /// with the vision tower's pre-layer norm spelled "pre_layernorm").
    struct Naming {
        let root: String, preLayerNorm: String
        static let clip = Naming(root: "", preLayerNorm: "pre_layrnorm")
        static let owlvit = Naming(root: "owlvit.", preLayerNorm: "pre_layernorm")
    }

    public convenience init(config: CLIPConfig, weights store: WeightStore, tokenizer: CLIPTokenizer?) throws {
        try self.init(config: config, weights: store, tokenizer: tokenizer, naming: .clip)
    }

    /// Takes the towers' weights and finishes `store`: a model built around CLIP takes its own weights first.
    init(config: CLIPConfig, weights store: WeightStore, tokenizer: CLIPTokenizer?, naming: Naming) throws {
        self.config = config
        self.tokenizer = tokenizer
        let (t, v) = (config.text, config.vision)
        let patches = (config.imageSize / config.patchSize) * (config.imageSize / config.patchSize)
        tokenEmbedding = store.take("\(naming.root)text_model.embeddings.token_embedding.weight", shape: [config.vocabularySize, t.hiddenSize])
        textPositions = store.take("\(naming.root)text_model.embeddings.position_embedding.weight", shape: [config.maxPositions, t.hiddenSize])
        textLayers = (0..<t.layers).map { TransformerBlock(clip: store, "\(naming.root)text_model.encoder.layers.\($0)", t) }
        finalLayerNorm = LayerNorm(store, "\(naming.root)text_model.final_layer_norm", size: t.hiddenSize, epsilon: t.layerNormEpsilon)
        classEmbedding = store.take("\(naming.root)vision_model.embeddings.class_embedding", shape: [v.hiddenSize])
        // Conv weight [d, channels, p, p] used as a linear map of flattened patches [d, channels * p * p], packed at the loading precision.
        patchEmbedding = Linear(weight: store.take("\(naming.root)vision_model.embeddings.patch_embedding.weight", shape: [v.hiddenSize, config.channels, config.patchSize, config.patchSize])
            .reshaped([v.hiddenSize, config.channels * config.patchSize * config.patchSize]), bias: nil, from: store)
        visionPositions = store.take("\(naming.root)vision_model.embeddings.position_embedding.weight", shape: [patches + 1, v.hiddenSize])
        preLayerNorm = LayerNorm(store, "\(naming.root)vision_model.\(naming.preLayerNorm)", size: v.hiddenSize, epsilon: v.layerNormEpsilon)
        visionLayers = (0..<v.layers).map { TransformerBlock(clip: store, "\(naming.root)vision_model.encoder.layers.\($0)", v) }
        postLayerNorm = LayerNorm(store, "\(naming.root)vision_model.post_layernorm", size: v.hiddenSize, epsilon: v.layerNormEpsilon)
        visualProjection = Linear(store, "\(naming.root)visual_projection", inputs: v.hiddenSize, outputs: config.projectionDim, bias: false)
        textProjection = Linear(store, "\(naming.root)text_projection", inputs: t.hiddenSize, outputs: config.projectionDim, bias: false)
        logitScale = expf(store.take("\(naming.root)logit_scale", shape: []).scalars[0])
        // Position ids are a buffer in some checkpoints, not a weight.
        try store.finish(ignoreUnused: { $0.hasSuffix("embeddings.position_ids") })
        preprocessor = ImagePreprocessor(shortestEdge: config.imageSize, cropSize: config.imageSize, filter: .bicubic,
                                         mean: ImagePreprocessor.clip.mean, std: ImagePreprocessor.clip.std, cropRounding: .floor)
    }

    // MARK: text

    /// Token ids of `texts`, each <|startoftext|> ... <|endoftext|>, truncated to the context.
    public func tokenize(_ texts: [String], tokenization: Transformers47.Tokenization = .current) throws -> [[Int]] {
        guard let tokenizer else { throw ModelError.invalidInput(model: "CLIP", detail: "the model folder has no vocab.json / merges.txt (or bpe_simple_vocab_16e6.txt.gz) to tokenize text") }
        return texts.map { tokenizer.encode($0, tokenization: tokenization) }
    }

    /// The id that ends (and pads) a sequence.
    var endID: Int { tokenizer?.endID ?? (config.endTokenID == 2 ? config.vocabularySize - 1 : config.endTokenID) }

    /// An empty text prefix.
    public func makeTextCache() -> CLIPTextCache {
        CLIPTextCache(layers: textLayers.map { _ in KVCache(batch: 1, width: config.text.hiddenSize) }, tokens: [])
    }

    /// Makes `cache` hold `tokens`: keeps the part it shares with them and runs the rest.
    public func extendTextCache(_ cache: inout CLIPTextCache, to tokens: [Int]) throws {
        let common = zip(cache.tokens, tokens).prefix { $0 == $1 }.count
        cache.truncate(to: common)
        guard common < tokens.count else { return }
        let rest = Array(tokens[common...])
        var hidden = try textEmbeddingLayer([rest], offset: common)
        for (index, layer) in textLayers.enumerated() { layer(&hidden, cache: &cache.layers[index]) }
        cache.append(rest)
    }

    /// Projected text features [tails, projectionDim] of texts that each begin with the first
    /// `sharedLengths[i]` cached tokens and continue with `tails[i]`, pooled at tail position
    /// `poolPositions[i]`. Equal to `textFeatures` of the whole sequences, but only the tails run:
    /// packed into one batch without padding, all reading the cached prefix in place.
    public func textFeatures(tails: [[Int]], sharedLengths: [Int], poolPositions: [Int], after cache: CLIPTextCache) throws -> Tensor {
        var segments: [PackedSegment] = []
        var positions: [Int] = []
        for (tail, shared) in zip(tails, sharedLengths) {
            guard !tail.isEmpty, shared <= cache.tokens.count, shared + tail.count <= config.maxPositions else {
                throw ModelError.invalidInput(model: "CLIP text", detail: "a tail of \(tail.count) tokens after \(shared) of \(cache.tokens.count) cached ones does not fit \(config.maxPositions) positions")
            }
            segments.append(PackedSegment(rows: positions.count..<positions.count + tail.count, sharedLength: shared))
            positions += shared..<shared + tail.count
        }
        var hidden: Tensor
        do {
            hidden = try embedding(tails.flatMap { $0 }, table: tokenEmbedding)   // [total, d]
        } catch {
            throw ModelError.invalidInput(model: "CLIP text", detail: error.description)
        }
        addInPlace(&hidden, try embedding(positions, table: textPositions))
        for (index, layer) in textLayers.enumerated() { layer(packed: &hidden, segments: segments, prefix: cache.layers[index]) }
        let pooled = concatenate(zip(segments, poolPositions).map { segment, pool in
            precondition(pool >= 0 && pool < segment.rows.count, "pool position \(pool) outside a tail of \(segment.rows.count)")
            return hidden.rows(segment.rows.lowerBound + pool..<segment.rows.lowerBound + pool + 1)
        }, axis: 0)
        return textProjection(finalLayerNorm(pooled))
    }

    /// Last hidden states [batch, t, d] of token sequences right-padded to one length with the end token.
    /// Padding needs no mask: the tower is causal, so real tokens never see the pads after them.
    public func textHiddenStates(_ tokens: [[Int]]) throws -> Tensor {
        var hidden = try textEmbeddingLayer(tokens)
        for layer in textLayers { layer(&hidden, causal: true) }
        return finalLayerNorm(hidden)
    }

    /// Token plus position embeddings [batch, t, d] of right-padded sequences that start at position `offset`.
    private func textEmbeddingLayer(_ tokens: [[Int]], offset: Int = 0) throws -> Tensor {
        let length = tokens.map(\.count).max() ?? 0
        guard length > 0, offset + length <= config.maxPositions else {
            throw ModelError.invalidInput(model: "CLIP text", detail: "sequences must hold 1...\(config.maxPositions) tokens, got \(offset + length)")
        }
        let padded = tokens.map { $0 + Array(repeating: endID, count: length - $0.count) }
        let d = config.text.hiddenSize
        var hidden: Tensor
        do {
            hidden = try embedding(padded.flatMap { $0 }, table: tokenEmbedding).reshaped([tokens.count, length, d])
        } catch {
            throw ModelError.invalidInput(model: "CLIP text", detail: error.description)
        }
        let positions = concatenate(Array(repeating: textPositions.rows(offset..<offset + length).reshaped([1, length, d]), count: tokens.count), axis: 0)
        addInPlace(&hidden, positions)
        return hidden
    }

    /// Projected text features [batch, projectionDim] (get_text_features), not normalised.
    /// Only the end-token row is pooled, so the last layer runs for that row alone.
    public func textFeatures(_ tokens: [[Int]]) throws -> Tensor {
        var hidden = try textEmbeddingLayer(tokens)
        for layer in textLayers.dropLast() { layer(&hidden, causal: true) }
        let pooled = textLayers.last!.pooled(hidden, positions: tokens.map(poolPosition), causal: true)
        return textProjection(finalLayerNorm(pooled).reshaped([tokens.count, config.text.hiddenSize]))
    }

    /// Where a token sequence is pooled: the first end token, or (legacy configs) the largest id.
    public func poolPosition(_ ids: [Int]) -> Int {
        if config.endTokenID == 2 { return ids.indices.max { ids[$0] < ids[$1] } ?? 0 }   // first of equal maxima
        return ids.firstIndex(of: config.endTokenID) ?? 0
    }

    /// Projected text features [texts, projectionDim], not normalised.
    public func textFeatures(of texts: [String]) throws -> Tensor { try textFeatures(tokenize(texts)) }

    public func textFeatures(of texts: [String], tokenization: Transformers47.Tokenization) throws -> Tensor {
        try textFeatures(tokenize(texts, tokenization: tokenization))
    }

    /// Text features for MAGiC that reuse the cached states of the text kept last step.
    public func makeIncrementalTextEncoder(tokenization: Transformers47.Tokenization) -> IncrementalTextEncoder? {
        CLIPPrefixTextEncoder(clip: self, tokenization: tokenization)
    }

    // MARK: images

    /// Last hidden states [batch, 1 + patches, d] of pixel tensors [batch, channels, size, size].
    public func visionHiddenStates(_ pixels: Tensor) throws -> Tensor {
        var hidden = try visionEmbeddingLayer(pixels)
        for layer in visionLayers { layer(&hidden, causal: false) }
        return hidden
    }

    /// Patch and class embeddings with positions, after the pre-layer norm: [batch, 1 + patches, d].
    private func visionEmbeddingLayer(_ pixels: Tensor) throws -> Tensor {
        let (s, p, c) = (config.imageSize, config.patchSize, config.channels)
        guard pixels.rank == 4, Array(pixels.shape.dropFirst()) == [c, s, s] else {
            throw ModelError.invalidInput(model: "CLIP vision", detail: "pixels must be [batch, \(c), \(s), \(s)], got \(pixels.shape)")
        }
        let (batch, grid, d) = (pixels.shape[0], s / p, config.vision.hiddenSize)
        let embedded = patchEmbedding(flattenPatches(pixels, patch: p)).reshaped([batch, grid * grid, d])
        let classRow = classEmbedding.reshaped([1, 1, d])
        var hidden = concatenate((0..<batch).map { b in
            concatenate([classRow, embedded.row(b).reshaped([1, grid * grid, d])], axis: 1)
        }, axis: 0)
        addInPlace(&hidden, concatenate(Array(repeating: visionPositions.reshaped([1, grid * grid + 1, d]), count: batch), axis: 0))
        return preLayerNorm(hidden)
    }

    /// Projected image features [batch, projectionDim] (get_image_features), not normalised.
    /// Only the class token is pooled, so the last layer runs for that row alone.
    public func imageFeatures(_ pixels: Tensor) throws -> Tensor {
        var hidden = try visionEmbeddingLayer(pixels)
        for layer in visionLayers.dropLast() { layer(&hidden, causal: false) }
        let batch = hidden.shape[0]
        let classTokens = visionLayers.last!.pooled(hidden, positions: Array(repeating: 0, count: batch), causal: false)
        return visualProjection(postLayerNorm(classTokens.reshaped([batch, config.vision.hiddenSize])))
    }

    /// Projected image features [images, projectionDim], not normalised.
    public func imageFeatures(of images: [RGBImage]) throws -> Tensor { try imageFeatures(preprocessor.batch(images)) }

    // MARK: similarity

    /// logits_per_image [images, texts] = exp(logit_scale) · cos(image, text), from unnormalised features.
    public func logits(imageFeatures: Tensor, textFeatures: Tensor) -> Tensor {
        scaledSimilarities(l2NormalizedRows(imageFeatures), l2NormalizedRows(textFeatures))
    }

    /// exp(logit_scale) · images · textsᵀ for unit-length rows: [images, texts].
    private func scaledSimilarities(_ images: Tensor, _ texts: Tensor) -> Tensor {
        var logits = matmul(images, texts, transposeB: true)
        mapInPlace(&logits) { $0 * self.logitScale }
        return logits
    }

    /// Zero-shot probabilities [images, labels]: softmax over labels of the scaled similarities
    /// of unit-length image embeddings and label embeddings (no renormalisation).
    public func labelProbabilities(imageEmbeddings: Tensor, labelEmbeddings: Tensor) -> Tensor {
        var probabilities = scaledSimilarities(imageEmbeddings, labelEmbeddings)
        softmaxLastDimension(&probabilities)
        return probabilities
    }
}

/// MAGiC's candidate texts through CLIP's causal text tower without repeating shared work: the states of the
/// text kept last step stay cached, each candidate runs only its differing tail (plus the end token), and
/// identical texts run once. Equal to `textFeatures(of:tokenization:)`.
final class CLIPPrefixTextEncoder: IncrementalTextEncoder {
    let clip: CLIP
    let tokenization: Transformers47.Tokenization
    private var prefix: CLIPTextCache
    private var lastTokens: [[Int]] = []

    init(clip: CLIP, tokenization: Transformers47.Tokenization) {
        self.clip = clip
        self.tokenization = tokenization
        prefix = clip.makeTextCache()
    }

    func features(of texts: [String]) throws -> Tensor {
        lastTokens = try clip.tokenize(texts, tokenization: tokenization)
        var unique: [[Int]: Int] = [:]
        var sequences: [[Int]] = []
        let rowOfText = lastTokens.map { sequence in
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

    func keep(_ index: Int) throws {
        // Next step's texts all extend this one (up to its last word, which a candidate may continue).
        let tokens = lastTokens[index]
        try clip.extendTextCache(&prefix, to: Array(tokens[..<clip.poolPosition(tokens)]))
    }
}
