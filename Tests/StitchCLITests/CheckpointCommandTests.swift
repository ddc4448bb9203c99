import Foundation
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
        XCTAssertEqual(try tokens(fromHub.output).count, 16)
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
