import Foundation
import StitchModelIO
import StitchTensor
import StitchTokenizers

/// transformers' LlamaConfig and the variants the same code reads (Qwen2Config, MistralConfig; SmolLM is a Llama),
/// with their defaults; what Stitch does not implement is refused by name.
public struct LlamaConfig: Decodable, Sendable {
    public enum Family: String, Sendable { case llama, qwen2, mistral }

    /// How rotary frequencies are scaled (transformers' rope_scaling): none, divided by a factor, Llama 3's bands, or
    /// dynamic NTK (the base raised once a sequence outgrows max_position_embeddings).
    public enum RopeScaling: Sendable, Equatable {
        case none
        case linear(factor: Float)
        case dynamic(factor: Float)
        case llama3(factor: Float, lowFrequencyFactor: Float, highFrequencyFactor: Float, originalContext: Int)
    }

    public var family: Family
    public var vocabularySize, hiddenSize, innerSize, layers, heads, keyValueHeads, headDim, maxPositions: Int
    public var normEpsilon: Float
    public var ropeTheta: Double
    public var ropeScaling: RopeScaling
    public var tiedEmbeddings: Bool
    /// Biases on the q, k and v projections (Qwen2; Llama's attention_bias), and on the output projection (Llama's only).
    public var queryKeyValueBias, outputBias: Bool
    /// Each query attends to at most this many most recent positions (Mistral; Qwen2 with use_sliding_window).
    public var slidingWindow: Int?
    public var beginTokenID: Int?
    public var endTokenID: Int

    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: AnyKey.self)
        let modelType: String = try c.value("model_type", default: "llama")
        guard let family = Family(rawValue: modelType) else {
            throw DecodingError.dataCorrupted(.init(codingPath: [AnyKey("model_type")], debugDescription: "'\(modelType)' is not llama, qwen2 or mistral"))
        }
        self.family = family
        vocabularySize = try c.value("vocab_size", default: 32000)
        hiddenSize = try c.value("hidden_size", default: 4096)
        innerSize = try c.value("intermediate_size", default: family == .qwen2 ? 22016 : family == .mistral ? 14336 : 11008)
        layers = try c.value("num_hidden_layers", default: 32)
        heads = try c.value("num_attention_heads", default: 32)
        keyValueHeads = try c.decodeIfPresent(Int.self, forKey: AnyKey("num_key_value_heads")) ?? (family == .mistral ? 8 : heads)
        headDim = try c.decodeIfPresent(Int.self, forKey: AnyKey("head_dim")) ?? hiddenSize / max(heads, 1)
        maxPositions = try c.value("max_position_embeddings", default: family == .qwen2 ? 32768 : family == .mistral ? 131072 : 2048)
        normEpsilon = Float(try c.value("rms_norm_eps", default: 1e-6) as Double)
        ropeTheta = try c.value("rope_theta", default: 10000.0)
        tiedEmbeddings = try c.value("tie_word_embeddings", default: false)
        let attentionBias: Bool = try c.value("attention_bias", default: false)
        queryKeyValueBias = family == .qwen2 || (family == .llama && attentionBias)
        outputBias = family == .llama && attentionBias
        switch family {
        case .mistral: slidingWindow = try c.decodeIfPresent(Int.self, forKey: AnyKey("sliding_window"))
        case .qwen2: slidingWindow = try c.value("use_sliding_window", default: false) ? try c.decodeIfPresent(Int.self, forKey: AnyKey("sliding_window")) : nil
        case .llama: slidingWindow = nil
        }
        beginTokenID = try c.decodeIfPresent(Int.self, forKey: AnyKey("bos_token_id"))
        // eos_token_id is one id or a list (Llama 3 instruct); generation stops at the first.
        if let ids = try? c.decodeIfPresent([Int].self, forKey: AnyKey("eos_token_id")), let first = ids.first {
            endTokenID = first
        } else {
            endTokenID = try c.value("eos_token_id", default: 2)
        }
        ropeScaling = try Self.ropeScaling(c)
        for (key, supported) in [("hidden_act", "silu")] where try c.value(key, default: supported) != supported {
            throw DecodingError.dataCorrupted(.init(codingPath: [AnyKey(key)], debugDescription: "only \(supported) is supported"))
        }
        if try c.value("mlp_bias", default: false) {
            throw DecodingError.dataCorrupted(.init(codingPath: [AnyKey("mlp_bias")], debugDescription: "MLP biases are not supported"))
        }
        try checkTransformer(width: hiddenSize, layers: layers, heads: heads, inner: innerSize,
                             names: ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size"))
        try checkSize(vocabularySize, "vocab_size", in: ConfigLimits.vocabulary)
        try checkSize(maxPositions, "max_position_embeddings", in: ConfigLimits.positions)
        try checkSize(headDim, "head_dim", in: 2...1024)
        try checkSize(keyValueHeads, "num_key_value_heads", in: 1...heads)
        guard heads % keyValueHeads == 0, headDim % 2 == 0 else {
            throw DecodingError.dataCorrupted(.init(codingPath: [AnyKey("num_key_value_heads")],
                                                    debugDescription: "\(keyValueHeads) key-value heads must divide \(heads) heads, and head_dim \(headDim) be even"))
        }
        if let slidingWindow { try checkSize(slidingWindow, "sliding_window", in: ConfigLimits.positions) }
    }

    static func ropeScaling(_ c: KeyedDecodingContainer<AnyKey>) throws -> RopeScaling {
        guard let scaling = try c.decodeIfPresent([String: RopeValue].self, forKey: AnyKey("rope_scaling")) else { return .none }
        let kind = scaling["rope_type"]?.text ?? scaling["type"]?.text ?? "default"
        func number(_ key: String, _ fallback: Float? = nil) throws -> Float {
            guard let value = scaling[key]?.number.map(Float.init) ?? fallback, value.isFinite, value > 0 else {
                throw DecodingError.dataCorrupted(.init(codingPath: [AnyKey("rope_scaling"), AnyKey(key)], debugDescription: "a positive number is needed"))
            }
            return value
        }
        switch kind {
        case "default": return .none
        case "linear": return .linear(factor: try number("factor"))
        case "dynamic": return .dynamic(factor: try number("factor"))
        case "llama3":
            return .llama3(factor: try number("factor"), lowFrequencyFactor: try number("low_freq_factor"), highFrequencyFactor: try number("high_freq_factor"),
                           originalContext: Int(try number("original_max_position_embeddings")))
        default:
            throw DecodingError.dataCorrupted(.init(codingPath: [AnyKey("rope_scaling")], debugDescription: "rope_type '\(kind)' is not supported (default, linear, dynamic, llama3)"))
        }
    }

    /// A rope_scaling field: a number or a text.
    enum RopeValue: Decodable {
        case number(Double), text(String), other
        init(from decoder: Decoder) throws {
            let c = try decoder.singleValueContainer()
            if let number = try? c.decode(Double.self) { self = .number(number) } else if let text = try? c.decode(String.self) { self = .text(text) } else { self = .other }
        }
        var number: Double? { if case .number(let n) = self { return n } else { return nil } }
        var text: String? { if case .text(let t) = self { return t } else { return nil } }
    }

    /// The positions a sequence may reach: max_position_embeddings, stretched by the factor of dynamic scaling.
    public var contextLength: Int {
        guard case .dynamic(let factor) = ropeScaling else { return maxPositions }
        return Int(Float(maxPositions) * factor)
    }

    /// The rotary inverse frequencies [headDim / 2] for a sequence `length` positions long, in float32 as transformers
    /// computes them (ROPE_INIT_FUNCTIONS). Only dynamic scaling depends on the length: past max_position_embeddings
    /// the base grows with it (transformers' _dynamic_frequency_update, which recomputes as a sequence grows and leaves
    /// keys already cached as they were rotated).
    public func inverseFrequencies(length: Int) -> [Float] {
        let half = headDim / 2
        var base = Float(ropeTheta)
        if case .dynamic(let factor) = ropeScaling, length > maxPositions {
            let exponent = Float(Double(headDim) / Double(headDim - 2))
            base *= pow(factor * Float(length) / Float(maxPositions) - (factor - 1), exponent)
        }
        let plain = (0..<half).map { i in 1 / pow(base, Float(2 * i) / Float(headDim)) }
        switch ropeScaling {
        case .none, .dynamic: return plain
        case .linear(let factor): return plain.map { $0 / factor }
        case let .llama3(factor, low, high, original):
            let lowWavelength = Float(Double(original) / Double(low)), highWavelength = Float(Double(original) / Double(high))
            return plain.map { frequency in
                let wavelength = Float(2 * Double.pi) / frequency
                let scaled = wavelength > lowWavelength ? frequency / factor : frequency
                guard !(wavelength < highWavelength) && !(wavelength > lowWavelength) else { return scaled }
                let smooth = (Float(original) / wavelength - low) / (high - low)
                return (1 - smooth) * scaled / factor + smooth * scaled
            }
        }
    }
}

