import Foundation
import StitchMethods
import StitchModelIO
import StitchModels
import StitchTestSupport
import StitchTokenizers
import XCTest
@testable import StitchRemote

/// The OpenAI-compatible client against real servers on 127.0.0.1: the local GPT-2 behind
/// `CompletionService`, and scripted servers for retries, errors and timeouts.
final class CompletionTests: XCTestCase {
    /// Equal texts, tokens and finish reasons, and log-probabilities equal up to JSON's printed precision.
    func assertSame(_ a: [Completion], _ b: [Completion], file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertEqual(a.map(\.text), b.map(\.text), file: file, line: line)
        XCTAssertEqual(a.map(\.tokens), b.map(\.tokens), file: file, line: line)
        XCTAssertEqual(a.map(\.finishReason), b.map(\.finishReason), file: file, line: line)
        for (x, y) in zip(a, b) {
            XCTAssertEqual(x.tokenLogprobs.count, y.tokenLogprobs.count, file: file, line: line)
            for (p, q) in zip(x.tokenLogprobs, y.tokenLogprobs) { XCTAssertEqual(p, q, accuracy: 1e-9, file: file, line: line) }
        }
    }

    func testClientAgainstLocalModelServer() throws {
        let model = try TinyModels.gpt2WithTokenizer()
        let local = LocalCompletionBackend(model: model, name: "tiny-gpt2")
        let server = try HTTPServer(handler: CompletionService(backend: local).handle)
        defer { server.stop() }
        let client = OpenAICompletionClient(baseURL: server.baseURL, model: "tiny-gpt2", apiKey: "sk-test")

        let greedy = CompletionRequest(prompt: "A photo of a", maxTokens: 8, temperature: 0, logprobs: true)
        let remote = try client.complete(greedy)
        assertSame(remote, try local.complete(greedy))
        XCTAssertEqual(remote[0].tokenLogprobs.count, 8)
        // The log-probabilities are the model's own for the generated tokens.
        let ids = try model.encode(remote[0].tokens.joined())
        let expected = try model.logProbabilities(of: ids, after: model.encode("A photo of a")).map(Double.init)
        XCTAssertEqual(remote[0].tokenLogprobs.count, expected.count)
        for (a, b) in zip(remote[0].tokenLogprobs, expected) { XCTAssertEqual(a, b, accuracy: 1e-5) }

        let sampled = CompletionRequest(prompt: "Hello", maxTokens: 6, temperature: 0.9, topP: 0.95, count: 3, seed: 5)
        let samples = try client.complete(sampled)
        XCTAssertEqual(samples.count, 3)
        assertSame(samples, try local.complete(sampled))
        XCTAssertGreaterThan(Set(samples.map(\.text)).count, 1, "different seeds give different samples")

        // A stop string ends the text before it.
        let full = try local.complete(CompletionRequest(prompt: "A photo of a", maxTokens: 12, temperature: 0))[0].text
        let stop = String(full.dropFirst(3).prefix(2))
        let stopped = try client.complete(CompletionRequest(prompt: "A photo of a", maxTokens: 12, temperature: 0, stop: [stop]))[0]
        XCTAssertEqual(stopped.text, String(full[..<full.range(of: stop)!.lowerBound]))
        XCTAssertEqual(stopped.finishReason, "stop")

        // Bad requests are 400s whose message the client quotes.
        XCTAssertThrowsError(try client.complete(CompletionRequest(prompt: "x", count: 40))) { error in
            XCTAssert("\(error)".contains("HTTP 400: 'n' must be a whole number from 1 to 16"), "\(error)")
        }
    }

