import Foundation
import StitchImaging
import StitchModelIO
import StitchTestSupport
import XCTest

/// The published default checkpoints as a user meets them: repositories that hold only pytorch_model.bin,
/// safetensors only in a pull-request ref, and `stitch convert`.
final class CheckpointCommandTests: XCTestCase {
    var folder: URL!
    var server: LocalHubServer!

    override func setUpWithError() throws {
        folder = try Fixtures.temporaryFolder()
        server = try LocalHubServer()
    }

    override func tearDownWithError() throws {
        server?.stop()
        if let folder { try? FileManager.default.removeItem(at: folder) }
    }

    var hubEnvironment: [String: String] {
        ["HF_ENDPOINT": server.baseURL, "HF_HUB_CACHE": folder.appendingPathComponent("hub").path, "HF_HUB_OFFLINE": "0", "HF_TOKEN": ""]
    }

    /// A model folder made of a fixture folder plus the real tokenizer files.
    func model(_ fixture: String, tokenizer: [String: String], name: String) throws -> URL {
        let target = folder.appendingPathComponent(name)
        try FileManager.default.createDirectory(at: target, withIntermediateDirectories: true)
        for item in try FileManager.default.contentsOfDirectory(atPath: Fixtures.url(fixture).path)
            where !item.hasPrefix("golden") && item != "tensor_sums.json" {
            try FileManager.default.copyItem(at: Fixtures.url("\(fixture)/\(item)"), to: target.appendingPathComponent(item))
        }
        for (name, source) in tokenizer {
            try FileManager.default.createSymbolicLink(at: target.appendingPathComponent(name),
                                                       withDestinationURL: Fixtures.tokenizerFile(source))
        }
        return target
    }

    let gpt2Tokenizer = ["vocab.json": "gpt2-vocab.json", "merges.txt": "gpt2-merges.txt"]
    let clipTokenizer = ["bpe_simple_vocab_16e6.txt.gz": "bpe_simple_vocab_16e6.txt.gz"]

    /// `stitch caption` with its default model ids, against a hub whose repositories hold only pytorch_model.bin
    /// (large files redirected to another host), gives what the same files in folders give.
    func testCaptionWithTheDefaultModelIDsFromPyTorchOnlyRepositories() throws {
        let magic = try model("checkpoints/tiny-magic", tokenizer: gpt2Tokenizer, name: "magic")
        let clip = try model("checkpoints/tiny-clip/zip", tokenizer: clipTokenizer, name: "clip")
        let captioner = try model("checkpoints/tiny-vit-gpt2/zip", tokenizer: gpt2Tokenizer, name: "captioner")
        try server.addFolder(magic, repo: "cambridgeltl/magic_mscoco")
        try server.addFolder(clip, repo: "openai/clip-vit-base-patch32")
        try server.addFolder(captioner, repo: "nlpconnect/vit-gpt2-image-captioning")
        let image = Fixtures.url("images/rgb.jpg").path

        let fromHub = try StitchCLI.run(["caption", image, "--json", "--k", "5"], environment: hubEnvironment)
        XCTAssertEqual(fromHub.status, 0, fromHub.errors)
        let fromFolders = try StitchCLI.run(["caption", image, "--json", "--k", "5", "--lm", magic.path, "--clip", clip.path])
        XCTAssertEqual(fromFolders.status, 0, fromFolders.errors)
        XCTAssertEqual(try tokens(fromHub.output), try tokens(fromFolders.output))
        XCTAssertEqual(try tokens(fromHub.output).count, 15, "the MSCOCO preset's 16 tokens count the start token")
        XCTAssert(server.requests.contains("GET /api/models/cambridgeltl/magic_mscoco/revision/main"), "\(server.requests)")
        XCTAssert(server.requests.contains { $0.hasPrefix("GET /cdn/") }, "the .bin files come through the storage redirect")

        let captioned = try StitchCLI.run(["caption", image, "--method", "captioner", "--json"], environment: hubEnvironment)
        XCTAssertEqual(captioned.status, 0, captioned.errors)
        let local = try StitchCLI.run(["caption", image, "--method", "captioner", "--json", "--captioner", captioner.path])
        XCTAssertEqual(try tokens(captioned.output), try tokens(local.output))

        // Everything is cached now: offline runs give the same.
        let offline = try StitchCLI.run(["caption", image, "--json", "--k", "5"], environment: hubEnvironment.merging(["HF_HUB_OFFLINE": "1"]) { $1 })
        XCTAssertEqual(try tokens(offline.output), try tokens(fromHub.output), offline.errors)
    }

