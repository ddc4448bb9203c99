import Foundation
import StitchImaging
import StitchModelIO
import StitchTensor
import StitchTestSupport
import StitchTokenizers
import XCTest
@testable import StitchModels

/// CLIP against transformers' CLIPModel on random-weight fixtures (max abs diff <= 1e-4).
final class CLIPParityTests: XCTestCase {
    struct TextGolden: Decodable {
        let texts: [String]
        let input_ids: [[Int]]
    }

    func checkVariant(_ folder: String) throws {
        let clip = try CLIP(folder: Fixtures.url(folder))
        let golden = try Fixtures.tensors("\(folder)/golden.safetensors")
        let text = try JSONDecoder().decode(TextGolden.self, from: Data(contentsOf: Fixtures.url("\(folder)/golden_text.json")))
        let imageFeatures = try clip.imageFeatures(golden["pixels"]!)
        let textFeatures = try clip.textFeatures(text.input_ids)
        assertClose(try clip.visionHiddenStates(golden["pixels"]!), golden["vision_hidden"]!, "\(folder) vision hidden states")
        assertClose(imageFeatures, golden["image_features"]!, "\(folder) image features")
        assertClose(textFeatures, golden["text_features"]!, "\(folder) text features")
        assertClose(clip.logits(imageFeatures: imageFeatures, textFeatures: textFeatures), golden["logits_per_image"]!, "\(folder) logits_per_image")
    }

    /// Patch 32 at 224 pixels, quick GELU, legacy eos_token_id 2 (pooled at the largest id).
    func testTinyCLIPMatchesTransformers() throws { try checkVariant("tiny-clip") }

    /// Patch 14 at 56 pixels, erf GELU, eos_token_id 49407 (pooled at the first end token).
    func testPatch14VariantMatchesTransformers() throws { try checkVariant("tiny-clip-p14") }

    /// Text through Stitch's own tokenizer gives the golden ids and the same features.
    func testTokenizedTextPath() throws {
        let bpe = Fixtures.tokenizerFile("bpe_simple_vocab_16e6.txt.gz")
        let folder = Fixtures.url("tiny-clip")
        let clip = try CLIP(config: loadConfig(CLIPConfig.self, from: folder.appendingPathComponent("config.json")),
                            weights: WeightStore(folder: folder), tokenizer: CLIPTokenizer(bpeFile: bpe.path))
        let text = try JSONDecoder().decode(TextGolden.self, from: Data(contentsOf: Fixtures.url("tiny-clip/golden_text.json")))
        XCTAssertEqual(try clip.tokenize(text.texts), text.input_ids)
        var expected = try Fixtures.tensors("tiny-clip/golden.safetensors")["text_features"]!
        l2NormalizeRows(&expected)
        assertClose(try clip.textEmbeddings(text.texts), expected, "normalised text embeddings")
        let probabilities = try clip.classify([RGBImage(contentsOf: Fixtures.url("images/gradient.png").path)], labels: ["zebra", "dog", "truck"], templates: ["a photo of a {}.", "a picture of a {}."])
        XCTAssertEqual(probabilities.shape, [1, 3])
        XCTAssertEqual(probabilities.scalars.reduce(0, +), 1, accuracy: 1e-5)
        XCTAssertThrowsError(try CLIP(folder: folder).tokenize(["x"])) { XCTAssert("\($0)".contains("vocab.json")) }
    }

    /// The weights Stitch asks for, for the real ViT-B/32, B/16 and L/14 configs, are exactly
    /// transformers' state_dict names and shapes.
    func testRealCheckpointArchitecturesLoad() throws {
        for name in ["clip-vit-base-patch32", "clip-vit-base-patch16", "clip-vit-large-patch14"] {
            let folder = Fixtures.url("clip-configs/\(name)")
            let config = try loadConfig(CLIPConfig.self, from: folder.appendingPathComponent("config.json"))
            let store = WeightStore(recordingFor: name)
            _ = try CLIP(config: config, weights: store, tokenizer: nil)
            let manifest = try Fixtures.json("clip-configs/\(name)/manifest.json") as! [String: [Int]]
            let requested = Dictionary(store.requested.map { ($0.name, $0.shape) }, uniquingKeysWith: { a, _ in a })
            XCTAssertEqual(requested.count, store.requested.count, "\(name): a weight was requested twice")
            XCTAssertEqual(Set(requested.keys), Set(manifest.keys), name)
            for (key, shape) in manifest { XCTAssertEqual(requested[key], shape, "\(name) \(key)") }
            print("\(name): \(manifest.count) tensors, \(manifest.values.map { $0.reduce(1, *) }.reduce(0, +)) parameters")
        }
    }

    func testBadInputsAndCheckpoints() throws {
        let clip = try CLIP(folder: Fixtures.url("tiny-clip"))
        XCTAssertThrowsError(try clip.imageFeatures(Tensor(zeros: [1, 3, 32, 32]))) { XCTAssert("\($0)".contains("[batch, 3, 224, 224]"), "\($0)") }
        XCTAssertThrowsError(try clip.textFeatures([Array(repeating: 1, count: 78)])) { XCTAssert("\($0)".contains("1...77"), "\($0)") }
        XCTAssertThrowsError(try clip.textFeatures([[49406, 60000, 49407]])) { XCTAssert("\($0)".contains("60000"), "\($0)") }
        // The checkpoint of another architecture is refused by name.
        XCTAssertThrowsError(try CLIP(folder: Fixtures.url("tiny-gpt2"))) { error in
            XCTAssert("\(error)".contains("config.json") && "\(error)".contains("GPT2LMHeadModel"), "\(error)")
        }
    }
}
