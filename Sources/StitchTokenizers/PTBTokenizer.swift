/// The Penn Treebank tokenizer of Stanford CoreNLP 3.4.1 as the COCO caption evaluation runs it
/// (`edu.stanford.nlp.process.PTBTokenizer -preserveLines -lowerCase`, default options: PTB3 escaping, LaTeX quotes,
/// assimilations split, untokenizable characters deleted, no americanization), re-expressed rule by rule with that
/// scanner's matching semantics (see `LongestMatchLexer`). Tokens come out lower-cased as Java's
/// `toLowerCase(Locale.ENGLISH)` leaves them, in lines split where the text has line terminators (CR, LF, CRLF, VT, FF,
/// U+2028, U+2029).
public enum PTBTokenizer {
    /// The lines of tokens of `text`, as the tokenizer prints them.
    public static func tokenize(_ text: String) -> [[String]] {
        let units = Array(text.utf16)
        var lines: [[String]] = [[]]
        var position = 0
        func emit(_ token: String) {
            lines[lines.count - 1].append(javaLowercased(token))
        }
        while position < units.count {
            guard let (index, length) = rules.lexer.match(units, at: position) else {
                position += 1   // not reached: the last rule takes any unit but LF, which is a line terminator
                continue
            }
            // The matched text, decoded only by the rules that keep it (not for spaces, line breaks or deletions).
            var token: String { String(decoding: units[position..<position + length], as: UTF16.self) }
            var next = position + length
            switch rules.actions[index] {
            case .keep: emit(token)
            case .replace(let replacement): emit(replacement)
            case .keepBefore(let rescanned):
                next -= rescanned
                emit(String(decoding: units[position..<next], as: UTF16.self))
            case .withoutSoftHyphens: emit(withoutSoftHyphens(token))
            case .quotes(let left): emit(latexQuotes(token, left: left))
            case .noBreakSpaces: emit(noBreakSpaces(token))
            case .ampersand: emit(normalizedAmpersand(token))
            case .fraction:
                emit(token.replacingAll(["\u{BC}": "1/4", "\u{BD}": "1/2", "\u{BE}": "3/4", "\u{2153}": "1/3", "\u{2154}": "2/3"]))
            case .currency:
                emit(token.replacingAll(["\u{A2}": "cents", "\u{A3}": "#", "\u{80}": "$", "\u{A4}": "$", "\u{20A0}": "$", "\u{20AC}": "$"]))
            case .phone: emit(bracketsEscaped(noBreakSpaces(token)))
            case .smiley: emit(bracketsEscaped(token))
            case .hyphens: emit((3...4).contains(length) ? "--" : token)
            case .acronymBeforeSentence:
                // A one-letter acronym gives the letter, then the period; a longer one keeps its period and gives it again.
                if length == 2 {
                    next = position + 1
                    emit(String(decoding: units[position..<next], as: UTF16.self))
                } else {
                    next -= 1
                    emit(token)
                }
            case .periodAgain:
                next -= 1
                emit(token)
            case .skip: break
            case .newline: lines.append([])
            }
            position = next
        }
        return lines
    }

    private enum Action {
        case keep
        case replace(String)
        /// The text less its last n units, which are scanned again ("cannot" gives "can", then "not").
        case keepBefore(Int)
        case withoutSoftHyphens, noBreakSpaces, ampersand, fraction, currency, phone, smiley, hyphens
        case quotes(left: Bool)
        /// An acronym followed by a word that starts a sentence (both handled as the tokenizer does).
        case acronymBeforeSentence
        /// An abbreviation that ends a sentence: the abbreviation with its period, then the period once more.
        case periodAgain
        case skip, newline
    }

    private static let rules: (lexer: LongestMatchLexer, actions: [Action]) = {
        let table = PTBRules.table
        return (LongestMatchLexer(table.map { LongestMatchLexer.Rule(pattern: $0.0, context: $0.1) }), table.map(\.2))
    }()

