/// Text handling of transformers 4.7.0, the version MAGiC's published code pins and ran: the clean-up its `decode`
/// applies by default, and the BERT BasicTokenizer its slow CLIPTokenizer falls back to when ftfy is not installed.
/// Written from that version's Python step by step, with Python's character classes.
public enum Transformers47 {
    /// Which behaviour turns text into a tokenizer's ids: today's (transformers' fast tokenizers), or transformers
    /// 4.7.0's slow tokenizer without ftfy.
    public enum Tokenization: Sendable, CaseIterable {
        case current, transformers47
    }

    /// `clean_up_tokenization`: spaces before . ? ! , and in front of the contractions n't 'm 's 've 're removed, " ' "
    /// made "'"; Python `str.replace` calls in that order, on code points.
    public static func cleanUpTokenization(_ text: String) -> String {
        var scalars = Array(text.unicodeScalars)
        for (old, new) in [(" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"),
                           (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re")] {
            scalars = replace(scalars, Array(old.unicodeScalars), with: Array(new.unicodeScalars))
        }
        return String(String.UnicodeScalarView(scalars))
    }

    /// Python's `str.replace`: non-overlapping occurrences, left to right.
    private static func replace(_ scalars: [Unicode.Scalar], _ old: [Unicode.Scalar], with new: [Unicode.Scalar]) -> [Unicode.Scalar] {
        var out: [Unicode.Scalar] = []
        out.reserveCapacity(scalars.count)
        var i = 0
        while i < scalars.count {
            if i + old.count <= scalars.count, scalars[i..<i + old.count].elementsEqual(old) {
                out += new
                i += old.count
            } else {
                out.append(scalars[i])
                i += 1
            }
        }
        return out
    }

    /// `BasicTokenizer(do_lower_case=True).tokenize`: NUL, U+FFFD and control/format/unassigned/private-use characters
    /// dropped, whitespace made spaces, CJK ideographs spaced out; each whitespace-separated word lower-cased (Python's
    /// `str.lower`, final sigma included), its accents stripped (NFD without nonspacing marks) and every punctuation
    /// character split off as a word of its own.
    public static func basicTokenize(_ text: String) -> [String] {
        var cleaned = String.UnicodeScalarView()
        for c in text.unicodeScalars {
            if c.value == 0 || c.value == 0xFFFD || WordPieceTokenizer.isControl(c) { continue }
            if c == " " || c == "\t" || c == "\n" || c == "\r" || c.properties.generalCategory == .spaceSeparator {
                cleaned.append(" ")
            } else if WordPieceTokenizer.isCJK(c) {
                cleaned.append(contentsOf: [" ", c, " "])
            } else {
                cleaned.append(c)
            }
        }
        var words: [String] = []
        for word in PythonText.split(Array(cleaned)) {
            let stripped = String(String.UnicodeScalarView(PythonText.lower(word))).decomposedStringWithCanonicalMapping.unicodeScalars
                .filter { $0.properties.generalCategory != .nonspacingMark }
            var current = String.UnicodeScalarView()
            for c in stripped {
                if WordPieceTokenizer.isPunctuation(c) {
                    if !current.isEmpty { words.append(String(current)) }
                    current = String.UnicodeScalarView()
                    words.append(String(c))
                } else {
                    current.append(c)
                }
            }
            if !current.isEmpty { words.append(String(current)) }
        }
        // The words are joined and split again on whitespace: lower-casing can make some.
        return words.flatMap { PythonText.split(Array($0.unicodeScalars)).map { String(String.UnicodeScalarView($0)) } }
    }
}
