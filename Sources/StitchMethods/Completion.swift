import Foundation
import StitchModels
import StitchTokenizers

/// A text-completion request, as OpenAI's /v1/completions takes it (one prompt; the server splits prompt lists).
public struct CompletionRequest: Sendable, Equatable {
    public var prompt: String
    /// The prompt as token ids (the API's prompt of integers), used instead of `prompt`.
    public var promptTokens: [Int]?
    public var maxTokens: Int
    /// 0 decodes greedily; otherwise tokens are sampled at this temperature.
    public var temperature: Double
    public var topP: Double
    /// Completions to return (sampled ones differ by seed).
    public var count: Int
    /// The completion stops before the first of these.
    public var stop: [String]
    /// Return each token's log-probability.
    public var logprobs: Bool
    /// With `logprobs`, the most likely tokens at each position too (at most `topLogprobsLimit`).
    public var topLogprobs: Int
    /// The prompt comes back before the completion, its tokens scored too.
    public var echo: Bool
    public var seed: UInt64

    public init(prompt: String, maxTokens: Int = 16, temperature: Double = 1, topP: Double = 1, count: Int = 1,
                stop: [String] = [], logprobs: Bool = false, topLogprobs: Int = 0, echo: Bool = false, seed: UInt64 = 0) {
        (self.prompt, self.maxTokens, self.temperature, self.topP, self.count) = (prompt, maxTokens, temperature, topP, count)
        (self.stop, self.logprobs, self.topLogprobs, self.echo, self.seed) = (stop, logprobs, topLogprobs, echo, seed)
    }

    /// max_tokens of a chat that gives none: until the turn ends or the context is full.
    public static let untilContextEnds = Int.max

    /// How many completions one request may ask for (as the server accepts).
    public static let counts = 1...16
    /// The most alternatives per position a request may ask for (the chat API's limit; completions allow 5).
    public static let topLogprobsLimit = 20

    /// Throws unless the request asks for a count in `counts`, no negative number of tokens and a top-logprobs count in range.
    public func validate() throws {
        guard Self.counts.contains(count), maxTokens >= 0, (0...Self.topLogprobsLimit).contains(topLogprobs) else {
            throw CompletionError.invalidRequest("n must be \(Self.counts.lowerBound) to \(Self.counts.upperBound), max_tokens at least 0 and top logprobs 0 to \(Self.topLogprobsLimit)")
        }
    }
}

/// A chat-completion request, as OpenAI's /v1/chat/completions takes it: a conversation, and a completion's settings
/// (their prompt and echo unused).
public struct ChatRequest: Sendable, Equatable {
    /// The conversation: {"role", "content", ...} objects, as the API and chat templates take them.
    public var messages: JinjaValue
    /// Tool definitions for templates that describe them (none: no tools).
    public var tools: JinjaValue
    public var settings: CompletionRequest

    public init(messages: JinjaValue, tools: JinjaValue = .none, settings: CompletionRequest) {
        (self.messages, self.tools, self.settings) = (messages, tools, settings)
    }

    /// One user message of `text`: a completion prompt sent to a chat server.
    public init(userMessage text: String, settings: CompletionRequest) {
        self.init(messages: .array([.object([("role", .string("user")), ("content", .string(text))])]), settings: settings)
    }
}

/// A token's text with its log-probability.
public struct TokenLogprob: Sendable, Equatable {
    public var token: String
    public var logprob: Double
    public init(token: String, logprob: Double) { (self.token, self.logprob) = (token, logprob) }
}

/// One completion: its text, and with logprobs its tokens and their log-probabilities under the model.
public struct Completion: Sendable, Equatable {
    public var text: String
    public var tokens: [String]
    public var tokenLogprobs: [Double]
    /// With top logprobs, the most likely tokens at each of `tokens`' positions.
    public var topLogprobs: [[TokenLogprob]]
    /// "stop" (end token or stop string) or "length".
    public var finishReason: String
    /// The prompt given back (echo), with its tokens scored: the first has no log-probability.
    public var echo: Echo?
    /// Tokens the prompt took (after fitting the context) and tokens generated (an end token included).
    public var promptTokenCount: Int
    public var completionTokenCount: Int

    public struct Echo: Sendable, Equatable {
        public var text: String
        public var tokens: [String]
        /// One fewer than `tokens`: nothing scores the first.
        public var tokenLogprobs: [Double]
        public var topLogprobs: [[TokenLogprob]]
        public init(text: String, tokens: [String], tokenLogprobs: [Double], topLogprobs: [[TokenLogprob]]) {
            (self.text, self.tokens, self.tokenLogprobs, self.topLogprobs) = (text, tokens, tokenLogprobs, topLogprobs)
        }
    }

