import StitchTensor

/// What decoding keeps per sequence between steps (keys and values of the positions fed so far).
public protocol LanguageModelCache: Sendable {
    var batch: Int { get }
    var length: Int { get }
    /// `count * batch` rows, each row repeated `count` times consecutively: candidates continuing one prefix.
    func repeated(_ count: Int) -> Self
    /// The given rows, in that order (rows may repeat): the beams or the candidate that decoding keeps.
    func gathering(_ rows: [Int]) -> Self
}

/// A token as the model scored it: its log-probability and the most likely tokens at its position.
public struct TokenScore: Sendable, Equatable {
    public let token: Int
    public let logprob: Float
    /// The most likely tokens, best first (ties to the lower id).
    public let top: [(token: Int, logprob: Float)]

    /// `token`'s score from the logits it was chosen from (log-softmax in float, as the model's own).
    public init(token: Int, logits: [Float], top count: Int) {
        var scores = Tensor(shape: [logits.count], scalars: logits)
        logSoftmaxLastDimension(&scores)
        let values = scores.scalars
        self.token = token
        logprob = values[token]
        top = count == 0 ? [] : topIndices(values, min(count, values.count)).map { ($0, values[$0]) }
    }

    public static func == (a: TokenScore, b: TokenScore) -> Bool {
        a.token == b.token && a.logprob == b.logprob && a.top.map(\.token) == b.top.map(\.token) && a.top.map(\.logprob) == b.top.map(\.logprob)
    }
}

/// A causal language model as the decoding strategies see it: hidden states through a cache,
/// and the LM head applied only to the rows that need it.
public protocol CausalLanguageModel: AnyObject, Sendable {
    associatedtype Cache: LanguageModelCache
    /// What `forwardCandidates` keeps for `keep`.
    associatedtype Candidates = Cache
    var vocabularySize: Int { get }
    var endTokenID: Int { get }
    /// Positions the model can attend over.
    var contextLength: Int { get }
    func makeCache(batch: Int) -> Cache
    /// Feeds one equal-length row of tokens per cache row; last-layer hidden states [batch, t, d].
    func forward(_ tokens: [[Int]], cache: inout Cache) throws -> Tensor
    /// LM-head logits of hidden-state rows: [..., d] -> [..., vocabularySize].
    func logits(_ hidden: Tensor) -> Tensor
    /// The text of generated ids; throws when the model has no tokenizer.
    func decode(_ ids: [Int]) throws -> String
    /// Token ids of text, with the special tokens the tokenizer puts around a text or without them (a rendered chat
    /// template writes its own); throws when the model has no tokenizer.
    func encode(_ text: String, specialTokens: Bool) throws -> [Int]
    /// The id of one whole token of the vocabulary (added tokens included), if it has it.
    func tokenID(of token: String) -> Int?
    /// Hidden states [n, d] of n one-token continuations of the single sequence in `cache`.
    func forwardCandidates(_ tokens: [Int], after cache: Cache) throws -> (hidden: Tensor, candidates: Candidates)
    /// Extends `cache` with candidate `row` of `forwardCandidates`.
    func keep(_ row: Int, of candidates: Candidates, in cache: inout Cache)
}

extension CausalLanguageModel {
    /// Token ids of text with the special tokens the tokenizer puts around it.
    public func encode(_ text: String) throws -> [Int] { try encode(text, specialTokens: true) }

    /// Token ids of a prompt; the empty prompt is the end token, from which a model starts a text.
    public func promptTokens(_ text: String) throws -> [Int] { text.isEmpty ? [endTokenID] : try encode(text) }

    /// `prompt` cut to its last tokens so that `newTokens` more fit the context: a long prompt's end holds
    /// what is being asked (used wherever prompts are assembled from other steps' text).
    public func fitted(_ prompt: [Int], leaving newTokens: Int) -> [Int] { Array(prompt.suffix(max(1, contextLength - newTokens))) }

    /// Log-probabilities of each `continuation` token after `prefix` (at least one token).
    public func logProbabilities(of continuation: [Int], after prefix: [Int]) throws -> [Float] {
        try scoredTokens(continuation, after: prefix, top: 0).map(\.logprob)
    }

    /// Each `continuation` token after `prefix` (at least one token) with its log-probability and the `top` most
    /// likely tokens at its position.
    public func scoredTokens(_ continuation: [Int], after prefix: [Int], top: Int) throws -> [TokenScore] {
        guard !prefix.isEmpty else { throw ModelError.invalidInput(model: "language model", detail: "the prefix needs at least one token") }
        guard !continuation.isEmpty else { return [] }
        var cache = makeCache(batch: 1)
        let all = prefix + continuation
        let hidden = try forward([Array(all.dropLast())], cache: &cache)
        // Only the rows that predict continuation tokens need the LM head.
        let scores = logits(hidden.row(0).rows(prefix.count - 1..<all.count - 1))   // [continuation, vocabulary]
        return continuation.enumerated().map { i, token in TokenScore(token: token, logits: scores.row(i).scalars, top: top) }
    }

    /// Candidates through n copies of the cache: what models without a shared-prefix path do,
    /// and the reference computation that tests compare the shared path with.
    public func forwardCandidatesByCopying(_ tokens: [Int], after cache: Cache) throws -> (hidden: Tensor, branch: Cache) {
        var branch = cache.repeated(tokens.count)
        let hidden = try forward(tokens.map { [$0] }, cache: &branch)
        return (hidden.reshaped([tokens.count, hidden.shape[2]]), branch)
    }
}

extension CausalLanguageModel where Candidates == Cache {
    public func forwardCandidates(_ tokens: [Int], after cache: Cache) throws -> (hidden: Tensor, candidates: Cache) {
        let (hidden, branch) = try forwardCandidatesByCopying(tokens, after: cache)
        return (hidden, branch)
    }

    public func keep(_ row: Int, of candidates: Cache, in cache: inout Cache) {
        cache = candidates.gathering([row])
    }
}
