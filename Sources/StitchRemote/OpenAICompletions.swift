import Foundation
import StitchMethods
import StitchModelIO

/// Which of OpenAI's APIs a server is spoken to through: completions take the prompt as it is; chat sends it as one
/// user message (many hosted models offer only chat), the log-probabilities of the reply's tokens coming back alike.
public enum OpenAIAPI: String, Sendable, CaseIterable {
    case completions, chat
}

/// Any server speaking OpenAI's /v1/completions or /v1/chat/completions (a hosted LLM, a local one, `stitch serve`),
/// over libcurl: timeouts, retries with exponential backoff on connection failures, 408, 429
/// and 5xx, and errors that name the URL and quote the server's message. The API key is sent
/// as a bearer token and never appears in messages. Responses arrive whole (a stream gets each choice in one piece).
public struct OpenAICompletionClient: CompletionBackend {
    public let root: String
    public let model: String
    public private(set) var api: OpenAIAPI
    let apiKey: String?
    public var timeout = 120
    public var attempts = 4
    public var initialBackoff: TimeInterval = 1

    public var name: String { model }

    /// `baseURL` with or without its /v1 (e.g. http://127.0.0.1:8080 or https://api.openai.com/v1).
    public init(baseURL: String, model: String, apiKey: String?, api: OpenAIAPI = .completions) {
        root = Self.serverRoot(baseURL)
        (self.model, self.apiKey, self.api) = (model, apiKey, api)
    }

    /// The endpoint `api` posts to.
    public var url: String { root + (api == .chat ? "/v1/chat/completions" : "/v1/completions") }

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
    public static func backend(url: String?, serverModel: String, apiKey: String?, api: OpenAIAPI = .completions,
                               environment: [String: String] = ProcessInfo.processInfo.environment,
                               local: () throws -> CompletionBackend) throws -> CompletionBackend {
        guard url != nil || !(environment["STITCH_LM_BASE_URL"] ?? "").isEmpty else { return try local() }
        return try fromEnvironment(baseURL: url, model: serverModel, apiKey: apiKey, api: api, environment: environment)
    }

    /// Base URL and key from the arguments, else STITCH_LM_BASE_URL / STITCH_LM_API_KEY, else OPENAI_BASE_URL / OPENAI_API_KEY.
    static func fromEnvironment(baseURL: String?, model: String, apiKey: String?, api: OpenAIAPI = .completions,
                                environment: [String: String] = ProcessInfo.processInfo.environment) throws -> OpenAICompletionClient {
        guard let base = baseURL ?? configuredBaseURL(in: environment) else {
            throw CompletionError.invalidRequest("no server: give --lm-url or set STITCH_LM_BASE_URL")
        }
        return OpenAICompletionClient(baseURL: base, model: model, apiKey: apiKey ?? configuredAPIKey(in: environment), api: api)
    }

    public func complete(_ request: CompletionRequest, stream: CompletionStream?) throws -> [Completion] {
        guard api == .completions else { return try chat(ChatRequest(userMessage: request.prompt, settings: request), stream: stream) }
        return try post(OpenAIWire.completionsBody(request, model: model), chat: false, stream: stream)
    }

    public func chat(_ request: ChatRequest, stream: CompletionStream?) throws -> [Completion] {
        var client = self
        client.api = .chat
        return try client.post(OpenAIWire.chatBody(request, model: model), chat: true, stream: stream)
    }

    private func post(_ json: [String: Any], chat: Bool, stream: CompletionStream?) throws -> [Completion] {
        let url = self.url
        let body = try JSONSerialization.data(withJSONObject: json)
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
        let completions = try OpenAIWire.parseResponse(response.body, url: url, chat: chat)
        for (index, completion) in completions.enumerated() { try stream?(index, completion) }
        return completions
    }
}
