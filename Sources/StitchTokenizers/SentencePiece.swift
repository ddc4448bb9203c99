import Foundation
import StitchTensor
import StitchModelIO

/// A SentencePiece model file (`spiece.model`, `tokenizer.model`): the ModelProto protobuf with its
/// pieces, scores and types, normalizer spec and trainer spec, encoding text exactly as the
/// sentencepiece library does: normalization by the precompiled character map (a darts-clone
/// double-array trie), whitespace escaped as "▁", then unigram Viterbi or BPE merges by score,
/// unknown characters as byte pieces (byte fallback) or merged runs of <unk>. Everything works on
/// UTF-8 bytes, as the library does, so ties and float rounding fall the same way.
public struct SentencePieceModel: Sendable {
    public enum PieceType: Int, Sendable { case normal = 1, unknown, control, userDefined, unused, byte }
    public enum Algorithm: Sendable { case unigram, bpe }

    public struct Piece: Sendable {
        public let text: [UInt8]
        public let score: Float
        public let type: PieceType
    }

    public let file: String
    public let pieces: [Piece]
    public let algorithm: Algorithm
    public let byteFallback: Bool
    public let unknownID: Int
    /// "▁" before the text (the normalizer's add_dummy_prefix); SigLIP and non-legacy Llama tokenizers switch it off.
    public var addDummyPrefix: Bool
    let removeExtraWhitespaces: Bool
    let escapeWhitespaces: Bool
    let whitespaceAsSuffix: Bool
    let unknownSurface: [UInt8]
    let charsMap: CharsMap?
    /// Normal, user-defined and unused pieces; the others (control, unknown, byte) are looked up only by id or exact text.
    let vocabulary: ByteTrie
    let vocabularyIDs: [[UInt8]: Int]
    let reservedIDs: [[UInt8]: Int]
    let userDefined: ByteTrie?
    let byteIDs: [Int]
    let minimumScore: Float
    let maximumScore: Float

    static let space: [UInt8] = Array("\u{2581}".utf8)
    static let replacement: [UInt8] = [0xEF, 0xBF, 0xBD]

    public init(file: String) throws(TokenizerError) {
        guard let data = FileManager.default.contents(atPath: file) else {
            throw .cannotRead(file: file, reason: FileManager.default.fileExists(atPath: file) ? "unreadable" : "no such file")
        }
        try self.init(data: data, file: file)
    }

