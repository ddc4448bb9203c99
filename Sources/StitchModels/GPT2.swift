import Foundation
import StitchModelIO
import StitchTensor
import StitchTokenizers

/// transformers' GPT2Config, with its defaults; options Stitch does not implement are refused by name.
public struct GPT2Config: Decodable, Sendable {
    public var vocabularySize: Int
    public var maxPositions: Int
    public var hiddenSize: Int
    public var layers: Int
    public var heads: Int
    public var innerSize: Int
    public var activation: Activation
    public var layerNormEpsilon: Float
    public var endTokenID: Int
    /// A decoder of a VisionEncoderDecoder: every block also attends to the encoder's states.
    public var addCrossAttention: Bool

    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: AnyKey.self)
        vocabularySize = try c.value("vocab_size", default: 50257)
        maxPositions = try c.value("n_positions", default: 1024)
        hiddenSize = try c.value("n_embd", default: 768)
        layers = try c.value("n_layer", default: 12)
        heads = try c.value("n_head", default: 12)
        innerSize = try c.decodeIfPresent(Int.self, forKey: AnyKey("n_inner")) ?? 4 * hiddenSize
        activation = try c.value("activation_function", default: .geluNew)
        layerNormEpsilon = try c.value("layer_norm_epsilon", default: 1e-5)
        endTokenID = try c.value("eos_token_id", default: 50256)
        addCrossAttention = try c.value("add_cross_attention", default: false)
        try checkTransformer(width: hiddenSize, layers: layers, heads: heads, inner: innerSize, names: ("n_embd", "n_layer", "n_head", "n_inner"))
        try checkSize(vocabularySize, "vocab_size", in: ConfigLimits.vocabulary)
        try checkSize(maxPositions, "n_positions", in: ConfigLimits.positions)
        for (key, supported) in [("scale_attn_weights", true), ("scale_attn_by_inverse_layer_idx", false), ("reorder_and_upcast_attn", false)] {
            if try c.value(key, default: supported) != supported {
                throw DecodingError.dataCorrupted(.init(codingPath: [AnyKey(key)], debugDescription: "only \(supported) is supported"))
            }
        }
    }
}

/// Per-layer keys and values of the positions fed so far, and for a decoder the encoder's
/// memory, which every row shares.
public struct GPT2Cache: LanguageModelCache {
    var layers: [KVCache]
    var memory: [CrossMemory]?
    public var batch: Int { layers.first?.batch ?? 0 }
    public var length: Int { layers.first?.length ?? 0 }

    public func repeated(_ count: Int) -> GPT2Cache { GPT2Cache(layers: layers.map { $0.repeated(count) }, memory: memory) }

    public func gathering(_ rows: [Int]) -> GPT2Cache { GPT2Cache(layers: layers.map { $0.gathering(rows) }, memory: memory) }

    /// Forgets positions beyond `length`.
    public mutating func truncate(to length: Int) {
        for i in layers.indices { layers[i].truncate(to: length) }
    }
}

extension TransformerBlock {
    /// A GPT-2 block; its Conv1D weights are stored [inputs, outputs], c_attn already fused.
    init(gpt2 store: WeightStore, _ prefix: String, _ config: GPT2Config) {
        let d = config.hiddenSize
        let cross = config.addCrossAttention ? CrossAttention(
            layerNorm: LayerNorm(store, "\(prefix).ln_cross_attn", size: d, epsilon: config.layerNormEpsilon),
            query: Linear(store, "\(prefix).crossattention.q_attn", inputs: d, outputs: d, layout: .inputsByOutputs),
            keyValue: Linear(store, "\(prefix).crossattention.c_attn", inputs: d, outputs: 2 * d, layout: .inputsByOutputs),
            out: Linear(store, "\(prefix).crossattention.c_proj", inputs: d, outputs: d, layout: .inputsByOutputs)) : nil
        self.init(layerNorm1: LayerNorm(store, "\(prefix).ln_1", size: d, epsilon: config.layerNormEpsilon),
                  layerNorm2: LayerNorm(store, "\(prefix).ln_2", size: d, epsilon: config.layerNormEpsilon),
                  qkv: Linear(store, "\(prefix).attn.c_attn", inputs: d, outputs: 3 * d, layout: .inputsByOutputs),
                  out: Linear(store, "\(prefix).attn.c_proj", inputs: d, outputs: d, layout: .inputsByOutputs),
                  fc1: Linear(store, "\(prefix).mlp.c_fc", inputs: d, outputs: config.innerSize, layout: .inputsByOutputs),
                  fc2: Linear(store, "\(prefix).mlp.c_proj", inputs: config.innerSize, outputs: d, layout: .inputsByOutputs),
                  heads: config.heads, activation: config.activation, cross: cross)
    }
}

