import Foundation
import StitchTestSupport
import XCTest
@testable import StitchMethods

/// Caption metrics against pycocoevalcap on 60 caption groups (Tests/Fixtures/metrics/captions.json).
final class CaptionMetricsTests: XCTestCase {
    struct Golden: Decodable {
        struct Group: Decodable { let candidate: String; let references: [String]; let tokenized_candidate: String; let tokenized_references: [String] }
        let groups: [Group]
        let bleu: [Double]; let bleu_per_image: [[Double]]
        let cider: Double; let cider_per_image: [Double]
        let rouge_l: Double; let rouge_l_per_image: [Double]
        let meteor: Double; let meteor_per_image: [Double]
        let stems: [String: String]
    }

    func golden() throws -> Golden {
        try JSONDecoder().decode(Golden.self, from: Data(contentsOf: Fixtures.url("metrics/captions.json")))
    }

    func testScoresMatchPycocoevalcap() throws {
        let g = try golden()
        XCTAssertGreaterThanOrEqual(g.groups.count, 50)
        let (corpus, perImage) = CaptionMetrics.score(candidates: g.groups.map(\.tokenized_candidate), references: g.groups.map(\.tokenized_references))
        var worst = 0.0
        for k in 0..<4 {
            worst = max(worst, abs(corpus.bleu[k] - g.bleu[k]))
            for i in g.groups.indices { worst = max(worst, abs(perImage[i].bleu[k] - g.bleu_per_image[k][i])) }
        }
        let bleuDifference = worst
        let ciderDifference = max(abs(corpus.ciderD - g.cider), g.groups.indices.map { abs(perImage[$0].ciderD - g.cider_per_image[$0]) }.max()!)
        let rougeDifference = max(abs(corpus.rougeL - g.rouge_l), g.groups.indices.map { abs(perImage[$0].rougeL - g.rouge_l_per_image[$0]) }.max()!)
        print("caption metrics vs pycocoevalcap over \(g.groups.count) groups: BLEU-1..4 max difference \(bleuDifference), CIDEr-D \(ciderDifference), ROUGE-L \(rougeDifference) (corpus CIDEr-D \(corpus.ciderD), BLEU-4 \(corpus.bleu[3]))")
        XCTAssertLessThanOrEqual(bleuDifference, 1e-4)
        XCTAssertLessThanOrEqual(ciderDifference, 1e-4)
        XCTAssertLessThanOrEqual(rougeDifference, 1e-4)
    }

    /// The official METEOR 1.5 jar, driven as pycocoevalcap drives it, gives pycocoevalcap's METEOR on the same tokens.
    /// Needs java and an installed pycocoevalcap (the jar and its paraphrase table); skipped without them.
    func testMeteorJarMatchesPycocoevalcap() throws {
        guard let jar = MeteorJar.installed() else {
            throw XCTSkip("METEOR 1.5 needs java and pycocoevalcap's jar (pip install pycocoevalcap); neither METEOR nor its check runs here")
        }
        let g = try golden()
        let scores = try MeteorJar(jar: jar).score(candidates: g.groups.map(\.tokenized_candidate), references: g.groups.map(\.tokenized_references))
        let difference = max(abs(scores.corpus - g.meteor), zip(scores.perImage, g.meteor_per_image).map { abs($0 - $1) }.max()!)
        print("METEOR 1.5 (\(jar.path)) vs pycocoevalcap over \(g.groups.count) groups: max difference \(difference) (corpus \(scores.corpus))")
        XCTAssertLessThanOrEqual(difference, 1e-9)
        XCTAssertThrowsError(try MeteorJar(jar: URL(fileURLWithPath: "/nonexistent/meteor-1.5.jar")))
    }

    func testTokenizerMatchesPTBTokenizer() throws {
        let g = try golden()
        var mismatches: [String] = []
        for group in g.groups {
            for (raw, expected) in zip([group.candidate] + group.references, [group.tokenized_candidate] + group.tokenized_references) {
                let got = CaptionTokenizer.tokenize(raw)
                if got != expected { mismatches.append("\(raw) -> \(got) (PTB: \(expected))") }
            }
        }
        print("caption tokenizer: \(g.groups.count * 6 - mismatches.count)/\(g.groups.count * 6) captions tokenized as PTBTokenizer does")
        XCTAssert(mismatches.isEmpty, mismatches.prefix(5).joined(separator: "\n"))
    }

    func testPorterStemmerMatchesNLTK() throws {
        let g = try golden()
        let wrong = g.stems.filter { PorterStemmer.stem($0.key) != $0.value }.map { "\($0.key): \(PorterStemmer.stem($0.key)) vs \($0.value)" }
        print("Porter stemmer: \(g.stems.count - wrong.count)/\(g.stems.count) words as nltk's original algorithm")
        XCTAssert(wrong.isEmpty, wrong.sorted().prefix(10).joined(separator: "\n"))
    }

    /// METEOR-F by hand: exact matches first, then stems, one-to-one, F = 10PR / (R + 9P), best reference.
    func testMeteorFMean() {
        // 3 of 4 candidate words match a 5-word reference ("running" ~ "runs" by stem): P 3/4, R 3/5.
        let (p, r) = (0.75, 0.6)
        XCTAssertEqual(CaptionMetrics.meteorF(candidate: "a dog running fast", references: ["the dog runs a lot", "cats"]), 10 * p * r / (r + 9 * p), accuracy: 1e-12)
        XCTAssertEqual(CaptionMetrics.meteorF(candidate: "a a", references: ["a"]), 10 * 0.5 * 1 / (1 + 9 * 0.5), accuracy: 1e-12)
        XCTAssertEqual(CaptionMetrics.meteorF(candidate: "zebra", references: ["a truck"]), 0)
    }
}
