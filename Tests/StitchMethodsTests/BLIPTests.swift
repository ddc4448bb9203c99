import CZlib
import Foundation
import StitchImaging
import StitchModelIO
import StitchModels
import StitchTensor
import StitchTestSupport
import StitchTokenizers
import XCTest
@testable import StitchMethods

/// BLIP against transformers (Tests/Fixtures/tiny-blip and tiny-blip-itm, written by make_fixtures.py: random 64-pixel
/// BlipForConditionalGeneration and BlipForImageTextRetrieval on a 4,000-token BERT vocabulary, three photos).
final class BLIPTests: XCTestCase {
    struct Golden: Decodable {
        struct Caption: Decodable { let ids: [Int]; let text: String }
        struct Decoded: Decodable { let ids: [Int]; let text: String }
        let images: [String]
        let prompt: String
        let prompt_ids: [Int]
        let captions: [String: [String: Caption]]
        let decode: [Decoded]
        let published_pixels_crc32: [String: UInt32]
    }

    static let golden = try! JSONDecoder().decode(Golden.self, from: Data(contentsOf: Fixtures.url("tiny-blip/golden.json")))

    func testTinyBLIPMatchesTransformers() throws {
        let model = try BLIPCaptioner(folder: Fixtures.url("tiny-blip"))
        let g = Self.golden, tensors = try Fixtures.tensors("tiny-blip/golden.safetensors")
        // The processor's [CLS] prompt [SEP] becomes [DEC] prompt, as generate() makes it.
        XCTAssertEqual(try model.startTokens(prompt: g.prompt), [model.config.beginID] + g.prompt_ids.dropFirst().dropLast())
        for name in g.images {
            let image = try RGBImage(contentsOf: Fixtures.photo(name).path)
            let pixels = model.preprocessor.batch([image])
            assertClose(pixels.reshaped(Array(pixels.shape.dropFirst())), tensors[name + ".pixels"]!, "\(name) pixels", tolerance: 0)
            assertClose(try model.imageStates(pixels).reshaped(tensors[name + ".image_states"]!.shape), tensors[name + ".image_states"]!, "\(name) image states")
            // Teacher-forced logits of "[DEC] a picture of the sea".
            let decoder = try model.decoder(pixels: pixels)
            let forced = try model.startTokens(prompt: g.prompt + " the sea")
            var cache = decoder.makeCache(batch: 1)
            let logits = decoder.logits(try decoder.forward([forced], cache: &cache))
            assertClose(logits.reshaped(tensors[name + ".logits"]!.shape), tensors[name + ".logits"]!, "\(name) decoder logits")
        }
    }

    /// generate()'s greedy, beam (3) and contrastive captions, without and with the prompt: token-identical, and the text
    /// as BlipProcessor.decode(skip_special_tokens=True) gives it.
    func testCaptionsEqualGenerate() throws {
        let model = try BLIPCaptioner(folder: Fixtures.url("tiny-blip"))
        let g = Self.golden
        let strategies: [String: DecodingOptions] = [
            "greedy": DecodingOptions(strategy: .greedy, maxTokens: 16),
            "beam": DecodingOptions(strategy: .beam, maxTokens: 16, beam: BeamSettings(beams: 3)),
            "contrastive": DecodingOptions(strategy: .contrastive, maxTokens: 12, contrastive: ContrastiveSettings(k: 4, alpha: 0.6)),
        ]
        var compared = 0, ended = 0
        for name in g.images {
            let image = try RGBImage(contentsOf: Fixtures.photo(name).path)
            for (strategy, options) in strategies {
                for prompted in [false, true] {
                    let expected = g.captions[name]![strategy + (prompted ? " prompted" : "")]!
                    let caption = try model.caption(image, prompt: prompted ? g.prompt : nil, options: options)
                    let start = prompted ? try model.startTokens(prompt: g.prompt) : model.startTokens
                    XCTAssertEqual(start + caption.tokens, expected.ids, "\(name) \(strategy) prompted \(prompted)")
                    XCTAssertEqual(caption.text, expected.text, "\(name) \(strategy) prompted \(prompted)")
                    compared += 1
                    if caption.tokens.last == model.config.separatorID { ended += 1 }
                }
            }
        }
        XCTAssertEqual(compared, 18)
        XCTAssert(ended > 0 && ended < compared, "some captions end at [SEP], some at the token limit: \(ended)")
        print("BLIP: \(compared) captions (greedy, beam 3, contrastive; with and without \"\(g.prompt)\") token- and text-identical to generate(); \(ended) end at [SEP]")
    }