/// Single-token candidates that continue one cached sequence: each layer's fused q/k/v
/// projections [n, 3d], whose key and value thirds `keep` appends for the chosen candidate.
public struct GPT2Candidates: Sendable {
    let projections: [Tensor]
}

/// GPT-2 (transformers GPT2LMHeadModel, or a bare GPT2Model checkpoint) with the
/// LM head tied to the token embeddings.
public final class GPT2: CausalLanguageModel, @unchecked Sendable {
    public let config: GPT2Config
    public let tokenizer: GPT2Tokenizer?
    let tokenEmbedding, positionEmbedding: Tensor
    /// The LM head, tied to the token embedding.
    let head: Linear
    let blocks: [TransformerBlock]
    let finalLayerNorm: LayerNorm

    /// The files a GPT-2 folder must hold.
    public static let files = ModelFiles(required: ["config.json", "vocab.json", "merges.txt"])

    public convenience init(folder: URL) throws {
        let configFile = folder.appendingPathComponent("config.json")
        try ArchitectureHeader.require(["GPT2LMHeadModel", "GPT2Model", "gpt2"], in: configFile)
        let hasVocabulary = FileManager.default.fileExists(atPath: folder.appendingPathComponent("vocab.json").path)
        try self.init(config: loadConfig(GPT2Config.self, from: configFile), weights: WeightStore(folder: folder),
                      tokenizer: hasVocabulary ? GPT2Tokenizer(folder: folder) : nil)
    }

    /// `root` prefixes every weight name: "decoder." inside a VisionEncoderDecoder checkpoint.
    public init(config: GPT2Config, weights store: WeightStore, tokenizer: GPT2Tokenizer?, root: String = "", finish: Bool = true) throws {
        self.config = config
        self.tokenizer = tokenizer
        // GPT2LMHeadModel prefixes its weights with "transformer."; a saved GPT2Model does not.
        let p = root + (store.contains("\(root)transformer.wte.weight") ? "transformer." : "")
        let d = config.hiddenSize
        tokenEmbedding = store.take("\(p)wte.weight", shape: [config.vocabularySize, d])
        head = Linear(weight: tokenEmbedding, bias: nil, from: store)
        positionEmbedding = store.take("\(p)wpe.weight", shape: [config.maxPositions, d])
        blocks = (0..<config.layers).map { TransformerBlock(gpt2: store, "\(p)h.\($0)", config) }
        finalLayerNorm = LayerNorm(store, "\(p)ln_f", size: d, epsilon: config.layerNormEpsilon)
        if store.contains("\(root)lm_head.weight") {
            // Tied: the head must be the embedding matrix again, which Stitch uses directly.
            _ = store.take("\(root)lm_head.weight", shape: [config.vocabularySize, d])
        }
        if finish { try store.finish(ignoreUnused: Self.isMaskBuffer) }
    }

    /// Older checkpoints store the causal mask buffers attn.bias / attn.masked_bias (crossattention.* too).
    static func isMaskBuffer(_ name: String) -> Bool { name.hasSuffix("attn.bias") || name.hasSuffix("attn.masked_bias") || name.hasSuffix("attention.bias") || name.hasSuffix("attention.masked_bias") }

    /// A cache for `batch` sequences; a decoder's also holds the memory of the encoder states it attends to.
    public func makeCache(batch: Int = 1) -> GPT2Cache { makeCache(batch: batch, memory: nil) }

    public func makeCache(batch: Int, memory: [CrossMemory]?) -> GPT2Cache {
        GPT2Cache(layers: blocks.map { _ in KVCache(batch: batch, width: config.hiddenSize) }, memory: memory)
    }

    /// Each layer's keys and values of encoder states [1, t, hiddenSize], for a decoder's cache.
    public func memory(encoderStates: Tensor) throws -> [CrossMemory] {
        guard config.addCrossAttention else { throw ModelError.invalidInput(model: "GPT-2", detail: "this GPT-2 has no cross-attention to attend to encoder states") }
        guard encoderStates.rank == 3, encoderStates.shape[0] == 1, encoderStates.shape[2] == config.hiddenSize else {
            throw ModelError.invalidInput(model: "GPT-2", detail: "encoder states must be [1, t, \(config.hiddenSize)], got \(encoderStates.shape)")
        }
        return blocks.map { $0.cross!.memory(encoderStates) }
    }

