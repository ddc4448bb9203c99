import Foundation
import StitchModelIO
import StitchModels
import StitchTensor
import StitchTestSupport
import XCTest
@testable import StitchMethods

/// The Llama-family decoder against transformers on tiny random models of each variant (make_fixtures.py
/// make_llama_goldens): Llama 3 (grouped-query attention, llama3 rope scaling), Qwen2 (q/k/v biases, tied embeddings,
/// one key-value head, dynamic rope scaling past 12 positions), Mistral (a sliding window shorter than the prompt), SmolLM (tied, linear rope scaling).
final class LlamaTests: XCTestCase {
    static let variants = ["tiny-llama3", "tiny-qwen2", "tiny-mistral", "tiny-smollm"]

    struct Golden: Decodable {
        let prompts: [[Int]]
        let greedy, beam, contrastive: [[Int]]
    }

    func load(_ variant: String) throws -> (Llama, Golden, [String: Tensor]) {
        let model = try Llama(folder: Fixtures.url(variant))
        let golden = try JSONDecoder().decode(Golden.self, from: Data(contentsOf: Fixtures.url("\(variant)/golden.json")))
        return (model, golden, try Fixtures.tensors("\(variant)/golden.safetensors"))
    }

    /// Logits of every prompt position, whole and fed in two pieces through the cache.
    func testLogitsMatchTransformers() throws {
        for variant in Self.variants {
            let (model, golden, tensors) = try load(variant)
            for (i, prompt) in golden.prompts.enumerated() {
                var cache = model.makeCache(batch: 1)
                let logits = model.logits(try model.forward([prompt], cache: &cache))   // [1, t, vocabulary]
                let expected = tensors["p\(i).logits"]!
                assertClose(logits.reshaped(expected.shape), expected, "\(variant) prompt \(i)", tolerance: 1e-4)
                // Dynamic scaling leaves cached keys as they were rotated (as transformers does), so a prompt longer than
                // max_position_embeddings fed in pieces is another computation; generation tests cover that growth.
                if case .dynamic = model.config.ropeScaling, prompt.count > model.config.maxPositions { continue }
                var pieces = model.makeCache(batch: 1)
                let split = prompt.count / 2
                _ = try model.forward([Array(prompt.prefix(split))], cache: &pieces)
                let rest = model.logits(try model.forward([Array(prompt.dropFirst(split))], cache: &pieces))
                assertClose(rest.reshaped([prompt.count - split, model.vocabularySize]), expected.rows(split..<prompt.count),
                            "\(variant) prompt \(i) through the cache", tolerance: 1e-4)
            }
        }
    }

    /// What each variant exercises changes its logits: without Mistral's window or Llama 3's, Qwen2's or SmolLM's rope scaling,
    /// the long prompt's logits move far beyond the tolerance. (Qwen2's biases are weights the loader must take.)
    func testEachVariantsFeatureMatters() throws {
        func without(_ variant: String, _ change: (inout LlamaConfig) -> Void) throws -> Float {
            let (model, golden, tensors) = try load(variant)
            var config = model.config
            change(&config)
            let store = try WeightStore(folder: Fixtures.url(variant))
            let changed = try Llama(config: config, weights: store, tokenizer: nil)
            var cache = changed.makeCache(batch: 1)
            let logits = changed.logits(try changed.forward([golden.prompts[1]], cache: &cache))
            return maxAbsoluteDifference(logits.scalars, tensors["p1.logits"]!.scalars)
        }
        XCTAssertGreaterThan(try without("tiny-mistral") { $0.slidingWindow = nil }, 0.01)
        XCTAssertGreaterThan(try without("tiny-llama3") { $0.ropeScaling = .none }, 0.01)
        XCTAssertGreaterThan(try without("tiny-smollm") { $0.ropeScaling = .none }, 0.01)
        XCTAssertGreaterThan(try without("tiny-qwen2") { $0.ropeScaling = .none; $0.maxPositions = 64 }, 0.01)
    }

    func testGreedyBeamAndContrastiveEqualGenerate() throws {
        var compared = 0
        for variant in Self.variants {
            let (model, golden, _) = try load(variant)
            for (i, prompt) in golden.prompts.enumerated() {
                XCTAssertEqual(try greedyDecode(model, prompt: prompt, stop: StopConditions(maxTokens: golden.greedy[i].count)), golden.greedy[i], "\(variant) greedy \(i)")
                XCTAssertEqual(try beamSearch(model, prompt: prompt, settings: BeamSettings(beams: 3), maxTokens: 12, endToken: model.endTokenID),
                               golden.beam[i], "\(variant) beam \(i)")
                XCTAssertEqual(try contrastiveSearch(model, prompt: prompt, settings: ContrastiveSettings(k: 4, alpha: 0.6), stop: StopConditions(maxTokens: 12)),
                               golden.contrastive[i], "\(variant) contrastive \(i)")
                compared += 3
            }
        }
        print("Llama family: \(compared) generations token-identical to transformers' generate (greedy, beam 3, contrastive)")
    }

    /// PICa's answer selection on a local Llama equals the published logic run with transformers (make_pica_local_golden):
    /// each prompt's greedy completion, its summed log-probability and cleaned answer, and the answer kept.
    func testPICaAnswerSelectionEqualsThePublishedLogic() throws {
        struct Candidate: Decodable { let tokens: [Int]; let text, answer: String; let logprob: Double }
        struct Golden: Decodable { let prompts: [String]; let candidates: [Candidate]; let answer: String }
        let golden = try JSONDecoder().decode(Golden.self, from: Data(contentsOf: Fixtures.url("pica/local_llama.json")))
        let backend = LocalCompletionBackend(model: try Llama(folder: Fixtures.url("tiny-llama3")), name: "tiny-llama3")
        let result = try PICa.answer(prompts: golden.prompts, backend: backend)
        XCTAssertEqual(result.answer, golden.answer)
        XCTAssertEqual(result.candidates.map(\.answer), golden.candidates.map(\.answer))
        let difference = zip(result.candidates, golden.candidates).map { abs($0.logprob - $1.logprob) }.max() ?? .infinity
        print("PICa on the tiny Llama: answer \(result.answer.debugDescription); summed log-probabilities within \(difference) of the reference")
        XCTAssertLessThan(difference, 1e-4)
    }

    /// Configs outside what the decoder implements are refused by name, before any weight is read.
    func testUnsupportedConfigsAreRefusedByName() throws {
        let folder = try Fixtures.temporaryFolder()
        defer { try? FileManager.default.removeItem(at: folder) }
        let base = try JSONSerialization.jsonObject(with: Data(contentsOf: Fixtures.url("tiny-llama3/config.json"))) as! [String: Any]
        for (change, message) in [(["rope_scaling": ["rope_type": "yarn", "factor": 4.0]], "rope_type 'yarn' is not supported"),
                                  (["hidden_act": "gelu"], "only silu is supported"),
                                  (["num_key_value_heads": 3], "num_key_value_heads"),
                                  (["model_type": "gemma"], "'gemma' is not llama, qwen2 or mistral")] as [([String: Any], String)] {
            try FileManager.default.copyItem(at: Fixtures.url("tiny-llama3/model.safetensors"), to: folder.appendingPathComponent("model.safetensors"))
            try JSONSerialization.data(withJSONObject: base.merging(change) { $1 }).write(to: folder.appendingPathComponent("config.json"))
            XCTAssertThrowsError(try Llama(folder: folder)) { XCTAssert("\($0)".contains(message), "\(change): \($0)") }
            try FileManager.default.removeItem(at: folder.appendingPathComponent("model.safetensors"))
        }
    }
}