    public init(data: Data, file: String) throws(TokenizerError) {
        func fail(_ detail: String) -> TokenizerError { .malformed(file: file, line: nil, detail: "SentencePiece model: \(detail)") }
        var pieces: [Piece] = []
        var algorithm = Algorithm.unigram, byteFallback = false, whitespaceAsSuffix = false
        var unknownSurface = Array(" \u{2047} ".utf8)
        var addDummyPrefix = true, removeExtraWhitespaces = true, escapeWhitespaces = true
        var charsMapBlob: Data?
        do {
            var model = ProtobufReader(data)
            while let (field, value) = try model.next() {
                guard case .bytes(let message) = value else { continue }
                var reader = ProtobufReader(message)
                switch field {
                case 1:   // pieces
                    var text = Data(), score: Float = 0, type = PieceType.normal
                    while let (f, v) = try reader.next() {
                        switch (f, v) {
                        case (1, .bytes(let b)): text = b
                        case (2, .fixed32(let bits)): score = Float(bitPattern: bits)
                        case (3, .varint(let raw)):
                            guard let known = PieceType(rawValue: Int(truncatingIfNeeded: raw)) else { throw fail("piece \(pieces.count) has unknown type \(raw)") }
                            type = known
                        default: break
                        }
                    }
                    pieces.append(Piece(text: Array(text), score: score, type: type))
                case 2:   // trainer_spec
                    while let (f, v) = try reader.next() {
                        switch (f, v) {
                        case (3, .varint(let raw)):
                            switch raw {
                            case 1: algorithm = .unigram
                            case 2: algorithm = .bpe
                            default: throw fail("model type \(raw) (word or char) is not supported; unigram and BPE are")
                            }
                        case (35, .varint(let raw)): byteFallback = raw != 0
                        case (24, .varint(let raw)): whitespaceAsSuffix = raw != 0
                        case (44, .bytes(let b)): unknownSurface = Array(b)
                        default: break
                        }
                    }
                case 3:   // normalizer_spec
                    while let (f, v) = try reader.next() {
                        switch (f, v) {
                        case (2, .bytes(let b)): charsMapBlob = b
                        case (3, .varint(let raw)): addDummyPrefix = raw != 0
                        case (4, .varint(let raw)): removeExtraWhitespaces = raw != 0
                        case (5, .varint(let raw)): escapeWhitespaces = raw != 0
                        default: break
                        }
                    }
                default: break
                }
            }
        } catch let error as ProtobufError {
            throw fail("not a readable model file (\(error.message))")
        } catch let error as TokenizerError {
            throw error
        } catch {
            throw fail("\(error)")
        }
        guard !pieces.isEmpty else { throw fail("no pieces") }

        // As sentencepiece's InitializePieces: no empty or repeated piece, exactly one <unk>, 256 byte pieces with byte fallback.
        var vocabularyIDs: [[UInt8]: Int] = [:], reservedIDs: [[UInt8]: Int] = [:]
        var unknownID: Int?
        var byteIDs = [Int](repeating: -1, count: 256)
        var userDefined: [[UInt8]] = []
        var minimumScore = Float.greatestFiniteMagnitude, maximumScore = Float.leastNormalMagnitude
        for (id, piece) in pieces.enumerated() {
            guard !piece.text.isEmpty else { throw fail("piece \(id) is empty") }
            let isVocabulary = [.normal, .userDefined, .unused].contains(piece.type)
            guard (isVocabulary ? vocabularyIDs[piece.text] : reservedIDs[piece.text]) == nil else {
                throw fail("piece '\(String(decoding: piece.text, as: UTF8.self))' is defined twice")
            }
            if isVocabulary { vocabularyIDs[piece.text] = id } else { reservedIDs[piece.text] = id }
            switch piece.type {
            case .unknown:
                guard unknownID == nil else { throw fail("more than one unknown piece") }
                unknownID = id
            case .userDefined: userDefined.append(piece.text)
            case .byte:
                guard byteFallback else { throw fail("byte piece \(id) although byte_fallback is off") }
                guard let byte = Self.byteValue(piece.text) else { throw fail("byte piece '\(String(decoding: piece.text, as: UTF8.self))' is not <0xXX>") }
                byteIDs[byte] = id
            case .normal:
                minimumScore = min(minimumScore, piece.score)
                maximumScore = max(maximumScore, piece.score)
            default: break
            }
        }
        guard let unknownID else { throw fail("no unknown (<unk>) piece") }
        if byteFallback, byteIDs.contains(-1) { throw fail("byte_fallback is on but not all 256 byte pieces are defined") }
        self.file = file
        self.pieces = pieces
        self.algorithm = algorithm
        self.byteFallback = byteFallback
        self.unknownID = unknownID
        self.addDummyPrefix = addDummyPrefix
        self.removeExtraWhitespaces = removeExtraWhitespaces
        self.escapeWhitespaces = escapeWhitespaces
        self.whitespaceAsSuffix = whitespaceAsSuffix
        self.unknownSurface = unknownSurface
        charsMap = try charsMapBlob.flatMap { blob throws(TokenizerError) in blob.isEmpty ? nil : try CharsMap(blob, file: file) }
        vocabulary = ByteTrie(vocabularyIDs)
        self.vocabularyIDs = vocabularyIDs
        self.reservedIDs = reservedIDs
        self.userDefined = userDefined.isEmpty ? nil : ByteTrie(Dictionary(uniqueKeysWithValues: userDefined.map { ($0, 0) }))
        self.byteIDs = byteIDs
        self.minimumScore = minimumScore
        self.maximumScore = maximumScore
    }

    /// "<0x41>" -> 0x41.
    static func byteValue(_ text: [UInt8]) -> Int? {
        // Exactly "<0x%02X>" as sentencepiece writes them: two upper-case hex digits (Int(_:radix:) would also take "-1").
        let digits = Array("0123456789ABCDEF".utf8)
        guard text.count == 6, text.starts(with: Array("<0x".utf8)), text.last == UInt8(ascii: ">"),
              let high = digits.firstIndex(of: text[3]), let low = digits.firstIndex(of: text[4]) else { return nil }
        return high * 16 + low
    }

