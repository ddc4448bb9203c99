import Foundation
import StitchImaging
import StitchModelIO
import StitchTensor
import StitchTokenizers

/// transformers' VisionEncoderDecoderConfig with a ViT encoder and a GPT-2 decoder.
public struct VisionEncoderDecoderConfig: Decodable, Sendable {
    public var encoder: ViTConfig
    public var decoder: GPT2Config
    /// The token every caption starts from (GPT-2's end-of-text for nlpconnect/vit-gpt2-image-captioning).
    public var decoderStartTokenID: Int

    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: AnyKey.self)
        for (key, accepted) in [("encoder", "vit"), ("decoder", "gpt2")] {
            let header = try c.decode(ArchitectureHeader.self, forKey: AnyKey(key))
            guard header.modelType == accepted else {
                throw DecodingError.dataCorrupted(.init(codingPath: [AnyKey(key), AnyKey("model_type")],
                                                        debugDescription: "'\(header.modelType ?? "none")' is not supported; expected '\(accepted)'"))
            }
        }
        encoder = try c.decode(ViTConfig.self, forKey: AnyKey("encoder"))
        self.decoder = try c.decode(GPT2Config.self, forKey: AnyKey("decoder"))
        guard self.decoder.addCrossAttention else {
            throw DecodingError.dataCorrupted(.init(codingPath: [AnyKey("decoder"), AnyKey("add_cross_attention")], debugDescription: "the decoder must attend to the encoder"))
        }
        decoderStartTokenID = try c.decodeIfPresent(Int.self, forKey: AnyKey("decoder_start_token_id")) ?? self.decoder.endTokenID
    }
}

/// An image captioner: transformers' VisionEncoderDecoderModel with a ViT encoder and a GPT-2
/// decoder that cross-attends to the encoder's last hidden states (projected by enc_to_dec_proj
/// when their widths differ), e.g. nlpconnect/vit-gpt2-image-captioning.
public final class VisionEncoderDecoder: ImageCaptioner, @unchecked Sendable {
    public let config: VisionEncoderDecoderConfig
    public let encoder: ViT
    public let decoder: GPT2
    let projection: Linear?
    public let preprocessor: ImagePreprocessor

    /// The files a captioner folder must hold.
    public static let files = ModelFiles(required: ["config.json", "vocab.json", "merges.txt"])

    public convenience init(folder: URL) throws {
        let configFile = folder.appendingPathComponent("config.json")
        try ArchitectureHeader.require(["VisionEncoderDecoderModel", "vision-encoder-decoder"], in: configFile)
        let config = try loadConfig(VisionEncoderDecoderConfig.self, from: configFile)
        // Without the file, ViTImageProcessor's defaults.
        let preprocessor = try SquarePreprocessing.preprocessor(in: folder, defaults: ImagePreprocessor(squareSize: config.encoder.imageSize, filter: .bilinear,
                                                                                                        mean: [0.5, 0.5, 0.5], std: [0.5, 0.5, 0.5]))
        let hasVocabulary = FileManager.default.fileExists(atPath: folder.appendingPathComponent("vocab.json").path)
        try self.init(config: config, weights: WeightStore(folder: folder), tokenizer: hasVocabulary ? GPT2Tokenizer(folder: folder) : nil,
                      preprocessor: preprocessor)
    }

    public init(config: VisionEncoderDecoderConfig, weights store: WeightStore, tokenizer: GPT2Tokenizer?, preprocessor: ImagePreprocessor) throws {
        self.config = config
        self.preprocessor = preprocessor
        encoder = ViT(config: config.encoder, weights: store, root: "encoder.")
        decoder = try GPT2(config: config.decoder, weights: store, tokenizer: tokenizer, root: "decoder.", finish: false)
        projection = config.encoder.hiddenSize == config.decoder.hiddenSize ? nil
            : Linear(store, "enc_to_dec_proj", inputs: config.encoder.hiddenSize, outputs: config.decoder.hiddenSize)
        // ViTModel's pooler is saved with the encoder but unused by the decoder.
        try store.finish(ignoreUnused: { $0.hasPrefix("encoder.pooler.") || GPT2.isMaskBuffer($0) })
    }

    /// The encoder's states as the decoder sees them, [1, 1 + patches, decoder width], for pixels [1, 3, size, size].
    public func encoderStates(_ pixels: Tensor) throws -> Tensor {
        let states = try encoder.hiddenStates(pixels)
        return projection.map { $0(states) } ?? states
    }

    /// The decoder conditioned on one image, for any decoding strategy.
    public func decoder(for image: RGBImage) throws -> ImageConditionedDecoder {
        try decoder(pixels: preprocessor(image).reshaped([1, 3, preprocessor.cropSize, preprocessor.cropSize]))
    }