    /// Java's `toLowerCase(Locale.ENGLISH)`: simple lower-case mappings but İ to i̇, and capital sigma as final sigma when
    /// a cased letter precedes it in its word and none follows it there (words as Java's word BreakIterator finds them).
    private static func javaLowercased(_ token: String) -> String {
        let scalars = Array(token.unicodeScalars)
        var out = String.UnicodeScalarView()
        for (i, scalar) in scalars.enumerated() {
            guard scalar.value == 0x3A3 else {
                out.append(contentsOf: scalar.properties.lowercaseMapping.unicodeScalars)
                continue
            }
            let word = javaWord(around: i, in: scalars)
            let final = scalars[word.lowerBound..<i].contains { $0.properties.isCased }
                && !scalars[(i + 1)..<word.upperBound].contains { $0.properties.isCased }
            out.append(Unicode.Scalar(final ? 0x3C2 : 0x3C3)!)
        }
        return String(out)
    }

    /// The word holding `scalars[index]` by the rules of Java's word BreakIterator: letters and digits, marks and format
    /// characters, and dashes, connectors (_), apostrophes, quotes and periods between letters (or commas, quotes and periods
    /// between digits), marks skipped.
    private static func javaWord(around index: Int, in scalars: [Unicode.Scalar]) -> Range<Int> {
        enum Kind { case letter, digit, mark, midWord, midWordOrNumber, midNumber, other }
        func kind(_ i: Int) -> Kind {
            guard scalars.indices.contains(i) else { return .other }
            switch scalars[i].properties.generalCategory {
            case .uppercaseLetter, .lowercaseLetter, .titlecaseLetter, .modifierLetter, .otherLetter, .spacingMark: return .letter
            case .decimalNumber, .letterNumber, .otherNumber: return .digit
            case .nonspacingMark, .enclosingMark, .format: return .mark
            case .dashPunctuation, .connectorPunctuation: return .midWord
            default:
                switch scalars[i] {
                case "\u{AD}", "\u{2027}": return .midWord
                case "\"", "'", ".": return .midWordOrNumber
                case ",", "\u{66B}": return .midNumber
                default: return .other
                }
            }
        }
        /// The kind of the nearest unit before or after `i` that is not a mark.
        func neighbour(_ i: Int, _ step: Int) -> Kind {
            var j = i
            while kind(j) == .mark { j += step }
            return kind(j)
        }
        func joins(_ i: Int) -> Bool {
            let (before, after) = (neighbour(i - 1, -1), neighbour(i + 1, 1))
            let letters = before == .letter && after == .letter, digits = before == .digit && after == .digit
            switch kind(i) {
            case .letter, .digit, .mark: return true
            case .midWord: return letters
            case .midWordOrNumber: return letters || digits
            case .midNumber: return digits
            case .other: return false
            }
        }
        var start = index, end = index + 1
        while start > 0, joins(start - 1) { start -= 1 }
        while end < scalars.count, joins(end) { end += 1 }
        return start..<end
    }

    private static func withoutSoftHyphens(_ token: String) -> String {
        let kept = token.unicodeScalars.filter { $0 != "\u{AD}" }
        return kept.isEmpty ? "-" : String(String.UnicodeScalarView(kept))
    }

    private static func noBreakSpaces(_ token: String) -> String { token.replacingAll([" ": "\u{A0}"]) }

    private static func bracketsEscaped(_ token: String) -> String { token.replacingAll(["(": "-LRB-", ")": "-RRB-"]) }

    private static func normalizedAmpersand(_ token: String) -> String {
        var out = "", rest = Substring(token)
        while let range = rest.range(of: "&amp;", options: .caseInsensitive) {
            out += rest[..<range.lowerBound] + "&"
            rest = rest[range.upperBound...]
        }
        return out + rest
    }

    /// LaTeX quotes: straight quotes (and the entities) as ` `` or ' '' by the side they probably open, curly and
    /// angle quotes by their direction.
    private static func latexQuotes(_ token: String, left: Bool) -> String {
        var out = token.replacingOccurrences(of: "&apos;", with: "'").replacingOccurrences(of: "&quot;", with: "\"")
        out = out.replacingAll(left ? ["'": "`", "\"": "``"] : ["'": "'", "\"": "''"])
        return out.replacingAll(["\u{91}": "`", "\u{2018}": "`", "\u{201B}": "`", "\u{2039}": "`",
                                 "\u{92}": "'", "\u{2019}": "'", "\u{203A}": "'",
                                 "\u{93}": "``", "\u{201C}": "``", "\u{AB}": "``",
                                 "\u{94}": "''", "\u{201D}": "''", "\u{BB}": "''"])
    }

