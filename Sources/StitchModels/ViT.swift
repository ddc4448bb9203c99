import Foundation
import StitchImaging
import StitchModelIO
import StitchTensor

/// transformers' ViTConfig, with its defaults.
public struct ViTConfig: Decodable, Sendable {
    public var hiddenSize: Int
    public var layers: Int
    public var heads: Int
    public var intermediateSize: Int
    public var activation: Activation
    public var layerNormEpsilon: Float
    public var imageSize: Int
    public var patchSize: Int
    public var channels: Int

    public init(from decoder: Decoder) throws { try self.init(decoder, defaults: .vit) }

    /// The defaults that differ between the configs read as ViT's.
    struct Defaults {
        let layerNormEpsilon: Float, imageSize: Int
        static let vit = Defaults(layerNormEpsilon: 1e-12, imageSize: 224)
        /// BlipVisionConfig: 384-pixel images, eps 1e-5.
        static let blip = Defaults(layerNormEpsilon: 1e-5, imageSize: 384)
    }

    init(_ decoder: Decoder, defaults: Defaults) throws {
        let c = try decoder.container(keyedBy: AnyKey.self)
        hiddenSize = try c.value("hidden_size", default: 768)
        layers = try c.value("num_hidden_layers", default: 12)
        heads = try c.value("num_attention_heads", default: 12)
        intermediateSize = try c.value("intermediate_size", default: 3072)
        activation = try c.value("hidden_act", default: .gelu)
        layerNormEpsilon = try c.value("layer_norm_eps", default: defaults.layerNormEpsilon)
        imageSize = try c.value("image_size", default: defaults.imageSize)
        patchSize = try c.value("patch_size", default: 16)
        channels = try c.value("num_channels", default: 3)
        try checkTransformer(width: hiddenSize, layers: layers, heads: heads, inner: intermediateSize,
                             names: ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size"))
        try checkSize(imageSize, "image_size", in: ConfigLimits.imageSize)
        try checkSize(patchSize, "patch_size", in: 1...imageSize)
        try checkSize(channels, "num_channels", in: 1...4)
        if try c.value("qkv_bias", default: true) != true {
            throw DecodingError.dataCorrupted(.init(codingPath: [AnyKey("qkv_bias")], debugDescription: "only true is supported"))
        }
    }
}

extension TransformerBlock {
    /// A ViT encoder layer (layernorm_before / attention / layernorm_after / intermediate / output).
    init(vit store: WeightStore, _ prefix: String, _ config: ViTConfig) {
        let d = config.hiddenSize
        self.init(layerNorm1: LayerNorm(store, "\(prefix).layernorm_before", size: d, epsilon: config.layerNormEpsilon),
                  layerNorm2: LayerNorm(store, "\(prefix).layernorm_after", size: d, epsilon: config.layerNormEpsilon),
                  qkv: Linear(store, fusing: ["query", "key", "value"].map { "\(prefix).attention.attention.\($0)" }, inputs: d, outputs: [d, d, d]),
                  out: Linear(store, "\(prefix).attention.output.dense", inputs: d, outputs: d),
                  fc1: Linear(store, "\(prefix).intermediate.dense", inputs: d, outputs: config.intermediateSize),
                  fc2: Linear(store, "\(prefix).output.dense", inputs: config.intermediateSize, outputs: d),
                  heads: config.heads, activation: config.activation)
    }

