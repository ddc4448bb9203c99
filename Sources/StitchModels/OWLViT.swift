import Foundation
import StitchImaging
import StitchModelIO
import StitchTensor
import StitchTokenizers

/// transformers' OwlViTConfig: CLIP's towers (text_config, vision_config, projection_dim) with OWL-ViT's defaults.
public struct OWLViTConfig: Decodable, Sendable {
    public let towers: CLIPConfig

    public init(from decoder: Decoder) throws {
        towers = try CLIPConfig(decoder, defaults: .owlvit)
        // The class head compares patch embeddings as wide as the text tower with projected queries.
        guard towers.text.hiddenSize == towers.projectionDim else {
            throw DecodingError.dataCorrupted(.init(codingPath: [AnyKey("projection_dim")], debugDescription:
                "OWL-ViT needs projection_dim equal to text_config.hidden_size, got \(towers.projectionDim) and \(towers.text.hiddenSize)"))
        }
    }
}

/// OWL-ViT v1 (transformers OwlViTForObjectDetection; google/owlvit-base-patch32, -base-patch16, -large-patch14): CLIP's
/// towers, and on every image patch a box head and a class head that scores the patch against text queries. Queries are
/// embedded once and reused for every image they are asked of.
public final class OWLViT: TextQueriedDetector, @unchecked Sendable {
    public let config: OWLViTConfig
    public let clip: CLIP
    /// OwlViTImageProcessor: both sides resized to the model's size (bicubic), CLIP's mean and std.
    public let preprocessor: ImagePreprocessor
    let patchLayerNorm: LayerNorm
    let boxDense0, boxDense1, boxDense2: Linear
    let classDense0, logitShift, logitScale: Linear
    /// The box head's bias per patch [patches, 4]: its centre on the grid and the patch size, as inverse sigmoids.
    let boxBias: Tensor
    private let lock = NSLock()
    private var queryCache: [[String]: Tensor] = [:]

    /// The files an OWL-ViT folder holds; the tokenizer (needed for queries) as CLIP's.
    public static let files = CLIP.files

    public convenience init(folder: URL) throws {
        let configFile = folder.appendingPathComponent("config.json")
        try ArchitectureHeader.require(["OwlViTForObjectDetection", "owlvit"], in: configFile)
        let config = try loadConfig(OWLViTConfig.self, from: configFile)
        let preprocessor = try SquarePreprocessing.preprocessor(in: folder, defaults: ImagePreprocessor(squareSize: config.towers.imageSize, filter: .bicubic,
                                                                                                        mean: ImagePreprocessor.clip.mean, std: ImagePreprocessor.clip.std))
        try self.init(config: config, weights: WeightStore(folder: folder),
                      tokenizer: CLIPTokenizer.isPresent(in: folder) ? CLIPTokenizer(folder: folder, contextLength: config.towers.maxPositions) : nil,
                      preprocessor: preprocessor)
    }

    public init(config: OWLViTConfig, weights store: WeightStore, tokenizer: CLIPTokenizer?, preprocessor: ImagePreprocessor) throws {
        self.config = config
        self.preprocessor = preprocessor
        let (v, t) = (config.towers.vision, config.towers.text)
        // The heads' weights first: CLIP's initializer takes the towers' and then checks nothing is left.
        boxDense0 = Linear(store, "box_head.dense0", inputs: v.hiddenSize, outputs: v.hiddenSize)
        boxDense1 = Linear(store, "box_head.dense1", inputs: v.hiddenSize, outputs: v.hiddenSize)
        boxDense2 = Linear(store, "box_head.dense2", inputs: v.hiddenSize, outputs: 4)
        classDense0 = Linear(store, "class_head.dense0", inputs: v.hiddenSize, outputs: t.hiddenSize)
        logitShift = Linear(store, "class_head.logit_shift", inputs: v.hiddenSize, outputs: 1)
        logitScale = Linear(store, "class_head.logit_scale", inputs: v.hiddenSize, outputs: 1)
        patchLayerNorm = LayerNorm(store, "layer_norm", size: v.hiddenSize, epsilon: v.layerNormEpsilon)
        clip = try CLIP(config: config.towers, weights: store, tokenizer: tokenizer, naming: .owlvit)
        boxBias = Self.boxBias(grid: config.towers.imageSize / config.towers.patchSize)
    }

    /// compute_box_bias, in float32 as torch computes it: patch (x, y) of an n x n grid (row by row) has its centre at
    /// ((x + 1) / n, (y + 1) / n) and size 1 / n, each as log(c + 1e-4) - log1p(-c + 1e-4).
    static func boxBias(grid n: Int) -> Tensor {
        func inverseSigmoid(_ c: Float) -> Float { logf(c + 1e-4) - log1pf(-c + 1e-4) }
        let size = inverseSigmoid(1 / Float(n))
        var values: [Float] = []
        for y in 0..<n {
            for x in 0..<n { values += [inverseSigmoid(min(max(Float(x + 1) / Float(n), 0), 1)), inverseSigmoid(min(max(Float(y + 1) / Float(n), 0), 1)), size, size] }
        }
        return Tensor(shape: [n * n, 4], scalars: values)
    }

    // MARK: queries