    public func decoder(pixels: Tensor) throws -> ImageConditionedDecoder {
        ImageConditionedDecoder(lm: decoder, memory: try decoder.memory(encoderStates: try encoderStates(pixels)))
    }

    /// The prompt every caption continues.
    public var startTokens: [Int] { [config.decoderStartTokenID] }

    /// The start token and GPT-2's tokens of `prompt`.
    public func startTokens(prompt: String) throws -> [Int] { startTokens + (try decoder.encode(prompt, specialTokens: false)) }
}

/// GPT-2 with its cross-attention memory fixed to one image: a causal language model that the
/// decoding strategies (greedy, sampling, beam, contrastive) run unchanged.
public final class ImageConditionedDecoder: CausalLanguageModel, @unchecked Sendable {
    public let lm: GPT2
    let memory: [CrossMemory]

    init(lm: GPT2, memory: [CrossMemory]) {
        self.lm = lm
        self.memory = memory
    }

    public var vocabularySize: Int { lm.vocabularySize }
    public var endTokenID: Int { lm.endTokenID }
    public var contextLength: Int { lm.contextLength }
    public func makeCache(batch: Int) -> GPT2Cache { lm.makeCache(batch: batch, memory: memory) }
    public func forward(_ tokens: [[Int]], cache: inout GPT2Cache) throws -> Tensor { try lm.forward(tokens, cache: &cache) }
    public func logits(_ hidden: Tensor) -> Tensor { lm.logits(hidden) }
    public func decode(_ ids: [Int]) throws -> String { try lm.decode(ids) }
    public func encode(_ text: String, specialTokens: Bool) throws -> [Int] { try lm.encode(text, specialTokens: specialTokens) }
    public func tokenID(of token: String) -> Int? { lm.tokenID(of: token) }
    public func forwardCandidates(_ tokens: [Int], after cache: GPT2Cache) throws -> (hidden: Tensor, candidates: GPT2Candidates) {
        try lm.forwardCandidates(tokens, after: cache)
    }
    public func keep(_ row: Int, of candidates: GPT2Candidates, in cache: inout GPT2Cache) { lm.keep(row, of: candidates, in: &cache) }
}

/// The preprocessor_config.json of ViTImageProcessor and OwlViTImageProcessor: resize to a square (aspect not kept),
/// rescale, normalise.
struct SquarePreprocessing: Decodable {
    var size: Int?
    var imageMean: [Float]?
    var imageStd: [Float]?
    var resample: Int?

    enum CodingKeys: String, CodingKey { case size, imageMean = "image_mean", imageStd = "image_std", resample }

    init() {}

    init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        // `size` is an int in older files and {"height", "width"} in newer ones.
        if let side = try? c.decodeIfPresent(Int.self, forKey: .size) {
            size = side
        } else if let box = try c.decodeIfPresent([String: Int].self, forKey: .size) {
            guard let height = box["height"], box["width"] == height else {
                throw DecodingError.dataCorrupted(.init(codingPath: [CodingKeys.size], debugDescription: "only square sizes are supported"))
            }
            size = height
        }
        imageMean = try c.decodeIfPresent([Float].self, forKey: .imageMean)
        imageStd = try c.decodeIfPresent([Float].self, forKey: .imageStd)
        resample = try c.decodeIfPresent(Int.self, forKey: .resample)
        if let resample, resample != 2 && resample != 3 {
            throw DecodingError.dataCorrupted(.init(codingPath: [CodingKeys.resample], debugDescription: "only bilinear (2) and bicubic (3) are supported"))
        }
    }

    /// A folder's preprocessor_config.json read as this, its absent fields (or all of them, without the file) the
    /// processor's `defaults`.
    static func preprocessor(in folder: URL, defaults: ImagePreprocessor) throws -> ImagePreprocessor {
        let file = folder.appendingPathComponent("preprocessor_config.json")
        let settings = FileManager.default.fileExists(atPath: file.path) ? try loadConfig(SquarePreprocessing.self, from: file) : SquarePreprocessing()
        return settings.preprocessor(defaults: defaults)
    }

    /// Fields absent from the file take the processor's `defaults` (ViTImageProcessor's: the model's image size, bilinear,
    /// mean and std 0.5).
    func preprocessor(defaults: ImagePreprocessor) -> ImagePreprocessor {
        ImagePreprocessor(squareSize: size ?? defaults.cropSize, filter: resample.map { $0 == 3 ? .bicubic : .bilinear } ?? defaults.filter,
                          mean: imageMean ?? defaults.mean, std: imageStd ?? defaults.std)
    }
}
