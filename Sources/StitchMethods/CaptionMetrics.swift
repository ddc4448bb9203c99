import Foundation
import StitchTokenizers

/// Caption metrics as the COCO caption evaluation (pycocoevalcap) computes them, on captions
/// tokenized the way its PTBTokenizer leaves them: BLEU-1..4, ROUGE-L and CIDEr-D match it to
/// float rounding. METEOR-F is METEOR's unigram F-mean (exact, then Porter-stem matches; no
/// fragmentation penalty or synonyms), because METEOR proper needs Java and WordNet.
public struct CaptionScores: Sendable, Equatable {
    public var bleu: [Double]        // BLEU-1 ... BLEU-4
    public var meteorF: Double
    public var rougeL: Double
    public var ciderD: Double
}

public enum CaptionMetrics {
    /// Corpus scores and the per-image ones of `candidates[i]` against `references[i]`
    /// (tokenized strings, tokens separated by single spaces).
    public static func score(candidates: [String], references: [[String]]) -> (corpus: CaptionScores, perImage: [CaptionScores]) {
        precondition(candidates.count == references.count && references.allSatisfy { !$0.isEmpty }, "one or more references per candidate")
        var ids = TokenIds()
        let candidateWords = candidates.map { ids.words($0) }, referenceWords = references.map { $0.map { ids.words($0) } }
        let (bleuCorpus, bleuImages) = bleu(candidates: candidateWords, references: referenceWords)
        let cider = ciderD(candidates: candidateWords, references: referenceWords)
        let rouge = zip(candidates, references).map { rougeL(candidate: ids.spaceSeparated($0), references: $1.map { ids.spaceSeparated($0) }) }
        let meteor = zip(candidates, references).map { meteorF(candidate: $0, references: $1) }
        let perImage = candidates.indices.map { i in
            CaptionScores(bleu: bleuImages[i], meteorF: meteor[i], rougeL: rouge[i], ciderD: cider[i])
        }
        func mean(_ values: [Double]) -> Double { values.isEmpty ? 0 : values.reduce(0, +) / Double(values.count) }
        return (CaptionScores(bleu: bleuCorpus, meteorF: mean(meteor), rougeL: mean(rouge), ciderD: mean(cider)), perImage)
    }

    /// Tokens as ids that tell code point sequences apart, as Python's string comparison does (Swift's `String` equality
    /// would take "é" and "e\u{301}" for one token).
    struct TokenIds {
        private var ids: [[UInt32]: Int] = [:]

        /// Python's `str.split()` words, as BLEU and CIDEr-D take them (a token the tokenizer wrote with a no-break space,
        /// like "1 1/2", is two words there).
        mutating func words(_ caption: String) -> [Int] { PythonText.split(Array(caption.unicodeScalars)).map { id($0) } }

        /// `str.split(" ")`, empty pieces included, as ROUGE-L takes them.
        mutating func spaceSeparated(_ caption: String) -> [Int] {
            caption.unicodeScalars.split(separator: " ", omittingEmptySubsequences: false).map { id(Array($0)) }
        }

        private mutating func id(_ token: [Unicode.Scalar]) -> Int {
            let key = token.map(\.value)
            if let known = ids[key] { return known }
            ids[key] = ids.count
            return ids.count - 1
        }
    }

    // MARK: BLEU

    /// pycocoevalcap's BleuScorer with option "closest": corpus BLEU-1..4 from summed clipped
    /// n-gram counts, the reference length closest to each candidate's (the shorter on ties),
    /// and its 1e-15 / 1e-9 guards; per-image scores the same way per sentence.
    static func bleu(candidates: [[Int]], references: [[[Int]]], n: Int = 4) -> ([Double], [[Double]]) {
        let tiny = 1e-15, small = 1e-9
        var totalGuess = [Double](repeating: 0, count: n), totalCorrect = [Double](repeating: 0, count: n)
        var (totalTest, totalReference) = (0.0, 0.0)
        var perImage: [[Double]] = []
        for (words, refs) in zip(candidates, references) {
            var maxReferenceCounts: [[Int]: Int] = [:]
            var referenceLengths: [Int] = []
            for tokens in refs {
                referenceLengths.append(tokens.count)
                for (gram, count) in ngramCounts(tokens, upTo: n) { maxReferenceCounts[gram] = max(maxReferenceCounts[gram] ?? 0, count) }
            }
            let testLength = words.count
            let referenceLength = referenceLengths.min { (abs($0 - testLength), $0) < (abs($1 - testLength), $1) }!
            var guess = (1...n).map { Double(max(0, testLength - $0 + 1)) }
            var correct = [Double](repeating: 0, count: n)
            for (gram, count) in ngramCounts(words, upTo: n) { correct[gram.count - 1] += Double(min(maxReferenceCounts[gram] ?? 0, count)) }
            totalTest += Double(testLength)
            totalReference += Double(referenceLength)
            for k in 0..<n { totalGuess[k] += guess[k]; totalCorrect[k] += correct[k] }
            perImage.append(bleuScores(correct: correct, guess: &guess, testLength: Double(testLength), referenceLength: Double(referenceLength),
                                       tiny: tiny, small: small))
        }
        return (bleuScores(correct: totalCorrect, guess: &totalGuess, testLength: totalTest, referenceLength: totalReference, tiny: tiny, small: small), perImage)
    }

