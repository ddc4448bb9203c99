import Foundation
import StitchTestSupport
import XCTest
@testable import StitchTokenizers
import StitchTensor

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

    func assertMatches<T: Equatable>(_ name: String, _ expected: [T], _ produce: (String) -> T) {
        assertEveryInputMatches(name, inputs: Self.golden.strings, expected: expected, minimumCount: 1000, produce)
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

    func testSiglipTokenizerMatchesTransformers() throws {
        let tokenizer = try SentencePieceTokenizer(modelFile: Fixtures.url("sentencepiece/siglip.model").path, style: .siglip)
        assertMatches("SiglipTokenizer", Self.golden.siglip_tokenizer.ids) { tokenizer.encode($0) }
        let padded = Self.golden.siglip_tokenizer.padded!
        XCTAssertEqual(padded.count, 200)
        for (text, want) in zip(Self.golden.strings, padded) {
            XCTAssertEqual(tokenizer.padded(text), want, text.debugDescription)
        }
        XCTAssert(padded.contains { $0.last == 1 && $0.contains(1) }, "some texts are padded")
    }

    func testLlamaTokenizerMatchesTransformersLegacyAndNot() throws {
        for (legacy, expected) in [(true, Self.golden.llama_tokenizer_legacy_true), (false, Self.golden.llama_tokenizer_legacy_false)] {
            let tokenizer = try SentencePieceTokenizer(modelFile: Fixtures.url("sentencepiece/llama.model").path, style: .llama(legacy: legacy))
            assertMatches("LlamaTokenizer legacy=\(legacy)", expected.ids) { tokenizer.encode($0) }
        }
    }

    /// A folder as google/siglip-* and Llama-2 repositories ship it: the .model file with tokenizer_config.json
    /// and special_tokens_map.json choosing the tokenizer and its settings.
    func testFoldersPickTheirTokenizerFromTheConfig() throws {
        let folder = try Fixtures.temporaryFolder()
        defer { try? FileManager.default.removeItem(at: folder) }
        let siglip = folder.appendingPathComponent("siglip"), llama = folder.appendingPathComponent("llama")
        for (target, model, config) in [(siglip, "siglip", #"{"tokenizer_class": "SiglipTokenizer", "model_max_length": 64, "do_lower_case": true}"#),
                                        (llama, "llama", #"{"tokenizer_class": "LlamaTokenizer", "legacy": false, "add_bos_token": true}"#)] {
            try FileManager.default.createDirectory(at: target, withIntermediateDirectories: true)
            try FileManager.default.copyItem(at: Fixtures.url("sentencepiece/\(model).model"),
                                             to: target.appendingPathComponent(model == "siglip" ? "spiece.model" : "tokenizer.model"))
            try Data(config.utf8).write(to: target.appendingPathComponent("tokenizer_config.json"))
        }
        try Data(#"{"eos_token": {"content": "</s>"}, "pad_token": "</s>", "unk_token": "<unk>"}"#.utf8).write(to: siglip.appendingPathComponent("special_tokens_map.json"))
        let fromSiglip = try SentencePieceTokenizer(folder: siglip)
        XCTAssertEqual(fromSiglip.style, .siglip)
        XCTAssertEqual(fromSiglip.maximumLength, 64)
        let fromLlama = try SentencePieceTokenizer(folder: llama)
        XCTAssertEqual(fromLlama.style, .llama(legacy: false))
        for (index, text) in Self.golden.strings.enumerated().prefix(100) {
            XCTAssertEqual(fromSiglip.encode(text), Self.golden.siglip_tokenizer.ids[index])
            XCTAssertEqual(fromLlama.encode(text), Self.golden.llama_tokenizer_legacy_false.ids[index])
        }
        XCTAssertEqual(fromLlama.decode(fromLlama.encode("A dog on a bike.")), "A dog on a bike.")
        XCTAssertThrowsError(try SentencePieceTokenizer(folder: folder)) { XCTAssert("\($0)".contains("no spiece.model or tokenizer.model"), "\($0)") }
    }

    /// Broken model files are errors naming the file and the problem; damaged bytes never crash.
    func testMalformedModelFilesAreNamedErrors() throws {
        let folder = try Fixtures.temporaryFolder()
        defer { try? FileManager.default.removeItem(at: folder) }
        let path = folder.appendingPathComponent("bad.model").path
        func load(_ data: Data) -> String? {
            try? data.write(to: URL(fileURLWithPath: path))
            do { _ = try SentencePieceModel(file: path); return nil } catch { return "\(error)" }
        }
        /// A protobuf length-delimited field.
        func field(_ number: Int, _ bytes: [UInt8]) -> [UInt8] { [UInt8(number << 3 | 2), UInt8(bytes.count)] + bytes }
        func piece(_ text: String, type: UInt8) -> [UInt8] { field(1, field(1, Array(text.utf8)) + [0x18, type]) }
        let cases: [(Data, String)] = [
            (Data(), "no pieces"),
            (Data([0x0a, 0xff, 0xff, 0x7f]), "not a readable model file"),
            (Data(piece("a", type: 1)), "no unknown (<unk>) piece"),
            (Data(piece("<unk>", type: 2) + piece("<unk>", type: 2)), "defined twice"),
            (Data(piece("<unk>", type: 2) + piece("x", type: 9)), "unknown type 9"),
            (Data(piece("<unk>", type: 2) + piece("<0x41>", type: 6)), "byte piece 1 although byte_fallback is off"),
            (Data(piece("<unk>", type: 2) + field(2, [0x18, 0x03])), "model type 3 (word or char) is not supported"),
            (Data(piece("<unk>", type: 2) + field(2, [0x98, 0x02, 0x01])), "not all 256 byte pieces"),
            // Found by Scripts/fuzz: "-B" parsed as hex (-11) indexed the byte table out of range.
            (Data(piece("<unk>", type: 2) + piece("<0x-B>", type: 6) + field(2, [0x98, 0x02, 0x01])), "byte piece '<0x-B>' is not <0xXX>"),
            (Data(piece("<unk>", type: 2) + piece("<0x0a>", type: 6) + field(2, [0x98, 0x02, 0x01])), "byte piece '<0x0a>' is not <0xXX>"),
            (Data(piece("<unk>", type: 2) + field(3, field(2, [0xff, 0xff, 0, 0, 1, 2]))), "character map's trie size"),
        ]
        for (data, message) in cases {
            let error = load(data)
            XCTAssert(error?.hasPrefix(path) == true && error?.contains(message) == true, "\(message): \(error ?? "loaded")")
        }
        XCTAssertThrowsError(try SentencePieceModel(file: folder.appendingPathComponent("absent.model").path)) { XCTAssert("\($0)".contains("no such file")) }

        // Damaged copies of a real model: an error, or a model that encodes and decodes; never a crash.
        var generator = SeededGenerator(seed: 11)
        let original = try Data(contentsOf: Fixtures.url("sentencepiece/symbols.model"))
        for _ in 0..<200 {
            var data = original
            for _ in 0..<Int.random(in: 1...4, using: &generator) {
                data[Int.random(in: 0..<data.count, using: &generator)] = UInt8.random(in: 0...255, using: &generator)
            }
            if Bool.random(using: &generator) { data = data.prefix(Int.random(in: 0..<data.count, using: &generator)) }
            try data.write(to: URL(fileURLWithPath: path))
            if let model = try? SentencePieceModel(file: path) {
                for text in Self.golden.strings.prefix(20) { _ = model.decode(model.encode(text)) }
            }
        }
    }
}
