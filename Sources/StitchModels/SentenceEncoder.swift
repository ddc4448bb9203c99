import Foundation
import StitchModelIO
import StitchTensor
import StitchTokenizers

/// transformers' BertConfig fields a BERT encoder needs.
public struct BERTConfig: Decodable, Sendable {
    public var vocabularySize: Int
    public var hiddenSize: Int
    public var layers: Int
    public var heads: Int
    public var intermediateSize: Int
    public var maxPositions: Int
    public var typeVocabularySize: Int
    public var activation: Activation
    public var layerNormEpsilon: Float

    public init(from decoder: Decoder) throws { try self.init(decoder, vocabularySize: 30522, heads: 12) }

    /// With the defaults of a config family read as BERT's (BlipTextConfig: 30,524 tokens, 8 heads).
    init(_ decoder: Decoder, vocabularySize defaultVocabulary: Int, heads defaultHeads: Int) throws {
        let c = try decoder.container(keyedBy: AnyKey.self)
        vocabularySize = try c.value("vocab_size", default: defaultVocabulary)
        hiddenSize = try c.value("hidden_size", default: 768)
        layers = try c.value("num_hidden_layers", default: 12)
        heads = try c.value("num_attention_heads", default: defaultHeads)
        intermediateSize = try c.value("intermediate_size", default: 3072)
        maxPositions = try c.value("max_position_embeddings", default: 512)
        typeVocabularySize = try c.value("type_vocab_size", default: 2)
        activation = try c.value("hidden_act", default: .gelu)
        layerNormEpsilon = try c.value("layer_norm_eps", default: 1e-12)
        try checkTransformer(width: hiddenSize, layers: layers, heads: heads, inner: intermediateSize,
                             names: ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size"))
        try checkSize(vocabularySize, "vocab_size", in: ConfigLimits.vocabulary)
        try checkSize(maxPositions, "max_position_embeddings", in: ConfigLimits.positions)
        try checkSize(typeVocabularySize, "type_vocab_size", in: 1...1024)
        if try c.value("position_embedding_type", default: "absolute") != "absolute" {
            throw DecodingError.dataCorrupted(.init(codingPath: [AnyKey("position_embedding_type")], debugDescription: "only absolute is supported"))
        }
    }
}

/// A post-layer-norm BERT layer. BLIP's text layers (BlipTextLayer) also attend to an image's states between
/// self-attention and the feed-forward block, and its decoder runs them causally through a cache.
struct BERTLayer {
    let qkv, attentionOut, intermediate, output: Linear
    let attentionNorm, outputNorm: LayerNorm
    let cross: CrossAttention?
    let heads: Int
    let activation: Activation

    /// BlipTextLayer's crossattention: queries of the text, keys and values of the image states (`crossWidth` wide).
    struct CrossAttention {
        let query, keyValue, out: Linear
        let norm: LayerNorm

        /// Keys and values of image states [1, t, crossWidth], computed once per image.
        func memory(_ states: Tensor) -> CrossMemory {
            let parts = splitLastDimension(keyValue(states), parts: 2)
            return CrossMemory(keys: parts[0], values: parts[1])
        }
    }

    init(_ store: WeightStore, _ prefix: String, _ config: BERTConfig, crossWidth: Int? = nil) {
        let (d, e) = (config.hiddenSize, config.layerNormEpsilon)
        qkv = Linear(store, fusing: ["query", "key", "value"].map { "\(prefix).attention.self.\($0)" }, inputs: d, outputs: [d, d, d])
        attentionOut = Linear(store, "\(prefix).attention.output.dense", inputs: d, outputs: d)
        attentionNorm = LayerNorm(store, "\(prefix).attention.output.LayerNorm", size: d, epsilon: e)
        cross = crossWidth.map { width in
            CrossAttention(query: Linear(store, "\(prefix).crossattention.self.query", inputs: d, outputs: d),
                           keyValue: Linear(store, fusing: ["key", "value"].map { "\(prefix).crossattention.self.\($0)" }, inputs: width, outputs: [d, d]),
                           out: Linear(store, "\(prefix).crossattention.output.dense", inputs: d, outputs: d),
                           norm: LayerNorm(store, "\(prefix).crossattention.output.LayerNorm", size: d, epsilon: e))
        }
        intermediate = Linear(store, "\(prefix).intermediate.dense", inputs: d, outputs: config.intermediateSize)
        output = Linear(store, "\(prefix).output.dense", inputs: config.intermediateSize, outputs: d)
        outputNorm = LayerNorm(store, "\(prefix).output.LayerNorm", size: d, epsilon: e)
        heads = config.heads
        activation = config.activation
    }