    public init(text: String, tokens: [String] = [], tokenLogprobs: [Double] = [], topLogprobs: [[TokenLogprob]] = [], finishReason: String,
                echo: Echo? = nil, promptTokenCount: Int = 0, completionTokenCount: Int = 0) {
        (self.text, self.tokens, self.tokenLogprobs, self.topLogprobs, self.finishReason) = (text, tokens, tokenLogprobs, topLogprobs, finishReason)
        (self.echo, self.promptTokenCount, self.completionTokenCount) = (echo, promptTokenCount, completionTokenCount)
    }

    /// Summed log-probability of the completion's tokens (what ensembles rank by).
    public var totalLogprob: Double { tokenLogprobs.reduce(0, +) }
}

/// A piece of a completion as it is generated: `text` follows what came before; `tokens` are those the text so far
/// covers and earlier pieces did not carry. A choice's pieces, joined, are its completion's text and tokens.
public typealias CompletionStream = (_ choice: Int, _ piece: Completion) throws -> Void

/// Anything that completes text: a local language model, or a server speaking OpenAI's API.
public protocol CompletionBackend: Sendable {
    /// A name for messages and the API's "model" field.
    var name: String { get }
    /// The request's completions; with `stream`, each choice's text also arrives in pieces as it is generated.
    func complete(_ request: CompletionRequest, stream: CompletionStream?) throws -> [Completion]
    /// The conversation's next assistant messages, as completions.
    func chat(_ request: ChatRequest, stream: CompletionStream?) throws -> [Completion]
}

extension CompletionBackend {
    public func complete(_ request: CompletionRequest) throws -> [Completion] { try complete(request, stream: nil) }
    public func chat(_ request: ChatRequest) throws -> [Completion] { try chat(request, stream: nil) }
}

/// A causal language model running in this process. Prompts longer than its context minus max_tokens keep their last
/// tokens. Chat goes through the model's chat template (tokenizer_config.json), the turn ending at its eos_token.
public struct LocalCompletionBackend: CompletionBackend {
    public let model: any CausalLanguageModel
    public let name: String
    public let chatTemplate: ChatTemplate?

    public init(model: any CausalLanguageModel, name: String, chatTemplate: ChatTemplate? = nil) {
        (self.model, self.name, self.chatTemplate) = (model, name, chatTemplate)
    }

    public func complete(_ request: CompletionRequest, stream: CompletionStream?) throws -> [Completion] {
        try generate(request, prompt: request.promptTokens.map { .tokens($0) } ?? .text(request.prompt, specialTokens: true), endTokens: [], stream: stream, with: model)
    }

    public func chat(_ request: ChatRequest, stream: CompletionStream?) throws -> [Completion] {
        guard let chatTemplate else {
            throw CompletionError.invalidRequest("the model \(name) has no chat template (tokenizer_config.json's chat_template): use the completions API")
        }
        let text: String
        do {
            text = try chatTemplate.render(messages: request.messages, tools: request.tools, addGenerationPrompt: true)
        } catch {
            throw CompletionError.invalidRequest("the chat template of \(name) cannot render the conversation: \(error.message)")
        }
        // The template writes its special tokens, and ends each turn with the eos_token it names.
        let endTokens = chatTemplate.specialTokens["eos_token"].flatMap { model.tokenID(of: $0.text) }.map { [$0] } ?? []
        var settings = request.settings
        settings.echo = false
        return try generate(settings, prompt: .text(text, specialTokens: false), endTokens: endTokens, stream: stream, with: model)
    }

    enum Prompt { case text(String, specialTokens: Bool), tokens([Int]) }

