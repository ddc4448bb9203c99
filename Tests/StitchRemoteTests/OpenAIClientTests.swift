import Foundation
import StitchMethods
import StitchModels
import StitchTestSupport
import StitchTokenizers
import XCTest
@testable import StitchRemote

/// `stitch serve`'s OpenAI API as clients use it: the official openai Python package (Tests/Fixtures/openai,
/// installed from PyPI into a cache folder) against the server, each answer checked against the same request
/// answered in-process; chat through a chat template; PICa through a chat server.
final class OpenAIClientTests: XCTestCase {
    /// Llama 2's chat form, written with the tokenizer's own special tokens.
    static let llama2Template = "{{ bos_token }}{% for m in messages %}{% if m.role == 'system' %}<<SYS>>\n{{ m.content }}\n<</SYS>>\n\n"
        + "{% elif m.role == 'user' %}[INST] {{ m.content | trim }} [/INST]{% else %} {{ m.content | trim }} {{ eos_token }}{% endif %}{% endfor %}"

    /// tiny-llama3 (a SentencePiece tokenizer; bos <s>, eos </s>) with `template` as its tokenizer_config.json's chat_template.
    static func chatModel(template: String, in folder: URL) throws -> (Llama, ChatTemplate) {
        let copy = folder.appendingPathComponent("tiny-llama3")
        try FileManager.default.copyItem(at: Fixtures.url("tiny-llama3"), to: copy)
        let file = copy.appendingPathComponent("tokenizer_config.json")
        var config = try JSONSerialization.jsonObject(with: Data(contentsOf: file)) as! [String: Any]
        config["chat_template"] = template
        try JSONSerialization.data(withJSONObject: config).write(to: file)
        return (try Llama(folder: copy), try XCTUnwrap(try ChatTemplate(folder: copy)))
    }

    func testOfficialClientAgainstServe() throws {
        guard let python = Self.python() else { throw XCTSkip("python3 is absent: the official openai client cannot run here") }
        let packages = try Self.installClient(python)
        let folder = try Fixtures.temporaryFolder()
        defer { try? FileManager.default.removeItem(at: folder) }
        let (model, template) = try Self.chatModel(template: Self.llama2Template, in: folder)
        let backend = LocalCompletionBackend(model: model, name: "tiny-llama3", chatTemplate: template)
        let server = try HTTPServer(handler: CompletionService(backend: backend).handle)
        defer { server.stop() }
        let output = try Self.runPython(python, [Fixtures.url("openai/check.py").path, server.baseURL, "tiny-llama3"], path: packages)
        let report = try XCTUnwrap(JSONSerialization.jsonObject(with: output) as? [String: Any])
        XCTAssertEqual((report["models"] as? [[String: Any]])?.compactMap { $0["id"] as? String }, ["tiny-llama3"])
        let cases = try XCTUnwrap(report["cases"] as? [[String: Any]])
        XCTAssertEqual((report["model"] as? [String: Any])?["id"] as? String, "tiny-llama3")
        XCTAssertEqual(cases.count, 21)
        var checked: [String] = []
        for testCase in cases {
            let name = testCase["name"] as! String, chat = testCase["api"] as? String == "chat"
            var request = testCase["request"] as! [String: Any]
            request["model"] = "tiny-llama3"
            request["stream"] = false
            let answer = CompletionService.respond(to: try JSONSerialization.data(withJSONObject: request), chat: chat, backend: backend)
            let expected = try XCTUnwrap(JSONSerialization.jsonObject(with: answer.body) as? [String: Any])
            if name == "stop" || name == "streamed stop" {
                XCTAssertEqual(((expected["choices"] as? [[String: Any]])?.first)?["finish_reason"] as? String, "stop", "\(name): the stop string occurs")
            }
            if let error = testCase["error"] as? [String: Any] {
                XCTAssertEqual(error["status"] as? Int, 400, name)
                XCTAssertEqual(answer.status, 400, name)
                XCTAssertEqual(error["type"] as? String, "BadRequestError", name)
                let body = error["body"] as? [String: Any]
                XCTAssertEqual((body?["message"] ?? (body?["error"] as? [String: Any])?["message"]) as? String,
                               (expected["error"] as? [String: Any])?["message"] as? String, name)
            } else if let response = testCase["response"] as? [String: Any] {
                XCTAssertEqual(answer.status, 200, name)
                Self.assertSameAnswer(response, expected, chat: chat, name)
            } else {
                let chunks = try XCTUnwrap(testCase["chunks"] as? [[String: Any]], name)
                Self.assertStreamJoinsTo(chunks, expected, chat: chat, usage: (testCase["request"] as! [String: Any])["stream_options"] != nil, name)
            }
            checked.append(name)
        }
        print("official openai client: \(checked.count) cases answered as in-process: \(checked.joined(separator: ", "))")
    }