    public var count: Int { pieces.count }

    /// The id of a piece's text, or the unknown id (sentencepiece's PieceToId).
    public func id(of piece: String) -> Int {
        let bytes = Array(piece.utf8)
        return reservedIDs[bytes] ?? vocabularyIDs[bytes] ?? unknownID
    }

    public func piece(_ id: Int) -> String? { pieces.indices.contains(id) ? String(decoding: pieces[id].text, as: UTF8.self) : nil }

    /// The ids sentencepiece's `encode` gives for `text`.
    public func encode(_ text: String) -> [Int] { encodePieces(text).map(\.id) }

    /// The pieces sentencepiece's `encode(out_type=str)` gives, with their ids: an unknown character becomes its
    /// byte pieces (byte fallback) or joins the unknown piece before it.
    public func encodePieces(_ text: String) -> [(id: Int, piece: [UInt8])] {
        let normalized = normalize(Array(text.utf8))
        let segments = algorithm == .unigram ? unigram(normalized) : bpe(normalized)
        var result: [(id: Int, piece: [UInt8])] = []
        var previousUnknown = false
        for (range, id) in segments {
            let unknown = id == unknownID
            if unknown && byteFallback {
                result += normalized[range].map { (byteIDs[Int($0)], pieces[byteIDs[Int($0)]].text) }
            } else if unknown && previousUnknown {   // a run of unknown pieces is one <unk>
                result[result.count - 1].piece += normalized[range]
            } else {
                result.append((id, Array(normalized[range])))
            }
            previousUnknown = unknown
        }
        return result
    }

    /// The text of `ids` as sentencepiece's `decode` makes it: "▁" as spaces, the first one dropped, byte
    /// pieces joined into UTF-8 (U+FFFD for invalid bytes), control pieces invisible, <unk> as " ⁇ ".
    public func decode(_ ids: [Int]) -> String {
        var text: [UInt8] = []
        var bytes: [UInt8] = []
        var expectLeadingSpace = true, leadingSpaceSeen = false
        func flushBytes() {
            var offset = 0
            while offset < bytes.count {
                let (valid, length) = Self.decodeUTF8(bytes, at: offset)
                text += valid ? Array(bytes[offset..<(offset + length)]) : Self.replacement
                offset += length
            }
            bytes.removeAll()
        }
        for id in ids where pieces.indices.contains(id) {
            let piece = pieces[id]
            if piece.type == .byte {
                bytes.append(UInt8(Self.byteValue(piece.text)!))
                continue
            }
            flushBytes()
            if leadingSpaceSeen || !text.isEmpty { expectLeadingSpace = false }
            switch piece.type {
            case .control: leadingSpaceSeen = false
            case .unknown:
                text += unknownSurface
                leadingSpaceSeen = false
            default:
                var surface = piece.text[...]
                leadingSpaceSeen = false
                if expectLeadingSpace && (addDummyPrefix || removeExtraWhitespaces), surface.starts(with: Self.space) {
                    surface = surface.dropFirst(Self.space.count)
                    leadingSpaceSeen = !removeExtraWhitespaces
                }
                text += Self.unescapeSpaces(surface)
            }
        }
        flushBytes()
        return String(decoding: text, as: UTF8.self)
    }

    static func unescapeSpaces(_ bytes: ArraySlice<UInt8>) -> [UInt8] {
        var out: [UInt8] = []
        var i = bytes.startIndex
        while i < bytes.endIndex {
            if bytes[i...].starts(with: space) { out.append(0x20); i += space.count } else { out.append(bytes[i]); i += 1 }
        }
        return out
    }

    // MARK: normalization