    /// A BLIP vision layer (BlipEncoderLayer): CLIP's layout with q/k/v stored fused.
    init(blip store: WeightStore, _ prefix: String, _ config: ViTConfig) {
        let d = config.hiddenSize
        self.init(layerNorm1: LayerNorm(store, "\(prefix).layer_norm1", size: d, epsilon: config.layerNormEpsilon),
                  layerNorm2: LayerNorm(store, "\(prefix).layer_norm2", size: d, epsilon: config.layerNormEpsilon),
                  qkv: Linear(store, "\(prefix).self_attn.qkv", inputs: d, outputs: 3 * d),
                  out: Linear(store, "\(prefix).self_attn.projection", inputs: d, outputs: d),
                  fc1: Linear(store, "\(prefix).mlp.fc1", inputs: d, outputs: config.intermediateSize),
                  fc2: Linear(store, "\(prefix).mlp.fc2", inputs: config.intermediateSize, outputs: d),
                  heads: config.heads, activation: config.activation)
    }
}

/// The ViT encoder (transformers ViTModel without its pooler, or BlipVisionModel): patch and class embeddings
/// with positions, pre-layer-norm layers, a final layer norm. Its last hidden states are
/// what a VisionEncoderDecoder's decoder (or BLIP's text model) attends to.
public final class ViT: @unchecked Sendable {
    public let config: ViTConfig
    let classToken, positions: Tensor
    let patchEmbedding: Linear
    let layers: [TransformerBlock]
    let finalLayerNorm: LayerNorm

    /// Where a checkpoint keeps the encoder's weights: ViTModel's names or BlipVisionModel's.
    struct Naming: Sendable {
        let classToken, positions, patch, layers, finalLayerNorm: String
        let layer: @Sendable (WeightStore, String, ViTConfig) -> TransformerBlock
        static let vit = Naming(classToken: "embeddings.cls_token", positions: "embeddings.position_embeddings", patch: "embeddings.patch_embeddings.projection",
                                layers: "encoder.layer", finalLayerNorm: "layernorm", layer: TransformerBlock.init(vit:_:_:))
        static let blip = Naming(classToken: "embeddings.class_embedding", positions: "embeddings.position_embedding", patch: "embeddings.patch_embedding",
                                 layers: "encoder.layers", finalLayerNorm: "post_layernorm", layer: TransformerBlock.init(blip:_:_:))
    }

    /// `root` prefixes every weight name: "encoder." inside a VisionEncoderDecoder checkpoint.
    public convenience init(config: ViTConfig, weights store: WeightStore, root: String = "") {
        self.init(config: config, weights: store, root: root, naming: .vit)
    }

    init(config: ViTConfig, weights store: WeightStore, root: String, naming: Naming) {
        self.config = config
        let (d, p, c) = (config.hiddenSize, config.patchSize, config.channels)
        let patches = (config.imageSize / p) * (config.imageSize / p)
        classToken = store.take("\(root)\(naming.classToken)", shape: [1, 1, d])
        positions = store.take("\(root)\(naming.positions)", shape: [1, patches + 1, d])
        // Conv weight [d, c, p, p] used as a linear map of flattened patches [d, c * p * p], packed at the loading precision.
        patchEmbedding = Linear(weight: store.take("\(root)\(naming.patch).weight", shape: [d, c, p, p]).reshaped([d, c * p * p]),
                                bias: store.take("\(root)\(naming.patch).bias", shape: [d]), from: store)
        layers = (0..<config.layers).map { naming.layer(store, "\(root)\(naming.layers).\($0)", config) }
        finalLayerNorm = LayerNorm(store, "\(root)\(naming.finalLayerNorm)", size: d, epsilon: config.layerNormEpsilon)
    }

    /// Last hidden states [batch, 1 + patches, d] of pixels [batch, channels, size, size].
    public func hiddenStates(_ pixels: Tensor) throws -> Tensor {
        let (s, p, c, d) = (config.imageSize, config.patchSize, config.channels, config.hiddenSize)
        guard pixels.rank == 4, Array(pixels.shape.dropFirst()) == [c, s, s] else {
            throw ModelError.invalidInput(model: "ViT", detail: "pixels must be [batch, \(c), \(s), \(s)], got \(pixels.shape)")
        }
        let (batch, patches) = (pixels.shape[0], (s / p) * (s / p))
        let embedded = patchEmbedding(flattenPatches(pixels, patch: p)).reshaped([batch, patches, d])
        var hidden = concatenate((0..<batch).map { b in
            concatenate([classToken, embedded.row(b).reshaped([1, patches, d])], axis: 1)
        }, axis: 0)
        addInPlace(&hidden, concatenate(Array(repeating: positions, count: batch), axis: 0))
        for layer in layers { layer(&hidden, causal: false) }
        return finalLayerNorm(hidden)
    }
}
