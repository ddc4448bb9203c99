import Foundation
import StitchTestSupport
import XCTest
@testable import StitchTokenizers

/// tokenizer.json files with each family's components (Tests/Fixtures/tokenizer-json, make_fixtures.py
/// make_tokenizer_json_goldens): 1,200 strings (code, numbers, whitespace runs, emoji, CJK, special tokens' texts)
/// encoded and decoded as the tokenizers library does.
final class TokenizerJSONTests: XCTestCase {
    struct Family: Decodable { let ids: [[Int]]; let decoded: [String] }

    /// A tokenizer.json in a folder with a tokenizer_config.json (its `config`, read separately), through
    /// transformers' AutoTokenizer.
    struct ConfigCase: Decodable {
        let file: String
        let ids: [[Int]]
    }

    struct Golden: Decodable {
        let corpus: [String]
        let gpt2, llama3, qwen2, smollm, llama2, mistral: Family
        let tokenizer_config: [ConfigCase]
    }

    /// Read with JSONDecoder: JSONSerialization drops a string's leading U+FEFF, which the corpus has.
    static let golden = try! JSONDecoder().decode(Golden.self, from: Data(contentsOf: Fixtures.url("tokenizer-json/golden.json")))

    /// The family's file; the byte-level ones get GPT-2's committed vocabulary and merges put back.
    func tokenizer(_ name: String) throws -> TokenizerJSON {
        try TokenizerJSON(json: try json(name), file: Fixtures.url("tokenizer-json/\(name).json").path)
    }