/// Per-layer keys and values of the positions fed so far (Llama's keys rotated and `keyValueHeads` heads wide; BLIP's decoder).
public struct LayerKVCaches: LanguageModelCache {
    var layers: [KVCache]
    public var batch: Int { layers.first?.batch ?? 0 }
    public var length: Int { layers.first?.length ?? 0 }
    public func repeated(_ count: Int) -> LayerKVCaches { LayerKVCaches(layers: layers.map { $0.repeated(count) }) }
    public func gathering(_ rows: [Int]) -> LayerKVCaches { LayerKVCaches(layers: layers.map { $0.gathering(rows) }) }
}

/// One decoder layer: RMSNorm, attention with rotary positions, RMSNorm, SwiGLU MLP, each added to the residual.
struct LlamaBlock {
    let attentionNorm, mlpNorm: Tensor
    /// q, k and v projections fused: [heads + 2 * keyValueHeads] * headDim outputs.
    let queryKeyValue: Linear
    let output: Linear
    /// gate and up projections fused: 2 * innerSize outputs.
    let gateUp: Linear
    let down: Linear

    init(_ store: WeightStore, _ prefix: String, _ config: LlamaConfig) {
        let (d, q, kv) = (config.hiddenSize, config.heads * config.headDim, config.keyValueHeads * config.headDim)
        attentionNorm = store.take("\(prefix).input_layernorm.weight", shape: [d])
        mlpNorm = store.take("\(prefix).post_attention_layernorm.weight", shape: [d])
        let bias = config.queryKeyValueBias
        queryKeyValue = Linear(store, fusing: ["q_proj", "k_proj", "v_proj"].map { "\(prefix).self_attn.\($0)" }, inputs: d, outputs: [q, kv, kv], bias: bias)
        output = Linear(store, "\(prefix).self_attn.o_proj", inputs: q, outputs: d, bias: config.outputBias)
        gateUp = Linear(store, fusing: ["gate_proj", "up_proj"].map { "\(prefix).mlp.\($0)" }, inputs: d, outputs: [config.innerSize, config.innerSize], bias: false)
        down = Linear(store, "\(prefix).mlp.down_proj", inputs: config.innerSize, outputs: d, bias: false)
    }
}