    /// Bidirectional: x [batch, t, d] under `mask` [batch, t] (1 for tokens, 0 for padding), attending to `memory` when given.
    func callAsFunction(_ x: Tensor, mask: Tensor?, memory: CrossMemory? = nil) -> Tensor {
        rest(attended: attentionOut(fusedSelfAttention(qkv(x), heads: heads, causal: false, keyMask: mask, precision: qkv.precision)), input: x, memory: memory)
    }

    /// Causal, for positions after those in `cache`, whose keys and values it appends: x [batch, t, d] -> [batch, t, d].
    func callAsFunction(_ x: Tensor, cache: inout KVCache, memory: CrossMemory?) -> Tensor {
        let parts = splitLastDimension(qkv(x), parts: 3)
        let attended = cachedSelfAttention(query: parts[0], key: parts[1], value: parts[2], heads: heads, cache: &cache, precision: qkv.precision)
        return rest(attended: attentionOut(attended), input: x, memory: memory)
    }

    /// After self-attention: its residual norm, the cross-attention block, the feed-forward block.
    private func rest(attended: Tensor, input x: Tensor, memory: CrossMemory?) -> Tensor {
        var sum = attended
        addInPlace(&sum, x)
        var hidden = attentionNorm(sum)
        if let memory {
            guard let cross else { preconditionFailure("image states given to a layer without cross-attention") }
            var crossed = cross.out(multiHeadAttention(query: cross.query(hidden), key: memory.keys, value: memory.values, heads: heads, causal: false,
                                                       precision: cross.query.precision))
            addInPlace(&crossed, hidden)
            hidden = cross.norm(crossed)
        }
        var out = output(intermediate(hidden, activation: activation))
        addInPlace(&out, hidden)
        return outputNorm(out)
    }
}

/// A sentence-transformers model made of a BERT encoder, mean pooling and
/// (when modules.json lists it) L2 normalisation: all-MiniLM-L6-v2 and kin.
public final class SentenceEncoder: TextEmbedder, @unchecked Sendable {
    public let config: BERTConfig
    public let tokenizer: WordPieceTokenizer
    public let normalizes: Bool
    let wordEmbeddings, positionEmbeddings, typeEmbeddings: Tensor
    let embeddingNorm: LayerNorm
    let layers: [BERTLayer]

    public static let files = ModelFiles(required: ["config.json", "vocab.txt", "modules.json", "sentence_bert_config.json", "1_Pooling/config.json"])

    public convenience init(folder: URL) throws {
        let configFile = folder.appendingPathComponent("config.json")
        try ArchitectureHeader.require(["BertModel", "bert"], in: configFile)
        let config = try loadConfig(BERTConfig.self, from: configFile)
        let modules = try loadConfig([Module].self, from: folder.appendingPathComponent("modules.json"))
        let pooling = try loadConfig(Pooling.self, from: folder.appendingPathComponent("1_Pooling/config.json"))
        guard pooling.mean, !pooling.cls, !pooling.max else {
            throw ModelIOError.invalidConfig(file: folder.appendingPathComponent("1_Pooling/config.json").path,
                                             field: "pooling_mode_mean_tokens", detail: "only mean pooling is supported")
        }
        let sentenceConfig = try loadConfig(SentenceConfig.self, from: folder.appendingPathComponent("sentence_bert_config.json"))
        let tokenizer = try WordPieceTokenizer(folder: folder, maximumLength: sentenceConfig.maxSequenceLength)
        try self.init(config: config, weights: WeightStore(folder: folder), tokenizer: tokenizer,
                      normalizes: modules.contains { $0.type.hasSuffix("Normalize") })
    }

