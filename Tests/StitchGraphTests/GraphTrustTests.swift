import Foundation
import StitchRemote
import StitchTestSupport
import XCTest
@testable import StitchGraph

/// A graph is untrusted input: its prompt files stay inside its folder and a server it names gets no API key,
/// unless the user allows them.
final class GraphTrustTests: XCTestCase {
    var folder: URL!

    override func setUpWithError() throws {
        folder = FileManager.default.temporaryDirectory.appendingPathComponent("stitch-trust-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: folder.appendingPathComponent("graphs/prompts"), withIntermediateDirectories: true)
        try "inside".write(to: folder.appendingPathComponent("graphs/prompts/p.txt"), atomically: true, encoding: .utf8)
        try "secret".write(to: folder.appendingPathComponent("secret.txt"), atomically: true, encoding: .utf8)
        try FileManager.default.createSymbolicLink(atPath: folder.appendingPathComponent("graphs/link.txt").path,
                                                   withDestinationPath: folder.appendingPathComponent("secret.txt").path)
    }

    override func tearDownWithError() throws { try? FileManager.default.removeItem(at: folder) }

    func graph(prompt: String, trust: GraphTrust = GraphTrust()) throws -> Graph {
        let file = folder.appendingPathComponent("graphs/g.yaml")
        try "nodes:\n  a: {op: template, template: {file: \"\(prompt)\"}}\noutputs: {o: $a}\n".write(to: file, atomically: true, encoding: .utf8)
        return try Graph.load(file.path, registry: OperationRegistry.standard(trust: trust))
    }

    func testPromptFilesStayInsideTheGraphsFolderUnlessAllowed() throws {
        let loaded = try graph(prompt: "prompts/p.txt")
        XCTAssertEqual(loaded.reach(GraphTrust()), ["reads file \(folder.appendingPathComponent("graphs/prompts/p.txt").resolvingSymlinksInPath().path)"])
        for escape in ["../secret.txt", folder.appendingPathComponent("secret.txt").path, "link.txt", "prompts/../../secret.txt", "/proc/self/environ", "/etc/passwd"] {
            XCTAssertThrowsError(try graph(prompt: escape), escape) { error in
                XCTAssert("\(error)".contains("file '\(escape)' is outside the graph's folder; --allow-path FOLDER"), "\(error)")
            }
        }
        let allowed = try graph(prompt: "../secret.txt", trust: GraphTrust(readableFolders: [folder.path]))
        XCTAssertEqual(allowed.nodes["a"]?.arguments["template"].map { "\($0)" }, "\(NodeArgument.literal(.string("secret")))")
        XCTAssertThrowsError(try graph(prompt: "prompts/none.txt")) { XCTAssert("\($0)".contains("not found beside the graph"), "\($0)") }
    }

    /// The API key reaches the configured server (however its URL is spelled) and allowed ones, never another URL
    /// a graph names; `reach` says which.
    func testTheAPIKeyGoesOnlyToServersTheUserChose() async throws {
        let environment = ["STITCH_LM_BASE_URL": "https://LM.example.com/v1/", "STITCH_LM_API_KEY": "sk-user"]
        let trust = GraphTrust(keyedURLs: ["http://127.0.0.1:9/"], environment: environment)
        XCTAssertEqual(trust.apiKey(for: "https://lm.example.com"), "sk-user")
        XCTAssertEqual(trust.apiKey(for: "http://127.0.0.1:9/v1"), "sk-user")
        XCTAssertNil(trust.apiKey(for: "https://lm.example.com.evil.net/v1"))
        XCTAssertNil(GraphTrust(environment: ["STITCH_LM_API_KEY": "sk-user"]).apiKey(for: "http://127.0.0.1:9"))

        // End to end: a graph naming a server sends its request without the key, unless the user allowed that server.
        let seen = Seen()
        let server = try HTTPServer { request in
            seen.add(request.headers.first { $0.key.lowercased() == "authorization" }?.value ?? "none")
            return .json(["choices": [["text": " ok", "index": 0]]])
        }
        defer { server.stop() }
        let file = folder.appendingPathComponent("graphs/remote.yaml")
        try "components:\n  lm: {kind: completion, model: m, url: \"\(server.baseURL)\"}\nnodes:\n  out: {op: lm_complete, lm: lm, prompt: hi}\noutputs: {text: $out.text}\n"
            .write(to: file, atomically: true, encoding: .utf8)
        for allowed in [[], [server.baseURL]] {
            let registry = OperationRegistry.standard(trust: GraphTrust(keyedURLs: allowed, environment: environment))
            let loaded = try Graph.load(file.path, registry: registry)
            XCTAssertEqual(loaded.reach(registry.trust), [allowed.isEmpty
                ? "component 'lm' sends prompts to \(server.baseURL) without the API key (not the configured server; --allow-url \(server.baseURL) sends it)"
                : "component 'lm' sends prompts to \(server.baseURL) with the API key"])
            let runner = GraphRunner(graph: loaded, registry: registry, cacheFolder: nil)
            let outputs = try await runner.run(inputs: [:])
            XCTAssertEqual(outputs["text"], .string(" ok"))
        }
        XCTAssertEqual(seen.all, ["none", "Bearer sk-user"])
    }

    /// A completion component with `api: chat` asks the server's chat completions with the prompt as a user message;
    /// an unknown api is refused when the graph loads.
    func testACompletionComponentCanSpeakChat() async throws {
        let seen = Seen()
        let server = try HTTPServer { request in
            let body = (try? JSONSerialization.jsonObject(with: request.body)) as? [String: Any] ?? [:]
            let message = (body["messages"] as? [[String: Any]])?.first
            seen.add("\(request.path) \(message?["role"] as? String ?? "-"): \(message?["content"] as? String ?? "-")")
            return .json(["choices": [["index": 0, "message": ["role": "assistant", "content": " blue"], "finish_reason": "stop",
                                       "logprobs": ["content": [["token": " blue", "logprob": -0.25]]]]]])
        }
        defer { server.stop() }
        let registry = OperationRegistry.standard(trust: GraphTrust(keyedURLs: [], environment: [:]))
        for api in ["chat", "fax"] {
            let file = folder.appendingPathComponent("graphs/chat-\(api).yaml")
            try "components:\n  lm: {kind: completion, model: m, url: \"\(server.baseURL)\", api: \(api)}\nnodes:\n  out: {op: lm_complete, lm: lm, prompt: colour?}\noutputs: {text: $out.text, logprob: $out.logprob}\n"
                .write(to: file, atomically: true, encoding: .utf8)
            let runner = GraphRunner(graph: try Graph.load(file.path, registry: registry), registry: registry, cacheFolder: nil)
            if api == "fax" {
                do { _ = try await runner.run(inputs: [:]); XCTFail("api fax ran") } catch { XCTAssertTrue("\(error)".contains("completions or chat"), "\(error)") }
                continue
            }
            let outputs = try await runner.run(inputs: [:])
            XCTAssertEqual(outputs["text"], .string(" blue"))
            XCTAssertEqual(outputs["logprob"], .number(-0.25))
        }
        XCTAssertEqual(seen.all, ["/v1/chat/completions user: colour?"])
    }

    final class Seen: @unchecked Sendable {
        private let lock = NSLock()
        private var values: [String] = []
        func add(_ value: String) { lock.withLock { values.append(value) } }
        var all: [String] { lock.withLock { values } }
    }
}