    /// BertTokenizerFast.decode(skip_special_tokens=True): random ids (special, added and out-of-word pieces) and real texts.
    func testDecodeEqualsTransformers() throws {
        let tokenizer = try WordPieceTokenizer(folder: Fixtures.url("tiny-blip"))
        for case let (ids, text) in Self.golden.decode.map({ ($0.ids, $0.text) }) { XCTAssertEqual(tokenizer.decode(ids), text, "\(ids)") }
        XCTAssertGreaterThanOrEqual(Self.golden.decode.count, 30)
    }

    /// BlipImageProcessor at the published 384 x 384: the float32 pixels of every test photo are bit-identical (CRC-32).
    func testPublishedPreprocessingIsBitIdentical() throws {
        let config = try loadConfig(BLIPConfig.self, from: Fixtures.url("blip-configs/blip-image-captioning-base/config.json"))
        let preprocessor = ImagePreprocessor(squareSize: config.vision.imageSize, filter: .bicubic, mean: ImagePreprocessor.clip.mean, std: ImagePreprocessor.clip.std)
        for (name, expected) in Self.golden.published_pixels_crc32.sorted(by: { $0.key < $1.key }) {
            let pixels = preprocessor.batch([try RGBImage(contentsOf: Fixtures.photo(name).path)]).scalars
            let crc = pixels.withUnsafeBytes { UInt32(crc32(0, $0.baseAddress!.assumingMemoryBound(to: UInt8.self), UInt32($0.count))) }
            XCTAssertEqual(crc, expected, "\(name): 384 x 384 pixels differ from BlipImageProcessor's")
        }
        XCTAssertEqual(Self.golden.published_pixels_crc32.count, 4)
    }

