import Foundation

/// transformers' slow tokenizers over a SentencePiece model, which is how checkpoints that ship only
/// `spiece.model` / `tokenizer.model` are read:
/// - SigLIP (`SiglipTokenizer`): text lower-cased, ASCII punctuation removed, whitespace folded, "</s>" appended,
///   padded with "</s>" to 64 tokens; the model's dummy prefix is off and "▁" is put in front instead.
/// - Llama (`LlamaTokenizer`): "<s>" first; `legacy` (the default) encodes each text as the model does,
///   non-legacy puts "▁" in front with the dummy prefix off, so text after a special token gets no extra space.
/// Special tokens in the text are kept whole, as the Python tokenizers keep them.
public struct SentencePieceTokenizer: VocabularyTokenizer {
    public enum Style: Sendable, Equatable { case siglip, llama(legacy: Bool) }

    public let model: SentencePieceModel
    public let style: Style
    /// Special tokens written in text, by their ids.
    public let specialTokens: [String: Int]
    public let beginID: Int?
    public let endID: Int?
    public let paddingID: Int
    /// The longest input (special tokens included) that `padded` makes; 64 for SigLIP.
    public let maximumLength: Int
    let lowercase: Bool
    /// SigLIP's special tokens eat the whitespace beside them (lstrip / rstrip).
    let stripAroundSpecialTokens: Bool
    let unknownToken: String
    let unknownLength: Int
    let addPrefixSpace: Bool

    /// The file a folder's tokenizer is in: spiece.model (SigLIP, T5) or tokenizer.model (Llama, Mistral).
    public static let modelFiles = ["spiece.model", "tokenizer.model"]

    public static func isPresent(in folder: URL) -> Bool {
        modelFiles.contains { FileManager.default.fileExists(atPath: folder.appendingPathComponent($0).path) }
    }

    /// From a model folder: the .model file, and tokenizer_config.json / special_tokens_map.json when present
    /// (tokenizer_class, legacy, do_lower_case, add_bos_token, add_eos_token, model_max_length, the special tokens).
    public init(folder: URL, style fallback: Style? = nil) throws(TokenizerError) {
        guard let name = Self.modelFiles.first(where: { FileManager.default.fileExists(atPath: folder.appendingPathComponent($0).path) }) else {
            throw .cannotRead(file: folder.appendingPathComponent(Self.modelFiles[0]).path, reason: "no spiece.model or tokenizer.model in the folder")
        }
        let config = try TokenizerConfig(folder: folder)
        let style: Style
        if config.className == "SiglipTokenizer" {
            style = .siglip
        } else if ["LlamaTokenizer", "CodeLlamaTokenizer"].contains(config.className) {
            style = .llama(legacy: config.flag("legacy") ?? true)
        } else if let fallback {
            style = fallback
        } else {
            style = name == "spiece.model" ? .siglip : .llama(legacy: config.flag("legacy") ?? true)
        }
        try self.init(modelFile: folder.appendingPathComponent(name).path, style: style,
                      unknown: config.token("unk_token"), begin: config.token("bos_token"), end: config.token("eos_token"), padding: config.token("pad_token"),
                      additional: config.additionalSpecialTokens,
                      lowercase: config.flag("do_lower_case"),
                      addBegin: config.flag("add_bos_token"), addEnd: config.flag("add_eos_token"),
                      addPrefixSpace: config.flag("add_prefix_space"),
                      maximumLength: (config.values["model_max_length"] as? NSNumber).map { $0.intValue })
    }

    /// From a .model file with the Python tokenizer's defaults for `style`, each overridable.
    public init(modelFile: String, style: Style, unknown: String? = nil, begin: String? = nil, end: String? = nil, padding: String? = nil,
                additional: [String] = [], lowercase: Bool? = nil, addBegin: Bool? = nil, addEnd: Bool? = nil, addPrefixSpace: Bool? = nil,
                maximumLength: Int? = nil) throws(TokenizerError) {
        var model = try SentencePieceModel(file: modelFile)
        if style != .llama(legacy: true) { model.addDummyPrefix = false }
        self.model = model
        self.style = style
        let unknownToken = unknown ?? "<unk>"
        let endToken = end ?? "</s>"
        var specials = [unknownToken: model.id(of: unknownToken), endToken: model.id(of: endToken)]
        switch style {
        case .siglip:
            beginID = nil
            endID = specials[endToken]
            paddingID = model.id(of: padding ?? "</s>")
            specials[padding ?? "</s>"] = paddingID
            self.maximumLength = maximumLength.map { min($0, 1 << 20) } ?? 64
            self.lowercase = lowercase ?? true
            stripAroundSpecialTokens = true
        case .llama:
            let beginToken = begin ?? "<s>"
            specials[beginToken] = model.id(of: beginToken)
            beginID = addBegin ?? true ? specials[beginToken] : nil
            endID = addEnd ?? false ? specials[endToken] : nil
            paddingID = padding.map { model.id(of: $0) } ?? specials[endToken]!
            if let padding { specials[padding] = paddingID }
            self.maximumLength = maximumLength.map { min($0, 1 << 20) } ?? 1 << 20
            self.lowercase = lowercase ?? false
            stripAroundSpecialTokens = false
        }
        for token in additional { specials[token] = model.id(of: token) }
        specialTokens = specials
        self.unknownToken = unknownToken
        self.addPrefixSpace = style == .siglip || (addPrefixSpace ?? true)
        unknownLength = model.encodePieces(unknownToken).count
    }