    /// The README's main command offline: what the repository has (YOLOX-Nano) runs, each photo gets an annotated
    /// image with boxes where the detector found something, the page shows them, and the missing models are named.
    func testDemoOfflineRunsWhatTheMachineHas() throws {
        let output = folder.appendingPathComponent("demo")
        let demo = try StitchCLI.run(["demo", "--output", output.path], environment: hubEnvironment.merging(["HF_HUB_OFFLINE": "1"]) { $1 })
        XCTAssertEqual(demo.status, 0, demo.errors)
        for model in ["cambridgeltl/magic_mscoco", "openai/clip-vit-base-patch32", "nlpconnect/vit-gpt2-image-captioning", "gpt2"] {
            XCTAssert(demo.errors.contains("  \(model) ("), "\(model) is not named: \(demo.errors)")
        }
        XCTAssert(demo.output.contains("detections:       person 0.93"), demo.output)
        XCTAssert(demo.output.contains("PICa answer:      (model not available)"), demo.output)
        let page = try String(contentsOf: output.appendingPathComponent("index.html"), encoding: .utf8)
        for (photo, boxed) in [("astronaut.png", true), ("chelsea.png", true), ("coffee.png", true), ("rocket.jpg", false)] {
            let stem = URL(fileURLWithPath: photo).deletingPathExtension().lastPathComponent
            XCTAssert(page.contains("<img src=\"\(stem).jpg\""), "the page shows \(stem).jpg")
            let original = try RGBImage(contentsOf: Fixtures.photo(photo).path)
            let annotated = try RGBImage(contentsOf: output.appendingPathComponent("\(stem).jpg").path)
            XCTAssertEqual([annotated.width, annotated.height], [original.width, original.height])
            // Box lines and label bands change pixels far beyond JPEG's noise; without detections nothing does.
            let changed = zip(annotated.pixels, original.pixels).filter { abs(Int($0) - Int($1)) > 120 }.count
            XCTAssertEqual(changed > 200, boxed, "\(photo): \(changed) channel values changed")
        }
        XCTAssert(page.contains("person 0.93") && page.contains("Ran without: <code>openai/clip-vit-base-patch32</code>"), page)

        // No network at all: the first model's download fails (after its retries) and the rest come from the cache only.
        let closed = try SocketServer { _ in }
        let address = closed.baseURL
        closed.stop()
        let unreachable = try StitchCLI.run(["demo", "--output", output.path], environment: hubEnvironment.merging(["HF_ENDPOINT": address]) { $1 })
        XCTAssertEqual(unreachable.status, 0, unreachable.errors)
        XCTAssert(unreachable.errors.contains("(so the other models were looked for in the cache only)"), unreachable.errors)
        XCTAssertEqual(unreachable.errors.components(separatedBy: "failed: ").count, 2, "one download is tried: \(unreachable.errors)")
    }

    /// With the published ids served by a loopback hub (fixture models standing in), every section is filled.
    func testDemoWithTheDefaultModelIDsFillsEverySection() throws {
        try server.addFolder(try model("tiny-gpt2", tokenizer: gpt2Tokenizer, name: "magic"), repo: "cambridgeltl/magic_mscoco")
        try server.addFolder(try model("tiny-gpt2", tokenizer: gpt2Tokenizer, name: "gpt2"), repo: "openai-community/gpt2")
        try server.addFolder(try model("tiny-clip", tokenizer: clipTokenizer, name: "clip"), repo: "openai/clip-vit-base-patch32")
        try server.addFolder(try model("tiny-vit-gpt2", tokenizer: gpt2Tokenizer, name: "captioner"), repo: "nlpconnect/vit-gpt2-image-captioning")
        let output = folder.appendingPathComponent("demo")
        let demo = try StitchCLI.run(["demo", "--output", output.path, "--lm", "openai-community/gpt2"], environment: hubEnvironment)
        XCTAssertEqual(demo.status, 0, demo.errors)
        XCTAssertFalse(demo.output.contains("not available") || demo.errors.contains("ran without"), demo.output + demo.errors)
        let blocks = demo.output.components(separatedBy: "\n").filter { $0.hasPrefix("  ") }
        XCTAssertEqual(blocks.count, 4 * 6, demo.output)
        for section in ["MAGiC caption:", "ViT-GPT2 caption:", "CLIP label:", "PICa answer:"] {
            XCTAssertEqual(blocks.filter { $0.hasPrefix("  \(section)") }.count, 4, section)
        }
        XCTAssert(blocks.filter { $0.hasPrefix("  CLIP label:") }.allSatisfy { $0.contains("(0.") || $0.contains("(1.") }, demo.output)
        let page = try String(contentsOf: output.appendingPathComponent("index.html"), encoding: .utf8)
        XCTAssertFalse(page.contains("model not available") || page.contains("Ran without"), page)
    }