    /// The weights Stitch asks for, for the published base configs, are exactly transformers' state_dict names and shapes.
    func testPublishedArchitectureWeightNames() throws {
        let folder = Fixtures.url("blip-configs/blip-image-captioning-base")
        let config = try loadConfig(BLIPConfig.self, from: folder.appendingPathComponent("config.json"))
        XCTAssertEqual([config.vision.imageSize, config.vision.patchSize, config.text.vocabularySize, config.text.heads, config.beginID], [384, 16, 30524, 8, 30522])
        let store = WeightStore(recordingFor: "blip-image-captioning-base")
        _ = try BLIPCaptioner(config: config, weights: store, tokenizer: nil, preprocessor: .clip)
        let manifest = try Fixtures.json("blip-configs/blip-image-captioning-base/manifest.json") as! [String: [Int]]
        let requested = Dictionary(store.requested.map { ($0.name, $0.shape) }, uniquingKeysWith: { a, _ in a })
        XCTAssertEqual(requested.count, store.requested.count, "a weight was requested twice")
        // The decoder's bias is predictions.bias under a second name.
        XCTAssertEqual(Set(requested.keys), Set(manifest.keys).subtracting(["text_decoder.cls.predictions.decoder.bias"]))
        for (key, shape) in requested { XCTAssertEqual(manifest[key], shape, key) }
        print("blip-image-captioning-base: \(requested.count) tensors, \(requested.values.map { $0.reduce(1, *) }.reduce(0, +)) parameters")
    }
    /// BlipForImageTextRetrieval: the matching head's logits and probabilities (use_itm_head=True, each text with the image)
    /// and the contrastive cosines (use_itm_head=False); ranking follows the match probabilities.
    func testRetrievalMatchesTransformers() throws {
        struct RetrievalGolden: Decodable { let texts: [String]; let images: [String]; let input_ids: [[Int]] }
        let g = try JSONDecoder().decode(RetrievalGolden.self, from: Data(contentsOf: Fixtures.url("tiny-blip-itm/golden.json")))
        let tensors = try Fixtures.tensors("tiny-blip-itm/golden.safetensors")
        let loaded = try ModelRegistry.standard.load(Fixtures.url("tiny-blip-itm").path, locator: ModelLocator.fromEnvironment())
        XCTAssertEqual(Capability.of(loaded.object), [.imageTextScorer, .textEmbedder, .imageEmbedder])
        let model = try XCTUnwrap(loaded.object as? BLIPRetrieval)
        XCTAssertEqual(try model.tokenize(g.texts), g.input_ids)
        for name in g.images {
            let image = try RGBImage(contentsOf: Fixtures.photo(name).path)
            assertClose(try model.matchLogits(g.texts, for: image), tensors[name + ".itm"]!, "\(name) ITM logits")
            let probabilities = try model.matchProbabilities(g.texts, for: image)
            assertClose(Tensor(shape: [g.texts.count], scalars: probabilities), tensors[name + ".itm_probabilities"]!, "\(name) ITM probabilities", tolerance: 1e-5)
            let cosines = model.logits(imageFeatures: try model.imageFeatures(of: [image]), textFeatures: try model.textFeatures(of: g.texts))
            assertClose(cosines.reshaped([g.texts.count]), tensors[name + ".itc"]!, "\(name) ITC cosines", tolerance: 1e-5)
            XCTAssertEqual(try model.rank(g.texts, for: image).map(\.index), indicesByDescendingValue(tensors[name + ".itm_probabilities"]!.scalars))
        }
        let captioner = try ModelRegistry.standard.load(Fixtures.url("tiny-blip").path, locator: ModelLocator.fromEnvironment())
        XCTAssertEqual(captioner.type.name, "blip")
        XCTAssertEqual(Capability.of(captioner.object), [.captioner])
        // Each head loads only its own architecture.
        XCTAssertThrowsError(try BLIPCaptioner(folder: Fixtures.url("tiny-blip-itm"))) { XCTAssert("\($0)".contains("BlipForImageTextRetrieval"), "\($0)") }
        XCTAssertThrowsError(try BLIPRetrieval(folder: Fixtures.url("tiny-blip"))) { XCTAssert("\($0)".contains("BlipForConditionalGeneration"), "\($0)") }

        let folder = Fixtures.url("blip-configs/blip-itm-base")
        let config = try loadConfig(BLIPConfig.self, from: folder.appendingPathComponent("config.json"))
        let store = WeightStore(recordingFor: "blip-itm-base")
        _ = try BLIPRetrieval(config: config, weights: store, tokenizer: nil, preprocessor: .clip)
        let manifest = try Fixtures.json("blip-configs/blip-itm-base/manifest.json") as! [String: [Int]]
        let requested = Dictionary(store.requested.map { ($0.name, $0.shape) }, uniquingKeysWith: { a, _ in a })
        XCTAssertEqual(requested.count, store.requested.count, "a weight was requested twice")
        XCTAssertEqual(Set(requested.keys), Set(manifest.keys))
        for (key, shape) in requested { XCTAssertEqual(manifest[key], shape, key) }
    }
    /// Config fields out of range are refused by field before anything is allocated.
    func testHostileConfigsAreRefusedByField() throws {
        let folder = try Fixtures.temporaryFolder()
        defer { try? FileManager.default.removeItem(at: folder) }
        let file = folder.appendingPathComponent("config.json")
        for (tower, field, value, message) in [("text_config", "bos_token_id", 4002, "text_config.bos_token_id': 4002 is not in 0...4001"),
                                               ("text_config", "num_attention_heads", 0, "text_config.num_attention_heads': 0 is not in 1...512"),
                                               ("vision_config", "patch_size", 100, "vision_config.patch_size': 100 is not in 1...64"),
                                               ("text_config", "is_decoder", false, "text_config.is_decoder")] as [(String, String, Any, String)] {
            var config = try JSONSerialization.jsonObject(with: Data(contentsOf: Fixtures.url("tiny-blip/config.json"))) as! [String: Any]
            var part = config[tower] as! [String: Any]
            part[field] = value
            config[tower] = part
            try JSONSerialization.data(withJSONObject: config).write(to: file)
            XCTAssertThrowsError(try loadConfig(BLIPConfig.self, from: file), field) { XCTAssert("\($0)".contains(message), "\($0)") }
        }
    }
}
