import Foundation
import StitchModelIO
import StitchTensor
import StitchTestSupport
import XCTest
@testable import StitchModels

/// GPT-2 against transformers' GPT2LMHeadModel on the tiny random-weight fixture.
final class GPT2ParityTests: XCTestCase {
    struct Golden: Decodable {
        let prompts: [[Int]]
        let greedy: [[Int]]
        let continuation: [[Int]]
        let continuation_logprobs: [[Float]]
    }

    static let model = try! GPT2(folder: Fixtures.url("tiny-gpt2"))
    static let golden = try! JSONDecoder().decode(Golden.self, from: Data(contentsOf: Fixtures.url("tiny-gpt2/golden.json")))
    static let tensors = try! Fixtures.tensors("tiny-gpt2/golden.safetensors")
    let tolerance: Float = 1e-4

    func check(_ hidden: Tensor, prompt index: Int, _ how: String) {
        let model = Self.model
        let hiddenDifference = maxAbsoluteDifference(hidden.scalars, Self.tensors["p\(index).hidden"]!.scalars)
        let columns = Self.tensors["columns"]!.scalars.map { Int($0) }
        let logits = model.logits(hidden.reshaped([-1, model.config.hiddenSize]))
        let picked = (0..<logits.shape[0]).flatMap { row in columns.map { logits[row, $0] } }
        let logitDifference = maxAbsoluteDifference(picked, Self.tensors["p\(index).logits_columns"]!.scalars)
        let last = logits.row(logits.shape[0] - 1).scalars
        let lastDifference = maxAbsoluteDifference(last, Self.tensors["p\(index).last_logits"]!.scalars)
        print("prompt \(index) \(how): hidden \(hiddenDifference), logits \(logitDifference), last-row logits \(lastDifference)")
        XCTAssertLessThanOrEqual(max(hiddenDifference, logitDifference, lastDifference), tolerance, "prompt \(index) \(how)")
    }

    func testHiddenStatesAndLogitsWithAndWithoutCache() throws {
        let model = Self.model
        for (index, prompt) in Self.golden.prompts.enumerated() {
            var cache = model.makeCache()
            check(try model.forward([prompt], cache: &cache), prompt: index, "in one forward")
            // Token by token through the KV cache.
            cache = model.makeCache()
            let steps = try prompt.map { try model.forward([[$0]], cache: &cache) }
            check(concatenate(steps, axis: 1), prompt: index, "token by token")
            // A prefix, then the rest.
            cache = model.makeCache()
            let split = max(1, prompt.count / 2)
            let head = try model.forward([Array(prompt[..<split])], cache: &cache)
            let parts = split < prompt.count ? [head, try model.forward([Array(prompt[split...])], cache: &cache)] : [head]
            check(concatenate(parts, axis: 1), prompt: index, "prefix then rest")
        }
    }

    func testContinuationScores() throws {
        for (index, prompt) in Self.golden.prompts.enumerated() {
            let scores = try Self.model.logProbabilities(of: Self.golden.continuation[index], after: prompt)
            let difference = maxAbsoluteDifference(scores, Self.golden.continuation_logprobs[index])
            print("prompt \(index): continuation log-probabilities max abs difference \(difference)")
            XCTAssertLessThanOrEqual(difference, tolerance)
        }
    }

    /// One batched forward of k candidates after a shared prefix equals k separate forwards.
    func testSharedPrefixBatchEqualsSeparateRuns() throws {
        let model = Self.model
        let prefix = Self.golden.prompts[1]
        let candidates = [262, 257, 13, 50256]
        var shared = model.makeCache()
        _ = try model.forward([prefix], cache: &shared)
        var branched = shared.repeated(candidates.count)
        let batched = try model.forward(candidates.map { [$0] }, cache: &branched)
        XCTAssertEqual(batched.shape, [candidates.count, 1, model.config.hiddenSize])
        for (row, candidate) in candidates.enumerated() {
            var cache = model.makeCache()
            let alone = try model.forward([prefix + [candidate]], cache: &cache)
            let expected = alone.row(0).row(prefix.count).scalars
            XCTAssertLessThanOrEqual(maxAbsoluteDifference(batched.row(row).row(0).scalars, expected), 1e-5)
        }
        // The shared cache is untouched by the branch.
        XCTAssertEqual(shared.length, prefix.count)
        XCTAssertEqual(branched.length, prefix.count + 1)

        // The in-place candidate path gives the same states, and keeping one equals feeding it.
        let (states, kept) = try model.forwardCandidates(candidates, after: shared)
        XCTAssertLessThanOrEqual(maxAbsoluteDifference(states.scalars, batched.scalars), 1e-5)
        var extended = shared
        model.keep(2, of: kept, in: &extended)
        var fed = shared
        _ = try model.forward([[candidates[2]]], cache: &fed)
        let next = try model.forward([[318]], cache: &extended), expected = try model.forward([[318]], cache: &fed)
        XCTAssertLessThanOrEqual(maxAbsoluteDifference(next.scalars, expected.scalars), 1e-5)
        XCTAssertEqual(shared.length, prefix.count)
    }

    func testBadInputs() throws {
        let model = Self.model
        var cache = model.makeCache()
        XCTAssertThrowsError(try model.forward([[50257]], cache: &cache)) { XCTAssert("\($0)".contains("50257"), "\($0)") }
        XCTAssertThrowsError(try model.forward([Array(repeating: 1, count: 65)], cache: &cache)) { XCTAssert("\($0)".contains("context of 64"), "\($0)") }
        XCTAssertThrowsError(try model.forward([[1], [2]], cache: &cache)) { XCTAssert("\($0)".contains("expected 1 rows"), "\($0)") }
    }
}

