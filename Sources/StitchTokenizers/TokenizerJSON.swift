import Foundation
import StitchTensor

/// A Hugging Face `tokenizer.json` (the tokenizers library's format), for the components the current open model
/// families use: byte-level BPE with GPT-2, Llama 3 or Qwen2 split patterns and digit splitting (GPT-2, Llama 3, Qwen2,
/// SmolLM), SentencePiece-style BPE with byte fallback, Metaspace or Prepend/Replace normalisation (Llama 2, Mistral);
/// NFC/NFKC/NFD/NFKD, Lowercase, Strip normalisers; added tokens (lstrip, rstrip, single_word, normalized); the
/// template post-processor; ByteLevel, Metaspace, Replace, ByteFallback, Fuse and Strip decoders. A component of
/// another type is an error naming it, never a silent fallback. Runs as the tokenizers library does
/// (`encode(text).ids`, `decode(ids, skip_special_tokens=False)`).
public struct TokenizerJSON: VocabularyTokenizer, @unchecked Sendable {
    public static let fileName = "tokenizer.json"

    let normalizers: [Normalizer]
    let preTokenizers: [PreTokenizer]
    let model: BPEModel
    let decoders: [Decoder]
    /// Ids the post-processor puts before and after a single sequence.
    private(set) var prefix, suffix: [Int]
    let addedTokens: [AddedToken]
    /// Those matched in the raw text, and those matched in normalized text.
    let rawAddedTokens, normalizedAddedTokens: [AddedToken]
    let addedByID: [Int: AddedToken]
    let file: String

    struct AddedToken {
        let id: Int
        let content: String
        let special, leftStrip, rightStrip, singleWord, normalized: Bool
        /// The content's scalars, as the splitter compares them.
        let scalars: [Unicode.Scalar]

        init(id: Int, content: String, special: Bool, leftStrip: Bool, rightStrip: Bool, singleWord: Bool, normalized: Bool) {
            (self.id, self.content, self.scalars) = (id, content, Array(content.unicodeScalars))
            (self.special, self.leftStrip, self.rightStrip, self.singleWord, self.normalized) = (special, leftStrip, rightStrip, singleWord, normalized)
        }
    }

    enum Pattern {
        case literal(String)
        /// A regex from `file`.
        case regex(NSRegularExpression, file: String)

        /// ICU reports progress about every 10,000 matching steps; the patterns of real tokenizers need about one
        /// report per thousand characters. One that needs more than 1,000 reports plus one per 10 characters backtracks
        /// without bound on the text (as "(a+)+b" does) and is an error instead of a hang.
        static func reportsAllowed(_ text: String) -> Int { 1000 + text.utf16.count / 10 }

        /// The ranges of every match, in order.
        func matches(in text: String) throws(TokenizerError) -> [Range<String.Index>] {
            switch self {
            case .literal(let literal):
                guard !literal.isEmpty else { return [] }
                var found: [Range<String.Index>] = []
                var start = text.startIndex
                while let range = text.range(of: literal, options: .literal, range: start..<text.endIndex) {
                    found.append(range)
                    start = range.upperBound
                }
                return found
            case let .regex(regex, file):
                var found: [Range<String.Index>] = [], reports = 0
                let allowed = Self.reportsAllowed(text)
                regex.enumerateMatches(in: text, options: .reportProgress, range: NSRange(text.startIndex..., in: text)) { result, _, stop in
                    guard let result else {
                        reports += 1
                        if reports > allowed { stop.pointee = true }
                        return
                    }
                    if let range = Range(result.range, in: text), !range.isEmpty { found.append(range) }
                }
                guard reports <= allowed else {
                    throw .malformed(file: file, line: nil, detail: "the regex '\(regex.pattern)' backtracks without bound on a text of \(text.count) characters")
                }
                return found
            }
        }
    }

    enum Normalizer {
        case nfc, nfkc, nfd, nfkd, lowercase
        case prepend(String)
        case replace(Pattern, String)
        case strip(left: Bool, right: Bool)
    }

    enum SplitBehavior: String { case removed = "Removed", isolated = "Isolated", mergedWithPrevious = "MergedWithPrevious", mergedWithNext = "MergedWithNext", contiguous = "Contiguous" }

