import Foundation
import StitchMethods
import StitchTokenizers

/// A request the server refuses: 400 with the API's error shape, naming the parameter.
struct WireError: Error {
    let message: String
    let parameter: String?
    init(_ message: String, parameter: String? = nil) { (self.message, self.parameter) = (message, parameter) }
}

/// OpenAI's completions and chat completions wire formats, shared by the client and `stitch serve`: request
/// bodies, responses, server-sent event chunks and usage, as the API shapes them.
enum OpenAIWire {
    /// What a /v1/completions or /v1/chat/completions body asks for: one request per prompt (a chat has one).
    struct Call {
        var requests: [CompletionRequest]
        var chat: ChatRequest?
        var stream = false
        var includeUsage = false
        var count: Int { requests.first?.count ?? 1 }
    }

    // MARK: Server: parsing

    static func parseCompletions(_ body: Data) throws(WireError) -> Call {
        let json = try object(body)
        var settings = try parseSettings(json, maxTokensKey: "max_tokens", defaultMaxTokens: 16)
        switch json["logprobs"] {
        case nil, .none?: break
        case .int(let k)? where (0...5).contains(k): (settings.logprobs, settings.topLogprobs) = (true, k)
        default: throw WireError("'logprobs' must be a whole number from 0 to 5", parameter: "logprobs")
        }
        settings.echo = try flag(json, "echo")
        if json["suffix"].map({ $0 != .none }) == true { throw WireError("'suffix' is not supported", parameter: "suffix") }
        if case .int(let bestOf)? = json["best_of"], bestOf != settings.count { throw WireError("'best_of' other than n is not supported", parameter: "best_of") }
        var requests: [CompletionRequest] = []
        func add(_ text: String?, _ tokens: [Int]?) {
            var request = settings
            (request.prompt, request.promptTokens) = (text ?? "", tokens)
            requests.append(request)
        }
        let badPrompt = WireError("'prompt' must be a string, a list of strings, a list of token ids or a list of such lists", parameter: "prompt")
        switch json["prompt"] {
        case .string(let text)?: add(text, nil)
        case .array(let items)? where !items.isEmpty:
            if let ids = tokenIDs(items) { add(nil, ids); break }
            for item in items {
                switch item {
                case .string(let text): add(text, nil)
                case .array(let inner): guard let ids = tokenIDs(inner), !ids.isEmpty else { throw badPrompt }; add(nil, ids)
                default: throw badPrompt
                }
            }
        case nil, .none?: throw WireError("'prompt' is required", parameter: "prompt")
        default: throw badPrompt
        }
        guard requests.count * settings.count <= 128 else { throw WireError("at most 128 completions per request (prompts x n)", parameter: "n") }
        var call = Call(requests: requests)
        (call.stream, call.includeUsage) = try streaming(json)
        return call
    }

    static func parseChat(_ body: Data) throws(WireError) -> Call {
        let json = try object(body)
        guard case .array(let messages)? = json["messages"], !messages.isEmpty else {
            throw WireError("'messages' must be a non-empty list of messages", parameter: "messages")
        }
        var flattened: [JinjaValue] = []
        for message in messages {
            guard case .object(var fields) = message, case .string? = message["role"] else {
                throw WireError("each message needs a 'role' string", parameter: "messages")
            }
            // Content as a list of text parts (as clients send it) is their text, one part a line, as vLLM gives it to
            // templates written for text; other parts (images, audio) this model cannot take.
            if case .array(let parts)? = message["content"], let index = fields.firstIndex(where: { $0.key == "content" }) {
                var texts: [String] = []
                for part in parts {
                    guard part["type"] == .string("text"), case .string(let text)? = part["text"] else {
                        throw WireError("only text content parts are supported, got \(part["type"]?.repr ?? "a part without a type")", parameter: "messages")
                    }
                    texts.append(text)
                }
                fields[index].value = .string(texts.joined(separator: "\n"))
            }
            flattened.append(.object(fields))
        }
        let key = json["max_completion_tokens"].map { $0 != .none } == true ? "max_completion_tokens" : "max_tokens"
        var settings = try parseSettings(json, maxTokensKey: key, defaultMaxTokens: CompletionRequest.untilContextEnds)
        settings.logprobs = try flag(json, "logprobs")
        switch json["top_logprobs"] {
        case nil, .none?: break
        case .int(let k)? where (0...CompletionRequest.topLogprobsLimit).contains(k):
            guard settings.logprobs else { throw WireError("'top_logprobs' needs 'logprobs': true", parameter: "top_logprobs") }
            settings.topLogprobs = k
        default: throw WireError("'top_logprobs' must be a whole number from 0 to \(CompletionRequest.topLogprobsLimit)", parameter: "top_logprobs")
        }
        if case .object(let format)? = json["response_format"], format.contains(where: { $0.key == "type" && $0.value != .string("text") }) {
            throw WireError("only 'text' response formats are supported", parameter: "response_format")
        }
        var tools = JinjaValue.none
        switch json["tools"] {
        case nil, .none?: break
        case .array(let list)?: tools = list.isEmpty ? .none : .array(list)
        default: throw WireError("'tools' must be a list", parameter: "tools")
        }
        var call = Call(requests: [settings], chat: ChatRequest(messages: .array(flattened), tools: tools, settings: settings))
        (call.stream, call.includeUsage) = try streaming(json)
        return call
    }

