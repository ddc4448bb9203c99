import Foundation
import StitchModelIO
import StitchMethods
import StitchModels
import StitchRemote
import StitchTestSupport
import StitchTokenizers
import XCTest

/// `stitch serve` as users run it: the binary on a free port, queried by the OpenAI-compatible
/// client and over plain HTTP for a graph endpoint.
final class ServeCommandTests: XCTestCase {
    /// `stitch serve` on a free port, and its base URL, read from the first stderr line
    /// ("stitch serve: listening on http://127.0.0.1:PORT (...)").
    func startServe(_ arguments: [String], environment: [String: String] = [:]) throws -> (Process, String) {
        let process = Process()
        process.executableURL = StitchCLI.binary
        process.arguments = ["serve", "--port", "0"] + arguments
        process.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 }
        let errors = Pipe()
        process.standardError = errors
        process.standardOutput = Pipe()
        try process.run()
        var line = Data()
        while !line.contains(UInt8(ascii: "\n")) {
            let chunk = errors.fileHandleForReading.availableData
            if chunk.isEmpty {
                process.waitUntilExit()
                throw CocoaError(.fileReadUnknown, userInfo: [NSLocalizedDescriptionKey: "stitch serve exited: \(String(decoding: line, as: UTF8.self))"])
            }
            line.append(chunk)
        }
        let text = String(decoding: line, as: UTF8.self)
        guard let start = text.range(of: "http://"), let end = text[start.lowerBound...].firstIndex(of: " ") else {
            process.terminate()
            throw CocoaError(.fileReadCorruptFile, userInfo: [NSLocalizedDescriptionKey: "stitch serve said: \(text)"])
        }
        return (process, String(text[start.lowerBound..<end]))
    }

    /// Beyond loopback only with a key (or --insecure); with a key, requests without it are 401s.
    func testServeNeedsAnAPIKeyBeyondLoopback() throws {
        let folder = try Fixtures.temporaryFolder()
        defer { try? FileManager.default.removeItem(at: folder) }
        let model = try Fixtures.modelWithTokenizer("tiny-gpt2", in: folder)
        let open = try StitchCLI.run(["serve", "--lm", model.path, "--host", "0.0.0.0", "--port", "0"])
        XCTAssertEqual(open.status, 64)
        XCTAssert(open.errors.contains("--host 0.0.0.0 is reachable from other machines: give --api-key"), open.errors)

        let (process, base) = try startServe(["--lm", model.path], environment: ["STITCH_SERVE_API_KEY": "s3cret"])
        defer { process.terminate(); process.waitUntilExit() }
        let request = CompletionRequest(prompt: "A photo of a", maxTokens: 2, temperature: 0)
        for key in [nil, "wrong", "s3cre"] {
            XCTAssertThrowsError(try OpenAICompletionClient(baseURL: base, model: "m", apiKey: key).complete(request), key ?? "none") {
                XCTAssert("\($0)".contains("401"), "\($0)")
            }
        }
        XCTAssertEqual(try OpenAICompletionClient(baseURL: base, model: "m", apiKey: "s3cret").complete(request).count, 1)
    }

    /// A Llama folder with a chat template serves chat completions through it (the startup line names the file);
    /// one without answers chat requests with a 400 that says so.
    func testServeChatThroughTheModelsTemplate() throws {
        let folder = try Fixtures.temporaryFolder()
        defer { try? FileManager.default.removeItem(at: folder) }
        let model = folder.appendingPathComponent("tiny-llama3")
        try FileManager.default.copyItem(at: Fixtures.url("tiny-llama3"), to: model)
        let config = model.appendingPathComponent("tokenizer_config.json")
        var values = try JSONSerialization.jsonObject(with: Data(contentsOf: config)) as! [String: Any]
        values["chat_template"] = "{{ bos_token }}{% for m in messages %}[{{ m.role }}] {{ m.content }}{% endfor %}{% if add_generation_prompt %}[assistant]{% endif %}"
        try JSONSerialization.data(withJSONObject: values).write(to: config)
        let (process, base) = try startServe(["--lm", model.path])
        defer { process.terminate(); process.waitUntilExit() }
        let chat = OpenAICompletionClient(baseURL: base, model: "tiny-llama3", apiKey: nil, api: .chat)
        let request = ChatRequest(messages: .array([.object([("role", .string("user")), ("content", .string("Hi"))])]),
                                  settings: CompletionRequest(prompt: "", maxTokens: 5, temperature: 0, logprobs: true))
        let reply = try chat.chat(request)[0]
        // The same as the template's rendering completed in-process.
        let local = LocalCompletionBackend(model: try Llama(folder: model), name: "m", chatTemplate: try ChatTemplate(folder: model))
        XCTAssertEqual(reply.text, try local.chat(request)[0].text)
        XCTAssertEqual(reply.tokens.count, 5)

        let (plainProcess, plainBase) = try startServe(["--lm", Fixtures.url("tiny-llama3").path])
        defer { plainProcess.terminate(); plainProcess.waitUntilExit() }
        XCTAssertThrowsError(try OpenAICompletionClient(baseURL: plainBase, model: "m", apiKey: nil, api: .chat).chat(request)) {
            XCTAssertTrue("\($0)".contains("HTTP 400") && "\($0)".contains("no chat template"), "\($0)")
        }
    }

    func testServeCompletionsAndGraphs() throws {
        let folder = try Fixtures.temporaryFolder()
        defer { try? FileManager.default.removeItem(at: folder) }
        let model = try Fixtures.modelWithTokenizer("tiny-gpt2", in: folder)
        let graph = folder.appendingPathComponent("hello.yaml")
        try "inputs:\n  name: text\n  photo: image\nnodes:\n  greeting: {op: template, template: \"hello {name}\", values: {name: $name}}\noutputs:\n  greeting: $greeting\n"
            .write(to: graph, atomically: true, encoding: .utf8)

        let echo = folder.appendingPathComponent("echo.yaml")
        try "inputs:\n  x: number\nnodes:\n  t: {op: template, template: \"{x}\", values: {x: $x}}\noutputs:\n  t: $t\n".write(to: echo, atomically: true, encoding: .utf8)
        let (process, base) = try startServe(["--lm", model.path, "--graph", "hello=\(graph.path)", "--graph", "echo=\(echo.path)", "--allow-path", model.path])
        defer { process.terminate(); process.waitUntilExit() }

        let client = OpenAICompletionClient(baseURL: base, model: "tiny-gpt2", apiKey: nil)
        let completion = try client.complete(CompletionRequest(prompt: "A photo of a", maxTokens: 12, temperature: 0, logprobs: true))[0]
        // Greedy: the continuation `stitch generate` prints (itself equal to transformers' generate),
        // 12 tokens as in tiny-gpt2/golden.json, each with its log-probability.
        let generated = try StitchCLI.run(["generate", "--model", model.path, "--prompt", "A photo of a", "--max-tokens", "12", "--json"])
        let reference = try JSONSerialization.jsonObject(with: Data(generated.output.utf8)) as! [String: Any]
        XCTAssertEqual(completion.text, reference["text"] as? String)
        let golden = try Fixtures.json("tiny-gpt2/golden.json") as! [String: Any]
        XCTAssertEqual(reference["tokens"] as? [Int], (golden["greedy"] as! [[Int]])[0])
        XCTAssertEqual(completion.tokens.count, 12)
        XCTAssertEqual(completion.tokens.joined(), completion.text)
        XCTAssert(completion.tokenLogprobs.allSatisfy { $0 < 0 })

        // A graph's completion component pointed at the server gives the client's text.
        let remoteGraph = folder.appendingPathComponent("remote.yaml")
        try "components:\n  lm: {kind: completion, model: tiny, url: \"\(base)\"}\ninputs:\n  prompt: text\nnodes:\n  out: {op: lm_complete, lm: lm, prompt: $prompt, max_tokens: 12}\noutputs:\n  text: $out.text\n"
            .write(to: remoteGraph, atomically: true, encoding: .utf8)
        let ran = try StitchCLI.run(["run", remoteGraph.path, "--input", "prompt=A photo of a", "--json", "--no-cache"])
        XCTAssertEqual(ran.status, 0, ran.errors)
        XCTAssertEqual((try JSONSerialization.jsonObject(with: Data(ran.output.utf8)) as? [String: Any])?["text"] as? String, completion.text)

        let post = { (path: String, body: String) in
            try HTTPClientRequest(base + path, method: .post(Data(body.utf8)), headers: ["Content-Type: application/json"]).perform()
        }
        let photo = try Data(contentsOf: Fixtures.photo("coffee.png")).base64EncodedString()
        let answer = try post("/graphs/hello", #"{"name": "zebra", "photo": {"base64": "\#(photo)"}}"#)
        XCTAssertEqual(answer.status, 200, String(decoding: answer.body, as: UTF8.self))
        XCTAssertEqual((try JSONSerialization.jsonObject(with: answer.body) as? [String: Any])?["greeting"] as? String, "hello zebra")
        // A client's number reaches the graph exactly (JSONSerialization on Linux would read this one an ulp off).
        let echoed = try post("/graphs/echo", #"{"x": 0.12345679104328156}"#)
        XCTAssertEqual((try JSONSerialization.jsonObject(with: echoed.body) as? [String: Any])?["t"] as? String, "0.12345679104328156")
        let uploads = try FileManager.default.contentsOfDirectory(atPath: NSTemporaryDirectory()).filter { $0.hasPrefix("stitch-upload-") }
        XCTAssertEqual(uploads, [], "uploaded images are removed after their request")
        // Paths on the server are refused alike whether or not the file exists; a bad upload is a 400.
        let refusals = try ["/etc/passwd", "/no/such/file.jpg", Fixtures.photo("coffee.png").path].map { path in
            try post("/graphs/hello", #"{"name": "zebra", "photo": "\#(path)"}"#)
        }
        XCTAssertEqual(refusals.map(\.status), [400, 400, 400])
        XCTAssertEqual(Set(refusals.map { String(decoding: $0.body, as: UTF8.self) }).count, 1, "\(refusals.map { String(decoding: $0.body, as: UTF8.self) })")
        XCTAssert(String(decoding: refusals[0].body, as: UTF8.self).contains("send the image as {"))
        XCTAssertEqual(try post("/graphs/hello", #"{"name": "zebra", "photo": {"base64": "%%%"}}"#).status, 400)
        // Inside a folder the operator allowed, a path is used as given.
        XCTAssertEqual(try post("/graphs/hello", #"{"name": "zebra", "photo": "\#(model.path)/config.json"}"#).status, 200)
        XCTAssertEqual(try post("/graphs/nope", "{}").status, 404)
        XCTAssertEqual(try post("/graphs/hello", #"{"nome": 1}"#).status, 400)
    }

    /// SIGTERM (as schedulers and `docker stop` send) stops serve gracefully: idle connections closed, exit status 0.
    func testServeStopsGracefullyOnSIGTERM() throws {
        let folder = try Fixtures.temporaryFolder()
        defer { try? FileManager.default.removeItem(at: folder) }
        let model = try Fixtures.modelWithTokenizer("tiny-gpt2", in: folder)
        let (process, base) = try startServe(["--lm", model.path])
        defer { if process.isRunning { process.terminate() } }
        let connection = try RawConnection(port: UInt16(base.split(separator: ":").last!)!)
        connection.send("GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n")
        XCTAssertEqual(connection.readResponse()?.status, 200)
        kill(process.processIdentifier, SIGTERM)
        XCTAssert(connection.isClosedByServer(), "the idle keep-alive connection is closed")
        process.waitUntilExit()
        XCTAssertEqual(process.terminationReason, .exit)
        XCTAssertEqual(process.terminationStatus, 0)
        let errors = String(decoding: (process.standardError as! Pipe).fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        XCTAssert(errors.hasSuffix("stitch serve: stopped\n"), errors)
    }
}
