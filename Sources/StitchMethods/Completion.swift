import Foundation
import StitchModels

/// A text-completion request, as OpenAI's /v1/completions takes it.
public struct CompletionRequest: Sendable, Equatable {
    public var prompt: String
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
    public var seed: UInt64

    public init(prompt: String, maxTokens: Int = 16, temperature: Double = 1, topP: Double = 1, count: Int = 1,
                stop: [String] = [], logprobs: Bool = false, seed: UInt64 = 0) {
        (self.prompt, self.maxTokens, self.temperature, self.topP, self.count) = (prompt, maxTokens, temperature, topP, count)
        (self.stop, self.logprobs, self.seed) = (stop, logprobs, seed)
    }

    /// How many completions one request may ask for (as the server accepts).
    public static let counts = 1...16

    /// Throws unless the request asks for a count in `counts` and no negative number of tokens.
    public func validate() throws {
        guard Self.counts.contains(count), maxTokens >= 0 else {
            throw CompletionError.invalidRequest("n must be \(Self.counts.lowerBound) to \(Self.counts.upperBound) and max_tokens at least 0")
        }
    }
}

/// One completion: its text, and with logprobs its tokens and their log-probabilities under the model.
public struct Completion: Sendable, Equatable {
    public var text: String
    public var tokens: [String]
    public var tokenLogprobs: [Double]
    /// "stop" (end token or stop string) or "length".
    public var finishReason: String

    public init(text: String, tokens: [String] = [], tokenLogprobs: [Double] = [], finishReason: String) {
        (self.text, self.tokens, self.tokenLogprobs, self.finishReason) = (text, tokens, tokenLogprobs, finishReason)
    }

    /// Summed log-probability of the completion's tokens (what ensembles rank by).
    public var totalLogprob: Double { tokenLogprobs.reduce(0, +) }
}

/// Anything that completes text: the local GPT-2, or a server speaking OpenAI's completions API.
public protocol CompletionBackend: Sendable {
    /// A name for messages and the API's "model" field.
    var name: String { get }
    func complete(_ request: CompletionRequest) throws -> [Completion]
}

/// A causal language model running in this process. Prompts longer than its context minus max_tokens keep their last tokens.
public struct LocalCompletionBackend: CompletionBackend {
    public let model: any CausalLanguageModel
    public let name: String

    public init(model: any CausalLanguageModel, name: String) {
        self.model = model
        self.name = name
    }

    public func complete(_ request: CompletionRequest) throws -> [Completion] { try complete(request, with: model) }

    private func complete<Model: CausalLanguageModel>(_ request: CompletionRequest, with model: Model) throws -> [Completion] {
        try request.validate()
        guard request.maxTokens < model.contextLength else {
            throw CompletionError.invalidRequest("max_tokens \(request.maxTokens) leaves no room for the prompt in the context of \(model.contextLength)")
        }
        // A prompt longer than the context keeps its last tokens (its end holds the question being asked).
        let prompt = model.fitted(try model.promptTokens(request.prompt), leaving: request.maxTokens)
        return try (0..<request.count).map { index in
            let options = DecodingOptions(strategy: request.temperature == 0 ? .greedy : .sample, maxTokens: request.maxTokens, stop: request.stop,
                                          sampling: SamplingSettings(temperature: Float(request.temperature), topP: Float(request.topP), seed: request.seed &+ UInt64(index)))
            var generated = request.maxTokens == 0 ? [] : try decode(model, prompt: prompt, options: options)
            var finish = generated.count < request.maxTokens || generated.last == model.endTokenID ? "stop" : "length"
            if let end = generated.firstIndex(of: model.endTokenID) { generated = Array(generated[..<end]) }
            var text = try model.decode(generated)
            // The text stops before the first stop string; tokens are kept while they lie before it.
            if let cut = request.stop.compactMap({ text.range(of: $0) }).min(by: { $0.lowerBound < $1.lowerBound }) {
                text = String(text[..<cut.lowerBound])
                finish = "stop"
                while !generated.isEmpty, try model.decode(generated).count > text.count { generated.removeLast() }
            }
            guard request.logprobs else { return Completion(text: text, finishReason: finish) }
            let logprobs = generated.isEmpty ? [] : try model.logProbabilities(of: generated, after: prompt).map(Double.init)
            return Completion(text: text, tokens: try generated.map { try model.decode([$0]) }, tokenLogprobs: logprobs, finishReason: finish)
        }
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