    private static func object(_ body: Data) throws(WireError) -> JinjaValue {
        guard let json = try? JinjaValue(jsonText: body), case .object = json else { throw WireError("the body is not a JSON object") }
        return json
    }

    private static func tokenIDs(_ items: [JinjaValue]) -> [Int]? {
        var ids: [Int] = []
        for item in items { guard case .int(let id) = item else { return nil }; ids.append(id) }
        return ids
    }

    private static func flag(_ json: JinjaValue, _ key: String) throws(WireError) -> Bool {
        switch json[key] {
        case nil, .none?: return false
        case .bool(let value)?: return value
        default: throw WireError("'\(key)' must be true or false", parameter: key)
        }
    }

    private static func streaming(_ json: JinjaValue) throws(WireError) -> (Bool, Bool) {
        let stream = try flag(json, "stream")
        let usage = json["stream_options"].map { $0["include_usage"] == .bool(true) } ?? false
        return (stream, stream && usage)
    }

    /// The settings both APIs share.
    private static func parseSettings(_ json: JinjaValue, maxTokensKey: String, defaultMaxTokens: Int) throws(WireError) -> CompletionRequest {
        func number(_ key: String, _ fallback: Double, in range: ClosedRange<Double>) throws(WireError) -> Double {
            guard let value = json[key], value != .none else { return fallback }
            guard let number = value.numberValue, range.contains(number) else {
                throw WireError("'\(key)' must be a number from \(range.lowerBound) to \(range.upperBound)", parameter: key)
            }
            return number
        }
        /// A whole number in `range`; anything else (1e19, 2.5) is a bad request, never a conversion trap.
        func integer(_ key: String, _ fallback: Int, in range: ClosedRange<Int>) throws(WireError) -> Int {
            guard let value = json[key], value != .none else { return fallback }
            guard case .int(let number) = value, range.contains(number) else {
                throw WireError("'\(key)' must be a whole number from \(range.lowerBound) to \(range.upperBound)", parameter: key)
            }
            return number
        }
        var stop: [String] = []
        switch json["stop"] {
        case nil, .none?: break
        case .string(let text)?: stop = [text]
        case .array(let items)?:
            for item in items { guard case .string(let text) = item else { throw WireError("'stop' must be a string or a list of strings", parameter: "stop") }; stop.append(text) }
        default: throw WireError("'stop' must be a string or a list of strings", parameter: "stop")
        }
        // Streams compare each text's end with every stop string's beginnings: their length is bounded.
        guard stop.count <= 4, stop.allSatisfy({ !$0.isEmpty && $0.count <= 1000 }) else {
            throw WireError("'stop' takes up to 4 non-empty strings of at most 1000 characters", parameter: "stop")
        }
        for key in ["presence_penalty", "frequency_penalty"] where try number(key, 0, in: -2...2) != 0 {
            throw WireError("'\(key)' other than 0 is not supported", parameter: key)
        }
        if case .object(let bias)? = json["logit_bias"], !bias.isEmpty { throw WireError("'logit_bias' is not supported", parameter: "logit_bias") }
        return CompletionRequest(prompt: "", maxTokens: try integer(maxTokensKey, defaultMaxTokens, in: 0...1 << 20),
                                 temperature: try number("temperature", 1, in: 0...2), topP: try number("top_p", 1, in: 0...1),
                                 count: try integer("n", 1, in: CompletionRequest.counts), stop: stop,
                                 seed: UInt64(try integer("seed", 0, in: 0...Int(Int64.max))))
    }

