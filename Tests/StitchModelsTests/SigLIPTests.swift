import CZlib
import Foundation
import StitchImaging
import StitchModelIO
import StitchTensor
import StitchTestSupport
import XCTest
@testable import StitchModels

/// SigLIP against transformers' SiglipModel, SiglipTokenizer and SiglipImageProcessor (Tests/Fixtures/tiny-siglip, written by
/// make_fixtures.py: a random 64-pixel model with a peaked logit scale and a bias, six texts, four photos).
final class SigLIPTests: XCTestCase {
    struct Golden: Decodable {
        let texts: [String]
        let input_ids: [[Int]]
        let images: [String]
        let published_pixels_crc32: [String: UInt32]
    }

    func golden() throws -> Golden { try JSONDecoder().decode(Golden.self, from: Data(contentsOf: Fixtures.url("tiny-siglip/golden.json"))) }

    func testTinySigLIPMatchesTransformers() throws {
        let folder = try Fixtures.temporaryFolder()
        defer { try? FileManager.default.removeItem(at: folder) }
        let model = try SigLIP(folder: Fixtures.modelWithTokenizer("tiny-siglip", in: folder))
        let g = try golden(), tensors = try Fixtures.tensors("tiny-siglip/golden.safetensors")
        XCTAssertEqual(try model.tokenize(g.texts), g.input_ids, "padded to max_length as SiglipTokenizer pads; the long text cut with its </s> kept")
        let images = try g.images.map { try RGBImage(contentsOf: Fixtures.photo($0).path) }
        let pixels = model.preprocessor.batch(images)
        assertClose(pixels, tensors["pixels"]!, "pixels", tolerance: 0)
        assertClose(try model.visionHiddenStates(pixels), tensors["vision_hidden"]!, "vision last hidden states")
        let imageFeatures = try model.imageFeatures(of: images), textFeatures = try model.textFeatures(of: g.texts)
        assertClose(imageFeatures, tensors["image_features"]!, "image features")
        assertClose(textFeatures, tensors["text_features"]!, "text features")
        assertClose(model.logits(imageFeatures: imageFeatures, textFeatures: textFeatures), tensors["logits_per_image"]!, "logits per image")
        // Zero-shot probabilities are each pair's sigmoid: they need not sum to one over the labels.
        let probabilities = model.labelProbabilities(imageEmbeddings: try model.imageEmbeddings(images), labelEmbeddings: try model.textEmbeddings(g.texts))
        assertClose(probabilities, tensors["probabilities"]!, "sigmoid probabilities", tolerance: 1e-5)
        XCTAssertEqual(model.labelProbabilityKind, .independent)
        XCTAssertEqual(try TinyModels.clipWithTokenizer().labelProbabilityKind, .exclusive)
        let sums = (0..<images.count).map { probabilities.row($0).scalars.reduce(0, +) }
        XCTAssert(sums.contains { abs($0 - 1) > 0.1 }, "sigmoids, not a softmax: \(sums)")
    }

    /// SiglipImageProcessor at the published 224 x 224: the float32 pixels of every test photo are bit-identical (CRC-32).
    func testPublishedPreprocessingIsBitIdentical() throws {
        let g = try golden()
        let folder = Fixtures.url("siglip-configs/siglip-base-patch16-224")
        let config = try loadConfig(SigLIPConfig.self, from: folder.appendingPathComponent("config.json"))
        let preprocessor = ImagePreprocessor(squareSize: config.towers.imageSize, filter: .bicubic, mean: [0.5, 0.5, 0.5], std: [0.5, 0.5, 0.5])
        for (name, expected) in g.published_pixels_crc32.sorted(by: { $0.key < $1.key }) {
            let pixels = preprocessor.batch([try RGBImage(contentsOf: Fixtures.photo(name).path)]).scalars
            let crc = pixels.withUnsafeBytes { UInt32(crc32(0, $0.baseAddress!.assumingMemoryBound(to: UInt8.self), UInt32($0.count))) }
            XCTAssertEqual(crc, expected, "\(name): 224 x 224 pixels differ from SiglipImageProcessor's")
        }
        XCTAssertEqual(g.published_pixels_crc32.count, 4)
    }

