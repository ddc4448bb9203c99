import StitchImaging
import StitchTensor
import StitchTokenizers

/// Scores how well texts describe images (CLIP and models like it): what MAGiC, Socratic re-ranking,
/// zero-shot classification and PICa's example selection ask for.
public protocol ImageTextScorer: AnyObject, Sendable {
    /// Features [images, d] as `logits` takes them.
    func imageFeatures(of images: [RGBImage]) throws -> Tensor
    /// Features [texts, d] as `logits` takes them.
    func textFeatures(of texts: [String]) throws -> Tensor
    /// The same, the texts tokenized as `tokenization` has it (MAGiC's published code ran transformers 4.7.0's slow
    /// tokenizer); a scorer whose tokenizer has no such older behaviour tokenizes as always.
    func textFeatures(of texts: [String], tokenization: Transformers47.Tokenization) throws -> Tensor
    /// Image-text logits [images, texts].
    func logits(imageFeatures: Tensor, textFeatures: Tensor) -> Tensor
    /// Unit-length image embeddings [images, d].
    func imageEmbeddings(_ images: [RGBImage]) throws -> Tensor
    /// Unit-length text embeddings [texts, d].
    func textEmbeddings(_ texts: [String]) throws -> Tensor
    /// Zero-shot probabilities [images, labels] of unit-length image and label embeddings (`labelEmbeddings`).
    func labelProbabilities(imageEmbeddings: Tensor, labelEmbeddings: Tensor) -> Tensor
    /// What `labelProbabilities` are: a softmax over the labels (CLIP) or each label's own sigmoid (SigLIP).
    var labelProbabilityKind: LabelProbabilityKind { get }
    /// A text encoder that reuses what consecutive MAGiC steps share, or nil: then every text is encoded whole.
    func makeIncrementalTextEncoder(tokenization: Transformers47.Tokenization) -> IncrementalTextEncoder?
    /// Indices of `texts` ranked for `image`, best first (ties by index), with their scores: the logits, unless the
    /// scorer has a better judge of a single pair (BLIP's matching head).
    func rank(_ texts: [String], for image: RGBImage) throws -> [(index: Int, logit: Float)]
}

/// How a scorer's zero-shot probabilities relate across labels.
public enum LabelProbabilityKind: String, Sendable {
    /// A softmax over the labels: they sum to one.
    case exclusive = "softmax"
    /// A sigmoid per label, independent of the other labels.
    case independent = "sigmoid"
}

/// Text features for MAGiC's candidates, reusing the work of the text kept last step (a causal text tower's prefix).
/// Equal to `textFeatures(of:tokenization:)` of the same texts.
public protocol IncrementalTextEncoder: AnyObject {
    func features(of texts: [String]) throws -> Tensor
    /// The text at `index` of the last `features` call was kept: the next texts extend it.
    func keep(_ index: Int) throws
}

extension ImageTextScorer {
    public func imageEmbeddings(_ images: [RGBImage]) throws -> Tensor {
        var features = try imageFeatures(of: images)
        l2NormalizeRows(&features)
        return features
    }

    public func textEmbeddings(_ texts: [String]) throws -> Tensor {
        var features = try textFeatures(of: texts)
        l2NormalizeRows(&features)
        return features
    }

    /// `logits` softmaxed over the labels.
    public func labelProbabilities(imageEmbeddings: Tensor, labelEmbeddings: Tensor) -> Tensor {
        var probabilities = logits(imageFeatures: imageEmbeddings, textFeatures: labelEmbeddings)
        softmaxLastDimension(&probabilities)
        return probabilities
    }

    /// Zero-shot classification [images, labels] with prompt ensembling over `templates` ("{}" is the label).
    public func classify(_ images: [RGBImage], labels: [String], templates: [String] = ["a photo of a {}."]) throws -> Tensor {
        labelProbabilities(imageEmbeddings: try imageEmbeddings(images), labelEmbeddings: try labelEmbeddings(labels, templates: templates))
    }