    /// The three counts of a usage object (the client adds empty details).
    static func usage(_ value: Any?) -> [String: Int]? {
        guard let object = value as? [String: Any] else { return nil }
        return Dictionary(uniqueKeysWithValues: ["prompt_tokens", "completion_tokens", "total_tokens"].compactMap { key in (object[key] as? Int).map { (key, $0) } })
    }

    /// Whole answers: the same choices (text, finish reason, logprobs within 1e-6) and usage.
    static func assertSameAnswer(_ got: [String: Any], _ expected: [String: Any], chat: Bool, _ name: String) {
        XCTAssertEqual(got["object"] as? String, chat ? "chat.completion" : "text_completion", name)
        XCTAssertEqual(usage(got["usage"]), usage(expected["usage"]), name)
        let (a, b) = (got["choices"] as! [[String: Any]], expected["choices"] as! [[String: Any]])
        XCTAssertEqual(a.count, b.count, name)
        for (x, y) in zip(a, b) {
            XCTAssertEqual(x["index"] as? Int, y["index"] as? Int, name)
            XCTAssertEqual(x["finish_reason"] as? String, y["finish_reason"] as? String, name)
            if chat {
                XCTAssertEqual((x["message"] as? [String: Any])?["content"] as? String, (y["message"] as? [String: Any])?["content"] as? String, name)
                XCTAssertEqual((x["message"] as? [String: Any])?["role"] as? String, "assistant", name)
            } else {
                XCTAssertEqual(x["text"] as? String, y["text"] as? String, name)
            }
            assertSameLogprobs(x["logprobs"], y["logprobs"], chat: chat, name)
        }
    }

    static func assertSameLogprobs(_ x: Any?, _ y: Any?, chat: Bool, _ name: String) {
        guard let x = x as? [String: Any], let y = y as? [String: Any] else {
            XCTAssertTrue((x == nil || x is NSNull) && (y == nil || y is NSNull), "\(name): logprobs \(String(describing: x)) vs \(String(describing: y))")
            return
        }
        if chat {
            let (a, b) = (x["content"] as! [[String: Any]], y["content"] as! [[String: Any]])
            XCTAssertEqual(a.map { $0["token"] as! String }, b.map { $0["token"] as! String }, name)
            XCTAssertEqual(a.map { $0["bytes"] as! [Int] }, b.map { $0["bytes"] as! [Int] }, name)
            for (p, q) in zip(a, b) {
                XCTAssertEqual(p["logprob"] as! Double, q["logprob"] as! Double, accuracy: 1e-6, name)
                XCTAssertEqual((p["top_logprobs"] as! [[String: Any]]).map { $0["token"] as! String }, (q["top_logprobs"] as! [[String: Any]]).map { $0["token"] as! String }, name)
            }
        } else {
            XCTAssertEqual(x["tokens"] as? [String], y["tokens"] as? [String], name)
            XCTAssertEqual(x["text_offset"] as? [Int], y["text_offset"] as? [Int], name)
            let (a, b) = (x["token_logprobs"] as! [Any], y["token_logprobs"] as! [Any])
            XCTAssertEqual(a.count, b.count, name)
            for (p, q) in zip(a, b) {
                if let p = p as? Double, let q = q as? Double { XCTAssertEqual(p, q, accuracy: 1e-6, name) } else { XCTAssertTrue(p is NSNull && q is NSNull, name) }
            }
            let (c, d) = (x["top_logprobs"] as? [Any] ?? [], y["top_logprobs"] as? [Any] ?? [])
            XCTAssertEqual(c.map { ($0 as? [String: Double])?.keys.sorted() ?? [] }, d.map { ($0 as? [String: Double])?.keys.sorted() ?? [] }, name)
        }
    }

