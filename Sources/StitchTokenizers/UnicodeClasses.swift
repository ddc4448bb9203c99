/// The character classes the reference regexes and normalizers use
/// (\p{L}, \p{N}, \s as Unicode White_Space, \p{P}).
extension Unicode.Scalar {
    var isLetter: Bool {
        switch properties.generalCategory {
        case .uppercaseLetter, .lowercaseLetter, .titlecaseLetter, .modifierLetter, .otherLetter: return true
        default: return false
        }
    }

    var isNumber: Bool {
        switch properties.generalCategory {
        case .decimalNumber, .letterNumber, .otherNumber: return true
        default: return false
        }
    }

    var isSpace: Bool { properties.isWhitespace }

    var isPunctuation: Bool {
        switch properties.generalCategory {
        case .connectorPunctuation, .dashPunctuation, .openPunctuation, .closePunctuation,
             .initialPunctuation, .finalPunctuation, .otherPunctuation: return true
        default: return false
        }
    }

    /// Lower-cased one scalar at a time (no context-dependent final sigma),
    /// as the Rust tokenizers' Lowercase normalizer does.
    var lowercased: String { properties.lowercaseMapping }
}

/// The contractions both GPT-2 and CLIP split off: 's 't 're 've 'm 'll 'd.
/// Returns the length of the one starting at `i`, if any.
func contractionLength(_ scalars: [Unicode.Scalar], at i: Int) -> Int? {
    guard scalars[i] == "'" else { return nil }
    let rest = scalars.count - i - 1
    if rest >= 2 {
        let two = String(String.UnicodeScalarView([scalars[i + 1], scalars[i + 2]]))
        if two == "re" || two == "ve" || two == "ll" { return 3 }
    }
    if rest >= 1, "stmd".unicodeScalars.contains(scalars[i + 1]) { return 2 }
    return nil
}

/// Python's `str` operations that transformers' slow tokenizers apply, with Python's character classes.
public enum PythonText {
    /// Python's `str.split()`: runs of `str.isspace()` characters separate words.
    public static func split(_ scalars: [Unicode.Scalar]) -> [[Unicode.Scalar]] {
        scalars.split(whereSeparator: PythonText.isSpace).map(Array.init)
    }

    /// Python's `str.lower()`: full lower-case mappings, and capital sigma as final sigma where a cased letter
    /// (case-ignorable characters skipped) precedes it and none follows it.
    public static func lower(_ scalars: [Unicode.Scalar]) -> [Unicode.Scalar] {
        var out: [Unicode.Scalar] = []
        for (i, c) in scalars.enumerated() {
            guard c.value == 0x3A3 else {
                out += c.properties.lowercaseMapping.unicodeScalars
                continue
            }
            let before = scalars[..<i].last { !$0.properties.isCaseIgnorable }
            let after = scalars[(i + 1)...].first { !$0.properties.isCaseIgnorable }
            let final = before?.properties.isCased == true && after?.properties.isCased != true
            out.append(Unicode.Scalar(final ? 0x3C2 : 0x3C3)!)
        }
        return out
    }

    /// `str.isspace()`: Unicode White_Space plus the separators U+001C...U+001F.
    public static func isSpace(_ scalar: Unicode.Scalar) -> Bool { scalar.properties.isWhitespace || (0x1C...0x1F).contains(scalar.value) }

    /// `str.strip()`, `lstrip()`, `rstrip()` without arguments.
    public static func strip(_ text: Substring, leading: Bool = true, trailing: Bool = true) -> Substring {
        var scalars = text.unicodeScalars[...]
        if leading { while let first = scalars.first, isSpace(first) { scalars = scalars.dropFirst() } }
        if trailing { while let last = scalars.last, isSpace(last) { scalars = scalars.dropLast() } }
        return Substring(scalars)
    }

    /// `re.sub(r"\s+", " ", text)`.
    static func foldWhitespace(_ text: String) -> String {
        var out = String.UnicodeScalarView()
        var inRun = false
        for scalar in text.unicodeScalars {
            if isSpace(scalar) {
                if !inRun { out.append(" ") }
                inRun = true
            } else {
                out.append(scalar)
                inRun = false
            }
        }
        return String(out)
    }
}
