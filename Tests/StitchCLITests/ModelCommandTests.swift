import Foundation
import StitchModelIO
import StitchTensor
import StitchTestSupport
import XCTest

/// `stitch classify`, `embed-image`, `embed-text` and `generate` on fixture models.
final class ModelCommandTests: XCTestCase {
    var folder: URL!

    override func setUpWithError() throws {
        folder = try Fixtures.temporaryFolder()
    }
    override func tearDownWithError() throws { if let folder { try? FileManager.default.removeItem(at: folder) } }

    func json(_ line: Substring) throws -> [String: Any] {
        try JSONSerialization.jsonObject(with: Data(line.utf8)) as! [String: Any]
    }

    func testClassifyAndEmbedWithCLIP() throws {
        let clip = try Fixtures.modelWithTokenizer("tiny-clip", in: folder).path
        let image = Fixtures.url("images/gradient.png").path
        let text = try StitchCLI.run(["classify", "--model", clip, "--labels", "zebra, dog,truck", "--top-k", "2", image])
        XCTAssertEqual(text.status, 0, text.errors)
        let lines = text.output.split(separator: "\n")
        XCTAssertEqual(lines.count, 2)
        XCTAssert(lines.allSatisfy { $0.hasPrefix(image + "\t") }, text.output)
        let result = try StitchCLI.run(["classify", "--model", clip, "--labels", "zebra,dog,truck", "--json", "--template", "a photo of a {}.", "--template", "art of a {}", image])
        let labels = try json(result.output.split(separator: "\n")[0])["labels"] as! [[String: Any]]
        XCTAssertEqual(Set(labels.map { $0["label"] as! String }), ["zebra", "dog", "truck"])
        XCTAssertEqual(labels.map { $0["probability"] as! Double }.reduce(0, +), 1, accuracy: 1e-5)
        XCTAssertNotEqual(try StitchCLI.run(["classify", "--model", clip, "--labels", "x", "--template", "no slot", image]).status, 0)

        let embedded = try StitchCLI.run(["embed-image", "--model", clip, image, image])
        let rows = try embedded.output.split(separator: "\n").map { try json($0)["embedding"] as! [Double] }
        XCTAssertEqual(rows.count, 2)
        XCTAssertEqual(rows[0].count, 16)
        XCTAssertEqual(rows[0].map { $0 * $0 }.reduce(0, +), 1, accuracy: 1e-5)
        let texts = try StitchCLI.run(["embed-text", "--model", clip], input: "a photo of a zebra\ntwo cats\n")
        XCTAssertEqual(texts.output.split(separator: "\n").count, 2, texts.errors)
    }

    /// `--precision bf16`, `bf16-weights` and `int8-weights`: embeddings near FP32's, or an error
    /// naming what the CPU lacks (bf16 without BF16 instructions runs, saying how); an unknown precision is refused.
    func testPrecisionOption() throws {
        let clip = try Fixtures.modelWithTokenizer("tiny-clip", in: folder).path
        let image = Fixtures.photo("astronaut.png").path
        let refused = try StitchCLI.run(["embed-image", "--model", clip, "--precision", "int4", image])
        XCTAssertNotEqual(refused.status, 0)
        XCTAssert(refused.errors.contains("--precision"), refused.errors)
        let full = try StitchCLI.run(["embed-image", "--model", clip, image])
        for precision in Precision.allCases where precision != .fp32 {
            let reduced = try StitchCLI.run(["embed-image", "--model", clip, "--precision", precision.rawValue, image])
            if let reason = precision.unavailableReason {
                XCTAssertNotEqual(reduced.status, 0)
                XCTAssert(reduced.errors.contains(reason), reduced.errors)
                continue
            }
            XCTAssertEqual(reduced.status, 0, reduced.errors)
            XCTAssertEqual(reduced.errors.contains("lacks AVX512-BF16"), precision == .bf16 && !Precision.bf16Instructions, reduced.errors)
            let (a, b) = (try json(full.output.split(separator: "\n")[0])["embedding"] as! [Double], try json(reduced.output.split(separator: "\n")[0])["embedding"] as! [Double])
            XCTAssertGreaterThanOrEqual(zip(a, b).map { $0 * $1 }.reduce(0, +), 0.999, precision.rawValue)
            XCTAssertNotEqual(a, b, precision.rawValue)
        }
    }

