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

/// A causal language model as the decoding strategies see it: hidden states through a cache,
/// and the LM head applied only to the rows that need it.
public protocol CausalLanguageModel: AnyObject, Sendable {
    associatedtype Cache: LanguageModelCache
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
}
