import Foundation

/// VQA accuracy as the official VQA evaluator computes it: the predicted answer is normalised
/// (punctuation, number words, articles, contractions), each of the ten annotator answers is
/// left out in turn, and the prediction scores min(1, matches among the other nine / 3); the
/// question's accuracy is the mean of those ten. As in the evaluator, annotator answers are
/// only punctuation-normalised, and only when they disagree.
public enum VQAAccuracy {
    /// Accuracy in [0, 1] of `prediction` against the annotators' `answers`.
    public static func score(prediction: String, answers: [String]) -> Double {
        let predicted = normalize(prediction)
        let references = Set(answers).count > 1 ? answers.map(normalizePunctuation) : answers
        guard !references.isEmpty else { return 0 }
        let total = references.indices.reduce(0.0) { sum, left in
            let matches = references.indices.filter { $0 != left && references[$0] == predicted }.count
            return sum + min(1, Double(matches) / 3)
        }
        return total / Double(references.count)
    }

    /// The evaluator's normalisation of a predicted answer.
    public static func normalize(_ answer: String) -> String {
        let trimmed = answer.replacingOccurrences(of: "\n", with: " ").replacingOccurrences(of: "\t", with: " ").trimmingCharacters(in: .whitespaces)
        return normalizeDigitsAndArticles(normalizePunctuation(trimmed))
    }

    static let punctuation: [Character] = [";", "/", "[", "]", "\"", "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!"]

    /// Each mark is deleted when it touches a space somewhere in the answer (or the answer has a
    /// digit-comma-digit group), else replaced by a space; then periods not followed by a digit go
    /// (at most 32 of them, as the evaluator's re.sub(..., re.UNICODE) passes 32 as its count).
    static func normalizePunctuation(_ text: String) -> String {
        let characters = Array(text)
        let digitCommaDigit = characters.indices.dropFirst().dropLast().contains { i in
            characters[i] == "," && characters[i - 1].isASCIIDigit && characters[i + 1].isASCIIDigit
        }
        var out = text
        for mark in punctuation {
            let touchesSpace = text.contains("\(mark) ") || text.contains(" \(mark)")
            out = out.replacingOccurrences(of: String(mark), with: touchesSpace || digitCommaDigit ? "" : " ")
        }
        var result: [Character] = []
        var removed = 0
        let chars = Array(out)
        for (i, c) in chars.enumerated() {
            if c == ".", removed < 32, !(i + 1 < chars.count && chars[i + 1].isASCIIDigit) {
                removed += 1
                continue
            }
            result.append(c)
        }
        return String(result)
    }

    static let numberWords = ["none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
                              "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"]
    static let articles: Set<String> = ["a", "an", "the"]

    /// Lower case, number words as digits, articles dropped, contractions written with their apostrophes.
    static func normalizeDigitsAndArticles(_ text: String) -> String {
        text.lowercased().split(whereSeparator: \.isWhitespace).map { word in numberWords[String(word)] ?? String(word) }
            .filter { !articles.contains($0) }
            .map { contractions[$0] ?? $0 }
            .joined(separator: " ")
    }

    /// The evaluator's contraction table: the standard spelling of each contraction, and the
    /// apostrophe-less spellings it replaces.
    static let contractionSpellings: [(String, [String])] = [
        ("ain't", ["aint"]), ("aren't", ["arent"]), ("can't", ["cant"]), ("could've", ["couldve"]), ("couldn't", ["couldnt"]),
        ("couldn't've", ["couldn'tve", "couldnt've"]), ("didn't", ["didnt"]), ("doesn't", ["doesnt"]), ("don't", ["dont"]),
        ("hadn't", ["hadnt"]), ("hadn't've", ["hadnt've", "hadn'tve"]), ("hasn't", ["hasnt"]), ("haven't", ["havent"]), ("he'd", ["hed"]),
        ("he'd've", ["hed've", "he'dve"]), ("he's", ["hes"]), ("how'd", ["howd"]), ("how'll", ["howll"]), ("how's", ["hows"]),
        ("I'd've", ["Id've", "I'dve"]), ("I'm", ["Im"]), ("I've", ["Ive"]), ("isn't", ["isnt"]), ("it'd", ["itd"]),
        ("it'd've", ["itd've", "it'dve"]), ("it'll", ["itll"]), ("let's", ["let's"]), ("ma'am", ["maam"]), ("mightn't", ["mightnt"]),
        ("mightn't've", ["mightnt've", "mightn'tve"]), ("might've", ["mightve"]), ("mustn't", ["mustnt"]), ("must've", ["mustve"]),
        ("needn't", ["neednt"]), ("not've", ["notve"]), ("o'clock", ["oclock"]), ("oughtn't", ["oughtnt"]),
        ("'ow's'at", ["ow's'at", "'ows'at", "'ow'sat"]), ("shan't", ["shant"]), ("she'd've", ["shed've", "she'dve"]), ("she's", ["she's"]),
        ("should've", ["shouldve"]), ("shouldn't", ["shouldnt"]), ("shouldn't've", ["shouldnt've", "shouldn'tve"]),
        ("somebodyd", ["somebody'd"]), ("somebody'd've", ["somebodyd've", "somebody'dve"]), ("somebody'll", ["somebodyll"]),
        ("somebody's", ["somebodys"]), ("someone'd", ["someoned"]), ("someone'd've", ["someoned've", "someone'dve"]),
        ("someone'll", ["someonell"]), ("someone's", ["someones"]), ("something'd", ["somethingd"]),
        ("something'd've", ["somethingd've", "something'dve"]), ("something'll", ["somethingll"]), ("that's", ["thats"]),
        ("there'd", ["thered"]), ("there'd've", ["thered've", "there'dve"]), ("there're", ["therere"]), ("there's", ["theres"]),
        ("they'd", ["theyd"]), ("they'd've", ["theyd've", "they'dve"]), ("they'll", ["theyll"]), ("they're", ["theyre"]),
        ("they've", ["theyve"]), ("'twas", ["twas"]), ("wasn't", ["wasnt"]), ("we'd've", ["wed've", "we'dve"]), ("we've", ["weve"]),
        ("weren't", ["werent"]), ("what'll", ["whatll"]), ("what're", ["whatre"]), ("what's", ["whats"]), ("what've", ["whatve"]),
        ("when's", ["whens"]), ("where'd", ["whered"]), ("where's", ["wheres"]), ("where've", ["whereve"]), ("who'd", ["whod"]),
        ("who'd've", ["whod've", "who'dve"]), ("who'll", ["wholl"]), ("who's", ["whos"]), ("who've", ["whove"]), ("why'll", ["whyll"]),
        ("why're", ["whyre"]), ("why's", ["whys"]), ("won't", ["wont"]), ("would've", ["wouldve"]), ("wouldn't", ["wouldnt"]),
        ("wouldn't've", ["wouldnt've", "wouldn'tve"]), ("y'all", ["yall"]), ("y'all'll", ["yall'll", "y'allll"]),
        ("y'all'd've", ["yall'd've", "y'alld've", "y'all'dve"]), ("you'd", ["youd"]), ("you'd've", ["youd've", "you'dve"]),
        ("you'll", ["youll"]), ("you're", ["youre"]), ("you've", ["youve"]),
    ]

    static let contractions: [String: String] = Dictionary(
        uniqueKeysWithValues: contractionSpellings.flatMap { spelling, variants in variants.map { ($0, spelling) } })
}

extension Character {
    var isASCIIDigit: Bool { ("0"..."9").contains(self) }
}
