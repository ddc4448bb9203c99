import Foundation
import StitchTestSupport
import XCTest
@testable import StitchMethods

/// VQA accuracy against the official evaluator on 200 cases (Tests/Fixtures/metrics/vqa.json).
final class VQAAccuracyTests: XCTestCase {
    func testMatchesTheOfficialEvaluator() throws {
        struct Case: Decodable { let question_id: Int; let answers: [String]; let prediction: String; let accuracy: Double; let normalized_prediction: String }
        struct Golden: Decodable { let cases: [Case]; let overall: Double }
        let golden = try JSONDecoder().decode(Golden.self, from: Data(contentsOf: Fixtures.url("metrics/vqa.json")))
        XCTAssertEqual(golden.cases.count, 200)
        var total = 0.0, wrong: [String] = []
        for c in golden.cases {
            let accuracy = VQAAccuracy.score(prediction: c.prediction, answers: c.answers)
            total += accuracy
            // The evaluator reports round(100 * accuracy, 2) per question.
            if (100 * accuracy * 100).rounded() / 100 != c.accuracy || VQAAccuracy.normalize(c.prediction) != c.normalized_prediction {
                wrong.append("\(c.question_id): \(c.prediction) -> \(VQAAccuracy.normalize(c.prediction)) \(accuracy) vs \(c.normalized_prediction) \(c.accuracy)")
            }
        }
        print("VQA accuracy: \(200 - wrong.count)/200 questions equal to the official evaluator; overall \(100 * total / 200) (evaluator \(golden.overall))")
        XCTAssert(wrong.isEmpty, wrong.prefix(5).joined(separator: "\n"))
        XCTAssertEqual((100 * total / 200 * 100).rounded() / 100, golden.overall)
    }
}
