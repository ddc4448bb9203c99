import Foundation
import StitchImaging
import StitchModelIO
import StitchModels
import StitchTensor
import StitchTestSupport
import XCTest
@testable import StitchMethods

/// ASIF against a numpy implementation of the published formulas (make_fixtures.py) on random embeddings.
final class ASIFParityTests: XCTestCase {
    func unit(_ tensor: Tensor) -> Tensor {
        var copy = tensor
        l2NormalizeRows(&copy)
        return copy
    }

    func testScoresAndRankingsEqualNumpy() throws {
        let golden = try Fixtures.tensors("asif/golden.safetensors")
        let rankings = try Fixtures.json("asif/rankings.json") as! [String: [String: [[Int]]]]
        let imageAnchors = AnchorMatrix(tensor: unit(golden["anchors_image"]!)), textAnchors = AnchorMatrix(tensor: unit(golden["anchors_text"]!))
        for (k, p) in [(40, 8), (400, 1), (5, 3)] {
            let settings = ASIFSettings(k: k, p: Float(p))
            // Small blocks, so that the running top-k crosses block boundaries.
            let images = relativeRepresentations(unit(golden["queries_image"]!), anchors: imageAnchors, settings: settings, blockSize: 64)
            let texts = relativeRepresentations(unit(golden["queries_text"]!), anchors: textAnchors, settings: settings, blockSize: 64)
            XCTAssert(images.allSatisfy { $0.indices.count == k })
            let scores = relativeScores(images, texts, anchorCount: 400)
            let difference = maxAbsoluteDifference(scores.scalars, golden["scores_k\(k)_p\(p)"]!.scalars)
            print("ASIF k=\(k) p=\(p): max score difference \(difference)")
            XCTAssertLessThanOrEqual(difference, 1e-5)
            XCTAssertEqual(StitchMethods.rankings(scores), rankings["k\(k)_p\(p)"]!["image_to_text"]!)
            XCTAssertEqual(StitchMethods.rankings(transposed(scores, 0, 1)), rankings["k\(k)_p\(p)"]!["text_to_image"]!)
        }
    }

    /// The running top-k keeps exactly the k best of everything offered, block by block, equal values going to the
    /// lower index, in anchor order: against a full sort, on values drawn from a few levels so that ties are everywhere.
    func testRunningTopKKeepsTheBestWithTiesToTheLowerIndex() {
        var seed: UInt64 = 7
        for (count, k, block) in [(5000, 40, 64), (3000, 800, 1000), (100, 1, 7), (64, 64, 10)] {
            let values = (0..<count).map { _ -> Float in
                seed = seed &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
                return Float((seed >> 33) % 13)
            }
            var kept = KeptSimilarities(capacity: 2 * k)
            values.withUnsafeBufferPointer { buffer in
                for start in stride(from: 0, to: count, by: block) {
                    kept.offer(buffer.baseAddress! + start, count: min(block, count - start), firstIndex: start, keep: k)
                }
            }
            let expected = values.indices.sorted { values[$0] > values[$1] || (values[$0] == values[$1] && $0 < $1) }.prefix(k)
            XCTAssertEqual(kept.best(k).map { Int($0.index) }, expected.sorted(), "\(count) values, k \(k), blocks of \(block) (in anchor order)")
        }
    }
}

/// ASIF on the real EfficientNet-Lite0 and all-MiniLM-L6-v2 weights (Scripts/fetch-test-models): anchors from
/// the photos there plus synthetic images, queried with held-out near-duplicates.
final class ASIFRealWeightTests: XCTestCase {
    /// Solid colours and simple shapes drawn in code, each with a caption.
    static func synthetic() -> [(RGBImage, String)] {
        func image(_ paint: (Int, Int) -> (UInt8, UInt8, UInt8)) -> RGBImage {
            let size = 160
            var pixels = [UInt8](repeating: 0, count: size * size * 3)
            for y in 0..<size {
                for x in 0..<size {
                    let (r, g, b) = paint(x, y)
                    pixels[(y * size + x) * 3] = r
                    pixels[(y * size + x) * 3 + 1] = g
                    pixels[(y * size + x) * 3 + 2] = b
                }
            }
            return RGBImage(width: size, height: size, pixels: pixels)
        }
        return [
            (image { _, _ in (220, 30, 30) }, "a plain red square"),
            (image { _, _ in (30, 60, 220) }, "a plain blue square"),
            (image { x, y in (x - 80) * (x - 80) + (y - 80) * (y - 80) < 2500 ? (250, 220, 0) : (255, 255, 255) }, "a yellow circle on white"),
            (image { x, _ in x / 20 % 2 == 0 ? (0, 0, 0) : (255, 255, 255) }, "black and white vertical stripes"),
            (image { x, y in (x / 20 + y / 20) % 2 == 0 ? (20, 140, 40) : (240, 240, 240) }, "a green and white checkerboard"),
        ]
    }

