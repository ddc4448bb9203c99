import Foundation
import StitchImaging
import StitchModelIO
import StitchTensor
import StitchTestSupport
import StitchTokenizers
import XCTest
@testable import StitchModels

/// Models loaded at each reduced precision this CPU runs (`--precision bf16`, `bf16-weights`, `int8-weights`) against the
/// same models at FP32: close (cosine >= 0.999), yet not equal (the products did run on the narrower values), and the
/// same decisions.
final class ReducedPrecisionTests: XCTestCase {
    /// The reduced precisions this CPU runs.
    var precisions: [Precision] = []

    override func setUpWithError() throws {
        precisions = Precision.allCases.filter { $0 != .fp32 && $0.unavailableReason == nil }
        if precisions.isEmpty { throw XCTSkip(Precision.allCases.compactMap(\.unavailableReason).joined(separator: "; ")) }
    }

    /// The lowest cosine between rows of `a` and `b`, and whether any value differs.
    static func compare(_ a: Tensor, _ b: Tensor) -> (lowest: Float, differs: Bool) {
        XCTAssertEqual(a.shape, b.shape)
        let rows = a.shape[0]
        let lowest = (0..<rows).map { cosine(a.row($0).scalars, b.row($0).scalars) }.min() ?? 1
        return (lowest, a.scalars != b.scalars)
    }

    static func argmaxRows(_ x: Tensor) -> [Int] {
        (0..<x.shape[0]).map { row in
            let values = x.row(row).scalars
            return values.indices.max { values[$0] < values[$1] }!
        }
    }

    func tinyCLIP() throws -> CLIP {
        let folder = Fixtures.url("tiny-clip")
        return try CLIP(config: loadConfig(CLIPConfig.self, from: folder.appendingPathComponent("config.json")), weights: WeightStore(folder: folder),
                        tokenizer: CLIPTokenizer(bpeFile: Fixtures.tokenizerFile("bpe_simple_vocab_16e6.txt.gz").path))
    }

    func testCLIPFeaturesAndZeroShotChoicesAgreeWithFP32() throws {
        let fp32 = try tinyCLIP()
        let photos = try ["astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg"].map { try RGBImage(contentsOf: Fixtures.url("photos/\($0)").path) }
        let texts = ["a photo of an astronaut.", "a photo of a cat.", "a cup of coffee on a table.", "a rocket on the launch pad.", "a dog.", "a red car."]
        let labels = ["astronaut", "cat", "coffee", "rocket", "dog", "car"]
        let choices = { (clip: CLIP) in Self.argmaxRows(try clip.classify(photos, labels: labels)) }
        for precision in precisions {
            let reduced = try Precision.$loading.withValue(precision) { try tinyCLIP() }
            let images = Self.compare(try reduced.imageEmbeddings(photos), try fp32.imageEmbeddings(photos))
            let textFeatures = Self.compare(try reduced.textEmbeddings(texts), try fp32.textEmbeddings(texts))
            print("CLIP at \(precision.rawValue) vs fp32: lowest cosine image \(images.lowest), text \(textFeatures.lowest)")
            XCTAssertGreaterThanOrEqual(images.lowest, 0.999, "\(precision)")
            XCTAssertGreaterThanOrEqual(textFeatures.lowest, 0.999, "\(precision)")
            XCTAssert(images.differs && textFeatures.differs, "\(precision) features equal fp32's: the products did not run on the narrower values")
            XCTAssertEqual(try choices(reduced), try choices(fp32), "\(precision)")
        }
    }

    /// The LM head (tied to the embedding) runs on the narrower values too.
    func testGPT2LogitsAndNextTokensAgreeWithFP32() throws {
        let fp32 = try GPT2(folder: Fixtures.url("tiny-gpt2"))
        let prompt = [464, 3290, 318, 257, 1049, 286]
        let shape = [prompt.count, fp32.vocabularySize]
        var fp32Cache = fp32.makeCache()
        let full = fp32.logits(try fp32.forward([prompt], cache: &fp32Cache)).reshaped(shape)
        for precision in precisions {
            let reduced = try Precision.$loading.withValue(precision) { try GPT2(folder: Fixtures.url("tiny-gpt2")) }
            var cache = reduced.makeCache()
            let low = reduced.logits(try reduced.forward([prompt], cache: &cache)).reshaped(shape)
            let logits = Self.compare(low, full)
            print("GPT-2 at \(precision.rawValue) vs fp32: lowest cosine of logits \(logits.lowest)")
            XCTAssertGreaterThanOrEqual(logits.lowest, 0.999, "\(precision)")
            XCTAssert(logits.differs, "\(precision)")
            XCTAssertEqual(Self.argmaxRows(low), Self.argmaxRows(full), "\(precision)")
        }
    }
}
