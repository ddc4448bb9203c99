import Foundation
import StitchMethods
import StitchModelIO

/// OpenAI's /v1/completions wire format, shared by the client and `stitch serve`.
enum CompletionWire {
    static func requestBody(_ r: CompletionRequest, model: String) -> [String: Any] {
        var body: [String: Any] = ["model": model, "prompt": r.prompt, "max_tokens": r.maxTokens, "temperature": r.temperature,
                                   "top_p": r.topP, "n": r.count, "seed": r.seed]
        if !r.stop.isEmpty { body["stop"] = r.stop }
        if r.logprobs { body["logprobs"] = 1 }
        return body
    }

    static func parseRequest(_ body: Data) throws -> CompletionRequest {
        guard let json = (try? JSONSerialization.jsonObject(with: body)) as? [String: Any] else {
            throw CompletionError.invalidRequest("the body is not a JSON object")
        }
        guard let prompt = json["prompt"] as? String ?? (json["prompt"] as? [String])?.first else {
            throw CompletionError.invalidRequest("'prompt' must be a string")
        }
        func value(_ key: String) throws -> Double? {
            guard let value = json[key], !(value is NSNull) else { return nil }
            guard let number = value as? NSNumber, number.doubleValue.isFinite else { throw CompletionError.invalidRequest("'\(key)' must be a number") }
            return number.doubleValue
        }
        func number(_ key: String, _ fallback: Double, in range: ClosedRange<Double>) throws -> Double {
            guard let number = try value(key) else { return fallback }
            guard range.contains(number) else { throw CompletionError.invalidRequest("'\(key)' must lie in \(range.lowerBound)...\(range.upperBound)") }
            return number
        }
        /// A whole number in `range`; anything else (1e19, 2.5) is a bad request, never a conversion trap.
        func integer(_ key: String, _ fallback: Int, in range: ClosedRange<Int>) throws -> Int {
            guard let number = try value(key) else { return fallback }
            guard number == number.rounded(), number >= Double(range.lowerBound), number <= Double(range.upperBound) else {
                throw CompletionError.invalidRequest("'\(key)' must be a whole number in \(range.lowerBound)...\(range.upperBound)")
            }
            return Int(number)
        }
        let stop = json["stop"] as? [String] ?? (json["stop"] as? String).map { [$0] } ?? []
        var request = CompletionRequest(prompt: prompt, maxTokens: try integer("max_tokens", 16, in: 0...1 << 20),
                                        temperature: try number("temperature", 1, in: 0...100), topP: try number("top_p", 1, in: 0...1),
                                        count: try integer("n", 1, in: CompletionRequest.counts), stop: stop,
                                        logprobs: (json["logprobs"] as? NSNumber).map { $0.intValue > 0 } ?? false,
                                        seed: UInt64(try integer("seed", 0, in: 0...Int(Int32.max))))
        request.stop = Array(request.stop.prefix(4))
        return request
    }

    static func responseBody(_ completions: [Completion], model: String, logprobs: Bool) -> [String: Any] {
        let choices: [[String: Any]] = completions.enumerated().map { index, c in
            var choice: [String: Any] = ["index": index, "text": c.text, "finish_reason": c.finishReason, "logprobs": NSNull()]
            if logprobs { choice["logprobs"] = ["tokens": c.tokens, "token_logprobs": c.tokenLogprobs] }
            return choice
        }
        return ["id": "cmpl-\(UUID().uuidString.lowercased())", "object": "text_completion", "created": Int(Date().timeIntervalSince1970),
                "model": model, "choices": choices]
    }

    static func parseResponse(_ body: Data, url: String) throws -> [Completion] {
        guard let json = (try? JSONSerialization.jsonObject(with: body)) as? [String: Any], let choices = json["choices"] as? [[String: Any]] else {
            throw CompletionError.server(url: url, detail: "the response is not a completions object")
        }
        return try choices.sorted { ($0["index"] as? Int ?? 0) < ($1["index"] as? Int ?? 0) }.map { choice in
            guard let text = choice["text"] as? String else { throw CompletionError.server(url: url, detail: "a choice has no text") }
            let logprobs = choice["logprobs"] as? [String: Any]
            return Completion(text: text, tokens: logprobs?["tokens"] as? [String] ?? [],
                              tokenLogprobs: (logprobs?["token_logprobs"] as? [Any])?.compactMap { ($0 as? NSNumber)?.doubleValue } ?? [],
                              finishReason: choice["finish_reason"] as? String ?? "stop")
        }
    }
}