    private static func bleuScores(correct: [Double], guess: inout [Double], testLength: Double, referenceLength: Double,
                                   tiny: Double, small: Double) -> [Double] {
        var product = 1.0
        var scores: [Double] = []
        for k in correct.indices {
            product *= (correct[k] + tiny) / (guess[k] + small)
            scores.append(pow(product, 1 / Double(k + 1)))
        }
        let ratio = (testLength + tiny) / (referenceLength + small)
        if ratio < 1 { scores = scores.map { $0 * exp(1 - 1 / ratio) } }
        return scores
    }

    /// Counts of every 1...n-gram of `words`.
    static func ngramCounts(_ words: [Int], upTo n: Int) -> [[Int]: Int] {
        var counts: [[Int]: Int] = [:]
        for k in 1...n where words.count >= k {
            for start in 0...(words.count - k) { counts[Array(words[start..<start + k]), default: 0] += 1 }
        }
        return counts
    }

    // MARK: CIDEr-D

    /// pycocoevalcap's CiderScorer (CIDEr-D): tf-idf n-gram vectors (n = 1...4) with document
    /// frequencies over the evaluated references, clipped candidate weights, a Gaussian length
    /// penalty (sigma 6) on the difference of the candidate's and reference's bigram counts (the
    /// scorer's "length"), averaged over n-gram sizes and references, times 10.
    static func ciderD(candidates: [[Int]], references: [[[Int]]], n: Int = 4, sigma: Double = 6) -> [Double] {
        let referenceCounts = references.map { $0.map { ngramCounts($0, upTo: n) } }
        var documentFrequency: [[Int]: Double] = [:]
        for refs in referenceCounts {
            for gram in Set(refs.flatMap(\.keys)) { documentFrequency[gram, default: 0] += 1 }
        }
        let logReferenceCount = log(Double(references.count))
        func vector(_ counts: [[Int]: Int]) -> (weights: [[[Int]: Double]], norms: [Double], length: Double) {
            var weights = [[[Int]: Double]](repeating: [:], count: n)
            var norms = [Double](repeating: 0, count: n)
            var length = 0.0
            for (gram, frequency) in counts {
                let k = gram.count - 1
                let weight = Double(frequency) * (logReferenceCount - log(max(1, documentFrequency[gram] ?? 0)))
                weights[k][gram] = weight
                norms[k] += weight * weight
                if k == 1 { length += Double(frequency) }
            }
            return (weights, norms.map { $0.squareRoot() }, length)
        }
        return zip(candidates, referenceCounts).map { candidate, refs in
            let hypothesis = vector(ngramCounts(candidate, upTo: n))
            var total = [Double](repeating: 0, count: n)
            for ref in refs {
                let reference = vector(ref)
                let delta = hypothesis.length - reference.length
                for k in 0..<n {
                    var value = 0.0
                    for (gram, weight) in hypothesis.weights[k] {
                        let referenceWeight = reference.weights[k][gram] ?? 0
                        value += min(weight, referenceWeight) * referenceWeight
                    }
                    if hypothesis.norms[k] != 0 && reference.norms[k] != 0 { value /= hypothesis.norms[k] * reference.norms[k] }
                    total[k] += value * exp(-(delta * delta) / (2 * sigma * sigma))
                }
            }
            return total.reduce(0, +) / Double(n) / Double(refs.count) * 10
        }
    }

    // MARK: ROUGE-L

    /// pycocoevalcap's Rouge: longest common subsequence F-measure with beta 1.2, using the best
    /// precision and the best recall over the references (tokens split on single spaces).
    static func rougeL(candidate tokens: [Int], references: [[Int]], beta: Double = 1.2) -> Double {
        var (bestPrecision, bestRecall) = (0.0, 0.0)
        for referenceTokens in references {
            let common = Double(longestCommonSubsequence(referenceTokens, tokens))
            bestPrecision = max(bestPrecision, common / Double(tokens.count))
            bestRecall = max(bestRecall, common / Double(referenceTokens.count))
        }
        guard bestPrecision != 0 && bestRecall != 0 else { return 0 }
        return (1 + beta * beta) * bestPrecision * bestRecall / (bestRecall + beta * beta * bestPrecision)
    }

    static func longestCommonSubsequence(_ a: [Int], _ b: [Int]) -> Int {
        var previous = [Int](repeating: 0, count: b.count + 1)
        for x in a {
            var current = [Int](repeating: 0, count: b.count + 1)
            for (j, y) in b.enumerated() { current[j + 1] = x == y ? previous[j] + 1 : max(previous[j + 1], current[j]) }
            previous = current
        }
        return previous[b.count]
    }

    // MARK: METEOR-F

    /// METEOR's F-mean 10PR / (R + 9P) over one-to-one unigram matches (exact words first, then
    /// Porter stems), best over the references.
    static func meteorF(candidate: String, references: [String]) -> Double {
        let words = candidate.split(separator: " ").map(String.init)
        let stems = words.map(PorterStemmer.stem)
        var best = 0.0
        for reference in references {
            let referenceWords = reference.split(separator: " ").map(String.init)
            let referenceStems = referenceWords.map(PorterStemmer.stem)
            var used = [Bool](repeating: false, count: referenceWords.count)
            var matched = [Bool](repeating: false, count: words.count)
            for stage in 0..<2 {
                for i in words.indices where !matched[i] {
                    let found = referenceWords.indices.first { j in
                        !used[j] && (stage == 0 ? referenceWords[j] == words[i] : referenceStems[j] == stems[i])
                    }
                    if let j = found { used[j] = true; matched[i] = true }
                }
            }
            let matches = Double(matched.filter { $0 }.count)
            guard matches > 0 else { continue }
            let precision = matches / Double(words.count), recall = matches / Double(referenceWords.count)
            best = max(best, 10 * precision * recall / (recall + 9 * precision))
        }
        return best
    }
}