    enum PrependScheme: String { case always, first, never }

    enum PreTokenizer {
        case byteLevel(addPrefixSpace: Bool, useRegex: Bool)
        case split(Pattern, SplitBehavior, invert: Bool)
        case metaspace(replacement: String, prepend: PrependScheme, split: Bool)
        case whitespaceSplit
    }

    enum Decoder {
        case byteLevel
        case metaspace(replacement: String, prepend: PrependScheme)
        case replace(Pattern, String)
        case byteFallback, fuse
        case strip(content: Character, start: Int, stop: Int)
    }

    /// GPT-2's split pattern, which ByteLevel applies with use_regex.
    static let gpt2Pattern = try! NSRegularExpression(pattern: #"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"#)

    /// A model folder's tokenizer.json, with what transformers' tokenizer class takes from tokenizer_config.json:
    /// its Llama classes (LlamaTokenizerFast, CodeLlamaTokenizerFast) replace the post-processor's template with BOS
    /// and EOS as add_bos_token (default true) and add_eos_token (default false) say; other classes keep the template.
    public init(folder: URL) throws(TokenizerError) {
        try self.init(file: folder.appendingPathComponent(Self.fileName).path)
        let config = try TokenizerConfig(folder: folder)
        guard ["LlamaTokenizer", "CodeLlamaTokenizer"].contains(config.className) else { return }
        func special(_ key: String, fallback: String, added: Bool) throws(TokenizerError) -> [Int] {
            guard added else { return [] }
            let token = config.token(key) ?? fallback
            guard let id = id(of: token) else {
                throw .malformed(file: config.file, line: nil, detail: "\(key) '\(token)' is added to every sequence but tokenizer.json has no such token")
            }
            return [id]
        }
        prefix = try special("bos_token", fallback: "<s>", added: config.flag("add_bos_token") ?? true)
        suffix = try special("eos_token", fallback: "</s>", added: config.flag("add_eos_token") ?? false)
    }

    public init(file: String) throws(TokenizerError) {
        guard let data = FileManager.default.contents(atPath: file) else { throw .cannotRead(file: file, reason: "missing or unreadable") }
        guard let root = (try? JSONSerialization.jsonObject(with: data)) as? [String: Any] else {
            throw .malformed(file: file, line: nil, detail: "not a JSON object")
        }
        try self.init(json: root, file: file)
    }

    init(json root: [String: Any], file: String) throws(TokenizerError) {
        func malformed(_ detail: String) -> TokenizerError { .malformed(file: file, line: nil, detail: detail) }
        func component(_ value: Any?, _ what: String) throws(TokenizerError) -> [[String: Any]] {
            guard let value, !(value is NSNull) else { return [] }
            guard let object = value as? [String: Any], let type = object["type"] as? String else { throw malformed("\(what) is not an object with a type") }
            if type == "Sequence" {
                let items = (object["normalizers"] ?? object["pretokenizers"] ?? object["decoders"] ?? object["processors"]) as? [Any] ?? []
                var flat: [[String: Any]] = []
                for item in items { flat += try component(item, what) }
                return flat
            }
            return [object]
        }
        func pattern(_ value: Any?, _ what: String) throws(TokenizerError) -> Pattern {
            let object = value as? [String: Any]
            if let literal = object?["String"] as? String { return .literal(literal) }
            if let source = object?["Regex"] as? String {
                do { return .regex(try NSRegularExpression(pattern: source), file: file) } catch { throw malformed("\(what): regex '\(source)' does not compile") }
            }
            throw malformed("\(what): pattern is neither String nor Regex")
        }
        func flag(_ object: [String: Any], _ key: String, _ fallback: Bool) -> Bool { object[key] as? Bool ?? fallback }
        func scheme(_ object: [String: Any]) -> PrependScheme {
            PrependScheme(rawValue: object["prepend_scheme"] as? String ?? "") ?? (flag(object, "add_prefix_space", true) ? .always : .never)
        }
        func unsupported(_ what: String, _ type: String) -> TokenizerError {
            malformed("\(what) '\(type)' is not supported")
        }

        var normalizers: [Normalizer] = []
        for object in try component(root["normalizer"], "normalizer") {
            let type = object["type"] as! String
            switch type {
            case "NFC": normalizers.append(.nfc)
            case "NFKC": normalizers.append(.nfkc)
            case "NFD": normalizers.append(.nfd)
            case "NFKD": normalizers.append(.nfkd)
            case "Lowercase": normalizers.append(.lowercase)
            case "Prepend": normalizers.append(.prepend(object["prepend"] as? String ?? ""))
            case "Replace": normalizers.append(.replace(try pattern(object["pattern"], "normalizer Replace"), object["content"] as? String ?? ""))
            case "Strip": normalizers.append(.strip(left: flag(object, "strip_left", true), right: flag(object, "strip_right", true)))
            default: throw unsupported("normalizer", type)
            }
        }
        var preTokenizers: [PreTokenizer] = []
        for object in try component(root["pre_tokenizer"], "pre_tokenizer") {
            let type = object["type"] as! String
            switch type {
            case "ByteLevel": preTokenizers.append(.byteLevel(addPrefixSpace: flag(object, "add_prefix_space", true), useRegex: flag(object, "use_regex", true)))
            case "Split":
                guard let behavior = SplitBehavior(rawValue: object["behavior"] as? String ?? "") else { throw malformed("pre_tokenizer Split: unknown behavior") }
                preTokenizers.append(.split(try pattern(object["pattern"], "pre_tokenizer Split"), behavior, invert: flag(object, "invert", false)))
            case "Metaspace":
                preTokenizers.append(.metaspace(replacement: object["replacement"] as? String ?? "\u{2581}", prepend: scheme(object), split: flag(object, "split", true)))
            case "Digits":
                // Numeric characters (Rust's char::is_numeric: Nd, Nl and No, so "²" and "½" too), each alone or in runs.
                let digits = try! NSRegularExpression(pattern: flag(object, "individual_digits", false) ? #"\p{N}"# : #"\p{N}+"#)
                preTokenizers.append(.split(.regex(digits, file: file), .isolated, invert: false))
            case "WhitespaceSplit": preTokenizers.append(.whitespaceSplit)
            default: throw unsupported("pre_tokenizer", type)
            }
        }
        var decoders: [Decoder] = []
        for object in try component(root["decoder"], "decoder") {
            let type = object["type"] as! String
            switch type {
            case "ByteLevel": decoders.append(.byteLevel)
            case "Metaspace": decoders.append(.metaspace(replacement: object["replacement"] as? String ?? "\u{2581}", prepend: scheme(object)))
            case "Replace": decoders.append(.replace(try pattern(object["pattern"], "decoder Replace"), object["content"] as? String ?? ""))
            case "ByteFallback": decoders.append(.byteFallback)
            case "Fuse": decoders.append(.fuse)
            case "Strip":
                guard let content = (object["content"] as? String)?.first else { throw malformed("decoder Strip needs a content character") }
                decoders.append(.strip(content: content, start: object["start"] as? Int ?? 0, stop: object["stop"] as? Int ?? 0))
            default: throw unsupported("decoder", type)
            }
        }
        guard let modelObject = root["model"] as? [String: Any] else { throw malformed("no model") }
        model = try BPEModel(modelObject, file: file)

        var added: [AddedToken] = []
        for case let object as [String: Any] in root["added_tokens"] as? [Any] ?? [] {
            guard let id = object["id"] as? Int, let content = object["content"] as? String, !content.isEmpty else { throw malformed("an added token without id or content") }
            added.append(AddedToken(id: id, content: content, special: flag(object, "special", false), leftStrip: flag(object, "lstrip", false),
                                    rightStrip: flag(object, "rstrip", false), singleWord: flag(object, "single_word", false), normalized: flag(object, "normalized", true)))
        }
        addedTokens = added
        rawAddedTokens = added.filter { !$0.normalized }
        normalizedAddedTokens = added.filter(\.normalized)
        addedByID = Dictionary(added.map { ($0.id, $0) }, uniquingKeysWith: { a, _ in a })

        var prefix: [Int] = [], suffix: [Int] = []
        for object in try component(root["post_processor"], "post_processor") {
            let type = object["type"] as! String
            switch type {
            case "ByteLevel": break   // offsets only
            case "TemplateProcessing":
                let specials = object["special_tokens"] as? [String: Any] ?? [:]
                var seenSequence = false
                for case let item as [String: Any] in object["single"] as? [Any] ?? [] {
                    if item["Sequence"] != nil { seenSequence = true; continue }
                    guard let name = (item["SpecialToken"] as? [String: Any])?["id"] as? String,
                          let ids = (specials[name] as? [String: Any])?["ids"] as? [Int] else { throw malformed("post_processor template names an unknown special token") }
                    if seenSequence { suffix += ids } else { prefix += ids }
                }
            case "BertProcessing", "RobertaProcessing":
                guard let cls = (object["cls"] as? [Any])?.last as? Int, let sep = (object["sep"] as? [Any])?.last as? Int else { throw malformed("post_processor \(type) without cls/sep") }
                prefix.append(cls)
                suffix.append(sep)
            default: throw unsupported("post_processor", type)
            }
        }
        (self.normalizers, self.preTokenizers, self.decoders, self.prefix, self.suffix, self.file) = (normalizers, preTokenizers, decoders, prefix, suffix, file)
    }

    // MARK: encoding

    /// Throws only for a regex of the file that backtracks without bound on `text`.
    public func encode(_ text: String) throws(TokenizerError) -> [Int] { prefix + (try tokens(text)) + suffix }

    /// The ids of `text` without what the post-processor adds.
    public func tokens(_ text: String) throws(TokenizerError) -> [Int] {
        var ids: [Int] = []
        // Added tokens matched in the raw text first, then (normalized ones) in each normalized piece.
        for piece in split(text, on: rawAddedTokens, startsText: true) {
            if let id = piece.id { ids.append(id); continue }
            let normalized = try normalize(piece.text)
            for inner in split(normalized, on: normalizedAddedTokens, startsText: piece.startsText) {
                if let id = inner.id { ids.append(id); continue }
                for word in try preTokenize(inner.text, startsText: inner.startsText && piece.startsText) { ids += model.encode(word) }
            }
        }
        return ids
    }

    struct Piece {
        let text: String
        let id: Int?
        /// Whether the piece begins the input (Metaspace's "first" prepends only there).
        let startsText: Bool
    }

    /// `text` split around the added tokens, leftmost-longest; lstrip / rstrip take the whitespace beside a token with it.
    func split(_ text: String, on tokens: [AddedToken], startsText: Bool) -> [Piece] {
        guard !tokens.isEmpty, !text.isEmpty else { return text.isEmpty ? [] : [Piece(text: text, id: nil, startsText: startsText)] }
        let scalars = Array(text.unicodeScalars)
        var pieces: [Piece] = []
        var start = 0, i = 0
        func isWord(_ index: Int) -> Bool { scalars.indices.contains(index) && (scalars[index].properties.isAlphabetic || scalars[index].properties.numericType != nil || scalars[index] == "_") }
        while i < scalars.count {
            var best: (token: AddedToken, length: Int)?
            for token in tokens where token.scalars.count > (best?.length ?? 0) && i + token.scalars.count <= scalars.count
                && scalars[i..<i + token.scalars.count].elementsEqual(token.scalars) {
                if token.singleWord && (isWord(i - 1) || isWord(i + token.scalars.count)) { continue }
                best = (token, token.scalars.count)
            }
            guard let (token, length) = best else { i += 1; continue }
            var from = i, to = i + length
            if token.leftStrip { while from > start && scalars[from - 1].properties.isWhitespace { from -= 1 } }
            if token.rightStrip { while to < scalars.count && scalars[to].properties.isWhitespace { to += 1 } }
            if from > start { pieces.append(Piece(text: String(String.UnicodeScalarView(scalars[start..<from])), id: nil, startsText: startsText && start == 0)) }
            pieces.append(Piece(text: token.content, id: token.id, startsText: false))
            start = to
            i = to
        }
        if start < scalars.count { pieces.append(Piece(text: String(String.UnicodeScalarView(scalars[start...])), id: nil, startsText: startsText && start == 0)) }
        return pieces
    }

    func normalize(_ text: String) throws(TokenizerError) -> String {
        var text = text
        for normalizer in normalizers {
            switch normalizer {
            case .nfc: text = text.precomposedStringWithCanonicalMapping
            case .nfkc: text = text.precomposedStringWithCompatibilityMapping
            case .nfd: text = text.decomposedStringWithCanonicalMapping
            case .nfkd: text = text.decomposedStringWithCompatibilityMapping
            case .lowercase: text = text.lowercased()
            case .prepend(let prefix): text = text.isEmpty ? text : prefix + text
            case .replace(let pattern, let content): text = try Self.replace(pattern, in: text, with: content)
            case let .strip(left, right):
                var scalars = Substring(text).unicodeScalars[...]
                if left { while let first = scalars.first, first.properties.isWhitespace { scalars.removeFirst() } }
                if right { while let last = scalars.last, last.properties.isWhitespace { scalars.removeLast() } }
                text = String(scalars)
            }
        }
        return text
    }

    static func replace(_ pattern: Pattern, in text: String, with content: String) throws(TokenizerError) -> String {
        var out = ""
        var start = text.startIndex
        for range in try pattern.matches(in: text) {
            out += text[start..<range.lowerBound] + content
            start = range.upperBound
        }
        return out + text[start...]
    }

    /// The words of a normalized piece, each ready for the model (byte-level text where a ByteLevel step ran).
    func preTokenize(_ text: String, startsText: Bool) throws(TokenizerError) -> [String] {
        var words = text.isEmpty ? [] : [text]
        for step in preTokenizers {
            var next: [String] = []
            for (index, word) in words.enumerated() {
                switch step {
                case let .byteLevel(addPrefixSpace, useRegex):
                    let spaced = addPrefixSpace && !word.hasPrefix(" ") ? " " + word : word
                    let parts = useRegex ? try Self.split(spaced, .regex(Self.gpt2Pattern, file: file), .isolated) : [spaced]
                    next += parts.map { String($0.utf8.map { byteToUnicode[Int($0)] }) }
                case let .split(pattern, behavior, invert):
                    next += invert ? try Self.splitInverted(word, pattern, behavior) : try Self.split(word, pattern, behavior)
                case let .metaspace(replacement, prepend, split):
                    var replaced = word.replacingOccurrences(of: " ", with: replacement)
                    if !replaced.hasPrefix(replacement) && (prepend == .always || (prepend == .first && startsText && index == 0)) {
                        replaced = replacement + replaced
                    }
                    next += split ? try Self.split(replaced, .literal(replacement), .mergedWithNext) : [replaced]
                case .whitespaceSplit:
                    next += word.split(whereSeparator: { $0.unicodeScalars.allSatisfy(\.properties.isWhitespace) }).map(String.init)
                }
            }
            words = next
        }
        return words
    }

    /// `text` cut at the matches of `pattern`, the matches kept, dropped or joined to a neighbour as `behavior` says.
    static func split(_ text: String, _ pattern: Pattern, _ behavior: SplitBehavior) throws(TokenizerError) -> [String] {
        var pieces: [(text: Substring, isMatch: Bool)] = []
        var start = text.startIndex
        for range in try pattern.matches(in: text) {
            if range.lowerBound > start { pieces.append((text[start..<range.lowerBound], false)) }
            pieces.append((text[range], true))
            start = range.upperBound
        }
        if start < text.endIndex { pieces.append((text[start...], false)) }
        var out: [String] = []
        var pendingNext = ""
        for (index, piece) in pieces.enumerated() {
            switch (behavior, piece.isMatch) {
            case (.removed, true): continue
            case (.mergedWithPrevious, true) where !out.isEmpty: out[out.count - 1] += piece.text
            case (.mergedWithNext, true): pendingNext += piece.text
            case (.contiguous, true) where index > 0 && pieces[index - 1].isMatch: out[out.count - 1] += piece.text
            default:
                out.append(pendingNext + piece.text)
                pendingNext = ""
            }
        }
        if !pendingNext.isEmpty { out.append(pendingNext) }
        return out
    }

    /// Split with `invert`: the pieces between matches are what is split on.
    static func splitInverted(_ text: String, _ pattern: Pattern, _ behavior: SplitBehavior) throws(TokenizerError) -> [String] {
        var ranges: [Range<String.Index>] = []
        var start = text.startIndex
        for range in try pattern.matches(in: text) {
            if range.lowerBound > start { ranges.append(start..<range.lowerBound) }
            start = range.upperBound
        }
        if start < text.endIndex { ranges.append(start..<text.endIndex) }
        // The gaps become the matches of a literal-free split: cut at their boundaries.
        var pieces: [String] = []
        var cursor = text.startIndex
        for range in ranges {
            if range.lowerBound > cursor { pieces.append(String(text[cursor..<range.lowerBound])) }
            if behavior != .removed { pieces.append(String(text[range])) }
            cursor = range.upperBound
        }
        if cursor < text.endIndex { pieces.append(String(text[cursor...])) }
        return pieces
    }

    // MARK: decoding

    /// The text of `ids`, special tokens included (tokenizers' decode with skip_special_tokens false); ids that are
    /// not in the vocabulary are left out. Throws only for a regex of the file that backtracks without bound.
    public func decode(_ ids: [Int]) throws(TokenizerError) -> String {
        var tokens = ids.compactMap { addedByID[$0]?.content ?? model.token(of: $0) }
        for decoder in decoders {
            switch decoder {
            case .byteLevel:
                let bytes = tokens.flatMap { token -> [UInt8] in
                    let mapped = token.compactMap { unicodeToByte[$0] }
                    return mapped.count == token.count ? mapped : Array(token.utf8)
                }
                tokens = [String(decoding: bytes, as: UTF8.self)]
            case let .metaspace(replacement, prepend):
                tokens = tokens.enumerated().map { index, token in
                    let text = token.replacingOccurrences(of: replacement, with: " ")
                    return index == 0 && prepend != .never && text.hasPrefix(" ") ? String(text.dropFirst()) : text
                }
            case let .replace(pattern, content):
                var replaced: [String] = []
                for token in tokens { replaced.append(try Self.replace(pattern, in: token, with: content)) }
                tokens = replaced
            case .byteFallback:
                var out: [String] = [], bytes: [UInt8] = []
                func flush() {
                    guard !bytes.isEmpty else { return }
                    // Valid UTF-8 is kept whole (a U+FEFF too, which Foundation's decoding would drop); invalid, each byte is U+FFFD.
                    if let text = String(validating: bytes, as: UTF8.self) { out.append(text) } else { out += Array(repeating: "\u{FFFD}", count: bytes.count) }
                    bytes = []
                }
                for token in tokens {
                    if let byte = SentencePieceModel.byteValue(Array(token.utf8)) { bytes.append(UInt8(byte)) } else { flush(); out.append(token) }
                }
                flush()
                tokens = out
            case .fuse:
                tokens = [tokens.joined()]
            case let .strip(content, start, stop):
                tokens = tokens.map { token in
                    var characters = Substring(token)
                    // At most `start` (`stop`) of them, however large the file says: never more than the token has.
                    characters = characters.dropFirst(min(max(0, start), characters.prefix { $0 == content }.count))
                    characters = characters.dropLast(min(max(0, stop), characters.reversed().prefix { $0 == content }.count))
                    return String(characters)
                }
            }
        }
        return tokens.joined()
    }

    /// The id of a whole token (added tokens first), if the vocabulary has it.
    public func id(of token: String) -> Int? { addedTokens.first { $0.content == token }?.id ?? model.vocabulary[token] }
}

/// The tokenizers library's BPE model: merges by rank over a word's characters (the lowest rank first, the leftmost on
/// ties, as its heap does), unknown characters as <0xXX> byte tokens (byte_fallback) or the unknown token (fuse_unk
/// joining runs of them); with ignore_merges a word in the vocabulary is one token.
struct BPEModel {
    let vocabulary: [String: Int]
    let tokens: [Int: String]
    /// (left id, right id) -> (rank, merged id).
    let merges: [Pair: (rank: Int, id: Int)]
    let unknownID: Int?
    let byteFallback, fuseUnknown, ignoreMerges: Bool

    struct Pair: Hashable { let left, right: Int }

    init(_ object: [String: Any], file: String) throws(TokenizerError) {
        func malformed(_ detail: String) -> TokenizerError { .malformed(file: file, line: nil, detail: "model: \(detail)") }
        guard object["type"] as? String == "BPE" else { throw malformed("type '\(object["type"] as? String ?? "?")' is not supported (BPE)") }
        if object["dropout"] is NSNumber { throw malformed("BPE dropout is not supported") }
        for key in ["continuing_subword_prefix", "end_of_word_suffix"] where !((object[key] as? String) ?? "").isEmpty {
            throw malformed("\(key) is not supported")
        }
        guard let vocabulary = object["vocab"] as? [String: Int] else { throw malformed("no vocab") }
        self.vocabulary = vocabulary
        tokens = Dictionary(vocabulary.map { ($1, $0) }, uniquingKeysWith: { a, _ in a })
        var merges: [Pair: (rank: Int, id: Int)] = [:]
        for (rank, entry) in (object["merges"] as? [Any] ?? []).enumerated() {
            let parts: [String]
            if let text = entry as? String {
                parts = text.split(separator: " ", omittingEmptySubsequences: false).map(String.init)
            } else {
                parts = entry as? [String] ?? []
            }
            guard parts.count == 2, let left = vocabulary[parts[0]], let right = vocabulary[parts[1]], let merged = vocabulary[parts[0] + parts[1]] else {
                throw malformed("merge \(rank) is not two vocabulary tokens whose join is one")
            }
            if merges[Pair(left: left, right: right)] == nil { merges[Pair(left: left, right: right)] = (rank, merged) }
        }
        self.merges = merges
        unknownID = (object["unk_token"] as? String).flatMap { vocabulary[$0] }
        byteFallback = object["byte_fallback"] as? Bool ?? false
        fuseUnknown = object["fuse_unk"] as? Bool ?? false
        ignoreMerges = object["ignore_merges"] as? Bool ?? false
    }

    func token(of id: Int) -> String? { tokens[id] }

    func encode(_ word: String) -> [Int] {
        if ignoreMerges, let id = vocabulary[word] { return [id] }
        // The characters as symbols; those outside the vocabulary as bytes or the unknown token.
        var symbols: [Int] = []
        var lastWasUnknown = false
        for scalar in word.unicodeScalars {
            if let id = vocabulary[String(scalar)] {
                symbols.append(id)
                lastWasUnknown = false
            } else if byteFallback, case let bytes = Array(String(scalar).utf8), case let ids = bytes.compactMap({ vocabulary[String(format: "<0x%02X>", $0)] }), ids.count == bytes.count {
                symbols += ids
                lastWasUnknown = false
            } else if let unknownID {
                if !(fuseUnknown && lastWasUnknown) { symbols.append(unknownID) }
                lastWasUnknown = true
            }
        }
        guard symbols.count > 1 else { return symbols }
        // Linked symbols and a heap of candidate merges: O(n log n) even for a word of a whole page.
        var next = Array(1...symbols.count), previous = Array(-1..<symbols.count - 1)
        next[symbols.count - 1] = -1
        var alive = Array(repeating: true, count: symbols.count)
        var heap = BinaryHeap<(rank: Int, position: Int, left: Int, right: Int)> { $0.rank < $1.rank || ($0.rank == $1.rank && $0.position < $1.position) }
        func consider(_ position: Int) {
            let after = next[position]
            guard position >= 0, after >= 0, let merge = merges[Pair(left: symbols[position], right: symbols[after])] else { return }
            heap.push((merge.rank, position, symbols[position], symbols[after]))
        }
        for position in 0..<symbols.count - 1 { consider(position) }
        while let top = heap.pop() {
            let after = next[top.position]
            // Stale: one side has merged since this candidate was pushed.
            guard alive[top.position], after >= 0, symbols[top.position] == top.left, symbols[after] == top.right,
                  let merge = merges[Pair(left: top.left, right: top.right)] else { continue }
            symbols[top.position] = merge.id
            alive[after] = false
            next[top.position] = next[after]
            if next[after] >= 0 { previous[next[after]] = top.position }
            if previous[top.position] >= 0 { consider(previous[top.position]) }
            consider(top.position)
        }
        return symbols.indices.filter { alive[$0] }.map { symbols[$0] }
    }
}