    /// The rules in the scanner's order with their trailing contexts and actions.
    private enum PTBRules {
        static var table: [(Pattern, Pattern?, Action)] {
            let g = Grammar()
            let punctuationAfterWord = g.inSentencePunctuation
            return [
                (seq(text("c"), chars("+"), chars("+")), nil, .keep),
                (seq(oneOf(text("c"), text("f")), text("#")), nil, .keep),
                (text("cannot"), nil, .keepBefore(3)),
                (text("'twas"), nil, .keepBefore(3)),
                (text("'tis"), nil, .keepBefore(2)),
                (words("gonna gotta lemme gimme wanna"), nil, .keepBefore(2)),
                (g.sgml, nil, .noBreakSpaces),
                (g.dashEntity, nil, .replace("--")),
                (text("&amp;"), nil, .ampersand),
                (g.punctuationEntity, nil, .keep),
                (g.word, g.contraction, .withoutSoftHyphens),
                (g.negatedWord, g.negation, .withoutSoftHyphens),
                (g.word, nil, .withoutSoftHyphens),
                (g.apostropheWord, nil, .keep),
                (seq(text("y"), g.apostrophe), .units(g.javaLetter), .keep),
                (g.fullURL, nil, .keep),
                (g.likelyURL, nil, .keep),
                (g.email, nil, .keep),
                (g.twitter, nil, .keep),
                (g.contraction, charsExcept("A-Za-z"), .quotes(left: false)),
                (g.negation, charsExcept("A-Za-z"), .quotes(left: false)),
                (g.date, nil, .keep),
                (g.number, nil, .withoutSoftHyphens),
                (g.superOrSubscriptNumber, nil, .keep),
                (g.fraction, nil, .noBreakSpaces),
                (chars("\u{BC}\u{BD}\u{BE}\u{2153}-\u{215E}"), nil, .fraction),
                (g.treebankSpecial, nil, .ampersand),
                (g.slashedThing, nil, .keep),
                (g.dollarSign, nil, .keep),
                (chars("\u{A2}\u{A3}\u{A4}\u{A5}\u{80}\u{20A0}\u{20AC}\u{60B}\u{E3F}\u{20A4}\u{FFE0}\u{FFE1}\u{FFE5}\u{FFE6}"), nil, .currency),
                (seq(g.acronym, text(".")), g.sentenceStartAfterAcronym, .acronymBeforeSentence),
                (seq(words("ca fig figs prop no nos art bldg pp op"), text(".")), seq(g.spaceOrNewline.optional, .units(g.digit)), .keep),
                (seq(oneOf(seq(text("pt"), chars("eyEY")), text("co")), text(".")), seq(g.space, words("ltd lim")), .keep),
                (g.lowerCaseFollowedAbbreviation, g.sentenceEnd, .periodAgain),
                (g.lowerCaseFollowedAbbreviation, seq(.units(CodeUnitSet().inverted), .units(CodeUnitSet().inverted)), .keep),
                (g.lowerCaseFollowedAbbreviation, nil, .periodAgain),
                (seq(g.upperCaseFollowedAbbreviation, text(".")), nil, .keep),
                (g.upperCaseFollowedAbbreviation, g.space, .keep),
                (g.acronym, g.spaceOrNewline, .keep),
                (seq(g.apostrophe, chars("0-9"), chars("0-9")), g.spaceOrNewline, .keep),
                (g.filename, oneOf(g.spaceOrNewline, chars(".?!,")), .keep),
                (seq(g.word, text(".")), punctuationAfterWord, .withoutSoftHyphens),
                (g.phone, nil, .phone),
                (g.doubleQuote, chars("A-Za-z0-9$"), .quotes(left: true)),
                (g.doubleQuote, nil, .quotes(left: false)),
                (chars("\u{7F}"), nil, .skip),
                (oneOf(text("<"), text("&lt;")), nil, .replace("<")),
                (oneOf(text(">"), text("&gt;")), nil, .replace(">")),
                (g.smiley, charsExcept("A-Za-z0-9"), .smiley),
                (g.asianSmiley, nil, .smiley),
                (text("{"), nil, .replace("-LCB-")),
                (text("}"), nil, .replace("-RCB-")),
                (text("["), nil, .replace("-LSB-")),
                (text("]"), nil, .replace("-RSB-")),
                (text("("), nil, .replace("-LRB-")),
                (text(")"), nil, .replace("-RRB-")),
                (text("-").plus, nil, .hyphens),
                (g.ellipsis, nil, .replace("...")),
                (oneOf(text("@").plus, text("#").plus, text("_").plus), nil, .keep),
                (oneOf(text("*").plus, text("\\*").times(1...3)), nil, .keep),
                (punctuationAfterWord, nil, .keep),
                (chars("?!").plus, nil, .keep),
                (chars(".\u{A1}\u{BF}\u{37E}\u{589}\u{61F}\u{6D4}\u{700}-\u{702}\u{7FA}\u{3002}"), nil, .keep),
                (text("="), nil, .keep),
                (text("/"), nil, .keep),
                (seq(g.hyphenatedThing, text(".")), punctuationAfterWord, .withoutSoftHyphens),
                (g.hyphenatedThing, nil, .withoutSoftHyphens),
                (seq(g.thing, text(".")), punctuationAfterWord, .keep),
                (g.thing, nil, .keep),
                (seq(g.capitalsWithAmpersand, text(".")), punctuationAfterWord, .ampersand),
                (g.capitalsWithAmpersand, nil, .ampersand),
                (text("'"), seq(chars("A-Za-z"), charsExcept(" \t\n\r\u{A0}")), .quotes(left: true)),
                (g.contraction, nil, .quotes(left: false)),
                (g.negation, nil, .quotes(left: false)),
                (g.quotes, nil, .quotes(left: false)),
                (oneOf(text("<<"), text(">>")), nil, .keep),
                (g.miscellaneousSymbol, nil, .keep),
                (oneOf(chars("\u{0}\u{200B}\u{200E}\u{200F}\u{FEFF}"), g.space.plus), nil, .skip),
                (g.newline, nil, .newline),
                (text("&nbsp;"), nil, .skip),
                (charsExcept("\n"), nil, .skip),   // untokenizable: deleted
            ]
        }
    }
}