    private func requireMemory(_ cache: GPT2Cache) throws {
        if config.addCrossAttention && cache.memory == nil {
            throw ModelError.invalidInput(model: "GPT-2", detail: "a decoder with cross-attention needs a cache made with the encoder's memory")
        }
    }

    /// Feeds `tokens` (one equal-length row per cache row) after the positions in `cache`
    /// and returns the last layer's hidden states after ln_f, [batch, t, hiddenSize]
    /// (transformers' hidden_states[-1]).
    public func forward(_ tokens: [[Int]], cache: inout GPT2Cache) throws -> Tensor {
        let t = tokens.first?.count ?? 0
        guard tokens.count == cache.batch, t > 0, tokens.allSatisfy({ $0.count == t }) else {
            throw ModelError.invalidInput(model: "GPT-2", detail: "expected \(cache.batch) rows of one non-zero length, got lengths \(tokens.map(\.count))")
        }
        try requireMemory(cache)
        let start = cache.length
        guard start + t <= config.maxPositions else {
            throw ModelError.invalidInput(model: "GPT-2", detail: "\(start + t) positions exceed the context of \(config.maxPositions)")
        }
        let d = config.hiddenSize
        var hidden: Tensor
        do {
            hidden = try embedding(tokens.flatMap { $0 }, table: tokenEmbedding).reshaped([tokens.count, t, d])
        } catch {
            throw ModelError.invalidInput(model: "GPT-2", detail: error.description)
        }
        let positions = positionEmbedding.rows(start..<start + t).reshaped([1, t, d])
        addInPlace(&hidden, concatenate(Array(repeating: positions, count: tokens.count), axis: 0))
        for (index, block) in blocks.enumerated() {
            block(&hidden, cache: &cache.layers[index], memory: cache.memory?[index])
        }
        return finalLayerNorm(hidden)
    }

    /// Hidden states [n, hiddenSize] of n one-token continuations of the single sequence in `cache`,
    /// all in one batch that reads the cache in place instead of copying it n times.
    public func forwardCandidates(_ tokens: [Int], after cache: GPT2Cache) throws -> (hidden: Tensor, candidates: GPT2Candidates) {
        try requireMemory(cache)
        let start = cache.length
        guard cache.batch == 1, !tokens.isEmpty, start < config.maxPositions else {
            throw ModelError.invalidInput(model: "GPT-2", detail: "candidates need a one-sequence cache with room for a position, and at least one token")
        }
        var hidden: Tensor
        do {
            hidden = try embedding(tokens, table: tokenEmbedding)   // [n, d]
        } catch {
            throw ModelError.invalidInput(model: "GPT-2", detail: error.description)
        }
        addRowVector(&hidden, positionEmbedding.row(start))
        let segments = tokens.indices.map { PackedSegment(rows: $0..<$0 + 1, sharedLength: start) }
        var projections: [Tensor] = []
        for (index, block) in blocks.enumerated() {
            projections.append(block(packed: &hidden, segments: segments, prefix: cache.layers[index], memory: cache.memory?[index]))
        }
        return (finalLayerNorm(hidden), GPT2Candidates(projections: projections))
    }

    /// Appends candidate `row`'s keys and values to `cache`, as if it had been fed alone.
    public func keep(_ row: Int, of candidates: GPT2Candidates, in cache: inout GPT2Cache) {
        let d = config.hiddenSize
        for (index, projection) in candidates.projections.enumerated() {
            let parts = splitLastDimension(projection.rows(row..<row + 1), parts: 3)   // [1, d] each
            cache.layers[index].append(keys: parts[1].reshaped([1, 1, d]), values: parts[2].reshaped([1, 1, d]))
        }
    }

    /// LM-head logits for the given hidden-state rows only: [..., hiddenSize] -> [..., vocabulary].
    public func logits(_ hidden: Tensor) -> Tensor {
        head(hidden)
    }

    public var vocabularySize: Int { config.vocabularySize }
    public var endTokenID: Int { config.endTokenID }
    public var contextLength: Int { config.maxPositions }

    public func decode(_ ids: [Int]) throws -> String { try requireTokenizer().decode(ids) }

    /// Token ids of text; throws when the model has no tokenizer.
    public func encode(_ text: String, specialTokens: Bool) throws -> [Int] { try requireTokenizer().encode(text) }   // GPT-2 adds none

    public func tokenID(of token: String) -> Int? { tokenizer?.id(of: token) }

    public func requireTokenizer() throws -> GPT2Tokenizer {
        guard let tokenizer else { throw ModelError.invalidInput(model: "GPT-2", detail: "the model folder has no vocab.json / merges.txt for text") }
        return tokenizer
    }
}