    private func generate<Model: CausalLanguageModel>(_ request: CompletionRequest, prompt: Prompt, endTokens: [Int], stream: CompletionStream?,
                                                      with model: Model) throws -> [Completion] {
        try request.validate()
        let untilContextEnds = request.maxTokens == CompletionRequest.untilContextEnds
        guard untilContextEnds || request.maxTokens < model.contextLength else {
            throw CompletionError.invalidRequest("max_tokens \(request.maxTokens) leaves no room for the prompt in the context of \(model.contextLength)")
        }
        var ids: [Int]
        switch prompt {
        case .text(let text, true): ids = try model.promptTokens(text)
        case .text(let text, false): ids = text.isEmpty ? [model.endTokenID] : try model.encode(text, specialTokens: false)
        case .tokens(let tokens):
            guard !tokens.isEmpty, tokens.allSatisfy({ (0..<model.vocabularySize).contains($0) }) else {
                throw CompletionError.invalidRequest("a prompt of token ids needs at least one id, each in 0..<\(model.vocabularySize)")
            }
            ids = tokens
        }
        // A prompt longer than the context keeps its last tokens (its end holds the question being asked).
        ids = model.fitted(ids, leaving: untilContextEnds ? 1 : request.maxTokens)
        var request = request
        if untilContextEnds { request.maxTokens = model.contextLength - ids.count }
        let top = request.logprobs ? request.topLogprobs : 0
        let echo = request.echo ? try echoed(ids, prompt: prompt, top: top, logprobs: request.logprobs, model: model) : nil
        let ends = Set([model.endTokenID] + endTokens)
        return try (0..<request.count).map { index in
            let stop = StopConditions(maxTokens: request.maxTokens, strings: request.stop, endTokens: endTokens)
            var scores: [TokenScore] = []
            var streamer = stream.map { TextStreamer(choice: index, stop: request.stop, prompt: ids, echo: echo, send: $0) }
            var generated: [Int] = []
            let onToken = { (token: Int, logits: [Float]) throws in
                generated.append(token)
                if request.logprobs { scores.append(TokenScore(token: token, logits: logits, top: top)) }
                try streamer?.advance(generated: generated, scores: scores, model: model, ends: ends)
            }
            if request.maxTokens > 0 {
                if request.temperature == 0 {
                    _ = try greedyDecode(model, prompt: ids, stop: stop, onToken: onToken)
                } else {
                    // top_p 0 keeps the most likely token alone, as its limit does.
                    let sampling = SamplingSettings(temperature: Float(request.temperature), topP: max(Float(request.topP), .leastNormalMagnitude),
                                                    seed: request.seed &+ UInt64(index))
                    _ = try sampleDecode(model, prompt: ids, settings: sampling, stop: stop, onToken: onToken)
                }
            }
            let produced = generated.count
            var finish = generated.count < request.maxTokens || generated.last.map(ends.contains) == true ? "stop" : "length"
            if let end = generated.firstIndex(where: ends.contains) { generated = Array(generated[..<end]) }
            var text = try model.decode(generated)
            // The text stops before the first stop string; tokens are kept while they lie before it.
            if let before = textBeforeStop(text, request.stop) {
                text = before
                finish = "stop"
                while !generated.isEmpty, try model.decode(generated).count > text.count { generated.removeLast() }
            }
            var completion = Completion(text: text, finishReason: finish, echo: echo, promptTokenCount: ids.count, completionTokenCount: produced)
            if request.logprobs {
                let kept = Array(scores.prefix(generated.count))
                (completion.tokens, completion.topLogprobs) = try tokenTexts(generated, scores: kept, after: ids, model: model)
                completion.tokenLogprobs = kept.map { Double($0.logprob) }
            }
            try streamer?.finish(completion)
            return completion
        }
    }

    /// The prompt given back: its text as sent (or its tokens' text) and, with logprobs, its tokens scored.
    private func echoed<Model: CausalLanguageModel>(_ ids: [Int], prompt: Prompt, top: Int, logprobs: Bool, model: Model) throws -> Completion.Echo {
        var text = try model.decode(ids)
        if case .text(let given, _) = prompt, given.hasSuffix(text) { text = given }
        guard logprobs else { return Completion.Echo(text: text, tokens: [], tokenLogprobs: [], topLogprobs: []) }
        let scores = try model.scoredTokens(Array(ids.dropFirst()), after: [ids[0]], top: top)
        let (texts, alternatives) = try tokenTexts(Array(ids.dropFirst()), scores: scores, after: [ids[0]], model: model)
        return Completion.Echo(text: text, tokens: [try model.decode([ids[0]])] + texts, tokenLogprobs: scores.map { Double($0.logprob) },
                               topLogprobs: top > 0 ? [[]] + alternatives : [])
    }
}

/// `text` up to the first of the `stop` strings in it; nil when it holds none.
func textBeforeStop(_ text: String, _ stop: [String]) -> String? {
    stop.compactMap { text.range(of: $0) }.min { $0.lowerBound < $1.lowerBound }.map { String(text[..<$0.lowerBound]) }
}