    /// Query embeddings [queries, d] as the class head takes them: the projected text features made unit length (as
    /// OwlViTModel returns them), then divided by their norm plus 1e-6 (as the class head does). Cached per query list.
    public func queryEmbeddings(_ queries: [String]) throws -> Tensor {
        lock.lock()
        if let known = queryCache[queries] { lock.unlock(); return known }
        lock.unlock()
        guard !queries.isEmpty else { throw ModelError.invalidInput(model: "OWL-ViT", detail: "no text queries given") }
        var embeddings = try clip.textFeatures(clip.tokenize(queries))
        l2NormalizeRows(&embeddings, epsilon: 0)
        Self.divideRowsByNormPlusEpsilon(&embeddings)
        lock.lock()
        queryCache[queries] = embeddings
        lock.unlock()
        return embeddings
    }

    /// x / (|x| + 1e-6) per row, the class head's normalisation.
    static func divideRowsByNormPlusEpsilon(_ x: inout Tensor) {
        let d = x.shape[x.rank - 1]
        x.withUnsafeMutableBufferPointer { values in
            for start in stride(from: 0, to: values.count, by: d) {
                var sum: Float = 0
                for i in start..<start + d { sum += values[i] * values[i] }
                let divisor = sum.squareRoot() + 1e-6
                for i in start..<start + d { values[i] /= divisor }
            }
        }
    }

    // MARK: images

    /// Per-patch features [patches, d] of pixels [1, channels, size, size] (image_embedder): the vision tower's last
    /// states after its post-layer norm, each patch times the class token, layer-normed.
    public func patchFeatures(_ pixels: Tensor) throws -> Tensor {
        let hidden = try clip.visionHiddenStates(pixels)   // [1, 1 + patches, d]
        let (tokens, d) = (hidden.shape[1], hidden.shape[2])
        var normed = clip.postLayerNorm(hidden.reshaped([tokens, d]))   // [1 + patches, d]
        normed.withUnsafeMutableBufferPointer { values in
            for token in 1..<tokens {
                for i in 0..<d { values[token * d + i] *= values[i] }
            }
        }
        return patchLayerNorm(normed.rows(1..<tokens))
    }

    /// Boxes [patches, 4] (centre x, centre y, width, height, relative to the input square) and query logits
    /// [patches, queries] of pixels [1, channels, size, size].
    public func predict(_ pixels: Tensor, queryEmbeddings queries: Tensor) throws -> (boxes: Tensor, logits: Tensor) {
        let features = try patchFeatures(pixels)
        var boxes = boxDense2(boxDense1(boxDense0(features, activation: .gelu), activation: .gelu))
        addInPlace(&boxes, boxBias)
        sigmoid(&boxes)

        var classEmbeddings = classDense0(features)
        Self.divideRowsByNormPlusEpsilon(&classEmbeddings)
        var logits = matmul(classEmbeddings, queries, transposeB: true)   // [patches, queries]
        let shifts = logitShift(features).scalars, scales = logitScale(features).scalars   // [patches, 1] each
        let count = queries.shape[0]
        logits.withUnsafeMutableBufferPointer { values in
            for (patch, (shift, scale)) in zip(shifts, scales).enumerated() {
                let factor = (scale > 0 ? scale : expf(scale) - 1) + 1   // elu + 1
                for q in 0..<count { values[patch * count + q] = (values[patch * count + q] + shift) * factor }
            }
        }
        return (boxes, logits)
    }

    // MARK: detection

    /// post_process_object_detection: per patch the best query, its sigmoid score, the box in image pixels
    /// [x1, y1, x2, y2] (the input square mapped back onto the image, not clipped); those scoring above `threshold` in
    /// patch order. With `nmsThreshold`, class-aware NMS (YOLOX's) then keeps the best of overlapping boxes, best first.
    public func detect(_ image: RGBImage, queries: [String], threshold: Float, nmsThreshold: Float?) throws -> [Detection] {
        let (boxes, logits) = try predict(preprocessor.batch([image]), queryEmbeddings: queryEmbeddings(queries))
        let (width, height) = (Float(image.width), Float(image.height))
        let count = queries.count, b = boxes.scalars, l = logits.scalars
        var found: [Detection] = []
        for patch in 0..<boxes.shape[0] {
            let row = l[patch * count..<(patch + 1) * count]
            let best = row.indices.max { row[$0] < row[$1] }!   // the first of equal maxima, as torch.max
            let score = 1 / (1 + expf(-row[best]))
            guard score > threshold else { continue }
            let (cx, cy, w, h) = (b[patch * 4], b[patch * 4 + 1], b[patch * 4 + 2], b[patch * 4 + 3])
            found.append(Detection(label: queries[best - row.startIndex], classIndex: best - row.startIndex, score: score,
                                   box: [(cx - 0.5 * w) * width, (cy - 0.5 * h) * height, (cx + 0.5 * w) * width, (cy + 0.5 * h) * height]))
        }
        guard let nmsThreshold else { return found }
        var scores = Tensor(zeros: [found.count, count])
        scores.withUnsafeMutableBufferPointer { s in for (i, d) in found.enumerated() { s[i * count + d.classIndex] = d.score } }
        return nonMaximumSuppression((found.map { SIMD4($0.box) }, scores), classes: count, threshold: threshold, iouThreshold: nmsThreshold).map { kept in
            Detection(label: queries[kept.classIndex], classIndex: kept.classIndex, score: kept.score, box: kept.box)
        }
    }

}