    // MARK: Server: responses

    /// Log-probabilities as JSON numbers: -inf (a token the model rules out) as -9999, as vLLM writes it.
    static func logprob(_ value: Double) -> Double { value.isFinite ? value : -9999 }

    static func usage(_ completions: [Completion], count: Int) -> [String: Any] {
        // Each prompt counts once however many (`count`) choices it has.
        let prompt = stride(from: 0, to: completions.count, by: max(1, count)).reduce(0) { $0 + completions[$1].promptTokenCount }
        let generated = completions.reduce(0) { $0 + $1.completionTokenCount }
        return ["prompt_tokens": prompt, "completion_tokens": generated, "total_tokens": prompt + generated]
    }

    /// A completions choice: with echo, the prompt before the text and its tokens first (the very first unscored).
    static func completionChoice(_ c: Completion, index: Int, logprobs: Bool, textOffset: Int = 0, final: Bool = true) -> [String: Any] {
        var text = c.text, tokens = c.tokens, scores: [Any] = c.tokenLogprobs.map(logprob)
        var tops: [Any] = c.topLogprobs.map(topDictionary)
        if let echo = c.echo {
            text = echo.text + text
            tokens = echo.tokens + tokens
            if logprobs {
                scores = (echo.tokens.isEmpty ? [] : [NSNull()] + echo.tokenLogprobs.map(logprob)) + scores
                if !echo.topLogprobs.isEmpty { tops = [NSNull()] + echo.topLogprobs.dropFirst().map(topDictionary) + tops }
            }
        }
        var choice: [String: Any] = ["index": index, "text": text, "logprobs": NSNull(), "finish_reason": final ? c.finishReason : NSNull()]
        if logprobs {
            var offsets: [Int] = []
            var offset = textOffset
            for token in tokens { offsets.append(offset); offset += token.unicodeScalars.count }
            choice["logprobs"] = ["tokens": tokens, "token_logprobs": scores, "top_logprobs": tops.isEmpty && !tokens.isEmpty ? NSNull() : tops,
                                  "text_offset": offsets]
        }
        return choice
    }

    private static func topDictionary(_ top: [TokenLogprob]) -> [String: Double] {
        var dictionary: [String: Double] = [:]
        for entry in top where dictionary[entry.token] == nil { dictionary[entry.token] = logprob(entry.logprob) }
        return dictionary
    }

    /// A chat choice's logprobs: {"content": [{token, logprob, bytes, top_logprobs}]}.
    static func chatLogprobs(_ c: Completion) -> [String: Any] {
        func entry(_ token: String, _ value: Double) -> [String: Any] { ["token": token, "logprob": logprob(value), "bytes": Array(token.utf8).map(Int.init)] }
        let content: [[String: Any]] = c.tokens.indices.map { i in
            var item = entry(c.tokens[i], c.tokenLogprobs[i])
            item["top_logprobs"] = i < c.topLogprobs.count ? c.topLogprobs[i].map { entry($0.token, $0.logprob) } : []
            return item
        }
        return ["content": content, "refusal": NSNull()]
    }

    static func chatChoice(_ c: Completion, index: Int, logprobs: Bool) -> [String: Any] {
        ["index": index, "message": ["role": "assistant", "content": c.text, "refusal": NSNull()] as [String: Any],
         "logprobs": logprobs ? chatLogprobs(c) : NSNull(), "finish_reason": c.finishReason]
    }