    /// A stream's chunks joined per choice give the whole answer's text, tokens and finish reason; its usage chunk,
    /// when asked for, the whole answer's usage.
    static func assertStreamJoinsTo(_ chunks: [[String: Any]], _ expected: [String: Any], chat: Bool, usage withUsage: Bool, _ name: String) {
        var texts: [Int: String] = [:], tokens: [Int: [String]] = [:], finishes: [Int: String] = [:], roles: [Int: String] = [:]
        XCTAssertTrue(chunks.allSatisfy { ($0["object"] as? String) == (chat ? "chat.completion.chunk" : "text_completion") }, name)
        XCTAssertEqual(Set(chunks.compactMap { $0["id"] as? String }).count, 1, "\(name): one id for the stream")
        for chunk in chunks {
            for choice in chunk["choices"] as! [[String: Any]] {
                let index = choice["index"] as! Int
                if let reason = choice["finish_reason"] as? String { XCTAssertNil(finishes[index], name); finishes[index] = reason }
                if chat {
                    let delta = choice["delta"] as! [String: Any]
                    if let role = delta["role"] as? String { roles[index] = role }
                    texts[index, default: ""] += delta["content"] as? String ?? ""
                    for entry in (choice["logprobs"] as? [String: Any])?["content"] as? [[String: Any]] ?? [] { tokens[index, default: []].append(entry["token"] as! String) }
                } else {
                    texts[index, default: ""] += choice["text"] as? String ?? ""
                    tokens[index, default: []] += (choice["logprobs"] as? [String: Any])?["tokens"] as? [String] ?? []
                }
            }
        }
        let choices = expected["choices"] as! [[String: Any]]
        XCTAssertEqual(texts.count, choices.count, name)
        for choice in choices {
            let index = choice["index"] as! Int
            let text = chat ? (choice["message"] as! [String: Any])["content"] as! String : choice["text"] as! String
            XCTAssertEqual(texts[index], text, "\(name): choice \(index)'s pieces join to its text")
            XCTAssertEqual(finishes[index], choice["finish_reason"] as? String, name)
            if chat { XCTAssertEqual(roles[index], "assistant", name) }
            let logprobs = choice["logprobs"] as? [String: Any]
            let expectedTokens = chat ? (logprobs?["content"] as? [[String: Any]])?.map { $0["token"] as! String } : logprobs?["tokens"] as? [String]
            XCTAssertEqual(tokens[index] ?? [], expectedTokens ?? [], "\(name): choice \(index)'s pieces carry its tokens")
        }
        if withUsage {
            XCTAssertEqual((chunks.last?["choices"] as? [Any])?.count, 0, name)
            XCTAssertEqual(Self.usage(chunks.last?["usage"]), Self.usage(expected["usage"]), name)
            XCTAssertNotNil(Self.usage(expected["usage"]), name)
        } else {
            XCTAssertTrue(chunks.allSatisfy { $0["usage"] == nil || $0["usage"] is NSNull }, name)
        }
    }

    /// PICa's answer through a chat server equals its answer through a completions server: a template that passes the
    /// user message through gives the model the same prompt, and the reply's log-probabilities rank the answers.
    func testPICaThroughChatEqualsThroughCompletions() throws {
        let folder = try Fixtures.temporaryFolder()
        defer { try? FileManager.default.removeItem(at: folder) }
        let (model, template) = try Self.chatModel(template: "{{ bos_token }}{% for m in messages %}{{ m.content }}{% endfor %}", in: folder)
        let backend = LocalCompletionBackend(model: model, name: "tiny-llama3", chatTemplate: template)
        let server = try HTTPServer(handler: CompletionService(backend: backend).handle)
        defer { server.stop() }
        let pica = PICa()
        let test = PICa.Example(context: "a red bus on a street", question: "What colour is the bus?")
        let prompts = try ["a kitchen with a cat", "two dogs in a park", "a man on a bike"].map { context in
            try pica.prompt(examples: [PICa.Example(context: context, question: "What is there?", answer: "animals")], test: test)
        }
        // The template gives the model the prompt's own tokens.
        let rendered = try template.render(messages: ChatRequest(userMessage: prompts[0], settings: CompletionRequest(prompt: "")).messages, addGenerationPrompt: true)
        XCTAssertEqual(try model.encode(rendered, specialTokens: false), try model.encode(prompts[0]))
        let viaCompletions = try PICa.answer(prompts: prompts, backend: OpenAICompletionClient(baseURL: server.baseURL, model: "tiny-llama3", apiKey: nil))
        let viaChat = try PICa.answer(prompts: prompts, backend: OpenAICompletionClient(baseURL: server.baseURL, model: "tiny-llama3", apiKey: nil, api: .chat))
        XCTAssertEqual(viaChat.answer, viaCompletions.answer)
        XCTAssertEqual(viaChat.candidates.map(\.answer), viaCompletions.candidates.map(\.answer))
        for (a, b) in zip(viaChat.candidates, viaCompletions.candidates) { XCTAssertEqual(a.logprob, b.logprob, accuracy: 1e-6) }
        XCTAssertTrue(viaCompletions.candidates.allSatisfy { $0.logprob < 0 }, "\(viaCompletions.candidates)")
        print("PICa via chat and via completions: '\(viaChat.answer)', candidates \(viaChat.candidates.map(\.answer))")

        // A chat server that sends no log-probabilities cannot rank answers: an error, not an answer ranked on nothing.
        let bare = try HTTPServer { _ in .json(["choices": [["index": 0, "message": ["role": "assistant", "content": "blue"], "finish_reason": "stop"]]]) }
        defer { bare.stop() }
        XCTAssertThrowsError(try PICa.answer(prompts: prompts, backend: OpenAICompletionClient(baseURL: bare.baseURL, model: "m", apiKey: nil, api: .chat))) {
            XCTAssertTrue("\($0)".contains("no log-probabilities"), "\($0)")
        }
    }

