import CZlib
import Foundation
import StitchImaging
import StitchModelIO
import StitchTensor
import StitchTestSupport
import XCTest
@testable import StitchModels

/// OWL-ViT against transformers' OwlViTForObjectDetection and OwlViTImageProcessor (Tests/Fixtures/tiny-owlvit, written by
/// make_fixtures.py: a random 96-pixel model with a 6 x 6 patch grid, five text queries, three photos).
final class OWLViTTests: XCTestCase {
    struct Golden: Decodable {
        struct Found: Decodable { let label: Int; let score: Float; let box: [Float] }
        let queries: [String]
        let input_ids: [[Int]]
        let threshold: Float
        let detections: [String: [Found]]
        let published_pixels_crc32: [String: UInt32]
    }

    func golden() throws -> Golden { try JSONDecoder().decode(Golden.self, from: Data(contentsOf: Fixtures.url("tiny-owlvit/golden.json"))) }

    func testTinyOWLViTMatchesTransformers() throws {
        let folder = try Fixtures.temporaryFolder()
        defer { try? FileManager.default.removeItem(at: folder) }
        let model = try OWLViT(folder: Fixtures.modelWithTokenizer("tiny-owlvit", in: folder))
        let g = try golden(), tensors = try Fixtures.tensors("tiny-owlvit/golden.safetensors")
        XCTAssertEqual(try model.clip.tokenize(g.queries), g.input_ids)
        let queries = try model.queryEmbeddings(g.queries)
        var expectedQueries = tensors["text_embeds"]!
        OWLViT.divideRowsByNormPlusEpsilon(&expectedQueries)
        assertClose(queries, expectedQueries, "query embeddings", tolerance: 1e-5)
        for name in g.detections.keys.sorted() {
            let image = try RGBImage(contentsOf: Fixtures.photo(name).path)
            let pixels = model.preprocessor.batch([image])
            assertClose(pixels.reshaped(Array(pixels.shape.dropFirst())), tensors[name + ".pixels"]!, "\(name) pixels", tolerance: 0)
            assertClose(try model.patchFeatures(pixels), tensors[name + ".image_embeds"]!, "\(name) patch features")
            let (boxes, logits) = try model.predict(pixels, queryEmbeddings: queries)
            assertClose(logits, tensors[name + ".logits"]!, "\(name) logits")
            assertClose(boxes, tensors[name + ".boxes"]!, "\(name) boxes")

            let found = try model.detect(image, queries: g.queries, threshold: g.threshold, nmsThreshold: nil)
            let expected = g.detections[name]!
            XCTAssertEqual(found.map(\.classIndex), expected.map(\.label), "\(name): detected labels in patch order")
            XCTAssertEqual(found.map(\.label), expected.map { g.queries[$0.label] })
            var worstScore: Float = 0, worstBox: Float = 0
            for (got, want) in zip(found, expected) {
                worstScore = max(worstScore, abs(got.score - want.score))
                worstBox = max(worstBox, zip(got.box, want.box).map { abs($0 - $1) }.max()!)
            }
            print("\(name): \(found.count) detections as post_process_object_detection's; max score difference \(worstScore), box \(worstBox) px")
            XCTAssertLessThanOrEqual(worstScore, 1e-5)
            XCTAssertLessThanOrEqual(worstBox, 1e-2)
        }
    }

    /// Class-aware NMS, an option: no two kept boxes of one query overlap by more than the threshold, best first.
    func testOptionalNMSKeepsTheBestOfOverlappingBoxes() throws {
        let folder = try Fixtures.temporaryFolder()
        defer { try? FileManager.default.removeItem(at: folder) }
        let model = try OWLViT(folder: Fixtures.modelWithTokenizer("tiny-owlvit", in: folder))
        let g = try golden()
        let image = try RGBImage(contentsOf: Fixtures.photo("coffee.png").path)
        let all = try model.detect(image, queries: g.queries, threshold: g.threshold, nmsThreshold: nil)
        let kept = try model.detect(image, queries: g.queries, threshold: g.threshold, nmsThreshold: 0.01)
        XCTAssertLessThan(kept.count, all.count)
        XCTAssertEqual(kept.map(\.score), kept.map(\.score).sorted(by: >))
        XCTAssert(kept.allSatisfy { k in all.contains { $0 == k } })
        func iou(_ a: [Float], _ b: [Float]) -> Float {
            let w = max(0, min(a[2], b[2]) - max(a[0], b[0]) + 1), h = max(0, min(a[3], b[3]) - max(a[1], b[1]) + 1)
            let area = { (x: [Float]) in (x[2] - x[0] + 1) * (x[3] - x[1] + 1) }
            return w * h / (area(a) + area(b) - w * h)
        }
        for (i, a) in kept.enumerated() {
            for b in kept[(i + 1)...] where a.classIndex == b.classIndex { XCTAssertLessThanOrEqual(iou(a.box, b.box), 0.01) }
        }
    }

