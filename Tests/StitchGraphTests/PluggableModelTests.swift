import Foundation
import StitchImaging
import StitchMethods
import StitchModelIO
import StitchModels
import StitchTensor
import StitchTestSupport
import XCTest
@testable import StitchGraph

/// A model type written entirely here, registered by its config's model_type, plugs into every method that asks
/// for its capability: as an image-text scorer in MAGiC, Socratic re-ranking and the graph's scorer operations,
/// and as a language model in lm_generate and the local completion backend. Nothing in Sources names it.
final class PluggableModelTests: XCTestCase {
    /// Scores image-text pairs from the image's mean colour and the text's letters.
    final class ToyScorer: ImageTextScorer, @unchecked Sendable {
        func imageFeatures(of images: [RGBImage]) throws -> Tensor {
            Tensor(shape: [images.count, 3], scalars: images.flatMap { image in
                (0..<3).map { c in Float(stride(from: c, to: image.pixels.count, by: 3).reduce(0) { $0 + Int(image.pixels[$1]) }) / Float(image.pixels.count / 3) + 1 }
            })
        }

        func textFeatures(of texts: [String]) throws -> Tensor {
            Tensor(shape: [texts.count, 3], scalars: texts.flatMap { text in
                ["aeiou", "rstln", "bcdfghjkmpqvwxyz"].map { group in Float(text.filter { group.contains($0) }.count) + 0.5 }
            })
        }

        func logits(imageFeatures: Tensor, textFeatures: Tensor) -> Tensor {
            var images = imageFeatures, texts = textFeatures
            l2NormalizeRows(&images)
            l2NormalizeRows(&texts)
            var logits = matmul(images, texts, transposeB: true)
            mapInPlace(&logits) { $0 * 30 }
            return logits
        }
    }

    /// A character-level language model over " abcdefghijklmnopqrstuvwxyz." (id 27 is the end token) whose
    /// hidden states and logits are fixed functions of the tokens fed so far.
    final class ToyLM: CausalLanguageModel, @unchecked Sendable {
        static let alphabet = Array(" abcdefghijklmnopqrstuvwxyz")
        struct Cache: LanguageModelCache {
            var rows: [[Int]]
            var batch: Int { rows.count }
            var length: Int { rows.first?.count ?? 0 }
            func repeated(_ count: Int) -> Cache { Cache(rows: rows.flatMap { Array(repeating: $0, count: count) }) }
            func gathering(_ indices: [Int]) -> Cache { Cache(rows: indices.map { rows[$0] }) }
        }
        let width = 6
        var vocabularySize: Int { Self.alphabet.count + 1 }
        var endTokenID: Int { Self.alphabet.count }
        var contextLength: Int { 64 }
        func makeCache(batch: Int) -> Cache { Cache(rows: Array(repeating: [], count: batch)) }

        func forward(_ tokens: [[Int]], cache: inout Cache) throws -> Tensor {
            let start = cache.length
            for (row, new) in tokens.enumerated() { cache.rows[row] += new }
            let steps = tokens.first?.count ?? 0
            var values: [Float] = []
            for row in cache.rows {
                for position in start..<start + steps {
                    let history = Float(row[..<position].reduce(0, +) % 7) * 0.3
                    for i in 0..<width { values.append(sin(Float(row[position] * (i + 1)) * 0.7 + history)) }
                }
            }
            return Tensor(shape: [tokens.count, steps, width], scalars: values)
        }

        func logits(_ hidden: Tensor) -> Tensor {
            let states = hidden.scalars
            var values: [Float] = []
            for r in 0..<states.count / width {
                for v in 0..<vocabularySize {
                    var sum: Float = 0
                    for i in 0..<width { sum += states[r * width + i] * cos(Float(v * 3 + i) * 1.1) }
                    values.append(v == endTokenID ? -20 : sum * 4)   // texts run to max_tokens
                }
            }
            return Tensor(shape: Array(hidden.shape.dropLast()) + [vocabularySize], scalars: values)
        }

        func decode(_ ids: [Int]) throws -> String { String(ids.filter { $0 < Self.alphabet.count }.map { Self.alphabet[$0] }) }
        func encode(_ text: String, specialTokens: Bool) throws -> [Int] { text.lowercased().compactMap { Self.alphabet.firstIndex(of: $0) } }
        func tokenID(of token: String) -> Int? { token.count == 1 ? Self.alphabet.firstIndex(of: token.first!) : nil }
    }

    var folder: URL!
    var registry: ModelRegistry!