/// The scanner's named patterns.
private struct Grammar {
    /// The scanner's letters (`[:letter:]`), decimal digits and capitals, from its Unicode version.
    let javaLetter = CodeUnitSet(PTBCharacterClasses.letters)
    let digit = CodeUnitSet(PTBCharacterClasses.digits)
    let uppercase = CodeUnitSet(PTBCharacterClasses.uppercase)
    /// Marks and symbols the scanner counts as letters besides Java's.
    let markLetters = CodeUnitSet("""
        \u{AD}\u{237}-\u{24F}\u{2C2}-\u{2C5}\u{2D2}-\u{2DF}\u{2E5}-\u{2FF}\u{300}-\u{36F}\u{370}-\u{37D}\u{384}\u{385}\u{3CF}\u{3F6}\
        \u{3FC}-\u{3FF}\u{483}-\u{487}\u{4CF}\u{4F6}-\u{4FF}\u{510}-\u{525}\u{55A}-\u{55F}\u{591}-\u{5BD}\u{5BF}\u{5C1}\u{5C2}\u{5C4}\
        \u{5C5}\u{5C7}\u{615}-\u{61A}\u{63B}-\u{63F}\u{64B}-\u{65E}\u{670}\u{6D6}-\u{6EF}\u{6FA}-\u{6FF}\u{70F}\u{711}\u{730}-\u{74F}\
        \u{750}-\u{77F}\u{7A6}-\u{7B1}\u{7CA}-\u{7F5}\u{7FA}\u{900}-\u{903}\u{93C}\u{93E}-\u{94E}\u{951}-\u{955}\u{962}-\u{963}\
        \u{981}-\u{983}\u{9BC}-\u{9C4}\u{9C7}\u{9C8}\u{9CB}-\u{9CD}\u{9D7}\u{9E2}\u{9E3}\u{A01}-\u{A03}\u{A3C}\u{A3E}-\u{A4F}\
        \u{A81}-\u{A83}\u{ABC}-\u{ACF}\u{B82}\u{BBE}-\u{BC2}\u{BC6}-\u{BC8}\u{BCA}-\u{BCD}\u{C01}-\u{C03}\u{C3E}-\u{C56}\u{D3E}-\u{D44}\
        \u{D46}-\u{D48}\u{E30}-\u{E3A}\u{E47}-\u{E4E}\u{EB1}-\u{EBC}\u{EC8}-\u{ECD}
        """)

