import CZlib
import Foundation
import StitchTestSupport
import XCTest
@testable import StitchTokenizers

/// Token ids must equal the Python tokenizers' on the committed golden corpus
/// (Tests/Fixtures/tokenizers/golden.json, written by make_fixtures.py).
final class TokenizerGoldenTests: XCTestCase {
    struct Golden: Decodable {
        let corpus: [String]
        let gpt2: [[Int]]
        let clip: [[Int]]
        let bert: [[Int]]
        let gpt2_decoded: [String]
        let clip_decoded: [String]
    }

    static let golden: Golden = try! JSONDecoder().decode(Golden.self, from: Data(contentsOf: Fixtures.url("tokenizers/golden.json")))

    func assertMatches(_ name: String, expected: [[Int]], _ encode: (String) -> [Int]) {
        assertEveryInputMatches(name, inputs: Self.golden.corpus, expected: expected, minimumCount: 300, encode)
    }

    func testGPT2MatchesGPT2TokenizerFast() throws {
        let tokenizer = try GPT2Tokenizer(vocabularyFile: Fixtures.tokenizerFile("gpt2-vocab.json").path,
                                          mergesFile: Fixtures.tokenizerFile("gpt2-merges.txt").path)
        assertMatches("GPT-2", expected: Self.golden.gpt2, tokenizer.encode)
        for (ids, text) in zip(Self.golden.gpt2, Self.golden.gpt2_decoded) {
            XCTAssertEqual(tokenizer.decode(ids), text)
        }
    }