    /// The ids of `text` with the model's special tokens: SigLIP's "</s>" at the end, Llama's "<s>" in front.
    public func encode(_ text: String) -> [Int] { withSpecialTokens(tokens(text)) }

    /// `encode`, cut to `maximumLength` with the special tokens kept, then padded to it (SigLIP's max_length padding).
    public func padded(_ text: String) -> [Int] {
        var ids = tokens(text)
        let room = maximumLength - (beginID == nil ? 0 : 1) - (endID == nil ? 0 : 1)
        if ids.count > room { ids.removeLast(ids.count - room) }
        ids = withSpecialTokens(ids)
        return ids + [Int](repeating: paddingID, count: max(0, maximumLength - ids.count))
    }

    /// build_inputs_with_special_tokens: Llama's "<s>" (and "</s>" when asked); SigLIP's "</s>" unless the text already ends with it.
    private func withSpecialTokens(_ ids: [Int]) -> [Int] {
        var ids = ids
        if let beginID { ids.insert(beginID, at: 0) }
        if let endID, style != .siglip || ids.last != endID { ids.append(endID) }
        return ids
    }

    /// The id of a special token or of one whole piece, if the model has it.
    public func id(of token: String) -> Int? {
        if let id = specialTokens[token] { return id }
        let id = model.id(of: token)
        return model.piece(id) == token ? id : nil
    }

    /// The text of `ids`, special tokens left out; the "▁" this tokenizer put in front is taken off again.
    public func decode(_ ids: [Int]) -> String {
        let special = Set(specialTokens.values)
        let kept = ids.filter { !special.contains($0) }
        let text = model.decode(kept)
        let ownPrefix = addPrefixSpace && style != .llama(legacy: true)
        guard ownPrefix, let first = kept.first, model.pieces.indices.contains(first), model.pieces[first].text.starts(with: SentencePieceModel.space), text.hasPrefix(" ") else { return text }
        return String(text.dropFirst())
    }

    /// The ids of `text` without the added begin / end tokens, as the Python tokenizer's `tokenize` gives them.
    public func tokens(_ text: String) -> [Int] {
        // SigLIP and non-legacy Llama write "▁" for spaces themselves and put one in front.
        var text = text
        var prefixed = false
        switch style {
        case .siglip, .llama(legacy: false) where !text.isEmpty:
            text = text.replacingOccurrences(of: "\u{2581}", with: " ")
            if addPrefixSpace { text = "\u{2581}" + text }
            prefixed = true
        default: break
        }
        if lowercase { text = lowercasedOutsideSpecialTokens(text) }
        var chunks = splitSpecialTokens(text, specialTokens).map { (text: $0.text, id: $0.id) }
        if stripAroundSpecialTokens {
            for i in chunks.indices where chunks[i].id != nil {
                if i + 1 < chunks.count, chunks[i + 1].id == nil { chunks[i + 1].text = PythonText.strip(chunks[i + 1].text, trailing: false) }
                if i > 0, chunks[i - 1].id == nil { chunks[i - 1].text = PythonText.strip(chunks[i - 1].text, leading: false) }
            }
        }
        var pieces: [(id: Int, piece: [UInt8])] = []
        for chunk in chunks where !chunk.text.isEmpty {
            if let id = chunk.id { pieces.append((id, Array(chunk.text.utf8))) } else { pieces += pieceTokens(String(chunk.text)) }
        }
        // "▁" alone before a special token is dropped, as the Python tokenizers drop it.
        if prefixed, pieces.count > 1, pieces[0].piece == SentencePieceModel.space, specialTokens.keys.contains(String(decoding: pieces[1].piece, as: UTF8.self)) {
            pieces.removeFirst()
        }
        return pieces.map(\.id)
    }

    /// `_tokenize` of one stretch of text between special tokens.
    private func pieceTokens(_ text: String) -> [(id: Int, piece: [UInt8])] {
        switch style {
        case .llama(legacy: true):
            return model.encodePieces(text)
        case .llama(legacy: false) where !(text.hasPrefix("\u{2581}") || text.hasPrefix(" ")):
            return model.encodePieces(text)
        case .siglip:
            return withoutUnknownPrefix(Self.canonicalized(text))
        case .llama:
            return withoutUnknownPrefix(text)
        }
    }

    /// With the dummy prefix off, a leading "▁" would be dropped by normalization; encoding "<unk>" + text and
    /// removing the unknown token's pieces keeps it, as transformers does.
    private func withoutUnknownPrefix(_ text: String) -> [(id: Int, piece: [UInt8])] {
        let pieces = model.encodePieces(unknownToken + text)
        return pieces.count >= unknownLength ? Array(pieces.dropFirst(unknownLength)) : pieces
    }

    /// SiglipTokenizer's canonicalize_text: ASCII punctuation removed, whitespace runs folded to one space, stripped.
    static func canonicalized(_ text: String) -> String {
        let punctuation = Set("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~".unicodeScalars)
        var kept = String.UnicodeScalarView()
        kept.append(contentsOf: text.unicodeScalars.filter { !punctuation.contains($0) })
        return String(PythonText.strip(Substring(PythonText.foldWhitespace(String(kept)))))
    }

    /// do_lower_case as the Python tokenizer applies it: everything but the special tokens written in the text,
    /// one character at a time (its regex lowers single characters, so a final capital sigma becomes σ, not ς).
    private func lowercasedOutsideSpecialTokens(_ text: String) -> String {
        splitSpecialTokens(text, specialTokens).map { part in
            part.id == nil ? part.text.unicodeScalars.map(\.lowercased).joined() : String(part.text)
        }.joined()
    }
}