/// Llama-architecture causal language models (transformers LlamaForCausalLM, Qwen2ForCausalLM, MistralForCausalLM;
/// SmolLM, TinyLlama and others are Llamas): grouped-query attention with rotary positions, RMSNorm, SwiGLU, tied or
/// untied LM head. The tokenizer is the folder's tokenizer.json, else its SentencePiece tokenizer.model.
public final class Llama: CausalLanguageModel, @unchecked Sendable {
    public let config: LlamaConfig
    public let tokenizer: (any VocabularyTokenizer)?
    let tokenEmbedding: Tensor
    let blocks: [LlamaBlock]
    let finalNorm: Tensor
    /// [vocabulary, d]: the embedding matrix again when tied.
    let head: Linear
    /// Within max_position_embeddings (for dynamic scaling, beyond it they depend on the length).
    let inverseFrequencies: [Float]

    /// tokenizer.json or tokenizer.model, whichever the repository has.
    public static let files = ModelFiles(required: ["config.json"], optional: ModelFiles.tokenizerAndProcessorFiles + ["tokenizer.model"])
    public static let architectures = ["LlamaForCausalLM", "Qwen2ForCausalLM", "MistralForCausalLM"]

    public convenience init(folder: URL) throws {
        let configFile = folder.appendingPathComponent("config.json")
        try ArchitectureHeader.require(Self.architectures + ["llama", "qwen2", "mistral"], in: configFile)
        func exists(_ name: String) -> Bool { FileManager.default.fileExists(atPath: folder.appendingPathComponent(name).path) }
        let tokenizer: (any VocabularyTokenizer)?
        if exists(TokenizerJSON.fileName) {
            tokenizer = try TokenizerJSON(folder: folder)
        } else if SentencePieceTokenizer.modelFiles.contains(where: exists) {
            tokenizer = try SentencePieceTokenizer(folder: folder, style: .llama(legacy: true))
        } else {
            tokenizer = nil
        }
        try self.init(config: loadConfig(LlamaConfig.self, from: configFile), weights: WeightStore(folder: folder), tokenizer: tokenizer)
    }

