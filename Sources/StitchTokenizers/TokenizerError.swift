public enum TokenizerError: Error, CustomStringConvertible, Equatable {
    case cannotRead(file: String, reason: String)
    case malformed(file: String, line: Int?, detail: String)

    public var description: String {
        switch self {
        case let .cannotRead(file, reason): return "\(file): cannot read tokenizer file: \(reason)"
        case let .malformed(file, line, detail):
            return "\(file)\(line.map { ":\($0)" } ?? ""): malformed tokenizer file: \(detail)"
        }
    }
}

/// Text to token ids and back. Most tokenizers cannot fail once loaded; those running a file's regexes can (a pattern
/// that backtracks without bound is an error, not a hang).
public protocol Tokenizer: Sendable {
    /// Token ids of `text`, including the model's special tokens where it uses them.
    func encode(_ text: String) throws(TokenizerError) -> [Int]
    /// Text of `ids`.
    func decode(_ ids: [Int]) throws(TokenizerError) -> String
}

/// A tokenizer that can name the id of one whole token (special tokens included), as language models need for
/// their start and stop tokens.
public protocol VocabularyTokenizer: Tokenizer {
    func id(of token: String) -> Int?
    /// Token ids of `text` without the special tokens the tokenizer puts around a text (transformers'
    /// add_special_tokens=False): what a rendered chat template, which writes its own, needs.
    func tokens(_ text: String) throws(TokenizerError) -> [Int]
}
