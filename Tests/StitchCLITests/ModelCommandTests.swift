import Foundation
import StitchModelIO
import StitchTestSupport
import XCTest

/// `stitch classify`, `embed-image`, `embed-text` and `generate` on fixture models.
final class ModelCommandTests: XCTestCase {
    var folder: URL!

    override func setUpWithError() throws {
        guard Fixtures.sharedPath("models/tokenizers") != nil else { throw XCTSkip("needs ../shared/models/tokenizers") }
        folder = try Fixtures.temporaryFolder()
    }
    override func tearDownWithError() throws { if let folder { try? FileManager.default.removeItem(at: folder) } }

    /// A copy of a fixture model folder with real tokenizer files linked in under their Hugging Face names.
    func modelFolder(_ fixture: String, tokenizer links: [String: String]) throws -> String {
        let target = folder.appendingPathComponent(fixture)
        try FileManager.default.copyItem(at: Fixtures.url(fixture), to: target)
        for (name, shared) in links {
            try FileManager.default.createSymbolicLink(at: target.appendingPathComponent(name),
                                                       withDestinationURL: Fixtures.shared.appendingPathComponent(shared))
        }
        return target.path
    }

    func json(_ line: Substring) throws -> [String: Any] {
        try JSONSerialization.jsonObject(with: Data(line.utf8)) as! [String: Any]
    }

    func testClassifyAndEmbedWithCLIP() throws {
        let clip = try modelFolder("tiny-clip", tokenizer: ["bpe_simple_vocab_16e6.txt.gz": "models/tokenizers/bpe_simple_vocab_16e6.txt.gz"])
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

    func testGenerateMatchesTransformersGreedy() throws {
        let gpt2 = try modelFolder("tiny-gpt2", tokenizer: ["vocab.json": "models/tokenizers/gpt2-vocab.json", "merges.txt": "models/tokenizers/gpt2-merges.txt"])
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
        guard let minilm = Fixtures.sharedPath("models/all-MiniLM-L6-v2"), let efficientnet = Fixtures.sharedPath("models/efficientnet-lite0"),
              let zebra = Fixtures.sharedPath("images/zebra.jpg") else { throw XCTSkip("needs ../shared models and images") }
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
        XCTAssert(wrong.errors.contains("efficientnet-lite model; embed-text needs CLIP or a sentence encoder"), wrong.errors)
    }
}