    /// sentencepiece's Normalizer::Normalize: leading, trailing and repeated whitespace dropped (remove_extra_whitespaces),
    /// "▁" added in front (add_dummy_prefix), each prefix rewritten by the longest character-map rule, spaces escaped.
    func normalize(_ input: [UInt8]) -> [UInt8] {
        var position = 0
        if removeExtraWhitespaces {
            while position < input.count {
                let (replacement, consumed) = normalizePrefix(input, at: position)
                guard replacement == [0x20] else { break }
                position += consumed
            }
        }
        guard position < input.count else { return [] }
        var normalized: [UInt8] = []
        normalized.reserveCapacity(input.count * 3)
        let whitespace: [UInt8] = escapeWhitespaces ? Self.space : [0x20]
        if !whitespaceAsSuffix && addDummyPrefix { normalized += whitespace }
        var previousIsSpace = removeExtraWhitespaces
        while position < input.count {
            let (replacement, consumed) = normalizePrefix(input, at: position)
            var piece = replacement[...]
            while previousIsSpace, piece.first == 0x20 { piece = piece.dropFirst() }
            if !piece.isEmpty {
                for byte in piece {
                    if escapeWhitespaces && byte == 0x20 { normalized += Self.space } else { normalized.append(byte) }
                }
                previousIsSpace = piece.last == 0x20
            }
            position += consumed
            if !removeExtraWhitespaces { previousIsSpace = false }
        }
        if removeExtraWhitespaces {
            while normalized.count >= whitespace.count, normalized.suffix(whitespace.count).elementsEqual(whitespace) {
                normalized.removeLast(whitespace.count)
            }
        }
        if whitespaceAsSuffix && addDummyPrefix { normalized += whitespace }
        return normalized
    }

    /// The replacement of the text at `position` and the bytes it consumes: a user-defined symbol as it is,
    /// else the longest character-map rule, else one UTF-8 character (U+FFFD for one invalid byte).
    func normalizePrefix(_ input: [UInt8], at position: Int) -> ([UInt8], Int) {
        if let userDefined, let length = userDefined.longestPrefix(of: input, from: position) {
            return (Array(input[position..<(position + length)]), length)
        }
        if let charsMap, let (replacement, length) = charsMap.longestRule(input, from: position) {
            return (replacement, length)
        }
        let (valid, length) = Self.decodeUTF8(input, at: position)
        return valid ? (Array(input[position..<(position + length)]), length) : (Self.replacement, 1)
    }

    /// sentencepiece's DecodeUTF8 + IsValidDecodeUTF8: whether a well-formed character starts at `offset`, and its
    /// length (1 when it is not). An encoded U+FFFD counts as valid.
    static func decodeUTF8(_ bytes: [UInt8], at offset: Int) -> (valid: Bool, length: Int) {
        let available = bytes.count - offset
        let first = UInt32(bytes[offset])
        func trail(_ i: Int) -> UInt32? { bytes[offset + i] & 0xC0 == 0x80 ? UInt32(bytes[offset + i] & 0x3F) : nil }
        func ok(_ c: UInt32) -> Bool { c < 0xD800 || (c >= 0xE000 && c <= 0x10FFFF) }
        if first < 0x80 { return (true, 1) }
        if available >= 2, first & 0xE0 == 0xC0, let b1 = trail(1) {
            let c = (first & 0x1F) << 6 | b1
            if c >= 0x80 && ok(c) { return (true, 2) }
        } else if available >= 3, first & 0xF0 == 0xE0, let b1 = trail(1), let b2 = trail(2) {
            let c = (first & 0x0F) << 12 | b1 << 6 | b2
            if c >= 0x800 && ok(c) { return (true, 3) }
        } else if available >= 4, first & 0xF8 == 0xF0, let b1 = trail(1), let b2 = trail(2), let b3 = trail(3) {
            let c = (first & 0x07) << 18 | b1 << 12 | b2 << 6 | b3
            if c >= 0x10000 && ok(c) { return (true, 4) }
        }
        return (false, 1)
    }

    /// sentencepiece's OneCharLen: the length the first byte announces, whether or not the rest follows.
    static func announcedLength(_ byte: UInt8) -> Int { [1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 3, 4][Int(byte >> 4)] }

    // MARK: unigram

