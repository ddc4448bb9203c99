import Foundation
import StitchImaging
import StitchModelIO
import StitchTensor

/// EfficientNet-Lite0 as in the efficientnet_lite_pytorch package (lukemelas-style
/// weight names): MBConv blocks without squeeze-excitation, ReLU6, TensorFlow
/// "SAME" padding, batch norms folded into the convolutions at load time.
public final class EfficientNetLite: ImageEmbedder, @unchecked Sendable {
    /// The folder's config.json (not a transformers config).
    public struct Config: Decodable, Sendable {
        public let architecture: String
        public let numClasses: Int
        public let imageSize: Int
        public let batchNormEpsilon: Float
        public let featuresDim: Int

        enum CodingKeys: String, CodingKey {
            case architecture, numClasses = "num_classes", imageSize = "image_size", batchNormEpsilon = "bn_eps", featuresDim = "features_dim"
        }

        public init(from decoder: Decoder) throws {
            let c = try decoder.container(keyedBy: CodingKeys.self)
            architecture = try c.decode(String.self, forKey: .architecture)
            numClasses = try c.decode(Int.self, forKey: .numClasses)
            imageSize = try c.decode(Int.self, forKey: .imageSize)
            batchNormEpsilon = try c.decode(Float.self, forKey: .batchNormEpsilon)
            featuresDim = try c.decode(Int.self, forKey: .featuresDim)
            try checkSize(numClasses, "num_classes", in: 1...(1 << 20))
            try checkSize(imageSize, "image_size", in: ConfigLimits.imageSize)
            try checkSize(featuresDim, "features_dim", in: ConfigLimits.width)
        }
    }

    /// A convolution with its batch norm folded in, then ReLU6 unless told otherwise: weight' = w·γ/√(σ²+ε), bias' = β − μ·γ/√(σ²+ε).
    struct FoldedConv {
        let convolution: Convolution

        init(_ store: WeightStore, conv: String, batchNorm: String, shape: [Int], stride: Int = 1, depthwise: Bool = false,
             activation: ConvActivation = .relu6, epsilon: Float) {
            let channels = shape[0]
            let gamma = store.take("\(batchNorm).weight", shape: [channels]).scalars
            let beta = store.take("\(batchNorm).bias", shape: [channels]).scalars
            let mean = store.take("\(batchNorm).running_mean", shape: [channels]).scalars
            let variance = store.take("\(batchNorm).running_var", shape: [channels]).scalars
            var folded = store.take("\(conv).weight", shape: shape)
            let perChannel = folded.count / channels
            let scales = (0..<channels).map { gamma[$0] / (variance[$0] + epsilon).squareRoot() }
            folded.withUnsafeMutableBufferPointer { w in
                for c in 0..<channels { for i in 0..<perChannel { w[c * perChannel + i] *= scales[c] } }
            }
            let bias = Tensor(shape: [channels], scalars: (0..<channels).map { beta[$0] - mean[$0] * scales[$0] })
            convolution = Convolution(weight: folded, bias: bias, stride: stride, depthwise: depthwise, activation: activation)
        }

        /// x [c, h, w] -> [c', h', w'] with TensorFlow "SAME" padding, then the activation.
        func callAsFunction(_ x: Tensor) -> Tensor {
            convolution(x, padding: .same(height: x.shape[1], width: x.shape[2], kernel: convolution.weight.shape[2], stride: convolution.stride))
        }
    }

    struct Block {
        let expand: FoldedConv?
        let depthwise: FoldedConv
        let project: FoldedConv
        let residual: Bool
    }

    /// (repeats, kernel, stride, expansion, input channels, output channels) of efficientnet-lite0.
    static let lite0Stages: [(Int, Int, Int, Int, Int, Int)] = [
        (1, 3, 1, 1, 32, 16), (2, 3, 2, 6, 16, 24), (2, 5, 2, 6, 24, 40), (3, 3, 2, 6, 40, 80),
        (3, 5, 1, 6, 80, 112), (4, 5, 2, 6, 112, 192), (1, 3, 1, 6, 192, 320),
    ]