    /// The weights Stitch asks for, for google/siglip-base-patch16-224's config, are exactly transformers' state_dict names and shapes.
    func testPublishedArchitectureWeightNames() throws {
        let folder = Fixtures.url("siglip-configs/siglip-base-patch16-224")
        let config = try loadConfig(SigLIPConfig.self, from: folder.appendingPathComponent("config.json"))
        XCTAssertEqual([config.towers.imageSize, config.towers.patchSize, config.towers.maxPositions, config.towers.vocabularySize], [224, 16, 64, 32000])
        XCTAssertEqual(config.towers.vision.activation, .geluPytorchTanh)
        let store = WeightStore(recordingFor: "siglip-base-patch16-224")
        _ = try SigLIP(config: config, weights: store, tokenizer: nil, preprocessor: .clip)
        let manifest = try Fixtures.json("siglip-configs/siglip-base-patch16-224/manifest.json") as! [String: [Int]]
        let requested = Dictionary(store.requested.map { ($0.name, $0.shape) }, uniquingKeysWith: { a, _ in a })
        XCTAssertEqual(requested.count, store.requested.count, "a weight was requested twice")
        // position_ids are buffers transformers does not save.
        XCTAssertEqual(Set(requested.keys), Set(manifest.keys.filter { !$0.hasSuffix("position_ids") }))
        for (key, shape) in requested { XCTAssertEqual(manifest[key], shape, key) }
        print("siglip-base-patch16-224: \(requested.count) tensors, \(requested.values.map { $0.reduce(1, *) }.reduce(0, +)) parameters")
    }

    func testRegistryAndBadInputs() throws {
        let folder = try Fixtures.temporaryFolder()
        defer { try? FileManager.default.removeItem(at: folder) }
        let path = try Fixtures.modelWithTokenizer("tiny-siglip", in: folder).path
        let loaded = try ModelRegistry.standard.load(path, locator: ModelLocator.fromEnvironment())
        XCTAssertEqual(loaded.type.name, "siglip")
        XCTAssertEqual(Capability.of(loaded.object), [.imageTextScorer, .textEmbedder, .imageEmbedder])
        let model = loaded.object as! SigLIP
        XCTAssertThrowsError(try model.textFeatures([[5, 6], [5]])) { XCTAssert("\($0)".contains("same"), "\($0)") }
        XCTAssertThrowsError(try model.textFeatures([[5, 1_200]])) { XCTAssert("\($0)".contains("SigLIP text"), "\($0)") }
        XCTAssertThrowsError(try model.imageFeatures(Tensor(zeros: [1, 3, 32, 32]))) { XCTAssert("\($0)".contains("[batch, 3, 64, 64]"), "\($0)") }
        XCTAssertThrowsError(try SigLIP(folder: Fixtures.url("tiny-siglip")).textFeatures(of: ["a cat"])) { XCTAssert("\($0)".contains("spiece.model"), "\($0)") }
        // A tower kept without its pooling head (as vision-language models embed it) cannot score.
        var config = try JSONSerialization.jsonObject(with: Data(contentsOf: Fixtures.url("tiny-siglip/config.json"))) as! [String: Any]
        var vision = config["vision_config"] as! [String: Any]
        vision["vision_use_head"] = false
        config["vision_config"] = vision
        try JSONSerialization.data(withJSONObject: config).write(to: URL(fileURLWithPath: path).appendingPathComponent("config.json"))
        XCTAssertThrowsError(try SigLIP(folder: URL(fileURLWithPath: path))) { XCTAssert("\($0)".contains("vision_use_head"), "\($0)") }
    }
}