    let space = chars(" \t\u{A0}\u{2000}-\u{200A}\u{3000}")
    let newline = oneOf(text("\r\n"), chars("\r\n\u{2028}\u{2029}\u{B}\u{C}\u{85}"))
    var spaceOrNewline: Pattern { oneOf(space, newline) }
    let apostrophe = oneOf(chars("'\u{92}\u{2019}"), text("&apos;"))
    /// Apostrophes and the other marks that stand for one inside a word.
    var apostropheLike: Pattern { oneOf(apostrophe, chars("`\u{91}\u{2018}\u{201B}")) }
    let inSentencePunctuation = chars(",;:\u{3001}")
    let hyphen = chars("-_\u{58A}\u{2010}\u{2011}")

    /// A letter: Java's, the marks above, or an accented-vowel entity (`&eacute;`).
    var letter: Pattern {
        oneOf(.units(javaLetter.union(markLetters)), seq(text("&"), chars("aeiouAEIOU"), words("acute grave uml"), text(";")))
    }
    var letterOrDigit: Pattern { oneOf(letter, .units(digit)) }
    var javaLetterOrDigit: Pattern { .units(javaLetter.union(digit)) }
    func digits(_ count: ClosedRange<Int>) -> Pattern { Pattern.units(digit).times(count) }
    func asciiDigits(_ count: ClosedRange<Int>) -> Pattern { chars("0-9").times(count) }

    var word: Pattern { seq(letter, letterOrDigit.star, seq(chars(".!?"), letter, letterOrDigit.star).star) }
    /// 's 'm 'd 're 've 'll.
    var contraction: Pattern { seq(apostrophe, oneOf(chars("msdMSD"), words("re ve ll"))) }
    /// A word that n't can follow (it does not end in n).
    var negatedWord: Pattern { seq(chars("A-Za-z\u{AD}").star, chars("A-MO-Za-mo-z"), text("\u{AD}").star) }
    var negation: Pattern { seq(text("n"), apostropheLike, text("t")) }
    /// Words with an apostrophe kept whole: 'n', l', o'clock-like forms, '90s, 'til, rock'n'roll-like vowels...
    var apostropheWord: Pattern {
        let javaLetter = Pattern.units(javaLetter)
        return oneOf(
            seq(apostrophe, text("n"), apostrophe.optional),
            seq(chars("lLdDjJ"), apostrophe),
            seq(words("Dunkin somethin ol"), apostrophe),
            seq(apostrophe, text("em")),
            seq(chars("A-HJ-XZn"), apostropheLike, javaLetter, javaLetter, javaLetter.star),
            seq(apostrophe, chars("2-9"), text("0s")),
            seq(apostrophe, text("til"), text("l").optional),
            seq(javaLetter.plus, chars("aeiouyAEIOUY"), apostropheLike, chars("aeiouA-Z"), javaLetter.star),
            seq(apostrophe, text("cause")),
            seq(text("cont'd"), text(".").optional),
            words("'twas nor'easter c'mon e'er s'mores ev'ry li'l nat'l"),
            seq(text("O"), apostropheLike, text("o")))
    }

    var fullURL: Pattern {
        seq(text("http"), text("s").optional, text("://"), charsExcept(" \t\n\u{C}\r\"<>|(){}").plus, charsExcept(" \t\n\u{C}\r\"<>|.!?(){},-"))
    }
    var likelyURL: Pattern {
        // ",-_" is a range in the original class (it takes digits and capitals out of these host names).
        let host = seq(oneOf(
            seq(text("www."), seq(charsExcept(" \t\n\u{C}\r\"<>|.!?(){},").plus, text(".")).plus, chars("a-zA-Z").times(2...4)),
            seq(seq(charsExcept(" \t\n\u{C}\r\"`'<>|.!?(){},-_$").plus, text(".")).plus, words("com net org edu"))))
        return seq(host, seq(text("/"), charsExcept(" \t\n\u{C}\r\"<>|()").plus, charsExcept(" \t\n\u{C}\r\"<>|.!?(){},-")).optional)
    }
    var email: Pattern {
        let part = charsExcept(" \t\n\u{C}\r\"<>|(){}.\u{A0}")
        return seq(oneOf(text("&lt;"), text("<")).optional, chars("a-zA-Z0-9"), charsExcept(" \t\n\u{C}\r\"<>|()\u{A0}{}").star, text("@"),
                   seq(part.plus, text(".")).star, part.plus, oneOf(text("&gt;"), text(">")).optional)
    }
    var twitter: Pattern { oneOf(seq(text("@"), chars("a-zA-Z_"), chars("a-zA-Z_0-9").star), seq(text("#"), letter.plus)) }