    static func envelope(id: String, object: String, model: String, created: Int, choices: [[String: Any]]) -> [String: Any] {
        ["id": id, "object": object, "created": created, "model": model, "system_fingerprint": NSNull(), "choices": choices]
    }

    /// One server-sent event.
    static func event(_ object: Any) -> Data {
        let json = (try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys, .withoutEscapingSlashes])) ?? Data("{}".utf8)
        return Data("data: ".utf8) + json + Data("\n\n".utf8)
    }

    static let done = Data("data: [DONE]\n\n".utf8)

    // MARK: Client

    static func completionsBody(_ r: CompletionRequest, model: String) -> [String: Any] {
        var body = sharedBody(r, model: model)
        body["prompt"] = r.promptTokens.map { $0 as Any } ?? r.prompt
        if r.logprobs { body["logprobs"] = max(r.topLogprobs, 1) }   // 1 at least, as PICa's published request asks
        if r.echo { body["echo"] = true }
        return body
    }

    static func chatBody(_ r: ChatRequest, model: String) -> [String: Any] {
        var body = sharedBody(r.settings, model: model)
        body["messages"] = r.messages.foundationObject
        if r.tools != .none { body["tools"] = r.tools.foundationObject }
        if r.settings.logprobs {
            body["logprobs"] = true
            if r.settings.topLogprobs > 0 { body["top_logprobs"] = r.settings.topLogprobs }
        }
        return body
    }

    private static func sharedBody(_ r: CompletionRequest, model: String) -> [String: Any] {
        var body: [String: Any] = ["model": model, "temperature": r.temperature, "top_p": r.topP, "n": r.count, "seed": r.seed]
        if r.maxTokens != CompletionRequest.untilContextEnds { body["max_tokens"] = r.maxTokens }
        if !r.stop.isEmpty { body["stop"] = r.stop }
        return body
    }

    /// A completions or chat completions response's choices, in index order (tokens and log-probabilities when the
    /// server sent them).
    static func parseResponse(_ body: Data, url: String, chat: Bool) throws -> [Completion] {
        guard let json = try? JinjaValue(jsonText: body), case .array(let choices)? = json["choices"] else {
            throw CompletionError.server(url: url, detail: "the response is not a \(chat ? "chat completion" : "completions") object")
        }
        func index(_ choice: JinjaValue) -> Int { if case .int(let i)? = choice["index"] { return i } else { return 0 } }
        return try choices.sorted { index($0) < index($1) }.map { choice in
            var completion = Completion(text: "", finishReason: choice["finish_reason"].flatMap { $0 == .none ? nil : $0.text } ?? "stop")
            if chat {
                guard let content = choice["message"]?["content"] else { throw CompletionError.server(url: url, detail: "a choice has no message") }
                completion.text = content == .none ? "" : content.text
                if case .array(let entries)? = choice["logprobs"]?["content"] {
                    for entry in entries {
                        guard case .string(let token)? = entry["token"], let value = entry["logprob"]?.numberValue else { continue }
                        completion.tokens.append(token)
                        completion.tokenLogprobs.append(value)
                    }
                }
            } else {
                guard case .string(let text)? = choice["text"] else { throw CompletionError.server(url: url, detail: "a choice has no text") }
                completion.text = text
                if case .array(let tokens)? = choice["logprobs"]?["tokens"], case .array(let values)? = choice["logprobs"]?["token_logprobs"] {
                    completion.tokens = tokens.map(\.text)
                    completion.tokenLogprobs = values.compactMap(\.numberValue)
                }
            }
            return completion
        }
    }
}

extension JinjaValue {
    /// An int or float (not a bool) as a Double.
    var numberValue: Double? {
        switch self {
        case .int(let i): return Double(i)
        case .double(let d): return d
        default: return nil
        }
    }

    /// The value as JSONSerialization writes it.
    var foundationObject: Any {
        switch self {
        case .undefined, .none, .namespace, .function: return NSNull()
        case .bool(let b): return b
        case .int(let i): return i
        case .double(let d): return d
        case .string(let s): return s
        case .array(let items): return items.map(\.foundationObject)
        case .object(let entries): return Dictionary(entries.map { ($0.key, $0.value.foundationObject) }) { $1 }
        }
    }
}