    /// added_tokens.json (MAGiC's checkpoints add "<-start_of_text->" and "<-pad->") is read with the folder.
    func testGPT2AddedTokens() throws {
        let shared = Fixtures.url("tokenizers")
        let folder = try Fixtures.temporaryFolder()
        defer { try? FileManager.default.removeItem(at: folder) }
        for (name, source) in ["vocab.json": "gpt2-vocab.json", "merges.txt": "gpt2-merges.txt"] {
            try FileManager.default.createSymbolicLink(at: folder.appendingPathComponent(name), withDestinationURL: shared.appendingPathComponent(source))
        }
        try Data(#"{"<-start_of_text->": 50257, "<-pad->": 50258}"#.utf8).write(to: folder.appendingPathComponent("added_tokens.json"))
        let tokenizer = try GPT2Tokenizer(folder: folder)
        let plain = try GPT2Tokenizer(vocabularyFile: shared.appendingPathComponent("gpt2-vocab.json").path,
                                      mergesFile: shared.appendingPathComponent("gpt2-merges.txt").path)
        XCTAssertEqual(tokenizer.vocabularySize, 50259)
        XCTAssertEqual(tokenizer.id(of: "<-start_of_text->"), 50257)
        XCTAssertEqual(tokenizer.id(of: "<|endoftext|>"), 50256)
        let ids = tokenizer.encode("<-start_of_text->A zebra<-pad>")
        XCTAssertEqual(ids, [50257] + plain.encode("A zebra<-pad>"))
        XCTAssertEqual(tokenizer.decode(ids + [50258]), "<-start_of_text->A zebra<-pad><-pad->")
    }

    /// MAGiC's published text path: transformers 4.7.0's slow CLIPTokenizer without ftfy, and its decode clean-up,
    /// on 2,600 strings of accents, contractions, punctuation, U+FFFD, controls, CJK, emoji and special tokens
    /// (tokenizers/clip47_golden.json).
    func testCLIPAsTransformers47SlowTokenizer() throws {
        struct Golden47: Decodable { let corpus: [String]; let clip: [[Int]]; let clean_up: [String] }
        let golden = try JSONDecoder().decode(Golden47.self, from: Data(contentsOf: Fixtures.url("tokenizers/clip47_golden.json")))
        let tokenizer = try CLIPTokenizer(bpeFile: Fixtures.tokenizerFile("bpe_simple_vocab_16e6.txt.gz").path)
        assertEveryInputMatches("CLIP (transformers 4.7.0, slow)", inputs: golden.corpus, expected: golden.clip, minimumCount: 2000) {
            tokenizer.encode($0, tokenization: .transformers47)
        }
        let fast = golden.corpus.map { tokenizer.encode($0) }
        XCTAssertGreaterThan(zip(fast, golden.clip).filter { $0 != $1 }.count, 500, "the corpus tells the two tokenizations apart")
        let cleaned = golden.corpus.map(Transformers47.cleanUpTokenization)
        XCTAssertEqual(zip(cleaned, golden.clean_up).filter { $0 != $1 }.count, 0, "decode clean-up")
    }

    func testCLIPMatchesCLIPTokenizerFast() throws {
        let tokenizer = try CLIPTokenizer(bpeFile: Fixtures.tokenizerFile("bpe_simple_vocab_16e6.txt.gz").path)
        XCTAssertEqual(tokenizer.vocabularySize, 49408)
        assertMatches("CLIP", expected: Self.golden.clip, tokenizer.encode)
        for (ids, text) in zip(Self.golden.clip, Self.golden.clip_decoded) {
            XCTAssertEqual(tokenizer.decode(ids), text)
        }
    }

    func testBERTMatchesTokenizersLibrary() throws {
        let tokenizer = try WordPieceTokenizer(folder: Fixtures.realModel("all-MiniLM-L6-v2"))
        assertMatches("BERT WordPiece", expected: Self.golden.bert, tokenizer.encode)
    }

    func testCLIPTruncatesToContextKeepingEndToken() throws {
        let tokenizer = try CLIPTokenizer(bpeFile: Fixtures.tokenizerFile("bpe_simple_vocab_16e6.txt.gz").path)
        let ids = tokenizer.encode(Array(repeating: "zebra", count: 200).joined(separator: " "))
        XCTAssertEqual(ids.count, 77)
        XCTAssertEqual(ids.first, tokenizer.startID)
        XCTAssertEqual(ids.last, tokenizer.endID)
        XCTAssertEqual(tokenizer.encodeWithoutSpecialTokens("a photo of a dog").count, 5)
    }

    func testWordPieceTruncationAndUnknownWords() throws {
        var tokenizer = try WordPieceTokenizer(folder: Fixtures.realModel("all-MiniLM-L6-v2"))
        tokenizer.maximumLength = 8
        let ids = tokenizer.encode("one two three four five six seven eight nine ten")
        XCTAssertEqual(ids.count, 8)
        XCTAssertEqual(ids.last, tokenizer.separatorID)
        tokenizer.maximumLength = 512
        XCTAssertEqual(tokenizer.encode(String(repeating: "x", count: 101)), [tokenizer.classID, tokenizer.unknownID, tokenizer.separatorID])
        // As BertTokenizerFast.decode(skip_special_tokens=True) gives it: spaces before punctuation cleaned up.
        XCTAssertEqual(tokenizer.decode(tokenizer.encode("Hello, unaffable world!")), "hello, unaffable world!")
    }
}

final class TokenizerFileErrorTests: XCTestCase {
    /// A gzip file that inflates without end is refused at a bound, not followed into gigabytes.
    func testGzipBombIsRefused() throws {
        var stream = z_stream()
        XCTAssertEqual(deflateInit2_(&stream, 9, Z_DEFLATED, 16 + MAX_WBITS, 9, Z_DEFAULT_STRATEGY, ZLIB_VERSION, Int32(MemoryLayout<z_stream>.size)), Z_OK)
        var zeros = [UInt8](repeating: 0, count: 1 << 20), compressed = [UInt8](repeating: 0, count: 1 << 20), bomb = Data()
        for round in 0..<100 {   // 100 MB of zeros
            zeros.withUnsafeMutableBufferPointer { input in
                compressed.withUnsafeMutableBufferPointer { output in
                    stream.next_in = input.baseAddress
                    stream.avail_in = uInt(input.count)
                    stream.next_out = output.baseAddress
                    stream.avail_out = uInt(output.count)
                    _ = deflate(&stream, round == 99 ? Z_FINISH : Z_NO_FLUSH)
                    bomb.append(output.baseAddress!, count: output.count - Int(stream.avail_out))
                }
            }
        }
        deflateEnd(&stream)
        let folder = try Fixtures.temporaryFolder()
        defer { try? FileManager.default.removeItem(at: folder) }
        let path = folder.appendingPathComponent("bpe_simple_vocab_16e6.txt.gz").path
        try bomb.write(to: URL(fileURLWithPath: path))
        XCTAssertThrowsError(try CLIPTokenizer(bpeFile: path)) { XCTAssert("\($0)".contains("decompresses to more than 67108864 bytes; tokenizer files are far smaller (STITCH_MAX_DECOMPRESSED_BYTES raises it)"), "\($0)") }
    }

