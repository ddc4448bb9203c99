import Foundation
import StitchTestSupport
import XCTest
@testable import StitchTokenizers

/// SentencePiece models trained by make_fixtures.py with the sentencepiece library, on 1,100 strings of prose,
/// code, numbers, whitespace runs, emoji, CJK and random code points: ids and decoded text equal the library's,
/// and the transformers tokenizers built on them (SiglipTokenizer, LlamaTokenizer) give the same ids.
final class SentencePieceTests: XCTestCase {
    struct Golden: Decodable {
        struct Model: Decodable { let ids: [[Int]]; let decoded: [String]?; let pieces: Int? }
        struct Padded: Decodable { let ids: [[Int]]; let padded: [[Int]]? }
        let strings: [String]
        let siglip: Model, llama: Model, symbols: Model
        let siglip_tokenizer: Padded
        let llama_tokenizer_legacy_true: Padded
        let llama_tokenizer_legacy_false: Padded
    }

    static let golden: Golden = try! JSONDecoder().decode(Golden.self, from: Data(contentsOf: Fixtures.url("sentencepiece/golden.json")))

    func model(_ name: String) throws -> SentencePieceModel {
        try SentencePieceModel(file: Fixtures.url("sentencepiece/\(name).model").path)
    }

    /// Compares every string, reporting the first few mismatches with their text.
    func assertMatches<T: Equatable>(_ name: String, _ expected: [T], _ produce: (String) -> T) {
        let strings = Self.golden.strings
        XCTAssertGreaterThanOrEqual(strings.count, 1000)
        var mismatches: [String] = []
        for (text, want) in zip(strings, expected) {
            let got = produce(text)
            if got != want { mismatches.append("\(text.debugDescription): expected \(want) got \(got)") }
        }
        print("\(name): \(strings.count - mismatches.count)/\(strings.count) strings identical")
        XCTAssert(mismatches.isEmpty, "\(name) differs on \(mismatches.count) strings:\n" + mismatches.prefix(8).joined(separator: "\n"))
    }

    func testModelsEncodeAndDecodeAsTheLibraryDoes() throws {
        for (name, expected) in [("siglip", Self.golden.siglip), ("llama", Self.golden.llama), ("symbols", Self.golden.symbols)] {
            let model = try model(name)
            XCTAssertEqual(model.count, expected.pieces)
            assertMatches("\(name) encode", expected.ids) { model.encode($0) }
            var index = 0
            assertMatches("\(name) decode", expected.decoded!) { _ in defer { index += 1 }; return model.decode(expected.ids[index]) }
        }
        XCTAssertEqual(try model("siglip").algorithm, .unigram)
        XCTAssertEqual(try model("llama").algorithm, .bpe)
        XCTAssertTrue(try model("llama").byteFallback)
    }
}