    /// Parameters out of range or of the wrong kind are bad requests, never a trap converting them (1e19 once crashed serve).
    func testOutOfRangeParametersAreBadRequests() {
        for body in [#"{"prompt": "x", "max_tokens": 1e19}"#, #"{"prompt": "x", "n": 1e19}"#, #"{"prompt": "x", "seed": 1e19}"#,
                     #"{"prompt": "x", "seed": -5}"#, #"{"prompt": "x", "max_tokens": 2.5}"#, #"{"prompt": "x", "max_tokens": -1}"#,
                     #"{"prompt": "x", "temperature": "hot"}"#, #"{"prompt": "x", "top_p": 7}"#, #"{"prompt": "x", "n": 0}"#] {
            XCTAssertThrowsError(try OpenAIWire.parseCompletions(Data(body.utf8)), body)
        }
        XCTAssertEqual(try OpenAIWire.parseCompletions(Data(#"{"prompt": "x", "max_tokens": 3, "n": 2, "seed": 9}"#.utf8)).count, 2)
    }

    /// Silent, stalled and trickling clients are answered 408 and dropped once the request timeout passes; a
    /// normal client is served meanwhile.
    func testSlowAndSilentClientsAreDroppedWhileOthersAreServed() throws {
        let server = try HTTPServer(requestTimeout: 1) { _ in .json(["ok": true]) }
        defer { server.stop() }
        let silent = try RawConnection(port: server.port)
        let stalled = try RawConnection(port: server.port)
        stalled.send("POST /v1/completions HTTP/1.1\r\nContent-Length: 10\r\n\r\nab")
        let trickling = try RawConnection(port: server.port)
        let trickle = Thread {
            for byte in "POST /v1/completions HTTP/1.1\r\nX-Padding: " + String(repeating: "a", count: 40) { trickling.send(String(byte)); usleep(100_000) }
        }
        trickle.start()
        let normal = try HTTPClientRequest(server.baseURL + "/", method: .post(Data("{}".utf8))).perform()
        XCTAssertEqual(normal.status, 200)
        for (name, connection) in [("silent", silent), ("stalled", stalled), ("trickling", trickling)] {
            XCTAssert(connection.readUntilClosed().hasPrefix("HTTP/1.1 408"), "\(name) client was not answered and dropped")
        }
    }

    /// Requests follow each other on one connection (keep-alive, pipelined too); a body over the limit is refused
    /// from its Content-Length, before a byte of it is read, and the connection closes; so does a chunked one once
    /// past the limit. The limit on open connections leaves descriptors for the rest of the process.
    func testKeepAliveBodyLimitsAndConnectionLimit() throws {
        let server = try HTTPServer(maximumBody: 1000) { request in .json(["bytes": request.body.count, "path": request.path]) }
        defer { server.stop() }
        let connection = try RawConnection(port: server.port)
        for body in ["{}", String(repeating: "x", count: 1000)] {
            connection.send("POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: \(body.utf8.count)\r\n\r\n\(body)")
            let answer = try XCTUnwrap(connection.readResponse())
            XCTAssertEqual(answer.status, 200)
            XCTAssertEqual((try JSONSerialization.jsonObject(with: Data(answer.body.utf8)) as? [String: Any])?["bytes"] as? Int, body.utf8.count)
        }
        connection.send("GET /b HTTP/1.1\r\nHost: x\r\n\r\nGET /c HTTP/1.1\r\nHost: x\r\n\r\n")
        XCTAssertEqual([connection.readResponse()?.body, connection.readResponse()?.body].map { $0?.contains("\"path\":\"/") }, [true, true])
        XCTAssertFalse(connection.isClosedByServer(within: 0.5))

        let oversized = try RawConnection(port: server.port)
        oversized.send("POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 50000000\r\n\r\n")
        let refusal = try XCTUnwrap(oversized.readResponse())
        XCTAssertEqual(refusal.status, 413)
        XCTAssert(refusal.body.contains("larger than the server's limit of 1000 bytes"), refusal.body)
        XCTAssert(oversized.isClosedByServer())

        let chunked = try RawConnection(port: server.port)
        chunked.send("POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        for _ in 0..<3 { chunked.send("200\r\n" + String(repeating: "y", count: 512) + "\r\n") }
        XCTAssertEqual(chunked.readResponse()?.status, 413)
        XCTAssert(chunked.isClosedByServer())

        var limit = rlimit()
        getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit)
        defer { setrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit) }
        var lowered = limit
        lowered.rlim_cur = 256
        setrlimit(Int32(RLIMIT_NOFILE.rawValue), &lowered)
        XCTAssertEqual(HTTPServer.connectionLimit(), 192, "a quarter of the descriptors (at least 64) stay for the rest")
        if limit.rlim_max >= 2048 {
            lowered.rlim_cur = 2048
            setrlimit(Int32(RLIMIT_NOFILE.rawValue), &lowered)
            XCTAssertEqual(HTTPServer.connectionLimit(), HTTPServer.maximumConnections)
        }
    }

    /// Out of connections, a new client still gets in: at the limit the server closes the connection that has waited
    /// longest for a request (an idle keep-alive one; a stalled one after its grace), never one whose request is in progress.
    func testConnectionLimitMakesRoomFromIdleConnections() throws {
        let server = try HTTPServer(connections: 2) { request in .json(["bytes": request.body.count]) }
        defer { server.stop() }
        let idle = try RawConnection(port: server.port)
        idle.send("GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        XCTAssertEqual(idle.readResponse()?.status, 200)
        let uploading = try RawConnection(port: server.port)
        uploading.send("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\nab")
        XCTAssertFalse(uploading.isClosedByServer(within: 0.3))
        let newcomer = try RawConnection(port: server.port, timeout: 5)
        newcomer.send("GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        XCTAssertEqual(newcomer.readResponse()?.status, 200, "the third connection is served at once")
        XCTAssert(idle.isClosedByServer(within: 5), "the idle keep-alive connection made room")
        uploading.send("cd")
        XCTAssertEqual(uploading.readResponse()?.body, #"{"bytes":4}"#, "the upload in progress was left alone")

        // A connection yet to send its request head is closed for room only after its grace; the server waiting at
        // the limit then makes room by itself for the client queued in the backlog.
        let full = try HTTPServer(connections: 2) { request in .json(["bytes": request.body.count]) }
        defer { full.stop() }
        let started = Date()
        let stalled = try RawConnection(port: full.port)
        stalled.send("GET / HTTP/1.1\r\nHost")
        let busy = try RawConnection(port: full.port)
        busy.send("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n")
        let queued = try RawConnection(port: full.port, timeout: 5)
        queued.send("GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        XCTAssertEqual(queued.readResponse()?.status, 200, "served, at the latest once the stalled connection's grace ended")
        XCTAssert(stalled.isClosedByServer(within: 5))
        XCTAssertGreaterThanOrEqual(Date().timeIntervalSince(started), 1, "the stalled connection was closed after its grace, not before")
        busy.send("ab")
        XCTAssertEqual(busy.readResponse()?.status, 200)
    }

    /// The server and key come from the environment in one way for every caller: STITCH_LM_* before OPENAI_*, an
    /// empty value as if unset, a URL with or without /v1.
    func testConfiguredServerAndKey() throws {
        let environment = ["STITCH_LM_BASE_URL": "", "OPENAI_BASE_URL": "http://Example.org/v1/", "STITCH_LM_API_KEY": "", "OPENAI_API_KEY": "sk-o"]
        XCTAssertEqual(OpenAICompletionClient.configuredBaseURL(in: environment), "http://Example.org/v1/")
        XCTAssertEqual(OpenAICompletionClient.configuredAPIKey(in: environment), "sk-o")
        let client = try OpenAICompletionClient.fromEnvironment(baseURL: nil, model: "m", apiKey: nil, environment: environment)
        XCTAssertEqual(client.url, "http://Example.org/v1/completions")
        XCTAssert(OpenAICompletionClient.sameServer(client.url.replacingOccurrences(of: "/v1/completions", with: ""), "HTTP://example.org/v1"))
        XCTAssertFalse(OpenAICompletionClient.sameServer("http://example.org", "http://example.org:8080"))
        let local = LocalBackendName()
        XCTAssertEqual(try OpenAICompletionClient.backend(url: nil, serverModel: "m", apiKey: nil, environment: environment) { local }.name, "local",
                       "only STITCH_LM_BASE_URL (set, not empty) sends the local choice to a server")
    }

    func testRetriesErrorsAndTimeouts() throws {
        final class Counter: @unchecked Sendable { var value = 0; let lock = NSLock()
            func next() -> Int { lock.lock(); defer { lock.unlock() }; value += 1; return value } }
        let calls = Counter()
        let flaky = try HTTPServer { _ in
            calls.next() <= 2 ? .error("overloaded", status: 503)
                : .json(OpenAIWire.envelope(id: "cmpl-1", object: "text_completion", model: "m", created: 0, choices: [
                    OpenAIWire.completionChoice(Completion(text: " yes", tokens: [" yes"], tokenLogprobs: [-0.5], finishReason: "stop"), index: 0, logprobs: true)]))
        }
        defer { flaky.stop() }
        var client = OpenAICompletionClient(baseURL: flaky.baseURL + "/v1/", model: "m", apiKey: nil)
        client.initialBackoff = 0.01
        XCTAssertEqual(try client.complete(CompletionRequest(prompt: "q", logprobs: true)).first?.totalLogprob, -0.5)
        XCTAssertEqual(calls.value, 3, "two 503s, then the answer")

        let secret = "sk-very-secret-key"
        let unauthorized = try HTTPServer { _ in .error("Incorrect API key provided", status: 401) }
        defer { unauthorized.stop() }
        XCTAssertThrowsError(try OpenAICompletionClient(baseURL: unauthorized.baseURL, model: "m", apiKey: secret).complete(CompletionRequest(prompt: "q"))) { error in
            let message = "\(error)"
            XCTAssert(message.hasPrefix("\(unauthorized.baseURL)/v1/completions: HTTP 401: Incorrect API key provided (check the API key)"), message)
            XCTAssertFalse(message.contains(secret))
        }

        let slow = try HTTPServer(blocking: { _ in Thread.sleep(forTimeInterval: 3); return .json([:]) })
        defer { slow.stop() }
        var impatient = OpenAICompletionClient(baseURL: slow.baseURL, model: "m", apiKey: nil)
        (impatient.timeout, impatient.attempts) = (1, 1)
        XCTAssertThrowsError(try impatient.complete(CompletionRequest(prompt: "q"))) { XCTAssert("\($0)".contains("Timeout"), "\($0)") }

        let gone = try HTTPServer { _ in .json([:]) }
        let address = gone.baseURL
        gone.stop()
        var unreachable = OpenAICompletionClient(baseURL: address, model: "m", apiKey: nil)
        (unreachable.attempts, unreachable.initialBackoff) = (2, 0.01)
        XCTAssertThrowsError(try unreachable.complete(CompletionRequest(prompt: "q"))) { error in
            XCTAssert("\(error)".hasPrefix("\(address)/v1/completions: ") && "\(error)".contains("after 2 attempts"), "\(error)")
        }
    }
}

/// PICa's multi-query ensemble against a server whose answers and log-probabilities are known.
final class PICaEnsembleTests: XCTestCase {
    func testEnsembleKeepsTheMostLikelyAnswer() throws {
        // Each prompt's first example decides the server's answer and its token log-probabilities.
        let script: [String: (String, [Double])] = ["kitchen": (" A cat", [-1.5, -0.5]), "park": (" Two\n", [-0.2, -0.1]), "street": (" dogs", [-0.9])]
        final class Log: @unchecked Sendable { var prompts: [[String: Any]] = []; let lock = NSLock() }
        let log = Log()
        let server = try HTTPServer { request in
            let body = (try? JSONSerialization.jsonObject(with: request.body)) as? [String: Any] ?? [:]
            log.lock.lock(); log.prompts.append(body); log.lock.unlock()
            let prompt = body["prompt"] as? String ?? ""
            let key = script.keys.first { prompt.contains("Context: a \($0)") } ?? "street"
            let (text, logprobs) = script[key]!
            return .json(["choices": [["index": 0, "text": text, "finish_reason": "stop",
                                       "logprobs": ["tokens": logprobs.map { _ in "t" }, "token_logprobs": logprobs]]]])
        }
        defer { server.stop() }
        let pica = PICa()
        let test = PICa.Example(context: "a photo", question: "How many?")
        let prompts = try ["kitchen", "park", "street"].map { place in
            try pica.prompt(examples: [PICa.Example(context: "a \(place)", question: "q", answer: "a")], test: test)
        }
        let client = OpenAICompletionClient(baseURL: server.baseURL, model: "scripted", apiKey: nil)
        let result = try PICa.answer(prompts: prompts, backend: client)
        XCTAssertEqual(result.candidates.map(\.answer), ["cat", "two", "dogs"])
        XCTAssertEqual(result.candidates.map(\.logprob), [-2.0, -0.30000000000000004, -0.9])
        XCTAssertEqual(result.answer, "two", "the highest summed log-probability wins, cleaned as the published code cleans it")
        // Greedy, at most 5 tokens, logprobs requested, stopping at the end of the line or <|endoftext|>, as published.
        XCTAssertEqual(log.prompts.count, 3)
        XCTAssert(log.prompts.allSatisfy { ($0["temperature"] as? Double) == 0 && ($0["logprobs"] as? Int) == 1 && ($0["max_tokens"] as? Int) == 5
                                           && ($0["stop"] as? [String]) == ["\n", "<|endoftext|>"] }, "\(log.prompts)")
    }
}

/// The local backend keeps the end of prompts longer than its context.
final class LocalBackendTests: XCTestCase {
    func testLongPromptsKeepTheirEnd() throws {
        let model = try TinyModels.gpt2WithTokenizer()   // 64 positions
        let backend = LocalCompletionBackend(model: model, name: "tiny")
        let long = (0..<80).map { "word\($0)" }.joined(separator: " ")
        let ids = try model.encode(long)
        XCTAssertGreaterThan(ids.count, 64)
        let tail = try model.decode(Array(ids.suffix(60)))
        XCTAssertEqual(try backend.complete(CompletionRequest(prompt: long, maxTokens: 4, temperature: 0)),
                       try backend.complete(CompletionRequest(prompt: tail, maxTokens: 4, temperature: 0)))
        XCTAssertThrowsError(try backend.complete(CompletionRequest(prompt: "x", maxTokens: 64))) { XCTAssert("\($0)".contains("no room for the prompt")) }
    }
}

/// A stand-in local backend that only has a name.
private struct LocalBackendName: CompletionBackend {
    var name: String { "local" }
    func complete(_ request: CompletionRequest, stream: CompletionStream?) throws -> [Completion] { [] }
    func chat(_ request: ChatRequest, stream: CompletionStream?) throws -> [Completion] { [] }
}
