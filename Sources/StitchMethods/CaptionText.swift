import Foundation
import StitchTokenizers

/// Caption tokenization as the COCO caption evaluation does it: pycocoevalcap's PTBTokenizer, which joins the captions
/// into one text (line feeds inside a caption become spaces), runs Stanford's tokenizer on it with lower-casing
/// (`PTBTokenizer` here), and drops its punctuation tokens from each output line.
public enum CaptionTokenizer {
    /// pycocoevalcap's PUNCTUATIONS. Its bracket entries are upper-case and so never meet the lower-cased output:
    /// -lrb- and the like stay, as in the official scores.
    static let dropped: Set<String> = ["''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",", ":", "-", "--", "...", ";"]

    /// The longest caption (UTF-16 units) the evaluation accepts. Real captions are far shorter; the scanner's work on a
    /// line grows with the square of its length in the worst case (as the Java tokenizer's does), so longer input is
    /// refused rather than left to run for hours.
    public static let maximumLength = 4096

    /// Whether `caption` holds a line terminator of the tokenizer that pycocoevalcap leaves in (it replaces LF only):
    /// CR, VT, FF, U+2028 or U+2029 (U+0085 is an ellipsis to it).
    public static func holdsLineBreak(_ caption: String) -> Bool { caption.unicodeScalars.contains(where: lineBreaks.contains) }

    private static let lineBreaks: Set<Unicode.Scalar> = ["\r", "\u{B}", "\u{C}", "\u{2028}", "\u{2029}"]

    /// The tokenized captions as pycocoevalcap pairs them with its input, in order. The tokenizer also starts lines at
    /// CR, CRLF, VT, FF, U+2028 and U+2029 inside captions; pycocoevalcap pairs lines and captions in order all the same,
    /// so from such a caption on each caption receives an earlier line (the result then has as many entries as
    /// captions), and a caption ending in CR merges with the next (the result is then shorter: the official evaluation
    /// fails on such input).
    public static func tokenize(_ captions: [String]) -> [String] {
        let text = captions.map { $0.replacingOccurrences(of: "\n", with: " ") }.joined(separator: "\n")
        let lines = PTBTokenizer.tokenize(text).prefix(captions.count)
        return lines.map { tokens in
            // pycocoevalcap: ' '.join(w for w in line.rstrip().split(' ') if w not in PUNCTUATIONS)
            let line = PythonText.strip(Substring(tokens.joined(separator: " ")), leading: false)
            return line.components(separatedBy: " ").filter { !dropped.contains($0) }.joined(separator: " ")
        }
    }

    /// One caption tokenized on its own (as the only caption of an evaluation).
    public static func tokenize(_ caption: String) -> String { tokenize([caption]).first ?? "" }
}

/// The Porter (1980) stemmer, the original algorithm (nltk's PorterStemmer in ORIGINAL_ALGORITHM mode).
public enum PorterStemmer {
    public static func stem(_ word: String) -> String {
        var w = Array(word)
        step1a(&w)
        step1b(&w)
        step1c(&w)
        replaceFirst(&w, [("ational", "ate"), ("tional", "tion"), ("enci", "ence"), ("anci", "ance"), ("izer", "ize"), ("abli", "able"),
                          ("alli", "al"), ("entli", "ent"), ("eli", "e"), ("ousli", "ous"), ("ization", "ize"), ("ation", "ate"),
                          ("ator", "ate"), ("alism", "al"), ("iveness", "ive"), ("fulness", "ful"), ("ousness", "ous"), ("aliti", "al"),
                          ("iviti", "ive"), ("biliti", "ble")], minimumMeasure: 1)
        replaceFirst(&w, [("icate", "ic"), ("ative", ""), ("alize", "al"), ("iciti", "ic"), ("ical", "ic"), ("ful", ""), ("ness", "")], minimumMeasure: 1)
        step4(&w)
        step5(&w)
        return String(w)
    }

    private static func isConsonant(_ w: [Character], _ i: Int) -> Bool {
        switch w[i] {
        case "a", "e", "i", "o", "u": return false
        case "y": return i == 0 ? true : !isConsonant(w, i - 1)
        default: return true
        }
    }