    func tokens(_ output: String) throws -> [Int] {
        let line = try XCTUnwrap(output.split(separator: "\n").first, "no output")
        return try XCTUnwrap((try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any])?["tokens"] as? [Int])
    }

    /// Safetensors only in refs/pr/15, as openai/clip-vit-base-patch32 has them: --revision picks them, and so does org/name@revision.
    func testRevisionOption() throws {
        let clip = try model("tiny-clip", tokenizer: clipTokenizer, name: "clip")
        try server.addFolder(clip, repo: "org/clip", revision: "refs/pr/15")
        server.add(repo: "org/clip", file: "config.json", data: try Data(contentsOf: clip.appendingPathComponent("config.json")), etag: "c", redirected: false)
        server.add(repo: "org/clip", file: "tf_model.h5", data: Data("not for us".utf8), etag: "t", redirected: false)
        let image = Fixtures.url("images/gradient.png").path
        let main = try StitchCLI.run(["classify", "--model", "org/clip", "--labels", "dog,cat", image], environment: hubEnvironment)
        XCTAssertNotEqual(main.status, 0)
        XCTAssert(main.errors.contains("has no weights at revision main"), main.errors)
        let pull = try StitchCLI.run(["classify", "--model", "org/clip", "--revision", "refs/pr/15", "--labels", "dog,cat", image], environment: hubEnvironment)
        XCTAssertEqual(pull.status, 0, pull.errors)
        let local = try StitchCLI.run(["classify", "--model", clip.path, "--labels", "dog,cat", image])
        XCTAssertEqual(pull.output.replacingOccurrences(of: "org/clip", with: ""), local.output.replacingOccurrences(of: clip.path, with: ""))
        let named = try StitchCLI.run(["classify", "--model", "org/clip@refs/pr/15", "--labels", "dog,cat", image], environment: hubEnvironment)
        XCTAssertEqual(named.output, pull.output, named.errors)

        // A graph component names its revision as an option.
        let graph = folder.appendingPathComponent("g.yaml")
        try """
        components:
          clip: {kind: clip, model: org/clip, revision: refs/pr/15}
        inputs: {image: image}
        nodes:
          labelled: {op: clip_classify, clip: clip, image: $image, labels: [dog, cat]}
        outputs: {label: $labelled.label}
        """.write(to: graph, atomically: true, encoding: .utf8)
        let run = try StitchCLI.run(["run", graph.path, "--input", "image=\(image)", "--json"], environment: hubEnvironment)
        XCTAssertEqual(run.status, 0, run.errors)
        let best = try XCTUnwrap(local.output.split(separator: "\n").first?.split(separator: "\t").dropFirst().first)
        XCTAssertEqual(try JSONSerialization.jsonObject(with: Data(run.output.utf8)) as? [String: String], ["label": String(best)])
    }

    /// `stitch convert` writes a safetensors copy that generates exactly what the .bin does; bad input leaves nothing behind.
    func testConvert() throws {
        let prompt = ["generate", "--prompt", "A photo of a", "--max-tokens", "8", "--json", "--model"]
        let reference = try StitchCLI.run(prompt + [try model("tiny-gpt2", tokenizer: gpt2Tokenizer, name: "reference").path])
        XCTAssertEqual(reference.status, 0, reference.errors)
        for form in ["zip", "legacy", "sharded"] {
            let source = try model("checkpoints/tiny-gpt2/\(form)", tokenizer: gpt2Tokenizer, name: "bin-\(form)")
            let output = folder.appendingPathComponent("converted-\(form)")
            let converted = try StitchCLI.run(["convert", source.path, "-o", output.path])
            XCTAssertEqual(converted.status, 0, converted.errors)
            XCTAssertEqual(try Checkpoint(folder: output).layout, .safetensors)
            XCTAssert(FileManager.default.fileExists(atPath: output.appendingPathComponent("vocab.json").path), "tokenizer files are copied")
            XCTAssertEqual(try StitchCLI.run(prompt + [output.path]).output, reference.output, form)
            XCTAssertNotEqual(try StitchCLI.run(["convert", source.path, "-o", output.path]).status, 0, "an existing output is not overwritten")
        }
        // From a hub id.
        try server.addFolder(Fixtures.url("checkpoints/tiny-bert/legacy"), repo: "org/bert")
        let fromHub = try StitchCLI.run(["convert", "org/bert", "-o", folder.appendingPathComponent("bert").path], environment: hubEnvironment)
        XCTAssertEqual(fromHub.status, 0, fromHub.errors)
        XCTAssert(FileManager.default.fileExists(atPath: folder.appendingPathComponent("bert/1_Pooling/config.json").path))

        let evil = folder.appendingPathComponent("evil")
        try FileManager.default.createDirectory(at: evil, withIntermediateDirectories: true)
        try FileManager.default.copyItem(at: Fixtures.url("checkpoints/hostile/os_system.bin"), to: evil.appendingPathComponent("pytorch_model.bin"))
        try Data(#"{"model_type": "gpt2"}"#.utf8).write(to: evil.appendingPathComponent("config.json"))
        let refused = try StitchCLI.run(["convert", evil.path, "-o", folder.appendingPathComponent("never").path])
        XCTAssertNotEqual(refused.status, 0)
        XCTAssert(refused.errors.contains("posix.system"), refused.errors)
        XCTAssertFalse(try FileManager.default.contentsOfDirectory(atPath: folder.path).contains { $0.contains("never") }, "nothing half-written")
    }
}
