import Foundation
import StitchModelIO
import StitchModels
import StitchTensor
import StitchTestSupport
import StitchTokenizers
import XCTest
@testable import StitchMethods

struct DecodingGolden: Decodable {
    struct Contrastive: Decodable { let alpha: Double; let k: Int; let max_tokens: Int; let outputs: [[Int]] }
    struct Beam: Decodable {
        let beams: Int; let length_penalty: Double; let early_stopping: Bool; let max_tokens: Int; let end_token: Int; let outputs: [[Int]]
    }
    struct Magic: Decodable {
        /// `outputs` by the published text path (transformers 4.7.0), `outputs_current` by today's; `texts` as published.
        struct Setting: Decodable {
            let k: Int; let alpha: Double; let beta: Double; let max_tokens: Int; let outputs: [[Int]]; let outputs_current: [[Int]]; let texts: [String]
        }
        struct Story: Decodable {
            let k: Int; let alpha: Double; let beta: Double; let max_tokens: Int; let prompt: [Int]; let title: String; let outputs: [[Int]]; let texts: [String]
        }
        /// One step's image term where a candidate completes an accented, contracted, punctuated, half-decoded (U+FFFD),
        /// CJK or emoji text.
        struct Targeted: Decodable {
            let text: String; let generated: [Int]; let candidates: [Int]; let clip_texts: [String]; let clip_ids: [[Int]]; let scores: [Float]
        }
        let images: [String]
        let settings: [Setting]
        let story: Story
        let targeted: [Targeted]
    }
    let prompts: [[Int]]
    let contrastive: [Contrastive]
    let beam: [Beam]
    let magic: Magic

    static let shared = try! JSONDecoder().decode(DecodingGolden.self, from: Data(contentsOf: Fixtures.url("decoding/golden.json")))
}

/// Decoding strategies on tiny-gpt2 against transformers' generate.
final class DecodingTests: XCTestCase {
    let model = TinyModels.gpt2
    let golden = DecodingGolden.shared

    func testGreedyEqualsGenerate() throws {
        struct Greedy: Decodable { let prompts: [[Int]]; let greedy: [[Int]] }
        let greedy = try JSONDecoder().decode(Greedy.self, from: Data(contentsOf: Fixtures.url("tiny-gpt2/golden.json")))
        for (prompt, expected) in zip(greedy.prompts, greedy.greedy) {
            XCTAssertEqual(try greedyDecode(model, prompt: prompt, stop: StopConditions(maxTokens: 12)), expected)
            // Without stopping at the end token: exactly maxTokens, continuing the same greedy path.
            let forced = try greedyDecode(model, prompt: prompt, stop: StopConditions(maxTokens: 20, atEndToken: false))
            XCTAssertEqual(forced.count, 20)
            XCTAssertEqual(Array(forced.prefix(expected.count)), expected)
        }
    }

    func testContrastiveSearchEqualsGenerate() throws {
        var compared = 0
        for setting in golden.contrastive {
            for (prompt, expected) in zip(golden.prompts, setting.outputs) {
                for speedups in [true, false] {
                    let settings = ContrastiveSettings(k: setting.k, alpha: setting.alpha, speedups: speedups)
                    let tokens = try contrastiveSearch(model, prompt: prompt, settings: settings, stop: StopConditions(maxTokens: setting.max_tokens))
                    XCTAssertEqual(tokens, expected, "k \(setting.k) alpha \(setting.alpha) prompt \(prompt) speedups \(speedups)")
                    compared += 1
                }
            }
        }
        print("contrastive search: \(compared) generations token-identical to transformers' generate(penalty_alpha, top_k)")
    }

    func testBeamSearchEqualsGenerate() throws {
        for setting in golden.beam {
            let settings = BeamSettings(beams: setting.beams, lengthPenalty: setting.length_penalty, earlyStopping: setting.early_stopping)
            for (prompt, expected) in zip(golden.prompts, setting.outputs) {
                let tokens = try beamSearch(model, prompt: prompt, settings: settings, maxTokens: setting.max_tokens, endToken: setting.end_token)
                XCTAssertEqual(tokens, expected, "beams \(setting.beams) penalty \(setting.length_penalty) early \(setting.early_stopping) prompt \(prompt)")
            }
        }
    }

