import Foundation

/// GPT-2's reversible map from bytes to printable characters, so that any
/// byte string is a string of vocabulary symbols. Order matters: CLIP builds
/// its vocabulary from these characters in this order.
let byteToUnicode: [Character] = {
    let printable = Array(33...126) + Array(161...172) + Array(174...255)
    var characters = printable.map { Character(Unicode.Scalar(UInt32($0))!) }
    var next = 256
    var order = printable
    for byte in 0..<256 where !printable.contains(byte) {
        order.append(byte)
        characters.append(Character(Unicode.Scalar(UInt32(next))!))
        next += 1
    }
    var table = [Character](repeating: " ", count: 256)
    for (byte, character) in zip(order, characters) { table[byte] = character }
    return table
}()

/// The byte-to-unicode characters in the order Python's bytes_to_unicode() lists them.
let byteLevelAlphabet: [String] = {
    let printable = Array(33...126) + Array(161...172) + Array(174...255)
    let rest = (0..<256).filter { !printable.contains($0) }
    return (printable + rest).map { String(byteToUnicode[$0]) }
}()

let unicodeToByte: [Character: UInt8] = {
    var table: [Character: UInt8] = [:]
    for (byte, character) in byteToUnicode.enumerated() { table[character] = UInt8(byte) }
    return table
}()

/// Byte-pair merging shared by GPT-2 and CLIP: repeatedly merge the adjacent
/// pair with the lowest merge rank, then look the symbols up in the vocabulary.
final class BytePairEncoder: @unchecked Sendable {
    let vocabulary: [String: Int]
    let idToToken: [Int: String]
    private let ranks: [String: Int]        // "left right" -> rank
    private let endOfWord: String?          // CLIP marks a word's last symbol with "</w>"
    private var cache: [String: [Int]] = [:]
    private let lock = NSLock()

    init(vocabulary: [String: Int], merges: [(String, String)], endOfWord: String?) {
        self.vocabulary = vocabulary
        var inverse: [Int: String] = [:]
        for (token, id) in vocabulary { inverse[id] = token }
        idToToken = inverse
        var ranks: [String: Int] = [:]
        for (rank, pair) in merges.enumerated() where ranks[pair.0 + " " + pair.1] == nil {
            ranks[pair.0 + " " + pair.1] = rank
        }
        self.ranks = ranks
        self.endOfWord = endOfWord
    }

    /// Ids of one pre-tokenized word given as raw bytes.
    func encode(word bytes: some Sequence<UInt8>) -> [Int] {
        let word = String(bytes.map { byteToUnicode[Int($0)] })
        lock.lock()
        if let hit = cache[word] { lock.unlock(); return hit }
        lock.unlock()
        var symbols = word.map(String.init)
        if let endOfWord, !symbols.isEmpty { symbols[symbols.count - 1] += endOfWord }
        while symbols.count > 1 {
            var best = Int.max, at = -1
            for i in 0..<(symbols.count - 1) {
                if let rank = ranks[symbols[i] + " " + symbols[i + 1]], rank < best { best = rank; at = i }
            }
            if at < 0 { break }
            let (left, right) = (symbols[at], symbols[at + 1])
            var merged: [String] = []
            merged.reserveCapacity(symbols.count)
            var i = 0
            while i < symbols.count {
                if i + 1 < symbols.count && symbols[i] == left && symbols[i + 1] == right {
                    merged.append(left + right)
                    i += 2
                } else {
                    merged.append(symbols[i])
                    i += 1
                }
            }
            symbols = merged
        }
        // Every single byte symbol is in a byte-level vocabulary, so lookups only fail for broken files.
        let ids = symbols.compactMap { vocabulary[$0] }
        lock.lock()
        if cache.count > 100_000 { cache.removeAll(keepingCapacity: true) }
        cache[word] = ids
        lock.unlock()
        return ids
    }

    /// The bytes that `ids` stand for; tokens that are not byte-level symbols are skipped.
    func bytes(of ids: [Int], stripping suffix: String? = nil, wordSeparator: UInt8? = nil) -> [UInt8] {
        var out: [UInt8] = []
        for id in ids {
            guard var token = idToToken[id] else { continue }
            var endsWord = false
            if let suffix, token.hasSuffix(suffix) {
                token.removeLast(suffix.count)
                endsWord = true
            }
            let decoded = token.compactMap { unicodeToByte[$0] }
            guard decoded.count == token.count else { continue }
            out += decoded
            if endsWord, let wordSeparator { out.append(wordSeparator) }
        }
        return out
    }
}

/// Parses a merges file: one "left right" pair per line; `#version` headers and blank lines are skipped.
func parseMerges(_ text: Substring, file: String, firstLineNumber: Int = 1) throws(TokenizerError) -> [(String, String)] {
    var merges: [(String, String)] = []
    for (offset, line) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
        if line.hasPrefix("#version") || line.isEmpty { continue }
        let parts = line.split(separator: " ")
        guard parts.count == 2 else {
            throw .malformed(file: file, line: firstLineNumber + offset, detail: "expected two symbols separated by one space")
        }
        merges.append((String(parts[0]), String(parts[1])))
    }
    return merges
}

func readText(_ path: String) throws(TokenizerError) -> String {
    guard let data = FileManager.default.contents(atPath: path) else {
        throw .cannotRead(file: path, reason: FileManager.default.fileExists(atPath: path) ? "unreadable" : "no such file")
    }
    guard let text = String(data: data, encoding: .utf8) else { throw .malformed(file: path, line: nil, detail: "not UTF-8 text") }
    return text
}

func readVocabularyJSON(_ path: String) throws(TokenizerError) -> [String: Int] {
    let text = try readText(path)
    guard let vocabulary = try? JSONDecoder().decode([String: Int].self, from: Data(text.utf8)) else {
        throw .malformed(file: path, line: nil, detail: "expected a JSON object of token -> id")
    }
    return vocabulary
}