    var date: Pattern { seq(digits(1...2), chars("-/"), digits(1...2), chars("-/"), digits(2...4)) }
    var number: Pattern {
        let unsigned = oneOf(Pattern.units(digit).plus, seq(Pattern.units(digit).star, seq(chars(".:,\u{AD}\u{66B}\u{66C}"), Pattern.units(digit).plus).plus))
        return seq(chars("-+").optional, unsigned)
    }
    var superOrSubscriptNumber: Pattern {
        seq(chars("\u{207A}\u{207B}\u{208A}\u{208B}").optional, oneOf(chars("\u{2070}\u{B9}\u{B2}\u{B3}\u{2074}-\u{2079}").plus, chars("\u{2080}-\u{2089}").plus))
    }
    var fraction: Pattern {
        seq(seq(digits(1...4), chars("- \u{A0}")).optional, digits(1...4), oneOf(seq(text("\\").optional, text("/")), text("\u{2044}")), digits(1...4))
    }
    var treebankSpecial: Pattern {
        let ampersand = oneOf(text("&"), text("&amp;"))
        return oneOf(seq(text("-"), words("RRB LRB RCB LCB RSB LSB"), text("-")), words("C.D.s pro- anti-"),
                     seq(text("S"), ampersand, words("P-500 Ls")), seq(text("Cap"), apostrophe, text("n")), seq(text("c"), apostrophe, text("est")))
    }
    /// and/or, 1/2-inch-like words with slashes.
    var slashedThing: Pattern {
        let part = seq(chars("A-Za-z0-9").plus, seq(text("-"), chars("A-Za-z").plus).times(0...2))
        return seq(part, seq(text("\\").optional, text("/"), part).times(1...2))
    }
    var dollarSign: Pattern { oneOf(seq(chars("A-Z").star, text("$")), text("#")) }

    var acronymCompound: Pattern {
        oneOf(seq(words("Canada Sino Korean EU Japan non"), text("-U.S")), seq(text("U.S.-"), words("U.K U.S.S.R")))
    }
    var acronym: Pattern { oneOf(seq(chars("A-Za-z"), seq(text("."), chars("A-Za-z")).star), acronymCompound) }
    var dottedAcronym: Pattern { oneOf(seq(chars("A-Za-z"), seq(text("."), chars("A-Za-z")).plus), acronymCompound) }
    /// Space, then a word that usually starts a sentence (capitalized), then space.
    var sentenceStartAfterAcronym: Pattern {
        let starts = """
            About According Additionally After An A As At But Earlier He Her Here However If In It Last Many More Mr. Ms. Now Once One \
            Other Our She Since So Some Such That The Their Then There These They This We When While What Yet You
            """
        return seq(spaceOrNewline.plus, oneOf(oneOf(starts.split(separator: " ").map { capitalized(String($0)) }), sgml), spaceOrNewline)
    }
    /// Abbreviations usually followed by a lower-case word, with their period.
    var lowerCaseFollowedAbbreviation: Pattern {
        let months = words("Jan Feb Mar Apr Jun Jul Aug Sep Sept Oct Nov Dec"), days = words("Mon Tue Tues Wed Thu Thurs Fri")
        let states = oneOf(words("Ala Ariz Calif Colo Conn Ct Dak Fla Ga Ind Kan Kans Ky Md Mich Minn Mo Mont Neb Nev Okla Penn Tenn Va Vt Wis Wisc Wyo"),
                           oneOf("Az Ark Del Ill La Mass Miss Ore Pa Tex Wash".split(separator: " ").map { capitalized(String($0)) }))
        let companies = oneOf(words("Inc Co Cos Corp Ltd Plc Rt Bancorp Bhd Assn Univ Intl Sys"),
                              seq(text("P"), text("p").optional, text("t"), chars("ye"), text("s").optional))
        let personal = oneOf(words("Jr Sr Bros Blvd Rd Esq"), seq(words("Ed Ph"), text(".D")))
        return seq(oneOf(months, days, states, companies, words("tel est ext sq"), personal, words("etc al seq Bldg")), text("."))
    }
    /// Abbreviations usually followed by a capitalized word (titles, acronyms...), without their period.
    var upperCaseFollowedAbbreviation: Pattern {
        let titles = oneOf(words("""
            Mr Mrs Ms Dr Drs Prof Profs Sen Sens Rep Reps Atty Attys Lt Col Gen Messrs Gov Govs Adm Rev Maj Sgt Cpl Pvt Capt St Ste Ave \
            Pres Lieut Hon Brig Cmdr Comdr Pfc Spc Supt Supts Det Mt Ft Adj Adv Asst Assoc Ens Insp Mlle Mme Msgr Sfc
            """), capitalized("Miss"))
        return oneOf(titles, words("vs Alex Wm Jos Cie a.k.a cf TREAS Ph"), acronym, words("Invt Elec Natl Dept"), seq(text("M"), chars("ft"), text("g")))
    }
    var sentenceEnd: Pattern { seq(spaceOrNewline, oneOf(spaceOrNewline, .units(uppercase), sgml)) }