    func testSamplingIsSeededAndRespectsFilters() throws {
        let prompt = golden.prompts[1]
        let stop = StopConditions(maxTokens: 8, atEndToken: false)
        let a = try sampleDecode(model, prompt: prompt, settings: SamplingSettings(seed: 7), stop: stop)
        XCTAssertEqual(a, try sampleDecode(model, prompt: prompt, settings: SamplingSettings(seed: 7), stop: stop), "same seed, same tokens")
        XCTAssertNotEqual(a, try sampleDecode(model, prompt: prompt, settings: SamplingSettings(seed: 8), stop: stop), "another seed")
        // top-k 1 and a tiny nucleus both leave only the most likely token: greedy.
        let greedy = try greedyDecode(model, prompt: prompt, stop: stop)
        XCTAssertEqual(try sampleDecode(model, prompt: prompt, settings: SamplingSettings(topK: 1, seed: 3), stop: stop), greedy)
        XCTAssertEqual(try sampleDecode(model, prompt: prompt, settings: SamplingSettings(topP: 1e-6, seed: 3), stop: stop), greedy)
        XCTAssertThrowsError(try sampleDecode(model, prompt: prompt, settings: SamplingSettings(temperature: 0), stop: stop))
    }

    func testSamplingFiltersAndFrequencies() {
        let logits: [Float] = [2.0, 1.0, 0.5, 0.5, -1.0, -3.0]
        // top-k keeps ties with the k-th score; top-p keeps the smallest set reaching p.
        XCTAssertEqual(SamplingSettings(topK: 3).probabilities(logits).map { $0 > 0 }, [true, true, true, true, false, false])
        let nucleus = SamplingSettings(topP: 0.6).probabilities(logits)
        XCTAssertEqual(nucleus.map { $0 > 0 }, [true, true, false, false, false, false])
        XCTAssertEqual(nucleus[0] + nucleus[1], 1, accuracy: 1e-6)
        let hot = SamplingSettings(temperature: 0.5).probabilities(logits)
        XCTAssertEqual(hot, softmax(logits.map { $0 * 2 }))
        // Draws follow the probabilities (20k draws: each frequency within 0.015).
        var generator = SeededGenerator(seed: 42)
        let probabilities = softmax(logits)
        var counts = [Int](repeating: 0, count: logits.count)
        for _ in 0..<20_000 { counts[draw(from: probabilities, using: &generator)] += 1 }
        for (count, p) in zip(counts, probabilities) { XCTAssertEqual(Double(count) / 20_000, Double(p), accuracy: 0.015) }
    }

    func testTopIndicesKeepsIndexOrderAmongEquals() {
        XCTAssertEqual(topIndices([1, 3, 3, 2, 3], 3), [1, 2, 4])
        XCTAssertEqual(topIndices([1, 3, 3, 2, 3], 10), [1, 2, 4, 3, 0])
        XCTAssertEqual(argmax([0, 5, 5]), 1)
    }

    func testStopStringsAndText() throws {
        let model = try TinyModels.gpt2WithTokenizer()
        let prompt = golden.prompts[1]
        let full = try greedyDecode(model, prompt: prompt, stop: StopConditions(maxTokens: 12, atEndToken: false))
        // Stop at whatever character the third token's text starts with.
        let marker = String(try model.decode(Array(full.prefix(3))).dropFirst(try model.decode(Array(full.prefix(2))).count).prefix(1))
        let stop = StopConditions(maxTokens: 12, atEndToken: false, strings: [marker])
        let stopped = try greedyDecode(model, prompt: prompt, stop: stop)
        XCTAssertLessThanOrEqual(stopped.count, 3)
        XCTAssertEqual(stopped, Array(full.prefix(stopped.count)))
        XCTAssertTrue(try stop.text(of: stopped, model: model).hasSuffix(marker.trimmingCharacters(in: .whitespaces)))
        XCTAssertEqual(try StopConditions(maxTokens: 1).text(of: [model.endTokenID], model: model), "")
    }

