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
        PythonText.split(Array(WordPieceTokenizer.clean(text))).flatMap { word in
            let stripped = String(String.UnicodeScalarView(PythonText.lower(word))).decomposedStringWithCanonicalMapping.unicodeScalars
                .filter { $0.properties.generalCategory != .nonspacingMark }
            // Punctuation split off as BERT's pre-tokenizer splits it (lower-casing and NFD make no whitespace).
            return WordPieceTokenizer.pretokenize(String(String.UnicodeScalarView(stripped))).map { String(String.UnicodeScalarView($0)) }
        }
    }
}
