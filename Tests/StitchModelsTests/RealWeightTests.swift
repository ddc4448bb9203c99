import Foundation
import StitchImaging
import StitchTensor
import StitchTestSupport
import XCTest
@testable import StitchModels

/// The real all-MiniLM-L6-v2 and EfficientNet-Lite0 weights (Scripts/fetch-test-models; EfficientNet's is the legacy-format .pth its package ships).
final class RealWeightTests: XCTestCase {
    /// The golden sentences' embeddings by the real MiniLM loaded at `precision`, and sentence-transformers' (FP32).
    func miniLMEmbeddings(at precision: Precision) throws -> (got: Tensor, expected: Tensor) {
        let folder = try Fixtures.realModel("all-MiniLM-L6-v2")
        let encoder = try Precision.$loading.withValue(precision) { try SentenceEncoder(folder: folder) }
        let sentences = (try Fixtures.json("minilm/golden.json") as! [String: [String]])["sentences"]!
        XCTAssertEqual(sentences.count, 50)
        var got: [Tensor] = []
        for start in stride(from: 0, to: sentences.count, by: 16) {
            got.append(try encoder.encode(Array(sentences[start..<min(start + 16, sentences.count)])))
        }
        let embeddings = concatenate(got, axis: 0)
        XCTAssertEqual(embeddings.shape, [50, 384])
        return (embeddings, try Fixtures.tensors("minilm/golden.safetensors")["embeddings"]!)
    }

    func lowestRowCosine(_ a: Tensor, _ b: Tensor) -> Float {
        (0..<a.shape[0]).map { cosine(a.row($0).scalars, b.row($0).scalars) }.min() ?? 1
    }

    func testMiniLMMatchesSentenceTransformers() throws {
        let (embeddings, expected) = try miniLMEmbeddings(at: .fp32)
        let lowest = lowestRowCosine(embeddings, expected)
        print("MiniLM: lowest cosine to sentence-transformers over 50 sentences \(lowest); max abs difference \(maxAbsoluteDifference(embeddings.scalars, expected.scalars))")
        XCTAssertGreaterThanOrEqual(lowest, 0.9999)
    }

    /// At bf16 the real weights' embeddings stay within cosine 0.999 of FP32's, and each sentence's nearest other
    /// sentence is the same.
    func testMiniLMAtBF16AgreesWithFP32() throws {
        if let reason = Precision.bf16.unavailableReason { throw XCTSkip(reason) }
        let (embeddings, expected) = try miniLMEmbeddings(at: .bf16)
        let lowest = lowestRowCosine(embeddings, expected)
        func nearest(_ x: Tensor) -> [Int] {
            (0..<x.shape[0]).map { i in (0..<x.shape[0]).filter { $0 != i }.max { cosine(x.row(i).scalars, x.row($0).scalars) < cosine(x.row(i).scalars, x.row($1).scalars) }! }
        }
        print("MiniLM at bf16: lowest cosine to sentence-transformers' FP32 over 50 sentences \(lowest)")
        XCTAssertGreaterThanOrEqual(lowest, 0.999)
        XCTAssertNotEqual(embeddings.scalars, expected.scalars)
        XCTAssertEqual(nearest(embeddings), nearest(expected))
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