    /// A beam whose text reaches a stop string finishes there, as one reaching the end token does.
    func testBeamSearchHonoursStopStrings() throws {
        let lm = try TinyModels.gpt2WithTokenizer()
        let prompt = try lm.promptTokens("A photo of a")
        // One beam: the only hypothesis stops at the token whose text is the stop string.
        let single = DecodingOptions(strategy: .beam, maxTokens: 12, beam: BeamSettings(beams: 1))
        let free = try decode(lm, prompt: prompt, options: single)
        var stopping = single
        stopping.stop = [try lm.decode([free[2]])]
        XCTAssertEqual(try decode(lm, prompt: prompt, options: stopping).filter { $0 != lm.endTokenID }, Array(free.prefix(3)))
        // Several beams: whichever hypothesis wins, it ends where a stop string first appears in it.
        for index in 1..<6 {
            let options = DecodingOptions(strategy: .beam, maxTokens: 12, stop: [try lm.decode([free[index]])])
            let tokens = try decode(lm, prompt: prompt, options: options).filter { $0 != lm.endTokenID }
            XCTAssertFalse(try lm.decode(Array(tokens.dropLast())).contains(options.stop[0]), "stop \(options.stop[0].debugDescription)")
        }
    }

    func testInvalidSettingsAreErrors() {
        XCTAssertThrowsError(try greedyDecode(model, prompt: [], stop: StopConditions(maxTokens: 3)))
        XCTAssertThrowsError(try contrastiveSearch(model, prompt: [1], settings: ContrastiveSettings(k: 0), stop: StopConditions(maxTokens: 3)))
        XCTAssertThrowsError(try magicSearch(model, prompt: [1], settings: MagicSettings(k: 4, beta: 1), stop: StopConditions(maxTokens: 3), scorer: nil))
        // Every strategy's defaults decode (contrastive search's default has no image weight to need a scorer).
        for strategy in DecodingOptions.Strategy.allCases {
            XCTAssertEqual(try decode(model, prompt: [1], options: DecodingOptions(strategy: strategy, maxTokens: 3)).count, 3, "\(strategy)")
        }
        XCTAssertThrowsError(try beamSearch(model, prompt: [1], settings: BeamSettings(beams: 0), maxTokens: 3))
    }
}

/// tiny-gpt2 with its logits scaled up, so that next-token distributions are peaked as a trained
/// model's are; it records how many candidates each step runs through the LM.
final class PeakedLM: CausalLanguageModel, @unchecked Sendable {
    let base = TinyModels.gpt2
    var candidateCounts: [Int] = []
    var vocabularySize: Int { base.vocabularySize }
    var endTokenID: Int { base.endTokenID }
    var contextLength: Int { base.contextLength }
    func makeCache(batch: Int) -> GPT2Cache { base.makeCache(batch: batch) }
    func forward(_ tokens: [[Int]], cache: inout GPT2Cache) throws -> Tensor { try base.forward(tokens, cache: &cache) }
    func logits(_ hidden: Tensor) -> Tensor {
        var scaled = base.logits(hidden)
        mapInPlace(&scaled) { $0 * 40 }
        return scaled
    }
    func decode(_ ids: [Int]) throws -> String { try base.decode(ids) }
    func encode(_ text: String, specialTokens: Bool) throws -> [Int] { try base.encode(text, specialTokens: specialTokens) }
    func tokenID(of token: String) -> Int? { base.tokenID(of: token) }
    func forwardCandidates(_ tokens: [Int], after cache: GPT2Cache) throws -> (hidden: Tensor, candidates: GPT2Candidates) {
        candidateCounts.append(tokens.count)
        return try base.forwardCandidates(tokens, after: cache)
    }
    func keep(_ row: Int, of candidates: GPT2Candidates, in cache: inout GPT2Cache) { base.keep(row, of: candidates, in: &cache) }
}

final class CandidatePruningTests: XCTestCase {
    /// Candidates that cannot win whatever their penalty skip the LM; the output is unchanged.
    func testPruningSkipsHopelessCandidatesWithoutChangingTheOutput() throws {
        let model = PeakedLM()
        for prompt in DecodingGolden.shared.prompts {
            model.candidateCounts = []
            let stop = StopConditions(maxTokens: 12, atEndToken: false)
            let pruned = try contrastiveSearch(model, prompt: prompt, settings: ContrastiveSettings(k: 20, alpha: 0.1), stop: stop)
            let full = try contrastiveSearch(model, prompt: prompt, settings: ContrastiveSettings(k: 20, alpha: 0.1, speedups: false), stop: stop)
            XCTAssertEqual(pruned, full)
            print("prompt \(prompt): candidates through the LM per step \(model.candidateCounts) of 20")
            XCTAssertLessThan(model.candidateCounts.reduce(0, +), 20 * model.candidateCounts.count / 2)
        }
    }
}
