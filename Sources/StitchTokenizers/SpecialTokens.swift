import Foundation

/// Splits `text` around literal occurrences of special tokens, as the
/// reference tokenizers do before any normalisation: "[CLS] hi" gives
/// ("[CLS]", 101) and (" hi", nil). At one position the longest token wins.
func splitSpecialTokens(_ text: String, _ specials: [String: Int]) -> [(text: Substring, id: Int?)] {
    guard !specials.isEmpty, !text.isEmpty else { return [(text[...], nil)] }
    var pieces: [(text: Substring, id: Int?)] = []
    var start = text.startIndex
    while start < text.endIndex {
        var best: (range: Range<String.Index>, id: Int)?
        for (token, id) in specials {
            guard let range = text.range(of: token, options: .literal, range: start..<text.endIndex) else { continue }
            if let current = best, range.lowerBound > current.range.lowerBound
                || (range.lowerBound == current.range.lowerBound && range.upperBound <= current.range.upperBound) { continue }
            best = (range, id)
        }
        guard let best else { break }
        if best.range.lowerBound > start { pieces.append((text[start..<best.range.lowerBound], nil)) }
        pieces.append((text[best.range], best.id))
        start = best.range.upperBound
    }
    if start < text.endIndex { pieces.append((text[start...], nil)) }
    return pieces
}

/// Encodes ordinary text with `encode` and special tokens by their ids.
func encodeAroundSpecialTokens(_ text: String, _ specials: [String: Int], _ encode: (String) -> [Int]) -> [Int] {
    splitSpecialTokens(text, specials).flatMap { piece in piece.id.map { [$0] } ?? encode(String(piece.text)) }
}