    /// OwlViTImageProcessor at the published 768 x 768: the float32 pixels of every test photo are bit-identical (CRC-32).
    func testPublishedPreprocessingIsBitIdentical() throws {
        let g = try golden()
        let preprocessor = ImagePreprocessor(squareSize: 768, filter: .bicubic, mean: ImagePreprocessor.clip.mean, std: ImagePreprocessor.clip.std)
        for (name, expected) in g.published_pixels_crc32.sorted(by: { $0.key < $1.key }) {
            let pixels = preprocessor.batch([try RGBImage(contentsOf: Fixtures.photo(name).path)]).scalars
            let crc = pixels.withUnsafeBytes { UInt32(crc32(0, $0.baseAddress!.assumingMemoryBound(to: UInt8.self), UInt32($0.count))) }
            XCTAssertEqual(crc, expected, "\(name): 768 x 768 pixels differ from OwlViTImageProcessor's")
        }
        XCTAssertEqual(g.published_pixels_crc32.count, 4)
    }

    /// The weights Stitch asks for, for google/owlvit-base-patch32's config, are exactly transformers' state_dict names and shapes.
    func testPublishedArchitectureWeightNames() throws {
        let folder = Fixtures.url("owlvit-configs/owlvit-base-patch32")
        let config = try loadConfig(OWLViTConfig.self, from: folder.appendingPathComponent("config.json"))
        XCTAssertEqual([config.towers.imageSize, config.towers.patchSize, config.towers.maxPositions, config.towers.projectionDim], [768, 32, 16, 512])
        let store = WeightStore(recordingFor: "owlvit-base-patch32")
        _ = try OWLViT(config: config, weights: store, tokenizer: nil, preprocessor: .clip)
        let manifest = try Fixtures.json("owlvit-configs/owlvit-base-patch32/manifest.json") as! [String: [Int]]
        let requested = Dictionary(store.requested.map { ($0.name, $0.shape) }, uniquingKeysWith: { a, _ in a })
        XCTAssertEqual(requested.count, store.requested.count, "a weight was requested twice")
        XCTAssertEqual(Set(requested.keys), Set(manifest.keys))
        for (key, shape) in manifest { XCTAssertEqual(requested[key], shape, key) }
        print("owlvit-base-patch32: \(manifest.count) tensors, \(manifest.values.map { $0.reduce(1, *) }.reduce(0, +)) parameters")
    }

    func testBadInputs() throws {
        let folder = try Fixtures.temporaryFolder()
        defer { try? FileManager.default.removeItem(at: folder) }
        let model = try OWLViT(folder: Fixtures.modelWithTokenizer("tiny-owlvit", in: folder))
        let image = try RGBImage(contentsOf: Fixtures.photo("coffee.png").path)
        XCTAssertThrowsError(try model.detect(image, queries: [], threshold: 0.1, nmsThreshold: nil)) { XCTAssert("\($0)".contains("no text queries"), "\($0)") }
        XCTAssertThrowsError(try OWLViT(folder: Fixtures.url("tiny-owlvit")).queryEmbeddings(["a cat"])) { XCTAssert("\($0)".contains("vocab.json"), "\($0)") }
        // A detector registered by its config: the registry loads it as a text-queried detector.
        let loaded = try ModelRegistry.standard.load(Fixtures.url("tiny-owlvit").path, locator: ModelLocator.fromEnvironment())
        XCTAssertEqual(loaded.type.name, "owlvit")
        XCTAssertEqual(Capability.of(loaded.object), [.textQueriedDetector])
    }
}
