import Foundation
import StitchImaging
import StitchModelIO
import StitchTensor
import StitchTestSupport
import StitchTokenizers
import XCTest
@testable import StitchModels

/// Models loaded at `--precision bf16` against the same models at FP32: close (cosine >= 0.999), yet not equal (the
/// products did run in bfloat16), and the same decisions.
final class ReducedPrecisionTests: XCTestCase {
    override func setUpWithError() throws {
        if let reason = Precision.bf16.unavailableReason { throw XCTSkip(reason) }
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
        let bf16 = try Precision.$loading.withValue(.bf16) { try tinyCLIP() }
        let photos = try ["astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg"].map { try RGBImage(contentsOf: Fixtures.url("photos/\($0)").path) }
        let texts = ["a photo of an astronaut.", "a photo of a cat.", "a cup of coffee on a table.", "a rocket on the launch pad.", "a dog.", "a red car."]
        let images = Self.compare(try bf16.imageEmbeddings(photos), try fp32.imageEmbeddings(photos))
        let textFeatures = Self.compare(try bf16.textEmbeddings(texts), try fp32.textEmbeddings(texts))
        print("CLIP at bf16 vs fp32: lowest cosine image \(images.lowest), text \(textFeatures.lowest)")
        XCTAssertGreaterThanOrEqual(images.lowest, 0.999)
        XCTAssertGreaterThanOrEqual(textFeatures.lowest, 0.999)
        XCTAssert(images.differs && textFeatures.differs, "bf16 features equal fp32's: the products did not run in bfloat16")
        let labels = ["astronaut", "cat", "coffee", "rocket", "dog", "car"]
        let choices = { (clip: CLIP) in Self.argmaxRows(try clip.classify(photos, labels: labels)) }
        XCTAssertEqual(try choices(bf16), try choices(fp32))
    }

    /// The LM head (tied to the embedding) runs in bfloat16 too.
    func testGPT2LogitsAndNextTokensAgreeWithFP32() throws {
        let fp32 = try GPT2(folder: Fixtures.url("tiny-gpt2"))
        let bf16 = try Precision.$loading.withValue(.bf16) { try GPT2(folder: Fixtures.url("tiny-gpt2")) }
        let prompt = [464, 3290, 318, 257, 1049, 286]
        var (fp32Cache, bf16Cache) = (fp32.makeCache(), bf16.makeCache())
        let shape = [prompt.count, fp32.vocabularySize]
        let (low, full) = (bf16.logits(try bf16.forward([prompt], cache: &bf16Cache)).reshaped(shape),
                           fp32.logits(try fp32.forward([prompt], cache: &fp32Cache)).reshaped(shape))
        let logits = Self.compare(low, full)
        print("GPT-2 at bf16 vs fp32: lowest cosine of logits \(logits.lowest)")
        XCTAssertGreaterThanOrEqual(logits.lowest, 0.999)
        XCTAssert(logits.differs)
        XCTAssertEqual(Self.argmaxRows(low), Self.argmaxRows(full))
    }
}