    /// A crop of the centre 80% and a mirror image: the held-out near-duplicates.
    static func nearDuplicates(_ image: RGBImage) -> [RGBImage] {
        let (w, h) = (image.width, image.height)
        let (x0, y0, cw, ch) = (w / 10, h / 10, w * 8 / 10, h * 8 / 10)
        var crop = [UInt8](), mirror = [UInt8](repeating: 0, count: image.pixels.count)
        for y in y0..<y0 + ch { crop += image.pixels[(y * w + x0) * 3..<(y * w + x0 + cw) * 3] }
        for y in 0..<h {
            for x in 0..<w {
                for c in 0..<3 { mirror[(y * w + x) * 3 + c] = image.pixels[(y * w + (w - 1 - x)) * 3 + c] }
            }
        }
        return [RGBImage(width: cw, height: ch, pixels: crop), RGBImage(width: w, height: h, pixels: mirror)]
    }

    func testNearDuplicatesRetrieveTheirOwnCaption() throws {
        let efficientnet = try Fixtures.realModel("efficientnet-lite0")
        let minilm = try Fixtures.realModel("all-MiniLM-L6-v2")
        let zebra = Fixtures.photo("chelsea.png")
        let street = Fixtures.photo("coffee.png")
        let folder = try Fixtures.temporaryFolder()
        defer { try? FileManager.default.removeItem(at: folder) }
        var anchors = [(try RGBImage(contentsOf: zebra.path), "a zebra standing in the grass"),
                       (try RGBImage(contentsOf: street.path), "a dog next to a bicycle and a truck")] + Self.synthetic()
        var lines: [String] = []
        for (number, (image, caption)) in anchors.enumerated() {
            let path = folder.appendingPathComponent("anchor\(number).jpg").path
            try image.writeJPEG(to: path, quality: 95)
            anchors[number].0 = try RGBImage(contentsOf: path)
            lines.append(String(decoding: try JSONSerialization.data(withJSONObject: ["image": "anchor\(number).jpg", "caption": caption]), as: UTF8.self))
        }
        let jsonl = folder.appendingPathComponent("anchors.jsonl").path
        try (lines.joined(separator: "\n") + "\n").write(toFile: jsonl, atomically: true, encoding: .utf8)
        let locator = ModelLocator.fromEnvironment()
        let (image, text) = (try ModelRegistry.standard.imageEncoder(efficientnet.path, locator: locator),
                              try ModelRegistry.standard.textEncoder(minilm.path, locator: locator))
        var builder = AnchorIndexBuilder(image: image, text: text)
        builder.batchSize = 3
        builder.dtype = .f16
        let output = folder.appendingPathComponent("anchors.asif").path
        try builder.build(anchors: jsonl, output: output)
        let index = try AnchorIndex(path: output)
        XCTAssertEqual(index.count, anchors.count)
        XCTAssertEqual(index.captions, anchors.map(\.1))
        try index.requireEncoders(image: image.identity, text: text.identity)

        // Captioning by retrieval from the index's own captions, with every anchor as a neighbour.
        let settings = ASIFSettings(k: anchors.count, p: 8)
        let captions = try text.embed(index.captions)
        for (number, (anchorImage, caption)) in anchors.enumerated() {
            let queries = try image.embed(Self.nearDuplicates(anchorImage))
            for (variant, ranked) in rankings(try index.scores(images: queries, texts: captions, settings: settings)).enumerated() {
                XCTAssertEqual(index.captions[ranked[0]], caption, "anchor \(number) variant \(variant)")
            }
        }
    }
}

/// Truncated, corrupted or mismatched index files give errors that name the file and the problem.
final class AnchorIndexFileTests: XCTestCase {
    func testBadIndexFiles() throws {
        let folder = try Fixtures.temporaryFolder()
        defer { try? FileManager.default.removeItem(at: folder) }
        let path = folder.appendingPathComponent("index.asif").path
        let images = Tensor(shape: [3, 4], scalars: (0..<12).map { Float($0 % 5) + 1 }), texts = Tensor(shape: [3, 2], scalars: [1, 0, 0, 1, 1, 1])
        try AnchorIndex.write(images: images, texts: texts, captions: ["a", "b \"quoted\"\nline", "c"], imageEncoder: "img:x:1", textEncoder: "txt:y:2", to: path)
        let index = try AnchorIndex(path: path)
        XCTAssertEqual(index.captions, ["a", "b \"quoted\"\nline", "c"])
        XCTAssertEqual(index.images.dimension, 4)
        XCTAssertThrowsError(try index.requireEncoders(image: "img:other:1", text: nil)) { XCTAssert("\($0)".contains("img:x:1") && "\($0)".contains(path)) }
        // Queries of the wrong width are an error, not a crash.
        XCTAssertThrowsError(try index.scores(images: Tensor(zeros: [1, 5]), texts: texts, settings: ASIFSettings())) {
            XCTAssert("\($0)".contains("image queries are [1, 5] but its image anchors are 4-d"), "\($0)")
        }

        func expectError(_ bytes: Data, _ message: String) throws {
            let bad = folder.appendingPathComponent("bad.asif").path
            try bytes.write(to: URL(fileURLWithPath: bad))
            XCTAssertThrowsError(try AnchorIndex(path: bad)) { error in
                XCTAssert("\(error)".contains(bad) && "\(error)".contains(message), "expected '\(message)': \(error)")
            }
        }
        let original = try Data(contentsOf: URL(fileURLWithPath: path))
        try expectError(original.prefix(original.count / 2), "truncated")
        var flipped = original
        flipped[flipped.count - 3] ^= 0xFF
        try expectError(flipped, "checksum mismatch")
        try writeSafetensors(["image_anchors": images], to: folder.appendingPathComponent("plain.safetensors").path)
        try expectError(try Data(contentsOf: folder.appendingPathComponent("plain.safetensors")), "stitch-asif")

        // Merging needs the same encoders; merged shards hold every anchor in order.
        let other = folder.appendingPathComponent("other.asif").path
        try AnchorIndex.write(images: images, texts: texts, captions: ["d", "e", "f"], imageEncoder: "img:x:1", textEncoder: "txt:y:2", dtype: .f16, to: other)
        let merged = folder.appendingPathComponent("merged.asif").path
        try AnchorIndex.merge([path, other], to: merged)
        XCTAssertEqual(try AnchorIndex(path: merged).captions, ["a", "b \"quoted\"\nline", "c", "d", "e", "f"])
        let foreign = folder.appendingPathComponent("foreign.asif").path
        try AnchorIndex.write(images: images, texts: texts, captions: ["g", "h", "i"], imageEncoder: "img:z:9", textEncoder: "txt:y:2", to: foreign)
        XCTAssertThrowsError(try AnchorIndex.merge([path, foreign], to: merged)) { XCTAssert("\($0)".contains("different encoders")) }
    }
}

