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
            XCTAssert("\(error)".contains("HTTP 400: invalid completion request: 'n' must be a whole number in 1...16"), "\(error)")
        }
    }

    /// Parameters out of range or of the wrong kind are bad requests, never a trap converting them (1e19 once crashed serve).
    func testOutOfRangeParametersAreBadRequests() {
        for body in [#"{"prompt": "x", "max_tokens": 1e19}"#, #"{"prompt": "x", "n": 1e19}"#, #"{"prompt": "x", "seed": 1e19}"#,
                     #"{"prompt": "x", "seed": -5}"#, #"{"prompt": "x", "max_tokens": 2.5}"#, #"{"prompt": "x", "max_tokens": -1}"#,
                     #"{"prompt": "x", "temperature": "hot"}"#, #"{"prompt": "x", "top_p": 7}"#, #"{"prompt": "x", "n": 0}"#] {
            XCTAssertThrowsError(try CompletionWire.parseRequest(Data(body.utf8)), body) { error in
                guard case CompletionError.invalidRequest = error else { return XCTFail("\(body): \(error)") }
            }
        }
        XCTAssertEqual(try CompletionWire.parseRequest(Data(#"{"prompt": "x", "max_tokens": 3, "n": 2, "seed": 9}"#.utf8)).count, 2)
    }

    /// Silent, stalled and trickling clients are answered 400 and dropped once the request timeout passes; a
    /// normal client is served meanwhile.
    func testSlowAndSilentClientsAreDroppedWhileOthersAreServed() throws {
        let server = try HTTPServer(requestTimeout: 1) { _ in .json(["ok": true]) }
        defer { server.stop() }
        func connection() -> Int32 {
            let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
            var address = sockaddr_in()
            address.sin_family = sa_family_t(AF_INET)
            address.sin_port = server.port.bigEndian
            inet_pton(AF_INET, "127.0.0.1", &address.sin_addr)
            _ = withUnsafePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
            var wait = timeval(tv_sec: 20, tv_usec: 0)   // the client's own limit, far above the server's
            setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &wait, socklen_t(MemoryLayout<timeval>.size))
            return fd
        }
        @Sendable func send(_ fd: Int32, _ text: String) { _ = text.withCString { Glibc.send(fd, $0, strlen($0), Int32(MSG_NOSIGNAL)) } }
        func answer(_ fd: Int32) -> String {
            var data = Data(), buffer = [UInt8](repeating: 0, count: 4096)
            while case let n = recv(fd, &buffer, buffer.count, 0), n > 0 { data.append(contentsOf: buffer[0..<n]) }
            close(fd)
            return String(decoding: data, as: UTF8.self)
        }
        let silent = connection()
        let stalled = connection()
        send(stalled, "POST /v1/completions HTTP/1.1\r\nContent-Length: 10\r\n\r\nab")
        let trickling = connection()
        let trickle = Thread {
            for byte in "POST /v1/completions HTTP/1.1\r\nX-Padding: " + String(repeating: "a", count: 40) { send(trickling, String(byte)); usleep(100_000) }
        }
        trickle.start()
        let normal = try HTTPClientRequest(server.baseURL + "/", method: .post(Data("{}".utf8))).perform()
        XCTAssertEqual(normal.status, 200)
        for (name, fd) in [("silent", silent), ("stalled", stalled), ("trickling", trickling)] {
            XCTAssert(answer(fd).hasPrefix("HTTP/1.1 400"), "\(name) client was not answered and dropped")
        }
    }

    func testRetriesErrorsAndTimeouts() throws {
        final class Counter: @unchecked Sendable { var value = 0; let lock = NSLock()
            func next() -> Int { lock.lock(); defer { lock.unlock() }; value += 1; return value } }
        let calls = Counter()
        let flaky = try HTTPServer { _ in
            calls.next() <= 2 ? .error("overloaded", status: 503)
                : .json(CompletionWire.responseBody([Completion(text: " yes", tokens: [" yes"], tokenLogprobs: [-0.5], finishReason: "stop")],
                                                    model: "m", logprobs: true))
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

        let slow = try HTTPServer { _ in Thread.sleep(forTimeInterval: 3); return .json([:]) }
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
        let prompts = ["kitchen", "park", "street"].map { place in
            pica.prompt(examples: [PICa.Example(context: "a \(place)", question: "q", answer: "a")], test: test)
        }
        let client = OpenAICompletionClient(baseURL: server.baseURL, model: "scripted", apiKey: nil)
        let result = try PICa.answer(prompts: prompts, backend: client)
        XCTAssertEqual(result.candidates.map(\.answer), ["cat", "2", "dogs"])
        XCTAssertEqual(result.candidates.map(\.logprob), [-2.0, -0.30000000000000004, -0.9])
        XCTAssertEqual(result.answer, "2", "the highest summed log-probability wins, normalised as VQA answers are")
        // Greedy, logprobs requested, stopping at the end of the line.
        XCTAssertEqual(log.prompts.count, 3)
        XCTAssert(log.prompts.allSatisfy { ($0["temperature"] as? Double) == 0 && ($0["logprobs"] as? Int) == 1 && ($0["stop"] as? [String]) == ["\n"] })
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