    public init(config: LlamaConfig, weights store: WeightStore, tokenizer: (any VocabularyTokenizer)?) throws {
        self.config = config
        self.tokenizer = tokenizer
        let d = config.hiddenSize
        tokenEmbedding = store.take("model.embed_tokens.weight", shape: [config.vocabularySize, d])
        blocks = (0..<config.layers).map { LlamaBlock(store, "model.layers.\($0)", config) }
        finalNorm = store.take("model.norm.weight", shape: [d])
        if config.tiedEmbeddings {
            if store.contains("lm_head.weight") { _ = store.take("lm_head.weight", shape: [config.vocabularySize, d]) }
            head = Linear(weight: tokenEmbedding, bias: nil, from: store)
        } else {
            head = Linear(weight: store.take("lm_head.weight", shape: [config.vocabularySize, d]), bias: nil, from: store)
        }
        inverseFrequencies = config.inverseFrequencies(length: config.maxPositions)
        try store.finish(ignoreUnused: { $0.hasSuffix("rotary_emb.inv_freq") })
    }

    public func makeCache(batch: Int = 1) -> LayerKVCaches {
        LayerKVCaches(layers: blocks.map { _ in KVCache(batch: batch, width: config.keyValueHeads * config.headDim) })
    }

    /// Feeds `tokens` (one equal-length row per cache row) after the positions in `cache`; the last layer's hidden
    /// states after the final norm, [batch, t, hiddenSize] (transformers' hidden_states[-1]).
    public func forward(_ tokens: [[Int]], cache: inout LayerKVCaches) throws -> Tensor {
        let t = tokens.first?.count ?? 0
        guard tokens.count == cache.batch, t > 0, tokens.allSatisfy({ $0.count == t }) else {
            throw ModelError.invalidInput(model: "Llama", detail: "expected \(cache.batch) rows of one non-zero length, got lengths \(tokens.map(\.count))")
        }
        let start = cache.length
        guard start + t <= config.contextLength else {
            throw ModelError.invalidInput(model: "Llama", detail: "\(start + t) positions exceed the context of \(config.contextLength)")
        }
        let (batch, d, headDim) = (tokens.count, config.hiddenSize, config.headDim)
        let (q, kv) = (config.heads * headDim, config.keyValueHeads * headDim)
        var hidden: Tensor
        do {
            hidden = try embedding(tokens.flatMap { $0 }, table: tokenEmbedding).reshaped([batch, t, d])
        } catch {
            throw ModelError.invalidInput(model: "Llama", detail: error.description)
        }
        let frequencies = start + t > config.maxPositions ? config.inverseFrequencies(length: start + t) : inverseFrequencies
        let rotation = Rotation(frequencies: frequencies, positions: start..<start + t)
        for (index, block) in blocks.enumerated() {
            let projected = block.queryKeyValue(rmsNorm(hidden, weight: block.attentionNorm, epsilon: config.normEpsilon))   // [b, t, q + 2kv]
            var parts = splitLastDimension(projected, widths: [q, kv, kv])
            rotation.apply(&parts[0], headDim: headDim)
            rotation.apply(&parts[1], headDim: headDim)
            let attended = cachedSelfAttention(query: parts[0], key: parts[1], value: parts[2], heads: config.heads, keyValueHeads: config.keyValueHeads,
                                               window: config.slidingWindow, cache: &cache.layers[index], precision: block.queryKeyValue.precision)   // [b, t, q]
            addInPlace(&hidden, block.output(attended))
            let gateUp = block.gateUp(rmsNorm(hidden, weight: block.mlpNorm, epsilon: config.normEpsilon))   // [b, t, 2 * inner]
            addInPlace(&hidden, block.down(swiGLU(gateUp)))
        }
        return rmsNorm(hidden, weight: finalNorm, epsilon: config.normEpsilon)
    }