/// Building with stand-in encoders (deterministic, no weights): resume after an interruption,
/// and shards that merge into the unsharded index.
final class AnchorBuilderTests: XCTestCase {
    struct Interrupted: Error {}

    func encoders() -> (AnchorEncoder<RGBImage>, AnchorEncoder<String>) {
        let image = AnchorEncoder<RGBImage>(identity: "mean-colour") { images in
            var rows = Tensor(shape: [images.count, 3], scalars: images.flatMap { image in
                (0..<3).map { c in Float(stride(from: c, to: image.pixels.count, by: 3).reduce(0) { $0 + Int(image.pixels[$1]) }) + 1 }
            })
            l2NormalizeRows(&rows)
            return rows
        }
        let text = AnchorEncoder<String>(identity: "length-and-vowels") { texts in
            var rows = Tensor(shape: [texts.count, 2], scalars: texts.flatMap { [Float($0.count), Float($0.filter { "aeiou".contains($0) }.count) + 1] })
            l2NormalizeRows(&rows)
            return rows
        }
        return (image, text)
    }

    func testResumeAndShards() throws {
        let folder = try Fixtures.temporaryFolder()
        defer { try? FileManager.default.removeItem(at: folder) }
        var lines: [String] = []
        for number in 0..<10 {
            let value = UInt8(number * 25)
            try RGBImage(width: 8, height: 8, pixels: (0..<192).map { UInt8(($0 % 3) * 40) &+ value }).writeJPEG(to: folder.appendingPathComponent("i\(number).jpg").path)
            lines.append(#"{"image": "i\#(number).jpg", "caption": "caption number \#(number)"}"#)
        }
        let anchors = folder.appendingPathComponent("anchors.jsonl").path
        try lines.joined(separator: "\n").write(toFile: anchors, atomically: true, encoding: .utf8)
        let (image, text) = encoders()
        var builder = AnchorIndexBuilder(image: image, text: text)
        builder.batchSize = 3
        let whole = folder.appendingPathComponent("whole.asif").path
        try builder.build(anchors: anchors, output: whole)

        // Interrupted after two batches, then resumed: the same index, and no partial folder left.
        let resumed = folder.appendingPathComponent("resumed.asif").path
        XCTAssertThrowsError(try builder.build(anchors: anchors, output: resumed) { done, _ in if done >= 6 { throw Interrupted() } })
        XCTAssert(FileManager.default.fileExists(atPath: resumed + ".partial"))
        var starts: [Int] = []
        try builder.build(anchors: anchors, output: resumed) { done, _ in starts.append(done) }
        XCTAssertEqual(starts.first, 6, "resumed after the two finished batches")
        XCTAssertFalse(FileManager.default.fileExists(atPath: resumed + ".partial"))
        let (a, b) = (try AnchorIndex(path: whole), try AnchorIndex(path: resumed))
        XCTAssertEqual(a.captions, b.captions)
        XCTAssertEqual(a.images.tensor().scalars, b.images.tensor().scalars)

        // Three shards merged hold the same anchors.
        var parts: [String] = []
        for shard in 0..<3 {
            builder.shard = (shard, 3)
            parts.append(folder.appendingPathComponent("part\(shard).asif").path)
            try builder.build(anchors: anchors, output: parts.last!)
        }
        let merged = folder.appendingPathComponent("merged.asif").path
        try AnchorIndex.merge(parts, to: merged)
        let m = try AnchorIndex(path: merged)
        XCTAssertEqual(Set(m.captions), Set(a.captions))
        XCTAssertEqual(m.count, 10)
    }
}
