import Foundation
import StitchModelIO
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
}