/// Wrong or partial checkpoints name the tensor or field that is wrong.
final class CheckpointErrorTests: XCTestCase {
    var folder: URL!
    override func setUpWithError() throws {
        folder = try Fixtures.temporaryFolder()
        for file in ["config.json", "model.safetensors"] {
            try FileManager.default.copyItem(at: Fixtures.url("tiny-gpt2/\(file)"), to: folder.appendingPathComponent(file))
        }
    }
    override func tearDownWithError() throws { try? FileManager.default.removeItem(at: folder) }

    func editConfig(_ edit: (inout [String: Any]) -> Void) throws {
        let file = folder.appendingPathComponent("config.json")
        var config = try JSONSerialization.jsonObject(with: Data(contentsOf: file)) as! [String: Any]
        edit(&config)
        try JSONSerialization.data(withJSONObject: config).write(to: file)
    }

    func testMissingTensor() throws {
        let original = try SafetensorsFile(path: Fixtures.url("tiny-gpt2/model.safetensors").path)
        var tensors: [String: Tensor] = [:]
        for name in original.tensors.keys where name != "transformer.h.1.mlp.c_fc.weight" { tensors[name] = try original.tensor(name) }
        try writeSafetensors(tensors, to: folder.appendingPathComponent("model.safetensors").path)
        XCTAssertThrowsError(try GPT2(folder: folder)) { error in
            XCTAssert("\(error)".contains("missing tensor 'transformer.h.1.mlp.c_fc.weight' (expected shape [32, 128])"), "\(error)")
        }
    }

    func testWrongShapesFromConfig() throws {
        try editConfig { $0["n_positions"] = 128; $0["n_layer"] = 3 }
        XCTAssertThrowsError(try GPT2(folder: folder)) { error in
            let message = "\(error)"
            XCTAssert(message.contains("tensor 'transformer.wpe.weight' has shape [64, 32], expected [128, 32]"), message)
            XCTAssert(message.contains("missing tensor 'transformer.h.2.ln_1.weight'"), message)
        }
    }

    /// Sizes out of any model's range, or heads that do not divide the width, are refused by field before anything
    /// is allocated from them (n_head 0 was a division trap; vocab_size 1e12 and n_layer 1e6 asked for unbounded memory).
    func testHostileConfigSizesAreRefusedByField() throws {
        let cases: [(String, Any, String)] = [("n_head", 0, "0 is not in 1...512"), ("n_head", 5, "5 heads do not divide the width 32"),
                                              ("vocab_size", -1, "-1 is not in"), ("n_inner", -4, "-4 is not in"),
                                              ("vocab_size", 1_000_000_000_000, "1000000000000 is not in"), ("n_layer", 1_000_000, "1000000 is not in")]
        for (field, value, message) in cases {
            try editConfig { $0 = try! JSONSerialization.jsonObject(with: Data(contentsOf: Fixtures.url("tiny-gpt2/config.json"))) as! [String: Any]; $0[field] = value }
            XCTAssertThrowsError(try GPT2(folder: folder), field) { error in
                XCTAssert("\(error)".hasPrefix(self.folder.appendingPathComponent("config.json").path + ": field '\(field)'"), "\(error)")
                XCTAssert("\(error)".contains(message), "\(error)")
            }
        }
        // CLIP's towers and BERT are checked the same way.
        let clip = try Fixtures.temporaryFolder()
        defer { try? FileManager.default.removeItem(at: clip) }
        var config = try JSONSerialization.jsonObject(with: Data(contentsOf: Fixtures.url("tiny-clip/config.json"))) as! [String: Any]
        var vision = config["vision_config"] as! [String: Any]
        vision["num_attention_heads"] = 0
        config["vision_config"] = vision
        try JSONSerialization.data(withJSONObject: config).write(to: clip.appendingPathComponent("config.json"))
        XCTAssertThrowsError(try loadConfig(CLIPConfig.self, from: clip.appendingPathComponent("config.json"))) { error in
            XCTAssert("\(error)".contains("field 'vision_config.num_attention_heads': 0 is not in 1...512"), "\(error)")
        }
        var bert = try JSONSerialization.jsonObject(with: Data(contentsOf: Fixtures.url("tiny-bert/config.json"))) as! [String: Any]
        bert["num_hidden_layers"] = 1_000_000
        try JSONSerialization.data(withJSONObject: bert).write(to: clip.appendingPathComponent("config.json"))
        XCTAssertThrowsError(try loadConfig(BERTConfig.self, from: clip.appendingPathComponent("config.json"))) { error in
            XCTAssert("\(error)".contains("field 'num_hidden_layers': 1000000 is not in 1...256"), "\(error)")
        }
    }

    func testUnknownArchitectureAndBadField() throws {
        try editConfig { $0["architectures"] = ["MambaForCausalLM"]; $0["model_type"] = "mamba" }
        XCTAssertThrowsError(try GPT2(folder: folder)) { error in
            XCTAssert("\(error)".contains("architecture 'MambaForCausalLM' is not supported"), "\(error)")
        }
        try editConfig { $0["architectures"] = ["GPT2LMHeadModel"]; $0["model_type"] = "gpt2"; $0["n_embd"] = "wide" }
        XCTAssertThrowsError(try GPT2(folder: folder)) { error in
            XCTAssert("\(error)".contains("field 'n_embd'"), "\(error)")
        }
        try editConfig { $0["n_embd"] = 32; $0["reorder_and_upcast_attn"] = true }
        XCTAssertThrowsError(try GPT2(folder: folder)) { error in
            XCTAssert("\(error)".contains("field 'reorder_and_upcast_attn'") && "\(error)".contains("only false is supported"), "\(error)")
        }
    }
}