    /// The Viterbi segmentation of sentencepiece's optimized unigram encoder: the best path ending at each byte
    /// position, candidates tried in order of start and length, a later one winning only when strictly better.
    /// Scores add in Float, as the library's do (Double sums pick other paths on near-ties).
    func unigram(_ normalized: [UInt8]) -> [(Range<Int>, Int)] {
        guard !normalized.isEmpty else { return [] }
        struct Best { var id = -1; var score: Float = 0; var start = -1 }
        let size = normalized.count
        let unknownScore = minimumScore - 10
        var best = [Best](repeating: Best(), count: size + 1)
        var start = 0
        while start < size {
            let scoreHere = best[start].score
            let characterLength = min(Self.announcedLength(normalized[start]), size - start)
            var hasSingleCharacter = false
            var node = 0, end = start
            while end < size, let next = vocabulary.child(of: node, normalized[end]) {
                node = next
                end += 1
                let id = vocabulary.values[node]
                guard id >= 0, pieces[id].type != .unused else { continue }
                let length = end - start
                // A user-defined symbol gets a bonus so that it always wins.
                let score = pieces[id].type == .userDefined ? Float(length) * maximumScore - 0.1 : pieces[id].score
                let candidate = score + scoreHere
                if best[end].start == -1 || candidate > best[end].score { best[end] = Best(id: id, score: candidate, start: start) }
                if length == characterLength { hasSingleCharacter = true }
            }
            if !hasSingleCharacter {
                let candidate = unknownScore + scoreHere
                let end = start + characterLength
                if best[end].start == -1 || candidate > best[end].score { best[end] = Best(id: unknownID, score: candidate, start: start) }
            }
            start += characterLength
        }
        var segments: [(Range<Int>, Int)] = []
        var end = size
        while end > 0 {
            let node = best[end]
            segments.append((node.start..<end, node.id))
            end = node.start
        }
        return segments.reversed()
    }

    // MARK: BPE

    /// sentencepiece's BPE encoder: characters (user-defined symbols whole and frozen), then repeatedly the
    /// adjacent pair whose merged piece scores highest (leftmost on ties) is merged; unused pieces are split again.
    func bpe(_ normalized: [UInt8]) -> [(Range<Int>, Int)] {
        struct Symbol { var previous: Int; var next: Int; var frozen: Bool; var range: Range<Int> }
        struct Pair { let left: Int; let right: Int; let score: Float; let size: Int }
        var symbols: [Symbol] = []
        var position = 0
        while position < normalized.count {
            var length = min(Self.announcedLength(normalized[position]), normalized.count - position)
            var frozen = false
            if let userDefined, let match = userDefined.longestPrefix(of: normalized, from: position) { length = match; frozen = true }
            symbols.append(Symbol(previous: symbols.count - 1, next: position + length < normalized.count ? symbols.count + 1 : -1,
                                  frozen: frozen, range: position..<(position + length)))
            position += length
        }
        guard !symbols.isEmpty else { return [] }
        var agenda = BinaryHeap<Pair> { a, b in a.score > b.score || (a.score == b.score && a.left < b.left) }
        var splits: [[UInt8]: (Range<Int>, Range<Int>)] = [:]
        func consider(_ left: Int, _ right: Int) {
            guard left >= 0, right >= 0, !symbols[left].frozen, !symbols[right].frozen else { return }
            let merged = symbols[left].range.lowerBound..<symbols[right].range.upperBound
            guard let id = vocabularyIDs[Array(normalized[merged])] else { return }
            agenda.push(Pair(left: left, right: right, score: pieces[id].score, size: merged.count))
            if pieces[id].type == .unused { splits[Array(normalized[merged])] = (symbols[left].range, symbols[right].range) }
        }
        for i in 1..<symbols.count { consider(i - 1, i) }
        while let top = agenda.pop() {
            let (left, right) = (symbols[top.left], symbols[top.right])
            guard !left.range.isEmpty, !right.range.isEmpty, left.range.count + right.range.count == top.size else { continue }
            symbols[top.left].range = left.range.lowerBound..<(left.range.lowerBound + top.size)
            symbols[top.left].next = right.next
            if right.next >= 0 { symbols[right.next].previous = top.left }
            symbols[top.right].range = right.range.lowerBound..<right.range.lowerBound
            consider(symbols[top.left].previous, top.left)
            consider(top.left, symbols[top.left].next)
        }
        var segments: [(Range<Int>, Int)] = []
        func resegment(_ range: Range<Int>) {
            let text = Array(normalized[range])
            let id = reservedIDs[text] ?? vocabularyIDs[text] ?? unknownID
            if pieces[id].type == .unused, let (a, b) = splits[text] {
                resegment(a)
                resegment(b)
            } else {
                segments.append((range, id))
            }
        }
        var index = 0
        while index != -1 {
            resegment(symbols[index].range)
            index = symbols[index].next
        }
        return segments
    }
}