    public var labelProbabilityKind: LabelProbabilityKind { .exclusive }

    public func makeIncrementalTextEncoder(tokenization: Transformers47.Tokenization) -> IncrementalTextEncoder? { nil }

    public func textFeatures(of texts: [String], tokenization: Transformers47.Tokenization) throws -> Tensor { try textFeatures(of: texts) }

    /// Zero-shot label embeddings [labels, d]: the unit-length embeddings of each label in every template, averaged and renormalised.
    public func labelEmbeddings(_ labels: [String], templates: [String]) throws -> Tensor {
        let prompts = labels.flatMap { label in templates.map { $0.replacingOccurrences(of: "{}", with: label) } }
        let all = try textEmbeddings(prompts)
        let d = all.shape[1]
        let values = all.scalars
        var means = Tensor(zeros: [labels.count, d])
        means.withUnsafeMutableBufferPointer { out in
            for (index, value) in values.enumerated() {
                out[(index / d / templates.count) * d + index % d] += value / Float(templates.count)
            }
        }
        l2NormalizeRows(&means)
        return means
    }

    /// Indices of `texts` ranked by their logit with `image`, best first (ties by index), with the logits.
    public func rank(_ texts: [String], for image: RGBImage) throws -> [(index: Int, logit: Float)] {
        let logits = logits(imageFeatures: try imageFeatures(of: [image]), textFeatures: try textFeatures(of: texts)).scalars
        return indicesByDescendingValue(logits).map { ($0, logits[$0]) }
    }
}

/// Turns an image into a conditioned language model whose continuations of `startTokens` are captions.
public protocol ImageCaptioner: AnyObject, Sendable {
    associatedtype Decoder: CausalLanguageModel
    func decoder(for image: RGBImage) throws -> Decoder
    /// The prompt every caption continues.
    var startTokens: [Int] { get }
    /// The start of a caption that continues `prompt` (conditional captioning: "a picture of").
    func startTokens(prompt: String) throws -> [Int]
}

/// Finds labelled boxes in an image.
public protocol ObjectDetector: AnyObject, Sendable {
    func detect(_ image: RGBImage, threshold: Float, nmsThreshold: Float) throws -> [Detection]
}

/// Finds boxes of what text queries name (open-vocabulary detectors such as OWL-ViT).
public protocol TextQueriedDetector: AnyObject, Sendable {
    /// Detections labelled with the query each matches best; a nil `nmsThreshold` keeps every box over `threshold`.
    func detect(_ image: RGBImage, queries: [String], threshold: Float, nmsThreshold: Float?) throws -> [Detection]
}

/// Unit-length text embeddings (ASIF's text side).
public protocol TextEmbedder: AnyObject, Sendable {
    func textEmbeddings(_ texts: [String]) throws -> Tensor
}

/// Unit-length image embeddings (ASIF's image side).
public protocol ImageEmbedder: AnyObject, Sendable {
    func imageEmbeddings(_ images: [RGBImage]) throws -> Tensor
}

/// What a loaded model can do; each is a protocol it conforms to.
public enum Capability: String, CaseIterable, Sendable {
    case imageTextScorer = "image-text scorer", languageModel = "causal language model", captioner, detector
    case textQueriedDetector = "text-queried detector"
    case textEmbedder = "text embedder", imageEmbedder = "image embedder"

    /// The capabilities `model` has, by its conformances.
    public static func of(_ model: AnyObject) -> [Capability] {
        var found: [Capability] = []
        if model is any ImageTextScorer { found.append(.imageTextScorer) }
        if model is any CausalLanguageModel { found.append(.languageModel) }
        if model is any ImageCaptioner { found.append(.captioner) }
        if model is any ObjectDetector { found.append(.detector) }
        if model is any TextQueriedDetector { found.append(.textQueriedDetector) }
        if model is any TextEmbedder { found.append(.textEmbedder) }
        if model is any ImageEmbedder { found.append(.imageEmbedder) }
        return found
    }
}