/// Any server speaking OpenAI's /v1/completions (a hosted LLM, a local one, `stitch serve`),
/// over libcurl: timeouts, retries with exponential backoff on connection failures, 408, 429
/// and 5xx, and errors that name the URL and quote the server's message. The API key is sent
/// as a bearer token and never appears in messages.
public struct OpenAICompletionClient: CompletionBackend {
    public let url: String
    public let model: String
    let apiKey: String?
    public var timeout = 120
    public var attempts = 4
    public var initialBackoff: TimeInterval = 1

    public var name: String { model }

    /// `baseURL` with or without its /v1 (e.g. http://127.0.0.1:8080 or https://api.openai.com/v1).
    public init(baseURL: String, model: String, apiKey: String?) {
        url = Self.serverRoot(baseURL) + "/v1/completions"
        self.model = model
        self.apiKey = apiKey
    }

    /// A server's URL without trailing slashes and without its /v1.
    static func serverRoot(_ url: String) -> String {
        var text = url
        while text.hasSuffix("/") { text.removeLast() }
        if text.hasSuffix("/v1") { text.removeLast(3) }
        return text
    }

    /// One server whether or not its URL ends in / or /v1, whatever the case of its scheme and host.
    public static func sameServer(_ a: String, _ b: String) -> Bool {
        func normal(_ url: String) -> String {
            let root = serverRoot(url)
            guard var components = URLComponents(string: root) else { return root }
            components.scheme = components.scheme?.lowercased()
            components.host = components.host?.lowercased()
            return components.string ?? root
        }
        return normal(a) == normal(b)
    }

    /// The server the user configured: STITCH_LM_BASE_URL, else OPENAI_BASE_URL (an empty value counts as unset).
    public static func configuredBaseURL(in environment: [String: String]) -> String? {
        [environment["STITCH_LM_BASE_URL"], environment["OPENAI_BASE_URL"]].compactMap { $0 }.first { !$0.isEmpty }
    }

    /// The user's API key: STITCH_LM_API_KEY, else OPENAI_API_KEY (an empty value counts as unset).
    public static func configuredAPIKey(in environment: [String: String]) -> String? {
        [environment["STITCH_LM_API_KEY"], environment["OPENAI_API_KEY"]].compactMap { $0 }.first { !$0.isEmpty }
    }

    /// The one choice between a server and a local model: a server when `url` names one or `environment` has
    /// STITCH_LM_BASE_URL (a graph passes only the API keys, so that its own option alone picks the server), else `local`.
    public static func backend(url: String?, serverModel: String, apiKey: String?, environment: [String: String] = ProcessInfo.processInfo.environment,
                               local: () throws -> CompletionBackend) throws -> CompletionBackend {
        guard url != nil || !(environment["STITCH_LM_BASE_URL"] ?? "").isEmpty else { return try local() }
        return try fromEnvironment(baseURL: url, model: serverModel, apiKey: apiKey, environment: environment)
    }

    /// Base URL and key from the arguments, else STITCH_LM_BASE_URL / STITCH_LM_API_KEY, else OPENAI_BASE_URL / OPENAI_API_KEY.
    static func fromEnvironment(baseURL: String?, model: String, apiKey: String?,
                                       environment: [String: String] = ProcessInfo.processInfo.environment) throws -> OpenAICompletionClient {
        guard let base = baseURL ?? configuredBaseURL(in: environment) else {
            throw CompletionError.invalidRequest("no server: give --lm-url or set STITCH_LM_BASE_URL")
        }
        return OpenAICompletionClient(baseURL: base, model: model, apiKey: apiKey ?? configuredAPIKey(in: environment))
    }

    public func complete(_ request: CompletionRequest) throws -> [Completion] {
        let body = try JSONSerialization.data(withJSONObject: CompletionWire.requestBody(request, model: model))
        var post = HTTPClientRequest(url, method: .post(body), headers: ["Content-Type: application/json"] + (apiKey.map { $0.isEmpty ? [] : ["Authorization: Bearer \($0)"] } ?? []))
        post.timeout = timeout
        let response: HTTPClientResponse
        do {
            response = try RetryPolicy(attempts: max(1, attempts), initialBackoff: initialBackoff).run { () throws(HTTPFailure) -> HTTPClientResponse in
                let response = try post.perform()
                guard response.status == 200 else {
                    let message = ((try? JSONSerialization.jsonObject(with: response.body)) as? [String: Any])
                        .flatMap { ($0["error"] as? [String: Any])?["message"] as? String ?? $0["error"] as? String }
                        ?? String(decoding: response.body.prefix(200), as: UTF8.self)
                    throw HTTPFailure.status(response.status, message + (response.status == 401 || response.status == 403 ? " (check the API key)" : ""))
                }
                return response
            }
        } catch {
            throw CompletionError.server(url: url, detail: error.detail)
        }
        return try CompletionWire.parseResponse(response.body, url: url)
    }
}
