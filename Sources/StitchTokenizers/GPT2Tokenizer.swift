import Foundation

/// GPT-2's byte-level BPE tokenizer (vocab.json + merges.txt), equal to
/// transformers' GPT2TokenizerFast: no special tokens are added.
public struct GPT2Tokenizer: VocabularyTokenizer {
    let bpe: BytePairEncoder
    public let endOfTextID: Int
    /// Tokens added after training (added_tokens.json), such as MAGiC's "<-start_of_text->":
    /// matched whole in text, like <|endoftext|>.
    public let addedTokens: [String: Int]
    private let addedText: [Int: String]

    public init(vocabularyFile: String, mergesFile: String, addedTokensFile: String? = nil) throws(TokenizerError) {
        addedTokens = try addedTokensFile.map(readVocabularyJSON) ?? [:]
        addedText = Dictionary(addedTokens.map { ($1, $0) }, uniquingKeysWith: { first, _ in first })
        let vocabulary = try readVocabularyJSON(vocabularyFile)
        let merges = try parseMerges(Substring(try readText(mergesFile)), file: mergesFile)
        guard let endOfText = vocabulary["<|endoftext|>"] else {
            throw .malformed(file: vocabularyFile, line: nil, detail: "no <|endoftext|> token")
        }
        bpe = BytePairEncoder(vocabulary: vocabulary, merges: merges, endOfWord: nil)
        endOfTextID = endOfText
    }

    /// Loads vocab.json and merges.txt (and added_tokens.json when present) from a model folder.
    public init(folder: URL) throws(TokenizerError) {
        let added = folder.appendingPathComponent("added_tokens.json").path
        try self.init(vocabularyFile: folder.appendingPathComponent("vocab.json").path,
                      mergesFile: folder.appendingPathComponent("merges.txt").path,
                      addedTokensFile: FileManager.default.fileExists(atPath: added) ? added : nil)
    }

    public var vocabularySize: Int { bpe.vocabulary.count + addedText.keys.filter { bpe.idToToken[$0] == nil }.count }

    /// The id of a whole token (added tokens included).
    public func id(of token: String) -> Int? { addedTokens[token] ?? bpe.vocabulary[token] }

    /// GPT-2 puts no special tokens around a text.
    public func tokens(_ text: String) -> [Int] { encode(text) }

    public func encode(_ text: String) -> [Int] {
        encodeAroundSpecialTokens(text, addedTokens.merging(["<|endoftext|>": endOfTextID]) { _, base in base }) { part in
            Self.pretokenize(part).flatMap { bpe.encode(word: String(String.UnicodeScalarView($0)).utf8) }
        }
    }

    /// The text of `ids`; like transformers' decode, <|endoftext|> is kept as text.
    public func decode(_ ids: [Int]) -> String {
        guard !addedText.isEmpty else { return String(decoding: bpe.bytes(of: ids), as: UTF8.self) }
        let bytes = ids.flatMap { id in addedText[id].map { Array($0.utf8) } ?? bpe.bytes(of: [id]) }
        return String(decoding: bytes, as: UTF8.self)
    }

    /// The text of one token id (byte-level symbols turned back into text).
    public func token(_ id: Int) -> String? { bpe.idToToken[id] }

    /// Splits text like the GPT-2 regex
    /// `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`.
    static func pretokenize(_ text: String) -> [ArraySlice<Unicode.Scalar>] {
        let s = Array(text.unicodeScalars)
        var pieces: [ArraySlice<Unicode.Scalar>] = []
        var i = 0
        func run(from start: Int, while matches: (Unicode.Scalar) -> Bool) -> Int {
            var end = start
            while end < s.count && matches(s[end]) { end += 1 }
            return end
        }
        func isOther(_ c: Unicode.Scalar) -> Bool { !c.isSpace && !c.isLetter && !c.isNumber }
        while i < s.count {
            if let length = contractionLength(s, at: i) {
                pieces.append(s[i..<i + length]); i += length; continue
            }
            // An optional single space joins the letters, digits or symbols that follow it.
            let body = s[i] == " " && i + 1 < s.count ? i + 1 : i
            let c = s[body]
            if c.isLetter || c.isNumber || isOther(c) {
                let end: Int
                if c.isLetter { end = run(from: body, while: \.isLetter) }
                else if c.isNumber { end = run(from: body, while: \.isNumber) }
                else { end = run(from: body, while: isOther) }
                pieces.append(s[i..<end]); i = end; continue
            }
            // Whitespace: `\s+(?!\S)` leaves the last space of a run for the next word.
            let end = run(from: i, while: \.isSpace)
            if end < s.count && end - i > 1 {
                pieces.append(s[i..<end - 1]); i = end - 1
            } else {
                pieces.append(s[i..<end]); i = end
            }
        }
        return pieces
    }
}
