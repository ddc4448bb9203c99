import Foundation
import StitchImaging
import StitchTensor
import StitchTestSupport
import XCTest
@testable import StitchModels

/// The real all-MiniLM-L6-v2 and EfficientNet-Lite0 weights (Scripts/fetch-test-models; EfficientNet's is the legacy-format .pth its package ships).
final class RealWeightTests: XCTestCase {
    func testMiniLMMatchesSentenceTransformers() throws {
        let folder = try Fixtures.realModel("all-MiniLM-L6-v2")
        let encoder = try SentenceEncoder(folder: folder)
        let sentences = (try Fixtures.json("minilm/golden.json") as! [String: [String]])["sentences"]!
        XCTAssertEqual(sentences.count, 50)
        let expected = try Fixtures.tensors("minilm/golden.safetensors")["embeddings"]!
        var got: [Tensor] = []
        for start in stride(from: 0, to: sentences.count, by: 16) {
            got.append(try encoder.encode(Array(sentences[start..<min(start + 16, sentences.count)])))
        }
        let embeddings = concatenate(got, axis: 0)
        XCTAssertEqual(embeddings.shape, [50, 384])
        var lowest: Float = 1
        for i in 0..<50 {
            let (a, b) = (embeddings.row(i).scalars, expected.row(i).scalars)
            lowest = min(lowest, cosine(a, b))
        }
        print("MiniLM: lowest cosine to sentence-transformers over 50 sentences \(lowest); max abs difference \(maxAbsoluteDifference(embeddings.scalars, expected.scalars))")
        XCTAssertGreaterThanOrEqual(lowest, 0.9999)
    }

    func cosine(_ a: [Float], _ b: [Float]) -> Float {
        var (dot, aa, bb): (Float, Float, Float) = (0, 0, 0)
        for (x, y) in zip(a, b) { dot += x * y; aa += x * x; bb += y * y }
        return dot / (aa.squareRoot() * bb.squareRoot())
    }

    func testEfficientNetLite0MatchesPyTorch() throws {
        let folder = try Fixtures.realModel("efficientnet-lite0")
        let model = try EfficientNetLite(folder: folder)
        let golden = try Fixtures.tensors("efficientnet/golden.safetensors")
        for name in ["chelsea.png", "coffee.png", "astronaut.png", "rocket.jpg"] {
            let path = Fixtures.photo(name)
            let features = try model.features(of: try RGBImage(contentsOf: path.path))
            let logits = model.logits(features: features).scalars
            let expected = golden["\(name).logits"]!.scalars
            let featureDifference = maxRelativeDifference(features.scalars, golden["\(name).features"]!.scalars)
            let logitDifference = maxRelativeDifference(logits, expected)
            let top = logits.indices.max { logits[$0] < logits[$1] }!
            let expectedTop = expected.indices.max { expected[$0] < expected[$1] }!
            print("EfficientNet-Lite0 \(name): top-1 \(top) (PyTorch \(expectedTop)); features max rel difference \(featureDifference), logits \(logitDifference)")
            XCTAssertEqual(top, expectedTop)
            XCTAssertLessThanOrEqual(max(featureDifference, logitDifference), 1e-3)
            if name == "chelsea.png" { XCTAssertEqual(top, 285, "ImageNet class 285 is Egyptian cat") }
        }
    }
}
