import Foundation

/// CLIP's BPE tokenizer, equal to transformers' CLIPTokenizerFast: NFC,
/// whitespace runs folded to one space, lower-casing, the CLIP split regex,
/// "</w>" marking word ends, and <|startoftext|> ... <|endoftext|> around at
/// most `contextLength` tokens.
public struct CLIPTokenizer: Tokenizer {
    let bpe: BytePairEncoder
    public let startID: Int
    public let endID: Int
    public let contextLength: Int

    /// From OpenAI's bpe_simple_vocab_16e6.txt.gz, building the vocabulary the way CLIP does.
    public init(bpeFile: String, contextLength: Int = 77) throws(TokenizerError) {
        guard let compressed = FileManager.default.contents(atPath: bpeFile) else {
            throw .cannotRead(file: bpeFile, reason: FileManager.default.fileExists(atPath: bpeFile) ? "unreadable" : "no such file")
        }
        let data = bpeFile.hasSuffix(".gz") ? try gunzip(compressed, file: bpeFile) : compressed
        guard let text = String(data: data, encoding: .utf8) else { throw .malformed(file: bpeFile, line: nil, detail: "not UTF-8 text") }
        // Line 1 is a version header; CLIP uses the next 49152 - 256 - 2 merges.
        let lines = text.split(separator: "\n", omittingEmptySubsequences: false)
        let mergeCount = 49152 - 256 - 2
        guard lines.count > mergeCount else {
            throw .malformed(file: bpeFile, line: nil, detail: "\(lines.count) lines, CLIP needs \(mergeCount + 1)")
        }
        let merges = try parseMerges(lines[1...mergeCount].joined(separator: "\n")[...], file: bpeFile, firstLineNumber: 2)
        var tokens = byteLevelAlphabet + byteLevelAlphabet.map { $0 + "</w>" }
        tokens += merges.map { $0.0 + $0.1 }
        tokens += ["<|startoftext|>", "<|endoftext|>"]
        var vocabulary: [String: Int] = [:]
        for (id, token) in tokens.enumerated() { vocabulary[token] = id }
        try self.init(vocabulary: vocabulary, merges: merges, contextLength: contextLength, file: bpeFile)
    }

    /// From a Hugging Face CLIP folder's vocab.json and merges.txt, or else
    /// OpenAI's bpe_simple_vocab_16e6.txt.gz in the folder.
    public init(folder: URL, contextLength: Int = 77) throws(TokenizerError) {
        let openAI = folder.appendingPathComponent(Self.openAIVocabularyFile).path
        if !FileManager.default.fileExists(atPath: folder.appendingPathComponent("vocab.json").path),
           FileManager.default.fileExists(atPath: openAI) {
            try self.init(bpeFile: openAI, contextLength: contextLength)
            return
        }
        let vocabularyFile = folder.appendingPathComponent("vocab.json").path
        let mergesFile = folder.appendingPathComponent("merges.txt").path
        try self.init(vocabulary: try readVocabularyJSON(vocabularyFile),
                      merges: try parseMerges(Substring(try readText(mergesFile)), file: mergesFile),
                      contextLength: contextLength, file: vocabularyFile)
    }

    private init(vocabulary: [String: Int], merges: [(String, String)], contextLength: Int, file: String) throws(TokenizerError) {
        guard let start = vocabulary["<|startoftext|>"], let end = vocabulary["<|endoftext|>"] else {
            throw .malformed(file: file, line: nil, detail: "no <|startoftext|> / <|endoftext|> tokens")
        }
        guard contextLength >= 2 else { throw .malformed(file: file, line: nil, detail: "context length \(contextLength) leaves no room for text") }
        bpe = BytePairEncoder(vocabulary: vocabulary, merges: merges, endOfWord: "</w>")
        startID = start
        endID = end
        self.contextLength = contextLength
    }

    public var vocabularySize: Int { bpe.vocabulary.count }

    /// The name OpenAI's CLIP gives its BPE file.
    public static let openAIVocabularyFile = "bpe_simple_vocab_16e6.txt.gz"

    /// Whether `folder` holds CLIP tokenizer files of either form.
    public static func isPresent(in folder: URL) -> Bool {
        ["vocab.json", openAIVocabularyFile].contains { FileManager.default.fileExists(atPath: folder.appendingPathComponent($0).path) }
    }

    /// <|startoftext|>, the first contextLength - 2 text tokens, <|endoftext|>.
    public func encode(_ text: String) -> [Int] { encode(text, tokenization: .current) }

    /// `encode` as `tokenization` has it (see `encodeWithoutSpecialTokens`).
    public func encode(_ text: String, tokenization: Transformers47.Tokenization) -> [Int] {
        [startID] + encodeWithoutSpecialTokens(text, tokenization: tokenization).prefix(contextLength - 2) + [endID]
    }

    /// Text tokens only: no start/end tokens and no truncation.
    /// Special-token strings in `text` still map to their ids, as in transformers. The rest is normalized as
    /// CLIPTokenizerFast does (`.current`), or as transformers 4.7.0's slow CLIPTokenizer did without ftfy (what MAGiC's
    /// published code ran): BERT's BasicTokenizer (`Transformers47`), its words joined with spaces, no NFC. Then both
    /// apply the CLIP split regex and BPE.
    public func encodeWithoutSpecialTokens(_ text: String, tokenization: Transformers47.Tokenization = .current) -> [Int] {
        encodeAroundSpecialTokens(text, ["<|startoftext|>": startID, "<|endoftext|>": endID]) { part in
            let normalized = tokenization == .current ? Self.normalize(part) : Transformers47.basicTokenize(part).joined(separator: " ")
            return Self.pretokenize(normalized).flatMap { bpe.encode(word: String(String.UnicodeScalarView($0)).utf8) }
        }
    }

    /// The text of `ids` without the start and end tokens.
    public func decode(_ ids: [Int]) -> String {
        let bytes = bpe.bytes(of: ids.filter { $0 != startID && $0 != endID }, stripping: "</w>", wordSeparator: UInt8(ascii: " "))
        return String(decoding: bytes, as: UTF8.self).trimmingCharacters(in: .whitespaces)
    }

    /// NFC, then every whitespace run becomes one space, then per-scalar lower case.
    static func normalize(_ text: String) -> String {
        var out = String.UnicodeScalarView()
        var inSpace = false
        for scalar in text.precomposedStringWithCanonicalMapping.unicodeScalars {
            if scalar.isSpace {
                if !inSpace { out.append(" ") }
                inSpace = true
            } else {
                out.append(contentsOf: scalar.lowercased.unicodeScalars)
                inSpace = false
            }
        }
        return String(out)
    }

    /// Splits like `'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+`, dropping whitespace.
    static func pretokenize(_ text: String) -> [ArraySlice<Unicode.Scalar>] {
        let s = Array(text.unicodeScalars)
        var pieces: [ArraySlice<Unicode.Scalar>] = []
        var i = 0
        while i < s.count {
            let c = s[i]
            var end = i + 1
            if let length = contractionLength(s, at: i) {
                end = i + length
            } else if c.isSpace {
                i += 1
                continue
            } else if c.isLetter {
                while end < s.count && s[end].isLetter { end += 1 }
            } else if !c.isNumber {   // digits are split one by one
                while end < s.count && !s[end].isSpace && !s[end].isLetter && !s[end].isNumber { end += 1 }
            }
            pieces.append(s[i..<end])
            i = end
        }
        return pieces
    }
}