    public func logits(_ hidden: Tensor) -> Tensor { head(hidden) }

    public var vocabularySize: Int { config.vocabularySize }
    public var endTokenID: Int { config.endTokenID }
    public var contextLength: Int { config.contextLength }

    public func decode(_ ids: [Int]) throws -> String { try requireTokenizer().decode(ids) }
    public func encode(_ text: String, specialTokens: Bool) throws -> [Int] {
        specialTokens ? try requireTokenizer().encode(text) : try requireTokenizer().tokens(text)
    }
    public func tokenID(of token: String) -> Int? { tokenizer?.id(of: token) }

    func requireTokenizer() throws -> any VocabularyTokenizer {
        guard let tokenizer else { throw ModelError.invalidInput(model: "Llama", detail: "the model folder has no tokenizer.json or tokenizer.model for text") }
        return tokenizer
    }
}

/// Rotary position embedding of a run of positions: each head's pairs (i, i + headDim/2) turned by position x
/// frequency i, as transformers' apply_rotary_pos_emb (rotate_half) does, the angles computed in float32 as it does.
struct Rotation {
    let cosines, sines: [Float]   // [positions, headDim / 2]
    let count, half: Int

    init(frequencies: [Float], positions: Range<Int>) {
        half = frequencies.count
        count = positions.count
        let angles = positions.flatMap { p in frequencies.map { Float(p) * $0 } }
        cosines = angles.map { cos($0) }
        sines = angles.map { sin($0) }
    }

    /// Turns x [batch, positions, heads * headDim] in place.
    func apply(_ x: inout Tensor, headDim: Int) {
        let width = x.lastDimension, rows = x.count / width
        x.withUnsafeMutableBufferPointer { buffer in
            for row in 0..<rows {
                let position = row % count
                for head in stride(from: row * width, to: (row + 1) * width, by: headDim) {
                    for i in 0..<half {
                        let (a, b) = (buffer[head + i], buffer[head + half + i])
                        let (c, s) = (cosines[position * half + i], sines[position * half + i])
                        buffer[head + i] = a * c - b * s
                        buffer[head + half + i] = b * c + a * s
                    }
                }
            }
        }
    }
}