    var filename: Pattern {
        let extensions = """
            bat bmp c class cgi cpp dll doc docx exe gif gz h htm html jar java jpeg jpg mov mp3 pdf php pl png ppt ps py sql tar txt wav x xml zip
            """
        return seq(letterOrDigit.plus, seq(text("."), letterOrDigit.plus).star, text("."), words(extensions))
    }
    var phone: Pattern {
        let plus = seq(text("+"), text("+").optional)
        let separator = chars("- \u{A0}")
        let grouped = seq(oneOf(seq(text("("), asciiDigits(2...3), text(")"), chars(" \u{A0}").optional),
                                seq(plus.optional, seq(asciiDigits(2...4), separator).optional, asciiDigits(2...4), separator)),
                          asciiDigits(3...4), separator.optional, asciiDigits(3...5))
        let dotted = seq(seq(plus.optional, asciiDigits(2...4), text(".")).optional, asciiDigits(2...4), text("."), asciiDigits(3...4),
                         text("."), asciiDigits(3...5))
        return oneOf(grouped, dotted)
    }
    var doubleQuote: Pattern { oneOf(text("\""), text("&quot;")) }
    var smiley: Pattern { seq(chars("<>").optional, chars(":;="), chars("-o*'").optional, chars("()DPdpO\\{@|[]")) }
    var asianSmiley: Pattern {
        let eye = "^x=~<>"
        return oneOf(seq(chars(eye), text("." + "[" + eye + "]")),   // as the original reads: its second class is literal text
                     seq(chars("-" + eye + "'"), text("_"), chars("-" + eye + "'")),
                     seq(text("("), chars("-" + eye + "'"), chars("_.").optional, chars("-" + eye + "'"), text(")")),
                     seq(text("("), chars(eye + "'"), text("-"), chars(eye + "'`"), text(")")))
    }
    var ellipsis: Pattern {
        oneOf(text(".").times(3...5), seq(seq(text("."), chars(" \u{A0}")).times(2...4), text(".")), chars("\u{85}\u{2026}"))
    }
    var hyphenatedThing: Pattern {
        seq(chars("A-Za-z0-9"), chars("A-Za-z0-9.,\u{AD}").star, seq(text("-"), oneOf(chars("A-Za-z0-9\u{AD}").plus, seq(dottedAcronym, text(".")))).plus)
    }
    var thing: Pattern {
        let elided = seq(chars("dDoOlL"), apostropheLike, javaLetterOrDigit)   // d'..., o'..., l'...
        return seq(elided.optional, javaLetterOrDigit.plus, seq(hyphen, elided.optional, javaLetterOrDigit.plus).star)
    }
    var capitalsWithAmpersand: Pattern { seq(chars("A-Z").plus, seq(oneOf(chars("+&"), text("&amp;")), chars("A-Z").plus).plus) }
    var quotes: Pattern {
        oneOf(apostrophe, text("''"),
              chars("`\u{2018}\u{2019}\u{201A}\u{201B}\u{201C}\u{201D}\u{91}\u{92}\u{93}\u{94}\u{201E}\u{201F}\u{2039}\u{203A}\u{AB}\u{BB}").times(1...2))
    }
    var miscellaneousSymbol: Pattern {
        chars("""
            +%&~^|\\\u{A6}\u{A7}\u{A8}\u{A9}\u{AC}\u{AE}\u{AF}\u{B0}-\u{B3}\u{B4}-\u{BA}\u{D7}\u{F7}\u{387}\u{5BE}\u{5C0}\u{5C3}\u{5C6}\u{5F3}\
            \u{5F4}\u{600}-\u{603}\u{606}-\u{60A}\u{60C}\u{614}\u{61B}\u{61E}\u{66A}\u{66D}\u{703}-\u{70D}\u{7F6}\u{7F7}\u{7F8}\u{964}\u{965}\
            \u{E4F}\u{1FBD}\u{2016}\u{2017}\u{2020}-\u{2023}\u{2030}-\u{2038}\u{203B}\u{203E}-\u{2042}\u{2044}\u{207A}-\u{207F}\u{208A}-\u{208E}\
            \u{2100}-\u{214F}\u{2190}-\u{21FF}\u{2200}-\u{2BFF}\u{3012}\u{30FB}\u{FF01}-\u{FF0F}\u{FF1A}-\u{FF20}\u{FF3B}-\u{FF40}\u{FF5B}-\u{FF65}
            """)
    }
    var sgml: Pattern {
        let name = seq(chars("A-Za-z"), chars("A-Za-z0-9_:.-").star)
        let quoted = oneOf(seq(text("'"), charsExcept("'").star, text("'")), seq(text("\""), charsExcept("\"").star, text("\"")))
        let attribute = oneOf(name, seq(name, chars(" ").star, text("="), chars(" ").star, quoted))
        return seq(text("<"), oneOf(seq(chars("!?"), chars("A-Za-z-"), charsExcept(">\r\n").star),
                                    seq(name, seq(chars(" ").plus, attribute).star, chars(" ").star, text("/").optional),
                                    seq(text("/"), name)),
                   chars(" ").star, text(">"))
    }
    var dashEntity: Pattern { oneOf(seq(text("&"), words("MD mdash ndash"), text(";")), chars("\u{96}\u{97}\u{2013}\u{2014}\u{2015}")) }
    var punctuationEntity: Pattern {
        seq(text("&"), oneOf(words("HT TL UR LR QC QL QR odq cdq"), seq(text("#"), chars("0-9").plus)), text(";"))
    }
}