/// The texts of `tokens` and of their scores' alternatives as each adds to the text before it (SentencePiece's
/// "▁bear" after "the" is " bear", as incremental detokenization gives it): the `context` tokens before the first.
func tokenTexts<Model: CausalLanguageModel>(_ tokens: [Int], scores: [TokenScore], after context: [Int], model: Model) throws -> (texts: [String], top: [[TokenLogprob]]) {
    var texts: [String] = [], top: [[TokenLogprob]] = []
    var before = context
    for (i, token) in tokens.enumerated() {
        // A few tokens before are enough for the spacing and for characters split over tokens.
        let window = Array(before.suffix(4))
        let prefix = try model.decode(window)
        func text(of next: Int) throws -> String {
            let joined = try model.decode(window + [next])
            return joined.hasPrefix(prefix) ? String(joined.dropFirst(prefix.count)) : try model.decode([next])
        }
        texts.append(try text(of: token))
        if i < scores.count, !scores[i].top.isEmpty {
            top.append(try scores[i].top.map { TokenLogprob(token: try text(of: $0.token), logprob: Double($0.logprob)) })
        }
        before.append(token)
    }
    return (texts, top)
}

/// Sends a choice's text as it grows, holding back what a later token may still change: a character whose bytes
/// are not all in (U+FFFD), trailing whitespace (tokenizers' clean-up may remove it), and an end that could begin a
/// stop string. Only text that stays a prefix of the final text is sent, so the pieces join to the completion.
struct TextStreamer {
    let choice: Int
    let stop: [String]
    /// The tokens before the generated ones (their texts follow on from it).
    let prompt: [Int]
    let send: CompletionStream
    /// The prompt given back, sent with the first piece.
    private var echo: Completion.Echo?
    private var sentText = ""
    private var sentTokens = 0

    init(choice: Int, stop: [String], prompt: [Int], echo: Completion.Echo?, send: @escaping CompletionStream) {
        (self.choice, self.stop, self.prompt, self.echo, self.send) = (choice, stop, prompt, echo, send)
    }

    private mutating func deliver(_ piece: Completion) throws {
        var piece = piece
        (piece.echo, echo) = (echo, nil)
        try send(choice, piece)
    }

    mutating func advance<Model: CausalLanguageModel>(generated: [Int], scores: [TokenScore], model: Model, ends: Set<Int>) throws {
        let kept = generated.prefix { !ends.contains($0) }
        var text = try model.decode(Array(kept))
        if let before = textBeforeStop(text, stop) { text = before }
        while let last = text.last, last == "\u{FFFD}" || last.isWhitespace { text.removeLast() }
        // The longest end of the text that begins a stop string.
        let characters = Array(text)
        var held = 0
        for string in stop {
            let stop = Array(string)
            for length in stride(from: min(stop.count - 1, characters.count), to: held, by: -1)
            where characters[(characters.count - length)...].elementsEqual(stop[..<length]) {
                held = length
                break
            }
        }
        text.removeLast(held)
        guard text.count > sentText.count, text.hasPrefix(sentText) else { return }
        // Tokens whose text the new text covers.
        var covered = sentTokens
        while covered < kept.count, try model.decode(Array(kept.prefix(covered + 1))).count <= text.count { covered += 1 }
        var piece = Completion(text: String(text.dropFirst(sentText.count)), finishReason: "")
        if !scores.isEmpty {
            let run = Array(scores[sentTokens..<covered])
            (piece.tokens, piece.topLogprobs) = try tokenTexts(Array(kept[sentTokens..<covered]), scores: run, after: prompt + kept[..<sentTokens], model: model)
            piece.tokenLogprobs = run.map { Double($0.logprob) }
        }
        (sentText, sentTokens) = (text, covered)
        try deliver(piece)
    }

    /// The rest of `completion` and its finish reason.
    mutating func finish(_ completion: Completion) throws {
        let rest = completion.text.hasPrefix(sentText) ? String(completion.text.dropFirst(sentText.count)) : ""
        var piece = Completion(text: rest, finishReason: completion.finishReason, promptTokenCount: completion.promptTokenCount,
                               completionTokenCount: completion.completionTokenCount)
        if sentTokens < completion.tokens.count {
            piece.tokens = Array(completion.tokens[sentTokens...])
            piece.tokenLogprobs = Array(completion.tokenLogprobs[sentTokens...])
            if !completion.topLogprobs.isEmpty { piece.topLogprobs = Array(completion.topLogprobs[sentTokens...]) }
        }
        try deliver(piece)
    }
}

public enum CompletionError: Error, CustomStringConvertible, Equatable {
    case invalidRequest(String)
    case server(url: String, detail: String)

    public var description: String {
        switch self {
        case let .invalidRequest(detail): return "invalid completion request: \(detail)"
        case let .server(url, detail): return "\(url): \(detail)"
        }
    }
}