    /// Chat without a template, token ids outside the vocabulary and a template's refusal are 400s that say why;
    /// a chat prompt starts with one BOS (the template's), not two.
    func testChatRefusalsAndTheTemplatesOwnSpecialTokens() throws {
        let folder = try Fixtures.temporaryFolder()
        defer { try? FileManager.default.removeItem(at: folder) }
        let (model, template) = try Self.chatModel(template: Self.llama2Template + "{% if messages | length > 3 %}{{ raise_exception('too long') }}{% endif %}", in: folder)
        let rendered = try template.render(messages: .array([.object([("role", .string("user")), ("content", .string("Hi"))])]), addGenerationPrompt: true)
        let ids = try model.encode(rendered, specialTokens: false)
        XCTAssertEqual(ids.prefix(2).filter { $0 == model.tokenID(of: "<s>") }.count, 1, "\(ids)")
        let plain = LocalCompletionBackend(model: model, name: "m")
        let chat = LocalCompletionBackend(model: model, name: "m", chatTemplate: template)
        func status(_ body: String, chat isChat: Bool, _ backend: CompletionBackend) -> (Int, String) {
            let answer = CompletionService.respond(to: Data(body.utf8), chat: isChat, backend: backend)
            return (answer.status, String(decoding: answer.body, as: UTF8.self))
        }
        let noTemplate = status(#"{"messages": [{"role": "user", "content": "Hi"}]}"#, chat: true, plain)
        XCTAssertEqual(noTemplate.0, 400)
        XCTAssertTrue(noTemplate.1.contains("no chat template"), noTemplate.1)
        let refused = status(#"{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"}, {"role": "assistant", "content": "d"}]}"#, chat: true, chat)
        XCTAssertEqual(refused.0, 400)
        XCTAssertTrue(refused.1.contains("too long"), refused.1)
        let outside = status(#"{"prompt": [1, 99999999], "max_tokens": 2}"#, chat: false, plain)
        XCTAssertEqual(outside.0, 400)
        XCTAssertTrue(outside.1.contains("token ids"), outside.1)
        let fine = status(#"{"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3, "temperature": 0}"#, chat: true, chat)
        XCTAssertEqual(fine.0, 200, fine.1)
    }

    /// A streamed completion whose client goes away stops generating (its next piece finds the stream closed).
    func testAbandonedStreamStopsGenerating() throws {
        let folder = try Fixtures.temporaryFolder()
        defer { try? FileManager.default.removeItem(at: folder) }
        let (model, _) = try Self.chatModel(template: Self.llama2Template, in: folder)
        final class Outcome: @unchecked Sendable { var pieces = 0; var ended: String?; let lock = NSLock() }
        let outcome = Outcome()
        /// The local backend, slowed to 10 ms a piece, telling how its generation ended.
        struct Slow: CompletionBackend {
            let base: LocalCompletionBackend, outcome: Outcome
            var name: String { base.name }
            func complete(_ request: CompletionRequest, stream: CompletionStream?) throws -> [Completion] {
                do {
                    let completions = try base.complete(request) { choice, piece in
                        outcome.lock.withLock { outcome.pieces += 1 }
                        Thread.sleep(forTimeInterval: 0.01)
                        try stream?(choice, piece)
                    }
                    outcome.lock.withLock { outcome.ended = "finished" }
                    return completions
                } catch {
                    outcome.lock.withLock { outcome.ended = error is CancellationError ? "cancelled" : "\(error)" }
                    throw error
                }
            }
            func chat(_ request: ChatRequest, stream: CompletionStream?) throws -> [Completion] { try base.chat(request, stream: stream) }
        }
        let base = LocalCompletionBackend(model: model, name: "m")
        let request = CompletionRequest(prompt: "Once", maxTokens: 200, temperature: 0)
        let whole = try base.complete(request)[0]
        XCTAssertEqual(whole.finishReason, "length", "the test needs a long generation")
        let server = try HTTPServer(handler: CompletionService(backend: Slow(base: base, outcome: outcome)).handle)
        defer { server.stop() }
        let connection = try RawConnection(port: server.port)
        let body = #"{"prompt": "Once", "max_tokens": 200, "temperature": 0, "stream": true}"#
        connection.send("POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: \(body.utf8.count)\r\n\r\n\(body)")
        let head = try XCTUnwrap(connection.read(until: "data: "))
        XCTAssertTrue(head.lowercased().contains("content-type: text/event-stream"), head)
        connection.hangUp()
        let deadline = Date().addingTimeInterval(60)
        while outcome.lock.withLock({ outcome.ended }) == nil, Date() < deadline { Thread.sleep(forTimeInterval: 0.05) }
        XCTAssertEqual(outcome.lock.withLock { outcome.ended }, "cancelled")
        XCTAssertLessThan(outcome.lock.withLock { outcome.pieces }, 150, "generation went on after the client left")
        // The model is free again.
        let client = OpenAICompletionClient(baseURL: server.baseURL, model: "m", apiKey: nil)
        XCTAssertEqual(try client.complete(CompletionRequest(prompt: "Hi", maxTokens: 2, temperature: 0)).count, 1)
    }

    // MARK: The official client

    static func python() -> String? {
        let probe = Process()
        probe.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        probe.arguments = ["python3", "--version"]
        probe.standardOutput = FileHandle.nullDevice
        probe.standardError = FileHandle.nullDevice
        guard (try? probe.run()) != nil else { return nil }
        probe.waitUntilExit()
        return probe.terminationStatus == 0 ? "python3" : nil
    }

    /// The pinned client in a cache folder beside the test models, installed from PyPI once (pip --target: nothing
    /// else on the machine changes).
    static func installClient(_ python: String) throws -> URL {
        let requirements = Fixtures.url("openai/requirements.txt")
        let pins = try String(contentsOf: requirements, encoding: .utf8)
        let version = pins.split(separator: "\n").first { $0.hasPrefix("openai==") }.map { String($0.dropFirst(8)) } ?? "unknown"
        // The folder is named by the pins' checksum (FNV-1a), so new pins install afresh.
        let checksum = pins.utf8.reduce(UInt64(14_695_981_039_346_656_037)) { ($0 ^ UInt64($1)) &* 1_099_511_628_211 }
        let target = Fixtures.testModels.deletingLastPathComponent().appendingPathComponent("python/openai-\(version)-\(String(checksum % 1_000_000, radix: 16))")
        if FileManager.default.fileExists(atPath: target.appendingPathComponent("openai/__init__.py").path) { return target }
        let partial = target.appendingPathExtension("partial")
        try? FileManager.default.removeItem(at: partial)
        _ = try runPython(python, ["-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-deps", "--target", partial.path, "-r", requirements.path])
        try? FileManager.default.removeItem(at: target)
        try FileManager.default.createDirectory(at: target.deletingLastPathComponent(), withIntermediateDirectories: true)
        try FileManager.default.moveItem(at: partial, to: target)
        return target
    }

    /// Runs python with `arguments` (packages from `path`); its stdout, or an error with its stderr. Ends it after 10 minutes.
    static func runPython(_ python: String, _ arguments: [String], path: URL? = nil) throws -> Data {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = [python] + arguments
        var environment = ProcessInfo.processInfo.environment
        if let path { environment["PYTHONPATH"] = path.path }
        environment["PYTHONDONTWRITEBYTECODE"] = "1"
        process.environment = environment
        let (output, errors) = (Pipe(), Pipe())
        process.standardOutput = output
        process.standardError = errors
        try process.run()
        let watchdog = DispatchWorkItem { process.terminate() }
        DispatchQueue.global().asyncAfter(deadline: .now() + 600, execute: watchdog)
        let outputData = output.fileHandleForReading.readDataToEndOfFile()
        let errorData = errors.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        watchdog.cancel()
        guard process.terminationStatus == 0 else {
            throw NSError(domain: "python", code: Int(process.terminationStatus), userInfo: [NSLocalizedDescriptionKey:
                "python3 \(arguments.joined(separator: " ")) failed: \(String(decoding: errorData.suffix(2000), as: UTF8.self))"])
        }
        return outputData
    }
}
