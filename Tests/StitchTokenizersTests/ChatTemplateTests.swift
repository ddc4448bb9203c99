import Foundation
import StitchTestSupport
import XCTest
@testable import StitchTokenizers

/// Chat templates against transformers' apply_chat_template (Tests/Fixtures/chat, make_fixtures.py
/// make_chat_template_goldens): the published templates of Qwen2.5, Llama 3.2 and SmolLM2 and one template per
/// group of Jinja constructs, over five conversations, with and without the generation prompt.
final class ChatTemplateTests: XCTestCase {
    static let golden = try! JinjaValue(jsonText: Data(contentsOf: Fixtures.url("chat/golden.json")))

    func testRenderingEqualsApplyChatTemplate() throws {
        let golden = Self.golden
        guard case .array(let cases)? = golden["cases"], case .object(let templates)? = golden["templates"] else { return XCTFail("malformed golden") }
        var compiled: [String: ChatTemplate] = [:]
        for (name, source) in templates {
            compiled[name] = try ChatTemplate(source: source.text, file: name)
        }
        var (matched, refused) = (0, 0)
        for testCase in cases {
            let name = testCase["template"]!.text, conversation = golden["conversations"]![testCase["conversation"]!.text]!
            guard case .object(let context)? = testCase["context"] else { return XCTFail("no context") }
            let label = "\(name) on \(testCase["conversation"]!.text), add_generation_prompt \(testCase["add_generation_prompt"]!.repr)"
            do {
                let text = try compiled[name]!.render(messages: conversation["messages"]!, tools: conversation["tools"] ?? .none,
                                                      addGenerationPrompt: testCase["add_generation_prompt"]!.isTrue,
                                                      variables: Dictionary(uniqueKeysWithValues: context.map { ($0.key, $0.value) }))
                guard let expected = testCase["output"] else { XCTFail("\(label): rendered, but transformers refused: \(testCase["error"]!.text)"); continue }
                if text == expected.text { matched += 1 } else { XCTFail("\(label): \(Self.difference(text, expected.text))") }
            } catch {
                guard let expected = testCase["error"] else { XCTFail("\(label): \(error)"); continue }
                XCTAssertTrue(error.raisedByTemplate, label)
                XCTAssertEqual(error.message, expected.text, label)
                refused += 1
            }
        }
        print("chat templates: \(matched) renders equal to apply_chat_template, \(refused) refusals equal, of \(cases.count)")
        XCTAssertEqual(matched + refused, cases.count)
    }

    /// Where two texts part: the common prefix's length and what follows in each.
    static func difference(_ a: String, _ b: String) -> String {
        let (x, y) = (Array(a), Array(b))
        var i = 0
        while i < min(x.count, y.count), x[i] == y[i] { i += 1 }
        return "differ at character \(i): got \(String(x[i..<min(x.count, i + 60)]).debugDescription), expected \(String(y[i..<min(y.count, i + 60)]).debugDescription)"
    }

    /// A folder's template with its special tokens; Llama 3.2's date from strftime_now when none is given.
    func testFolderTemplateAndTodaysDate() throws {
        let folder = FileManager.default.temporaryDirectory.appendingPathComponent("stitch-chat-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: folder) }
        let llama = Self.golden["templates"]!["llama3.2"]!.text
        let config: [String: Any] = ["chat_template": llama, "bos_token": "<|begin_of_text|>", "eos_token": ["content": "<|eot_id|>"]]
        try JSONSerialization.data(withJSONObject: config).write(to: folder.appendingPathComponent("tokenizer_config.json"))
        let template = try XCTUnwrap(try ChatTemplate(folder: folder))
        let text = try template.render(messages: .array([.object([("role", .string("user")), ("content", .string("Hi"))])]), addGenerationPrompt: true)
        let formatter = DateFormatter()
        formatter.locale = Locale(identifier: "en_US_POSIX")
        formatter.dateFormat = "dd MMM yyyy"
        XCTAssertTrue(text.hasPrefix("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: December 2023\nToday Date: \(formatter.string(from: Date()))\n\n"), text)
        XCTAssertTrue(text.hasSuffix("<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"), text)

        try JSONSerialization.data(withJSONObject: ["chat_template": [["name": "tool_use", "template": "x"]]]).write(to: folder.appendingPathComponent("tokenizer_config.json"))
        XCTAssertThrowsError(try ChatTemplate(folder: folder)) { XCTAssertTrue("\($0)".contains("tokenizer_config.json"), "\($0)") }
        try JSONSerialization.data(withJSONObject: ["bos_token": "<s>"]).write(to: folder.appendingPathComponent("tokenizer_config.json"))
        XCTAssertNil(try ChatTemplate(folder: folder))
    }

    /// Hostile templates and conversations end in errors: unclosed tags, unknown tags, runaway loops, huge strings.
    func testHostileTemplatesAreErrors() throws {
        for source in ["{% if x %}", "{{ x ", "{% for %}", "{% include 'other.jinja' %}", "{% macro m( %}{% endmacro %}", "{{ 'a' + }}", "{% endfor %}", "{{ 1 +* 2 }}", "{# open", "{{ 'x }}"] {
            XCTAssertThrowsError(try ChatTemplate(source: source), source)
        }
        let runaway = [
            "{% for i in range(100000000) %}{{ i }}{% endfor %}",
            "{% for a in range(10000) %}{% for b in range(10000) %}{% endfor %}{% endfor %}",
            "{% set ns = namespace(s='x') %}{% for i in range(40) %}{% set ns.s = ns.s + ns.s %}{% endfor %}{{ ns.s | length }}",
            "{{ 'x' * 100000000000 }}",
            "{{ 1 // 0 }}", "{{ undefined_thing.attribute }}", "{{ 'a' < 1 }}",
        ]
        for source in runaway {
            let started = Date()
            XCTAssertThrowsError(try JinjaTemplate(source).render(["messages": .array([])], budget: 1_000_000), source) { error in
                XCTAssertFalse((error as! JinjaError).raisedByTemplate)
            }
            XCTAssertLessThan(Date().timeIntervalSince(started), 20, source)
        }
    }
}
