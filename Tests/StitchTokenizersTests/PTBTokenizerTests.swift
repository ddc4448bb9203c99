import Foundation
import StitchTestSupport
import XCTest
@testable import StitchTokenizers

/// The PTB tokenizer against Stanford CoreNLP 3.4.1's, as pycocoevalcap runs it (Tests/Fixtures/metrics/ptb.json, written
/// by make_fixtures.py): 3,000 adversarial captions joined into one text as the evaluation joins them, and 1,000 strings of
/// characters drawn from the whole Basic Multilingual Plane.
final class PTBTokenizerTests: XCTestCase {
    struct Stream: Decodable { let text: String; let lines: [String] }

    func testLinesEqualCoreNLP() throws {
        let streams = try JSONDecoder().decode([String: Stream].self, from: Data(contentsOf: Fixtures.url("metrics/ptb.json")))
        XCTAssertEqual(Set(streams.keys), ["captions", "ascii", "sigma", "bmp"])
        for (name, stream) in streams.sorted(by: { $0.key < $1.key }) {
            let lines = PTBTokenizer.tokenize(stream.text).map { $0.joined(separator: " ") }
            XCTAssertEqual(lines.count, stream.lines.count, name)
            let differing = zip(lines, stream.lines).enumerated().filter { $0.element.0 != $0.element.1 }
            print("PTB tokenizer vs CoreNLP on \(name): \(stream.lines.count) lines, \(differing.count) differ")
            for (index, (got, expected)) in differing.prefix(15) {
                print("  line \(index): got      \(got.debugDescription)\n           expected \(expected.debugDescription)")
            }
            XCTAssertEqual(differing.count, 0, name)
        }
    }
}