    /// SigLIP through `stitch classify`: its probabilities are each label's sigmoid, said so in the JSON, equal to the model's own.
    func testClassifyWithSigLIPReportsSigmoids() throws {
        let siglip = try Fixtures.modelWithTokenizer("tiny-siglip", in: folder).path
        let image = Fixtures.photo("coffee.png").path
        let result = try StitchCLI.run(["classify", "--model", siglip, "--labels", "a photo of a cat,A coffee cup.,a dog next to a bicycle and a truck", "--template", "{}", "--json", image])
        XCTAssertEqual(result.status, 0, result.errors)
        let line = try json(result.output.split(separator: "\n")[0])
        XCTAssertEqual(line["probabilities"] as? String, "sigmoid")
        let labels = line["labels"] as! [[String: Any]]
        let golden = try Fixtures.tensors("tiny-siglip/golden.safetensors")["probabilities"]!.row(1).scalars   // coffee.png, the first three texts
        let expected = Dictionary(uniqueKeysWithValues: zip(["a photo of a cat", "A coffee cup.", "a dog next to a bicycle and a truck"], golden.prefix(3)))
        for label in labels { XCTAssertEqual(label["probability"] as! Double, Double(expected[label["label"] as! String]!), accuracy: 1e-5) }
        XCTAssertNotEqual(labels.map { $0["probability"] as! Double }.reduce(0, +), 1, accuracy: 0.05)
        let clip = try Fixtures.modelWithTokenizer("tiny-clip", in: folder).path
        let softmax = try StitchCLI.run(["classify", "--model", clip, "--labels", "cat,cup", "--json", image])
        XCTAssertEqual(try json(softmax.output.split(separator: "\n")[0])["probabilities"] as? String, "softmax")
    }

    /// `stitch models`: the registry's types, and each given model's type and capabilities.
    func testModelsListsTypesAndCapabilities() throws {
        let listed = try StitchCLI.run(["models"])
        XCTAssertEqual(listed.status, 0, listed.errors)
        XCTAssertEqual(Set(listed.output.split(separator: "\n").map { String($0.split(separator: "\t")[0]) }),
                       ["clip", "siglip", "blip", "gpt2", "llama", "vision-encoder-decoder", "sentence-encoder", "efficientnet-lite", "yolox", "owlvit"])
        let described = try StitchCLI.run(["models", Fixtures.url("tiny-clip").path, Fixtures.url("tiny-vit-gpt2").path, Fixtures.url("checkpoints/tiny-gpt2/legacy").path,
                                           Fixtures.url("tiny-owlvit").path])
        XCTAssertEqual(described.status, 0, described.errors)
        XCTAssertEqual(described.output.split(separator: "\n").map { $0.split(separator: "\t").dropFirst().joined(separator: "\t") },
                       ["clip\timage-text scorer, text embedder, image embedder", "vision-encoder-decoder\tcaptioner", "gpt2\tcausal language model",
                        "owlvit\ttext-queried detector"])
    }

    func testGenerateMatchesTransformersGreedy() throws {
        let gpt2 = try Fixtures.modelWithTokenizer("tiny-gpt2", in: folder).path
        let golden = try Fixtures.json("tiny-gpt2/golden.json") as! [String: Any]
        let expected = (golden["greedy"] as! [[Int]])[0].filter { $0 != 50256 }
        let result = try StitchCLI.run(["generate", "--model", gpt2, "--prompt", "A photo of a", "--max-tokens", "12"])
        XCTAssertEqual(result.status, 0, result.errors)
        // Re-tokenising the printed text gives back transformers' greedy tokens.
        let text = result.output.hasSuffix("\n") ? String(result.output.dropLast()) : result.output
        let ids = try StitchCLI.run(["tokenize", "--kind", "gpt2", "--model", gpt2, text])
        XCTAssertEqual(ids.output.split(whereSeparator: { $0 == " " || $0 == "\n" }).compactMap { Int($0) }, expected)
    }

    func testRealEncodersAndWrongModelKinds() throws {
        let minilm = try Fixtures.realModel("all-MiniLM-L6-v2")
        let efficientnet = try Fixtures.realModel("efficientnet-lite0")
        let zebra = Fixtures.photo("chelsea.png")
        let sentences = (try Fixtures.json("minilm/golden.json") as! [String: [String]])["sentences"]!
        let result = try StitchCLI.run(["embed-text", "--model", minilm.path, sentences[0]])
        XCTAssertEqual(result.status, 0, result.errors)
        let embedding = (try json(result.output.split(separator: "\n")[0])["embedding"] as! [Double]).map(Float.init)
        let golden = try Fixtures.tensors("minilm/golden.safetensors")["embeddings"]!.row(0).scalars
        XCTAssertLessThanOrEqual(maxAbsoluteDifference(embedding, golden), 1e-5)

        let features = try StitchCLI.run(["embed-image", "--model", efficientnet.path, zebra.path])
        XCTAssertEqual((try json(features.output.split(separator: "\n")[0])["embedding"] as! [Double]).count, 1280, features.errors)

        let wrong = try StitchCLI.run(["embed-text", "--model", efficientnet.path, "hello"])
        XCTAssertNotEqual(wrong.status, 0)
        XCTAssert(wrong.errors.contains("its model type efficientnet-lite is not a text embedder (it is: image embedder)"), wrong.errors)
    }
}