    struct Module: Decodable { let type: String }
    struct SentenceConfig: Decodable {
        let maxSequenceLength: Int
        enum CodingKeys: String, CodingKey { case maxSequenceLength = "max_seq_length" }
    }
    struct Pooling: Decodable {
        let mean, cls, max: Bool
        enum CodingKeys: String, CodingKey {
            case mean = "pooling_mode_mean_tokens", cls = "pooling_mode_cls_token", max = "pooling_mode_max_tokens"
        }
    }

    public init(config: BERTConfig, weights store: WeightStore, tokenizer: WordPieceTokenizer, normalizes: Bool) throws {
        self.config = config
        self.tokenizer = tokenizer
        self.normalizes = normalizes
        let d = config.hiddenSize
        wordEmbeddings = store.take("embeddings.word_embeddings.weight", shape: [config.vocabularySize, d])
        positionEmbeddings = store.take("embeddings.position_embeddings.weight", shape: [config.maxPositions, d])
        typeEmbeddings = store.take("embeddings.token_type_embeddings.weight", shape: [config.typeVocabularySize, d])
        embeddingNorm = LayerNorm(store, "embeddings.LayerNorm", size: d, epsilon: config.layerNormEpsilon)
        layers = (0..<config.layers).map { BERTLayer(store, "encoder.layer.\($0)", config) }
        // sentence-transformers uses token states, not BERT's pooler; position_ids is a buffer.
        try store.finish(ignoreUnused: { $0.hasPrefix("pooler.") || $0 == "embeddings.position_ids" })
    }

    /// Sentence embeddings [texts, hiddenSize]: mean of the token states under the attention mask,
    /// L2-normalised when the model's pipeline normalises.
    /// Unit-length sentence embeddings [texts, hiddenSize]: ASIF's text side.
    public func textEmbeddings(_ texts: [String]) throws -> Tensor {
        var embeddings = try encode(texts)
        l2NormalizeRows(&embeddings)
        return embeddings
    }

    public func encode(_ texts: [String]) throws -> Tensor {
        let ids = texts.map(tokenizer.encode)
        let length = ids.map(\.count).max() ?? 0
        guard length <= config.maxPositions else {
            throw ModelError.invalidInput(model: "BERT", detail: "\(length) tokens exceed \(config.maxPositions) positions")
        }
        let (batch, d) = (texts.count, config.hiddenSize)
        guard batch > 0 else { return Tensor(zeros: [0, d]) }
        let (padded, mask) = rightPadded(ids, with: tokenizer.paddingID)
        var hidden: Tensor
        do {
            hidden = try embedding(padded.flatMap { $0 }, table: wordEmbeddings).reshaped([batch, length, d])
        } catch {
            throw ModelError.invalidInput(model: "BERT", detail: error.description)
        }
        // Positions 0..<length and token type 0 for every row.
        var extra = positionEmbeddings.rows(0..<length)
        addRowVector(&extra, typeEmbeddings.row(0))
        addInPlace(&hidden, concatenate(Array(repeating: extra.reshaped([1, length, d]), count: batch), axis: 0))
        hidden = embeddingNorm(hidden)
        for layer in layers { hidden = layer(hidden, mask: mask) }
        var pooled = Tensor(zeros: [batch, d])
        let states = hidden.scalars
        pooled.withUnsafeMutableBufferPointer { out in
            for (b, row) in ids.enumerated() {
                for t in 0..<row.count {
                    for j in 0..<d { out[b * d + j] += states[(b * length + t) * d + j] }
                }
                for j in 0..<d { out[b * d + j] /= Float(row.count) }
            }
        }
        if normalizes { l2NormalizeRows(&pooled) }
        return pooled
    }
}