    /// m in [C](VC){m}[V] of w[0..<end].
    private static func measure(_ w: [Character], _ end: Int) -> Int {
        var m = 0, i = 0
        while i < end && isConsonant(w, i) { i += 1 }
        while i < end {
            while i < end && !isConsonant(w, i) { i += 1 }
            guard i < end else { break }
            m += 1
            while i < end && isConsonant(w, i) { i += 1 }
        }
        return m
    }

    private static func hasVowel(_ w: [Character], _ end: Int) -> Bool { (0..<end).contains { !isConsonant(w, $0) } }

    private static func endsWithDoubleConsonant(_ w: [Character], _ end: Int) -> Bool {
        end >= 2 && w[end - 1] == w[end - 2] && isConsonant(w, end - 1)
    }

    /// *o: w[0..<end] ends consonant-vowel-consonant, the last not w, x or y.
    private static func endsCVC(_ w: [Character], _ end: Int) -> Bool {
        end >= 3 && isConsonant(w, end - 3) && !isConsonant(w, end - 2) && isConsonant(w, end - 1) && !"wxy".contains(w[end - 1])
    }

    private static func hasSuffix(_ w: [Character], _ suffix: String) -> Bool { w.count >= suffix.count && w.suffix(suffix.count).elementsEqual(suffix) }

    /// The rule whose suffix ends w (the list's first), applied when the rest's measure reaches `minimumMeasure`.
    private static func replaceFirst(_ w: inout [Character], _ rules: [(String, String)], minimumMeasure: Int) {
        guard let (suffix, replacement) = rules.first(where: { hasSuffix(w, $0.0) }) else { return }
        let stemEnd = w.count - suffix.count
        if measure(w, stemEnd) >= minimumMeasure { w = Array(w[..<stemEnd]) + Array(replacement) }
    }

    private static func step1a(_ w: inout [Character]) {
        if hasSuffix(w, "sses") || hasSuffix(w, "ies") { w.removeLast(2) }
        else if hasSuffix(w, "ss") { return }
        else if hasSuffix(w, "s") { w.removeLast() }
    }

    private static func step1b(_ w: inout [Character]) {
        if hasSuffix(w, "eed") {
            if measure(w, w.count - 3) > 0 { w.removeLast() }
            return
        }
        guard let suffix = ["ed", "ing"].first(where: { hasSuffix(w, $0) }), hasVowel(w, w.count - suffix.count) else { return }
        w.removeLast(suffix.count)
        if hasSuffix(w, "at") || hasSuffix(w, "bl") || hasSuffix(w, "iz") {
            w.append("e")
        } else if endsWithDoubleConsonant(w, w.count) && !"lsz".contains(w.last!) {
            w.removeLast()
        } else if measure(w, w.count) == 1 && endsCVC(w, w.count) {
            w.append("e")
        }
    }

    private static func step1c(_ w: inout [Character]) {
        if hasSuffix(w, "y") && hasVowel(w, w.count - 1) { w[w.count - 1] = "i" }
    }

    private static func step4(_ w: inout [Character]) {
        let suffixes = ["al", "ance", "ence", "er", "ic", "able", "ible", "ant", "ement", "ment", "ent", "ion", "ou", "ism", "ate", "iti", "ous", "ive", "ize"]
        // The longest suffix that ends the word decides; its condition may then fail.
        guard let suffix = suffixes.filter({ hasSuffix(w, $0) }).max(by: { $0.count < $1.count }) else { return }
        let stemEnd = w.count - suffix.count
        guard measure(w, stemEnd) > 1 else { return }
        if suffix == "ion" && !(stemEnd > 0 && "st".contains(w[stemEnd - 1])) { return }
        w.removeLast(suffix.count)
    }

    private static func step5(_ w: inout [Character]) {
        if hasSuffix(w, "e") {
            let m = measure(w, w.count - 1)
            if m > 1 || (m == 1 && !endsCVC(w, w.count - 1)) { w.removeLast() }
        }
        if measure(w, w.count) > 1 && endsWithDoubleConsonant(w, w.count) && w.last == "l" { w.removeLast() }
    }
}