    public let config: Config
    public let preprocessor = ImagePreprocessor.imageNet
    let stem: FoldedConv
    let blocks: [Block]
    let head: FoldedConv
    let classifier: Linear

    public static let files = ModelFiles(required: ["config.json"])

    public convenience init(folder: URL) throws {
        let configFile = folder.appendingPathComponent("config.json")
        let config = try loadConfig(Config.self, from: configFile)
        guard config.architecture.hasPrefix("efficientnet-lite0") else {
            throw ModelIOError.unsupportedArchitecture(file: configFile.path, found: config.architecture, expected: ["efficientnet-lite0"])
        }
        try self.init(config: config, weights: WeightStore(folder: folder))
    }

    public init(config: Config, weights store: WeightStore) throws {
        self.config = config
        let e = config.batchNormEpsilon
        stem = FoldedConv(store, conv: "_conv_stem", batchNorm: "_bn0", shape: [32, 3, 3, 3], stride: 2, epsilon: e)
        var blocks: [Block] = []
        for (repeats, kernel, stride, expansion, inputs, outputs) in Self.lite0Stages {
            for r in 0..<repeats {
                let (i, s) = (r == 0 ? inputs : outputs, r == 0 ? stride : 1)
                let p = "_blocks.\(blocks.count)"
                let hidden = i * expansion
                blocks.append(Block(
                    expand: expansion == 1 ? nil : FoldedConv(store, conv: "\(p)._expand_conv", batchNorm: "\(p)._bn0", shape: [hidden, i, 1, 1], epsilon: e),
                    depthwise: FoldedConv(store, conv: "\(p)._depthwise_conv", batchNorm: "\(p)._bn1", shape: [hidden, 1, kernel, kernel],
                                          stride: s, depthwise: true, epsilon: e),
                    project: FoldedConv(store, conv: "\(p)._project_conv", batchNorm: "\(p)._bn2", shape: [outputs, hidden, 1, 1],
                                        activation: .none, epsilon: e),
                    residual: s == 1 && i == outputs))
            }
        }
        self.blocks = blocks
        head = FoldedConv(store, conv: "_conv_head", batchNorm: "_bn1", shape: [config.featuresDim, 320, 1, 1], epsilon: e)
        classifier = Linear(store, "_fc", inputs: config.featuresDim, outputs: config.numClasses)
        try store.finish(ignoreUnused: { $0.hasSuffix(".num_batches_tracked") })   // a training counter
    }

    /// Pooled features [featuresDim] of one preprocessed image [3, size, size].
    public func features(_ pixels: Tensor) throws -> Tensor {
        guard pixels.shape == [3, config.imageSize, config.imageSize] else {
            throw ModelError.invalidInput(model: "EfficientNet-Lite0", detail: "pixels must be [3, \(config.imageSize), \(config.imageSize)], got \(pixels.shape)")
        }
        var x = stem(pixels)
        for block in blocks {
            var y = x
            if let expand = block.expand { y = expand(y) }
            y = block.project(block.depthwise(y))
            if block.residual { addInPlace(&y, x) }
            x = y
        }
        return globalAveragePool(head(x))
    }

    /// ImageNet logits [numClasses] from pooled features.
    public func logits(features: Tensor) -> Tensor {
        classifier(features.reshaped([1, config.featuresDim])).reshaped([config.numClasses])
    }

    /// Features of an image, preprocessed the ImageNet way.
    public func features(of image: RGBImage) throws -> Tensor { try features(preprocessor(image)) }

    /// Unit-length pooled features [images, featuresDim]: ASIF's image side.
    public func imageEmbeddings(_ images: [RGBImage]) throws -> Tensor {
        var pooled = concatenate(try images.map { try features(of: $0).reshaped([1, -1]) }, axis: 0)
        l2NormalizeRows(&pooled)
        return pooled
    }
}