    func testMissingAndMalformedFilesNameTheFile() throws {
        let folder = try Fixtures.temporaryFolder()
        defer { try? FileManager.default.removeItem(at: folder) }
        let vocabulary = folder.appendingPathComponent("vocab.json").path
        let merges = folder.appendingPathComponent("merges.txt").path

        XCTAssertThrowsError(try GPT2Tokenizer(vocabularyFile: vocabulary, mergesFile: merges)) { error in
            XCTAssertEqual(error as? TokenizerError, .cannotRead(file: vocabulary, reason: "no such file"))
        }
        try Data("{\"a\": 0, \"<|endoftext|>\": 1}".utf8).write(to: URL(fileURLWithPath: vocabulary))
        try Data("#version: 0.2\na b\na b c\n".utf8).write(to: URL(fileURLWithPath: merges))
        XCTAssertThrowsError(try GPT2Tokenizer(vocabularyFile: vocabulary, mergesFile: merges)) { error in
            XCTAssertEqual(error as? TokenizerError, .malformed(file: merges, line: 3, detail: "expected two symbols separated by one space"))
            XCTAssert("\(error)".contains("merges.txt:3"))
        }
        try Data("[1, 2]".utf8).write(to: URL(fileURLWithPath: vocabulary))
        XCTAssertThrowsError(try GPT2Tokenizer(vocabularyFile: vocabulary, mergesFile: merges)) { error in
            XCTAssert("\(error)".contains("vocab.json"), "\(error)")
        }
        let gz = folder.appendingPathComponent("bpe.txt.gz").path
        try Data([0x1F, 0x8B, 0x08, 0x00, 0x01, 0x02]).write(to: URL(fileURLWithPath: gz))
        XCTAssertThrowsError(try CLIPTokenizer(bpeFile: gz)) { error in
            XCTAssert("\(error)".contains("bpe.txt.gz") && "\(error)".contains("gzip"), "\(error)")
        }
    }

    func testPretokenizersFollowTheReferenceRegexes() {
        func pieces(_ text: String) -> [String] { GPT2Tokenizer.pretokenize(text).map { String(String.UnicodeScalarView($0)) } }
        XCTAssertEqual(pieces("Hello world"), ["Hello", " world"])
        XCTAssertEqual(pieces("a  \tb"), ["a", "  ", "\t", "b"])
        XCTAssertEqual(pieces("don't stop"), ["don", "'t", " stop"])
        XCTAssertEqual(pieces("x  "), ["x", "  "])
        XCTAssertEqual(pieces("abc123!!"), ["abc", "123", "!!"])
        func clipPieces(_ text: String) -> [String] { CLIPTokenizer.pretokenize(CLIPTokenizer.normalize(text)).map { String(String.UnicodeScalarView($0)) } }
        XCTAssertEqual(clipPieces("A Photo of 2024 DOGS!!"), ["a", "photo", "of", "2", "0", "2", "4", "dogs", "!!"])
    }
}