/// `stitch caption` and `stitch generate`'s strategies on the tiny fixture models.
final class GenerationCommandTests: XCTestCase {
    var folder: URL!
    var gpt2 = "", clip = ""
    let golden = try! Fixtures.json("decoding/golden.json") as! [String: Any]

    override func setUpWithError() throws {
        folder = try Fixtures.temporaryFolder()
        gpt2 = try Fixtures.modelWithTokenizer("tiny-gpt2", in: folder).path
        clip = try Fixtures.modelWithTokenizer("tiny-clip", in: folder).path
    }
    override func tearDownWithError() throws { if let folder { try? FileManager.default.removeItem(at: folder) } }

    func testCaptionManyImagesWithOneLoad() throws {
        let magic = golden["magic"] as! [String: Any]
        let images = (magic["images"] as! [String]).map { Fixtures.repositoryRoot.appendingPathComponent($0).path }
        let setting = (magic["settings"] as! [[String: Any]])[0]
        let result = try StitchCLI.run(["caption", "--lm", gpt2, "--clip", clip, "--json"] + images)
        XCTAssertEqual(result.status, 0, result.errors)
        let lines = result.output.split(separator: "\n").map { try! JSONSerialization.jsonObject(with: Data($0.utf8)) as! [String: Any] }
        XCTAssertEqual(lines.map { $0["image"] as! String }, images)
        // The defaults are the published MSCOCO script's (k 45, alpha 0.1, beta 2, the published text path) with its 15
        // new tokens: the reference's captions' first 15 tokens, up to the end token.
        for (line, reference) in zip(lines, (setting["outputs"] as! [[Int]]).map { Array($0.prefix(15)) }) {
            let expected = reference.firstIndex(of: 50256).map { Array(reference[...$0]) } ?? reference
            XCTAssertEqual(line["tokens"] as! [Int], expected)
            XCTAssertFalse((line["caption"] as! String).isEmpty)
        }
        // Plain output: image TAB caption; contrastive ignores the image, so every caption is the same.
        let blind = try StitchCLI.run(["caption", "--lm", gpt2, "--clip", clip, "--method", "contrastive", "--max-tokens", "6"] + images.prefix(2))
        let captions = blind.output.split(separator: "\n").map { $0.split(separator: "\t", maxSplits: 1) }
        XCTAssertEqual(captions.map { String($0[0]) }, Array(images.prefix(2)), blind.errors)
        XCTAssertEqual(captions[0][1], captions[1][1])
        // Story mode continues the title; a bad image is an error naming the file.
        XCTAssertEqual(try StitchCLI.run(["caption", "--lm", gpt2, "--clip", clip, "--title", "A day at the zoo.", "--max-tokens", "4", images[0]]).status, 0)
        let broken = folder.appendingPathComponent("broken.jpg")
        try Data([0xFF, 0xD8, 0xFF, 0x00, 0x01]).write(to: broken)
        let failed = try StitchCLI.run(["caption", "--lm", gpt2, "--clip", clip, broken.path])
        XCTAssertNotEqual(failed.status, 0)
        XCTAssert(failed.errors.contains(broken.path), failed.errors)
    }

    func testGenerateStrategies() throws {
        let prompt = "A photo of a"
        let beam = (golden["beam"] as! [[String: Any]]).first { ($0["end_token"] as! Int) == 50256 }!
        let expected = (beam["outputs"] as! [[Int]])[1]
        let result = try StitchCLI.run(["generate", "--model", gpt2, "--prompt", prompt, "--strategy", "beam", "--beams", "\(beam["beams"] as! Int)",
                                        "--max-tokens", "\(beam["max_tokens"] as! Int)", "--json"])
        XCTAssertEqual(result.status, 0, result.errors)
        let json = try JSONSerialization.jsonObject(with: Data(result.output.utf8)) as! [String: Any]
        XCTAssertEqual(json["tokens"] as! [Int], expected)
        let contrastive = (golden["contrastive"] as! [[String: Any]])[0]
        let searched = try StitchCLI.run(["generate", "--model", gpt2, "--prompt", prompt, "--strategy", "contrastive", "--k", "\(contrastive["k"] as! Int)",
                                          "--alpha", "\(contrastive["alpha"] as! Double)", "--max-tokens", "\(contrastive["max_tokens"] as! Int)", "--json"])
        let searchedJSON = try JSONSerialization.jsonObject(with: Data(searched.output.utf8)) as! [String: Any]
        XCTAssertEqual(searchedJSON["tokens"] as! [Int], (contrastive["outputs"] as! [[Int]])[1])
        let sampled = { (seed: Int) in try StitchCLI.run(["generate", "--model", self.gpt2, "--prompt", prompt, "--strategy", "sample", "--seed", "\(seed)", "--top-k", "50"]).output }
        XCTAssertEqual(try sampled(1), try sampled(1))
        XCTAssertNotEqual(try StitchCLI.run(["generate", "--model", gpt2, "--prompt", prompt, "--strategy", "sample", "--temperature", "0"]).status, 0)
    }
}
