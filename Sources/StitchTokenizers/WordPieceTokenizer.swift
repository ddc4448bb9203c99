import Foundation

/// BERT's uncased WordPiece tokenizer (all-MiniLM-L6-v2), equal to the Rust
/// tokenizers' BertNormalizer + BertPreTokenizer + WordPiece + [CLS]/[SEP].
public struct WordPieceTokenizer: Tokenizer {
    let vocabulary: [String: Int]
    let idToToken: [String]
    public let unknownID: Int
    public let classID: Int
    public let separatorID: Int
    public let paddingID: Int
    /// Longest input in tokens including [CLS] and [SEP]; longer text is truncated.
    public var maximumLength: Int
    let lowercase: Bool
    static let maximumCharactersPerWord = 100

    /// From a vocab.txt (one token per line, the line number is the id).
    public init(vocabularyFile: String, lowercase: Bool = true, maximumLength: Int = 512) throws(TokenizerError) {
        let lines = try readText(vocabularyFile).split(separator: "\n", omittingEmptySubsequences: false).map {
            $0.hasSuffix("\r") ? String($0.dropLast()) : String($0)
        }
        let tokens = lines.last == "" ? Array(lines.dropLast()) : lines
        var vocabulary: [String: Int] = [:]
        for (id, token) in tokens.enumerated() where vocabulary[token] == nil { vocabulary[token] = id }
        func id(_ token: String) throws(TokenizerError) -> Int {
            guard let id = vocabulary[token] else { throw .malformed(file: vocabularyFile, line: nil, detail: "no \(token) token") }
            return id
        }
        self.vocabulary = vocabulary
        idToToken = tokens
        unknownID = try id("[UNK]")
        classID = try id("[CLS]")
        separatorID = try id("[SEP]")
        paddingID = try id("[PAD]")
        self.lowercase = lowercase
        self.maximumLength = maximumLength
    }

    /// From a model folder's vocab.txt.
    public init(folder: URL, maximumLength: Int = 512) throws(TokenizerError) {
        try self.init(vocabularyFile: folder.appendingPathComponent("vocab.txt").path, maximumLength: maximumLength)
    }

    /// [CLS], the word pieces (cut to fit `maximumLength`), [SEP].
    public func encode(_ text: String) -> [Int] {
        [classID] + tokens(text).prefix(max(maximumLength - 2, 0)) + [separatorID]
    }

    /// The word pieces of `text` alone, special tokens written in it kept whole.
    public func tokens(_ text: String) -> [Int] {
        encodeAroundSpecialTokens(text, specialIDs) { part in Self.pretokenize(normalize(part)).flatMap(wordPieces) }
    }

    /// The id of a token of vocab.txt.
    public func id(of token: String) -> Int? { vocabulary[token] }

    private var specialIDs: [String: Int] {
        ["[PAD]": paddingID, "[UNK]": unknownID, "[CLS]": classID, "[SEP]": separatorID, "[MASK]": vocabulary["[MASK]"]].compactMapValues { $0 }
    }

    /// The text of `ids` as BertTokenizerFast.decode(skip_special_tokens=True) gives it: special tokens and ids beyond
    /// vocab.txt (added tokens such as BLIP's [DEC]) left out, "##" pieces joined to the word before them (a first piece
    /// keeps its "##", as the tokenizers library's WordPiece decoder does), then transformers' clean-up of the spaces
    /// before punctuation and contractions.
    public func decode(_ ids: [Int]) -> String {
        let special = Set(specialIDs.values)
        var text = ""
        for (index, id) in ids.filter({ $0 >= 0 && $0 < idToToken.count && !special.contains($0) }).enumerated() {
            let token = idToToken[id]
            if index > 0, token.hasPrefix("##") { text += token.dropFirst(2) } else { text += (index == 0 ? "" : " ") + token }
        }
        return Transformers47.cleanUpTokenization(text)
    }

    /// BertNormalizer: drop NUL, U+FFFD and control characters, map whitespace to
    /// spaces, pad CJK ideographs with spaces, then (uncased) strip accents and lower-case.
    func normalize(_ text: String) -> String {
        let cleaned = Self.clean(text)
        guard lowercase else { return String(cleaned) }
        var out = String.UnicodeScalarView()
        for c in String(cleaned).decomposedStringWithCanonicalMapping.unicodeScalars
        where c.properties.generalCategory != .nonspacingMark {
            out.append(contentsOf: c.lowercased.unicodeScalars)
        }
        return String(out)
    }

    /// BERT's text clean-up, the same in its Rust normalizer and Python BasicTokenizer once words are split at
    /// whitespace: NUL, U+FFFD and control characters dropped, whitespace made spaces, CJK ideographs spaced out.
    static func clean(_ text: String) -> String.UnicodeScalarView {
        var cleaned = String.UnicodeScalarView()
        for c in text.unicodeScalars {
            if c.value == 0 || c.value == 0xFFFD || isControl(c) { continue }
            if c == "\t" || c == "\n" || c == "\r" || c.isSpace { cleaned.append(" "); continue }
            if isCJK(c) { cleaned.append(contentsOf: [" ", c, " "]) } else { cleaned.append(c) }
        }
        return cleaned
    }

    /// Rust's char "other" categories (Cc, Cf, Co, Cn), except the whitespace controls.
    static func isControl(_ c: Unicode.Scalar) -> Bool {
        if c == "\t" || c == "\n" || c == "\r" { return false }
        switch c.properties.generalCategory {
        case .control, .format, .privateUse, .unassigned, .surrogate: return true
        default: return false
        }
    }

    static func isCJK(_ c: Unicode.Scalar) -> Bool {
        switch c.value {
        case 0x4E00...0x9FFF, 0x3400...0x4DBF, 0x20000...0x2A6DF, 0x2A700...0x2B73F,
             0x2B740...0x2B81F, 0x2B820...0x2CEAF, 0xF900...0xFAFF, 0x2F800...0x2FA1F: return true
        default: return false
        }
    }

    /// ASCII punctuation and symbols, or Unicode punctuation: each becomes its own word.
    static func isPunctuation(_ c: Unicode.Scalar) -> Bool {
        if c.isASCII { return (33...47).contains(c.value) || (58...64).contains(c.value) || (91...96).contains(c.value) || (123...126).contains(c.value) }
        return c.isPunctuation
    }

    /// BertPreTokenizer: split on whitespace, and isolate each punctuation character.
    static func pretokenize(_ text: String) -> [[Unicode.Scalar]] {
        var words: [[Unicode.Scalar]] = []
        var current: [Unicode.Scalar] = []
        for c in text.unicodeScalars {
            if c.isSpace || isPunctuation(c) {
                if !current.isEmpty { words.append(current); current = [] }
                if !c.isSpace { words.append([c]) }
            } else {
                current.append(c)
            }
        }
        if !current.isEmpty { words.append(current) }
        return words
    }

    /// Greedy longest-match-first pieces ("##" marks continuations); [UNK] for the whole word if any part fails.
    func wordPieces(_ word: [Unicode.Scalar]) -> [Int] {
        if word.count > Self.maximumCharactersPerWord { return [unknownID] }
        var ids: [Int] = []
        var start = 0
        while start < word.count {
            var end = word.count
            var found: Int?
            while start < end {
                let piece = (start > 0 ? "##" : "") + String(String.UnicodeScalarView(word[start..<end]))
                if let id = vocabulary[piece] { found = id; break }
                end -= 1
            }
            guard let found else { return [unknownID] }
            ids.append(found)
            start = end
        }
        return ids
    }
}