    func json(_ name: String) throws -> [String: Any] {
        let file = Fixtures.url("tokenizer-json/\(name).json").path
        var json = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: file))) as! [String: Any]
        var model = json["model"] as! [String: Any]
        if (model["vocab"] as! [String: Any]).isEmpty {
            model["vocab"] = try JSONSerialization.jsonObject(with: Data(contentsOf: Fixtures.tokenizerFile("gpt2-vocab.json")))
            model["merges"] = try String(contentsOf: Fixtures.tokenizerFile("gpt2-merges.txt"), encoding: .utf8)
                .split(separator: "\n").filter { !$0.hasPrefix("#version") }.map(String.init)
            json["model"] = model
        }
        return json
    }

    func check(_ name: String, _ family: Family) throws {
        let corpus = Self.golden.corpus
        let tokenizer = try tokenizer(name)
        var encodeMismatches = 0, decodeMismatches = 0
        for (i, text) in corpus.enumerated() {
            let ids = try tokenizer.encode(text)
            if ids != family.ids[i] {
                encodeMismatches += 1
                if encodeMismatches <= 5 { XCTFail("\(name) encode \(text.debugDescription): \(ids) != \(family.ids[i])") }
            }
            let decoded = try tokenizer.decode(family.ids[i])
            if decoded != family.decoded[i] {
                decodeMismatches += 1
                if decodeMismatches <= 5 { XCTFail("\(name) decode \(family.ids[i]): \(decoded.debugDescription) != \(family.decoded[i].debugDescription)") }
            }
        }
        XCTAssertGreaterThanOrEqual(corpus.count, 1000)
        print("tokenizer.json \(name): \(corpus.count - encodeMismatches)/\(corpus.count) encodings and \(corpus.count - decodeMismatches)/\(corpus.count) decodings equal the tokenizers library's")
    }

    func testGPT2() throws { try check("gpt2", Self.golden.gpt2) }
    func testLlama3() throws { try check("llama3", Self.golden.llama3) }
    func testQwen2() throws { try check("qwen2", Self.golden.qwen2) }
    func testSmolLM() throws { try check("smollm", Self.golden.smollm) }
    func testLlama2() throws { try check("llama2", Self.golden.llama2) }
    func testMistral() throws { try check("mistral", Self.golden.mistral) }

    /// transformers' Llama tokenizer classes put BOS and EOS as tokenizer_config.json's add_bos_token / add_eos_token say
    /// (defaults true / false), whatever tokenizer.json's template; other classes keep the template.
    func testTokenizerConfigAddsBeginAndEndAsTransformersDoes() throws {
        let folder = try Fixtures.temporaryFolder()
        defer { try? FileManager.default.removeItem(at: folder) }
        let configFile = folder.appendingPathComponent("tokenizer_config.json")
        let raw = try JSONSerialization.jsonObject(with: Data(contentsOf: Fixtures.url("tokenizer-json/golden.json"))) as! [String: Any]
        let configs = (raw["tokenizer_config"] as! [[String: Any]]).map { $0["config"]! }
        for (example, config) in zip(Self.golden.tokenizer_config, configs) {
            try JSONSerialization.data(withJSONObject: try json(example.file)).write(to: folder.appendingPathComponent("tokenizer.json"))
            try JSONSerialization.data(withJSONObject: config).write(to: configFile)
            let tokenizer = try TokenizerJSON(folder: folder)
            for (text, ids) in zip(Self.golden.corpus, example.ids) {
                XCTAssertEqual(try tokenizer.encode(text), ids, "\(example.file) with \(config): \(text.debugDescription)")
            }
        }
        try Data(#"{"tokenizer_class": "LlamaTokenizerFast", "bos_token": "<nope>"}"#.utf8).write(to: configFile)
        XCTAssertThrowsError(try TokenizerJSON(folder: folder)) {
            XCTAssert("\($0)".contains("tokenizer_config.json") && "\($0)".contains("bos_token '<nope>'"), "\($0)")
        }
    }

    /// Digits splits every numeric character (Nd, Nl and No, as Rust's char::is_numeric), alone or in runs; the expected
    /// pieces are what tokenizers' pre_tokenizers.Digits(...).pre_tokenize_str gives.
    func testDigitsSplitsEveryNumericCharacter() throws {
        let text = "\u{663}\u{664}\u{665} 12 \u{B2}\u{B3} \u{BD}x\u{967}\u{968}"   // "٣٤٥ 12 ²³ ½x१२"
        for (individual, expected) in [(true, ["\u{663}", "\u{664}", "\u{665}", " ", "1", "2", " ", "\u{B2}", "\u{B3}", " ", "\u{BD}", "x", "\u{967}", "\u{968}"]),
                                       (false, ["\u{663}\u{664}\u{665}", " ", "12", " ", "\u{B2}\u{B3}", " ", "\u{BD}", "x", "\u{967}\u{968}"])] {
            let json: [String: Any] = ["pre_tokenizer": ["type": "Digits", "individual_digits": individual], "model": ["type": "BPE", "vocab": [String: Int](), "merges": [Any]()]]
            XCTAssertEqual(try TokenizerJSON(json: json, file: "digits.json").preTokenize(text, startsText: true), expected, "individual \(individual)")
        }
    }

    /// Components Stitch does not implement are errors that name them.
    func testUnknownComponentsAreNamed() throws {
        let file = Fixtures.url("tokenizer-json/llama2.json").path
        let json = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: file))) as! [String: Any]
        for (key, value, message) in [("normalizer", ["type": "BertNormalizer"], "normalizer 'BertNormalizer' is not supported"),
                                      ("pre_tokenizer", ["type": "UnicodeScripts"], "pre_tokenizer 'UnicodeScripts' is not supported"),
                                      ("decoder", ["type": "CTC"], "decoder 'CTC' is not supported"),
                                      ("model", ["type": "Unigram"], "type 'Unigram' is not supported")] as [(String, [String: Any], String)] {
            var changed = json
            changed[key] = value
            XCTAssertThrowsError(try TokenizerJSON(json: changed, file: file)) { XCTAssert("\($0)".contains(message) && "\($0)".contains(file), "\($0)") }
        }
    }

    /// A file's regex that backtracks without bound ("(a+)+b" takes 2^n steps on n letters a) is an error naming the
    /// file and pattern, in a pre-tokenizer, a normalizer or a decoder, instead of a hang; real patterns on long
    /// adversarial texts stay within the budget.
    func testRunawayRegexesAreErrorsNotHangs() throws {
        let evil: [String: Any] = ["type": "Split", "pattern": ["Regex": "(a+)+b"], "behavior": "Isolated", "invert": false]
        let empty: [String: Any] = ["type": "BPE", "vocab": ["a": 0], "merges": [Any]()]
        let text = String(repeating: "a", count: 64)
        for (key, component) in [("pre_tokenizer", evil),
                                 ("normalizer", ["type": "Replace", "pattern": ["Regex": "(a+)+b"], "content": "x"]),
                                 ("decoder", ["type": "Sequence", "decoders": [["type": "Fuse"], ["type": "Replace", "pattern": ["Regex": "(a+)+b"], "content": "x"]]])]
                                 as [(String, [String: Any])] {
            let tokenizer = try TokenizerJSON(json: [key: component, "model": empty], file: "evil.json")
            let started = Date()
            XCTAssertThrowsError(key == "decoder" ? try tokenizer.decode(Array(repeating: 0, count: 64)) : "\(try tokenizer.encode(text))") {
                XCTAssert("\($0)".contains("evil.json") && "\($0)".contains("'(a+)+b' backtracks without bound"), "\($0)")
            }
            print("\(key) with (a+)+b on 64 letters: an error after \(Date().timeIntervalSince(started)) s")
        }
        // Llama 3's pattern on 200,000 characters of whitespace runs, newlines, digits and punctuation.
        let llama3 = try tokenizer("llama3")
        let hostile = String(repeating: " \t \n\n\r 12345 ''s !!?? \u{3000}", count: 8000)
        XCTAssertGreaterThan(try llama3.encode(hostile).count, 0)
    }
}