// The scanner is case-insensitive for literal text, never inside character classes.

/// Literal text matching ASCII letters in either case.
private func text(_ literal: String) -> Pattern {
    .sequence(literal.utf16.map { unit in
        var units = CodeUnitSet()
        units.insert(unit...unit)
        if let scalar = Unicode.Scalar(unit), scalar.isASCII, scalar.properties.isAlphabetic {
            let lower = UInt16(scalar.properties.lowercaseMapping.utf16.first!), upper = UInt16(scalar.properties.uppercaseMapping.utf16.first!)
            for partner in [lower, upper] + (caseVariants[lower] ?? []) { units.insert(partner...partner) }
        }
        return .units(units)
    })
}

/// Letters outside ASCII whose case mappings lead to an ASCII letter (İ ı, ſ, the Kelvin sign): case-insensitive
/// literals match them too.
private let caseVariants: [UInt16: [UInt16]] = [0x69: [0x130, 0x131], 0x73: [0x17F], 0x6B: [0x212A]]

/// Literal words separated by spaces, any one of them.
private func words(_ list: String) -> Pattern { oneOf(list.split(separator: " ").map { text(String($0)) }) }
/// A word whose first letter must be the capital given, the rest in either case ("[A]bout").
private func capitalized(_ word: String) -> Pattern { seq(chars(String(word.first!)), text(String(word.dropFirst()))) }
/// One unit of `spec` (characters and ranges, see `CodeUnitSet`).
private func chars(_ spec: String) -> Pattern { .units(CodeUnitSet(spec)) }
/// One unit not in `spec`.
private func charsExcept(_ spec: String) -> Pattern { .units(CodeUnitSet(spec).inverted) }
private func seq(_ items: Pattern...) -> Pattern { .sequence(items) }
private func oneOf(_ items: Pattern...) -> Pattern { .choice(items) }
private func oneOf(_ items: [Pattern]) -> Pattern { .choice(items) }

private extension String {
    /// Every occurrence of each key replaced by its value.
    func replacingAll(_ replacements: [Unicode.Scalar: String]) -> String {
        var out = ""
        for scalar in unicodeScalars { out += replacements[scalar] ?? String(scalar) }
        return out
    }
}