/// A trie over bytes: node 0 is the root; `values[node]` is the id of the piece ending there, or -1.
struct ByteTrie: Sendable {
    private var children: [[UInt8: Int32]] = [[:]]
    private(set) var values: [Int] = [-1]

    init(_ entries: [[UInt8]: Int]) {
        for (key, value) in entries {
            var node = 0
            for byte in key {
                if let next = children[node][byte] {
                    node = Int(next)
                } else {
                    children.append([:])
                    values.append(-1)
                    children[node][byte] = Int32(children.count - 1)
                    node = children.count - 1
                }
            }
            values[node] = value
        }
    }

    func child(of node: Int, _ byte: UInt8) -> Int? { children[node][byte].map(Int.init) }

    /// The length of the longest key that `bytes` continues with at `start`.
    func longestPrefix(of bytes: [UInt8], from start: Int) -> Int? {
        var node = 0, longest: Int?
        var position = start
        while position < bytes.count, let next = child(of: node, bytes[position]) {
            node = next
            position += 1
            if values[node] >= 0 { longest = position - start }
        }
        return longest
    }
}

/// The normalizer's precompiled character map: a 4-byte trie size, a darts-clone double array of 32-bit units
/// mapping byte sequences to offsets, and the NUL-separated replacement strings those offsets point into.
/// Every index into it is checked, so a damaged map matches nothing rather than reading out of bounds.
struct CharsMap: Sendable {
    let units: [UInt32]
    let replacements: [UInt8]

    init(_ blob: Data, file: String) throws(TokenizerError) {
        let bytes = [UInt8](blob)
        guard bytes.count > 4 else { throw .malformed(file: file, line: nil, detail: "SentencePiece model: the character map is too short") }
        let trieSize = Int(UInt32(bytes[0]) | UInt32(bytes[1]) << 8 | UInt32(bytes[2]) << 16 | UInt32(bytes[3]) << 24)
        guard trieSize < bytes.count - 4, trieSize % 4 == 0, trieSize > 0 else {
            throw .malformed(file: file, line: nil, detail: "SentencePiece model: the character map's trie size \(trieSize) does not fit its \(bytes.count) bytes")
        }
        units = stride(from: 4, to: 4 + trieSize, by: 4).map { i in
            UInt32(bytes[i]) | UInt32(bytes[i + 1]) << 8 | UInt32(bytes[i + 2]) << 16 | UInt32(bytes[i + 3]) << 24
        }
        replacements = Array(bytes[(4 + trieSize)...])
    }

    /// darts-clone's commonPrefixSearch, keeping the longest of the first 32 matches as sentencepiece does.
    func longestRule(_ input: [UInt8], from start: Int) -> ([UInt8], Int)? {
        func offset(_ unit: UInt32) -> Int { Int((unit >> 10) << ((unit & (1 << 9)) >> 6)) }
        guard !units.isEmpty else { return nil }
        var node = offset(units[0])
        var best: (value: Int, length: Int)?
        var results = 0
        for i in start..<input.count {
            node ^= Int(input[i])
            guard node < units.count else { break }
            let unit = units[node]
            guard unit & ((1 << 31) | 0xFF) == UInt32(input[i]) else { break }
            node ^= offset(unit)
            if (unit >> 8) & 1 == 1 {
                guard node < units.count else { break }
                if results < 32 { best = (Int(units[node] & ((1 << 31) - 1)), i - start + 1) }
                results += 1
            }
        }
        guard let best, best.value < replacements.count else { return nil }
        let end = replacements[best.value...].firstIndex(of: 0) ?? replacements.count
        return (Array(replacements[best.value..<end]), best.length)
    }
}