    override func setUpWithError() throws {
        folder = try Fixtures.temporaryFolder()
        registry = ModelRegistry()
        registry.register(ModelType("toy-scorer", modelTypes: ["toy-scorer"], files: ModelFiles(required: ["config.json"], weights: false)) { _ in ToyScorer() })
        registry.register(ModelType("toy-lm", modelTypes: ["toy-lm"], files: ModelFiles(required: ["config.json"], weights: false)) { _ in ToyLM() })
        for name in ["toy-scorer", "toy-lm"] {
            try FileManager.default.createDirectory(at: folder.appendingPathComponent(name), withIntermediateDirectories: true)
            try Data(#"{"model_type": "\#(name)"}"#.utf8).write(to: folder.appendingPathComponent("\(name)/config.json"))
        }
    }

    override func tearDownWithError() throws { try? FileManager.default.removeItem(at: folder) }

    var locator: ModelLocator { ModelLocator(cacheRoot: folder, offline: true, downloader: HubDownloader(endpoint: "http://127.0.0.1:9")) }

    func testToyModelsPlugIntoEveryMethod() async throws {
        let scorer = try registry.load(folder.appendingPathComponent("toy-scorer").path, as: (any ImageTextScorer).self, locator: locator)
        let lm = try registry.load(folder.appendingPathComponent("toy-lm").path, as: (any CausalLanguageModel).self, locator: locator)
        XCTAssertThrowsError(try registry.load(folder.appendingPathComponent("toy-lm").path, as: (any ImageTextScorer).self, locator: locator)) { error in
            XCTAssert("\(error)".contains("its model type toy-lm is not an image-text scorer (it is: causal language model)"), "\(error)")
        }
        let imagePath = Fixtures.url("images/rgb.jpg").path
        let image = try RGBImage(contentsOf: imagePath)

        // MAGiC: the toy scorer's magic scores steer the toy LM; with beta 0 it is plain contrastive search.
        let stop = StopConditions(maxTokens: 8)
        let guided = try magicCaption(lm, scorer: scorer, image: image, title: nil, settings: MagicSettings(k: 5, alpha: 0.1, beta: 2), stop: stop)
        let unguided = try magicCaption(lm, scorer: scorer, image: image, title: nil, settings: MagicSettings(k: 5, alpha: 0.1, beta: 0), stop: stop)
        XCTAssertEqual(guided.tokens.count, 8)
        XCTAssertGreaterThan(Set(guided.tokens).count, 2, "a varied caption: \(guided.text)")
        XCTAssertNotEqual(guided.tokens, unguided.tokens, "the scorer changes what MAGiC picks")

        // Socratic: the example graph with the toy scorer and LM in place of CLIP and GPT-2.
        let example = Fixtures.repositoryRoot.appendingPathComponent("Examples/socratic_caption.yaml").path
        let socraticText = try String(contentsOfFile: example, encoding: .utf8)
            .replacingOccurrences(of: "model: openai/clip-vit-base-patch32", with: "model: \(folder.path)/toy-scorer")
            .replacingOccurrences(of: "model: gpt2", with: "model: \(folder.path)/toy-lm")
        let socraticOperations = OperationRegistry.standard(models: registry, trust: GraphTrust(readableFolders: [Fixtures.repositoryRoot.appendingPathComponent("Prompts").path]))
        let socraticGraph = try Graph.parse(socraticText, file: example, registry: socraticOperations)
            .setting("candidates", "n", to: .number(4)).setting("candidates", "max_tokens", to: .number(6))
        let socratic = try await GraphRunner(graph: socraticGraph, registry: socraticOperations, cacheFolder: nil).run(inputs: ["image": .string(imagePath)])
        let candidates = try XCTUnwrap(socratic["candidates"]?.strings)
        XCTAssertEqual(candidates.count, 4)
        XCTAssertEqual(candidates, try scorer.rank(candidates, for: image).map { candidates[$0.index] })
        XCTAssertEqual(socratic["caption"]?.string, candidates[0])
        do {
            _ = try await GraphRunner(graph: try socraticGraph.setting("candidates", "n", to: .number(1_000_000)), registry: socraticOperations, cacheFolder: nil)
                .run(inputs: ["image": .string(imagePath)])
            XCTFail("a million samples were asked for")
        } catch {
            XCTAssert("\(error)".contains("n must be 1 to 16"), "\(error)")
        }

        // Graph operations: components named by capability load the toy models from their folders.
        let yaml = """
        components:
          lm: {kind: lm, model: \(folder.path)/toy-lm}
          scorer: {kind: scorer, model: \(folder.path)/toy-scorer}
        inputs:
          image: image
        nodes:
          labels: {op: clip_classify, clip: scorer, image: $image, labels: [beach, kitchen, street]}
          ranked: {op: clip_rank, clip: scorer, image: $image, texts: [a red cup, the sea, trees]}
          text: {op: lm_generate, lm: lm, prompt: "a photo of", max_tokens: 5}
          caption: {op: magic_decode, lm: lm, clip: scorer, image: $image, k: 5, alpha: 0.1, beta: 2, max_tokens: 8}
        outputs:
          label: $labels.label
          ranked: $ranked.texts
          text: $text
          caption: $caption.tokens
        """
        let operations = OperationRegistry.standard(models: registry)
        let outputs = try await GraphRunner(graph: try Graph.parse(yaml, file: "toy.yaml", registry: operations), registry: operations, cacheFolder: nil)
            .run(inputs: ["image": .string(imagePath)])
        let probabilities = try scorer.classify([image], labels: ["beach", "kitchen", "street"]).scalars
        XCTAssertEqual(outputs["label"]?.string, ["beach", "kitchen", "street"][probabilities.indices.max { probabilities[$0] < probabilities[$1] }!])
        XCTAssertEqual(outputs["ranked"]?.strings, try scorer.rank(["a red cup", "the sea", "trees"], for: image).map { ["a red cup", "the sea", "trees"][$0.index] })
        let expected = try decode(lm, prompt: lm.promptTokens("a photo of"), strategy: .greedy, stop: StopConditions(maxTokens: 5))
        XCTAssertEqual(outputs["text"]?.string, try StopConditions(maxTokens: 5).text(of: expected, model: lm))
        XCTAssertEqual(outputs["caption"], .array(guided.tokens.map { .number(Double($0)) }))

        // A component whose model lacks the capability its kind names is refused with the model's type.
        let wrong = yaml.replacingOccurrences(of: "scorer: {kind: scorer, model: \(folder.path)/toy-scorer}", with: "scorer: {kind: scorer, model: \(folder.path)/toy-lm}")
        do {
            _ = try await GraphRunner(graph: try Graph.parse(wrong, file: "wrong.yaml", registry: operations), registry: operations, cacheFolder: nil)
                .run(inputs: ["image": .string(imagePath)])
            XCTFail("a language model loaded as a scorer")
        } catch {
            XCTAssert("\(error)".contains("is not an image-text scorer"), "\(error)")
        }
    }
}
