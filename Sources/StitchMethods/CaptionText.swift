import Foundation

/// Caption tokenization as the COCO caption evaluation does it (pycocoevalcap's PTBTokenizer,
/// Stanford CoreNLP with lower-casing, then its punctuation tokens dropped), for ordinary
/// caption text: punctuation split from words, clitics split off ("is n't", "child 's",
/// "ca n't"), brackets written as -lrb- / -rrb- / -lsb- / -rsb- / -lcb- / -rcb- (which the
/// evaluation keeps), quotes and the punctuation marks dropped, abbreviations ("mr.") and
/// numbers ("3.5") kept whole.
public enum CaptionTokenizer {
    /// Tokens the evaluation removes after tokenizing (its PUNCTUATIONS list, as lower-cased output meets it).
    static let dropped: Set<String> = ["''", "'", "``", "`", ".", "?", "!", ",", ":", "-", "--", "...", ";"]
    static let brackets: [Character: String] = ["(": "-lrb-", ")": "-rrb-", "[": "-lsb-", "]": "-rsb-", "{": "-lcb-", "}": "-rcb-"]
    /// Abbreviations whose period stays on the word.
    static let abbreviations: Set<String> = ["mr", "mrs", "ms", "dr", "st", "jr", "sr", "vs", "etc", "inc", "co", "no", "mt", "ave", "prof"]
    static let clitics = ["n't", "'s", "'re", "'ve", "'ll", "'d", "'m"]

    public static func tokenize(_ text: String) -> String {
        var tokens: [String] = []
        for word in text.lowercased().replacingOccurrences(of: "\"", with: " ").split(whereSeparator: \.isWhitespace) {
            tokens += split(String(word))
        }
        return tokens.filter { !dropped.contains($0) }.joined(separator: " ")
    }

    /// One whitespace-separated word: leading and trailing punctuation, brackets and clitics as tokens of their own.
    static func split(_ word: String) -> [String] {
        var core = Substring(word)
        var leading: [String] = [], trailing: [String] = []
        while let first = core.first, "([{`'".contains(first) {
            leading.append(brackets[first] ?? String(first))
            core = core.dropFirst()
        }
        while let last = core.last, ")]}.,;:!?'`".contains(last) {
            if core.hasSuffix("...") {
                trailing.insert("...", at: 0)
                core = core.dropLast(3)
                continue
            }
            // A period is split off at the end of a word or before ! and ? ("water." and "water.!", but
            // "water.;"), and never from an abbreviation.
            let afterMarks = trailing.allSatisfy { $0.allSatisfy { $0 == "!" || $0 == "?" } }
            if last == ".", !afterMarks || isAbbreviation(core) { break }
            if last == "!" || last == "?" {
                // A run of ! and ? is one token ("!!", "?!").
                let run = core.reversed().prefix { $0 == "!" || $0 == "?" }.count
                trailing.insert(String(core.suffix(run)), at: 0)
                core = core.dropLast(run)
                continue
            }
            trailing.insert(brackets[last] ?? String(last), at: 0)
            core = core.dropLast()
        }
        var middle: [String] = []
        if !core.isEmpty {
            let text = String(core)
            if let clitic = clitics.first(where: { text.hasSuffix($0) && text.count > $0.count }) {
                middle = [String(text.dropLast(clitic.count)), clitic]
            } else {
                middle = [text]
            }
        }
        return leading + middle + trailing
    }

    /// "mr." and "u.s." keep their period; a sentence's last period does not.
    private static func isAbbreviation(_ word: Substring) -> Bool {
        let stem = word.dropLast()
        return abbreviations.contains(String(stem)) || (stem.contains(".") && stem.allSatisfy { $0.isLetter || $0 == "." })
    }
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
