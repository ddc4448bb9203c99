import Foundation
import StitchTestSupport
import XCTest

/// `stitch vqa` (PICa), `stitch caption --method socratic` and the Socratic example graphs on the
/// tiny fixture models (and the real YOLOX-Nano for tags).
final class MethodCommandTests: XCTestCase {
    var folder: URL!
    override func setUpWithError() throws { folder = try Fixtures.temporaryFolder() }
    override func tearDownWithError() throws { try? FileManager.default.removeItem(at: folder) }

    func models() throws -> (gpt2: String, clip: String, captioner: String, detector: String, zebra: String, street: String) {
        let detector = Fixtures.yolox
        let zebra = Fixtures.photo("chelsea.png")
        let street = Fixtures.photo("coffee.png")
        return (try Fixtures.modelWithTokenizer("tiny-gpt2", in: folder).path, try Fixtures.modelWithTokenizer("tiny-clip", in: folder).path,
                try Fixtures.modelWithTokenizer("tiny-vit-gpt2", in: folder).path, detector.path, zebra.path, street.path)
    }

    func testPICaVQA() throws {
        let m = try models()
        let pool = folder.appendingPathComponent("pool.jsonl")
        try """
        {"question": "What animal is this?", "answer": "zebra", "image": "\(m.zebra)"}
        {"question": "What is next to the dog?", "answer": "bicycle", "image": "\(m.street)"}
        {"question": "How many wheels does a bicycle have?", "answer": "two", "context": "a bicycle leaning on a wall"}
        """.write(to: pool, atomically: true, encoding: .utf8)
        let run = try StitchCLI.run(["vqa", m.street, "What is the dog next to?", "--pool", pool.path, "--shots", "1", "--ensemble", "2",
                                     "--clip", m.clip, "--lm", m.gpt2, "--captioner", m.captioner, "--detector", m.detector, "--json"])
        XCTAssertEqual(run.status, 0, run.errors)
        let result = try JSONSerialization.jsonObject(with: Data(run.output.utf8)) as! [String: Any]
        let prompts = result["prompts"] as! [String], candidates = result["candidates"] as! [[String: Any]]
        XCTAssertEqual(prompts.count, 2, "2 prompts of 1 example each")
        let context = result["context"] as! String
        XCTAssert(context.hasSuffix(". cup, dining table"), context)
        for prompt in prompts {
            XCTAssert(prompt.hasPrefix("Please answer the question according to the above context.\n===\nContext: "), prompt)
            XCTAssert(prompt.hasSuffix("\n\n===\nContext: \(context)\n===\nQ: What is the dog next to?\nA:"), prompt)
        }
        XCTAssertEqual(Set(prompts).count, 2, "the two prompts hold different examples")
        let best = candidates.max { ($0["logprob"] as! Double) < ($1["logprob"] as! Double) }!
        XCTAssertEqual(result["answer"] as? String, best["answer"] as? String)

        // Precomputed pool features (.npy, one row per pool line) replace CLIP's; the wrong shape is refused.
        let config = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: m.clip).appendingPathComponent("config.json"))) as! [String: Any]
        let width = config["projection_dim"] as! Int
        func features(_ name: String, rows: Int, hot: Int) throws -> String {
            var header = "{'descr': '<f4', 'fortran_order': False, 'shape': (\(rows), \(width)), }"
            while (10 + header.utf8.count + 1) % 64 != 0 { header += " " }
            header += "\n"
            var bytes: [UInt8] = [0x93] + Array("NUMPY".utf8) + [1, 0, UInt8(header.utf8.count), 0] + Array(header.utf8)
            for row in 0..<rows { for column in 0..<width { bytes += withUnsafeBytes(of: Float(row == hot && column == 0 ? 1 : 0).bitPattern.littleEndian, Array.init) } }
            let url = folder.appendingPathComponent(name)
            try Data(bytes).write(to: url)
            return url.path
        }
        let precomputed = "\(try features("q.npy", rows: 3, hot: 2)),\(try features("i.npy", rows: 3, hot: 2))"
        let common = ["--clip", m.clip, "--lm", m.gpt2, "--captioner", m.captioner, "--detector", m.detector, "--json"]
        let withFeatures = try StitchCLI.run(["vqa", m.street, "What is the dog next to?", "--pool", pool.path, "--shots", "3", "--ensemble", "1",
                                              "--pool-features", precomputed] + common)
        XCTAssertEqual(withFeatures.status, 0, withFeatures.errors)
        let wrong = try StitchCLI.run(["vqa", m.street, "What is the dog next to?", "--pool", pool.path, "--pool-features",
                                       "\(try features("q2.npy", rows: 2, hot: 0)),\(try features("i2.npy", rows: 2, hot: 0))"] + common)
        XCTAssertNotEqual(wrong.status, 0)
        XCTAssert(wrong.errors.contains("q2.npy: features of shape [2, \(width)], the pool needs [3, \(width)]"), wrong.errors)
    }

    func testSocraticCaption() throws {
        let m = try models()
        let run = try StitchCLI.run(["caption", "--method", "socratic", "--clip", m.clip, "--lm", m.gpt2, "--candidates", "4", "--max-tokens", "8",
                                     "--categories", Fixtures.repositoryRoot.appendingPathComponent("Prompts").path, "--json", m.zebra])
        XCTAssertEqual(run.status, 0, run.errors)
        let result = try JSONSerialization.jsonObject(with: Data(run.output.utf8)) as! [String: Any]
        XCTAssertEqual(result["image"] as? String, m.zebra)
        XCTAssertFalse((result["caption"] as? String ?? "").isEmpty)
        let missing = try StitchCLI.run(["caption", "--method", "socratic", "--clip", m.clip, "--lm", m.gpt2, "--categories", folder.path, m.zebra])
        XCTAssertNotEqual(missing.status, 0)
        XCTAssert(missing.errors.contains("socratic_places.txt: missing or unreadable"), missing.errors)
    }

    /// Every Socratic example graph runs on the fixture models and produces its declared outputs.
    func testSocraticExampleGraphs() throws {
        let m = try models()
        let examples = Fixtures.repositoryRoot.appendingPathComponent("Examples")
        let components = ["--component", "captioner=\(m.captioner)", "--component", "lm=\(m.gpt2)", "--json", "--no-cache"] + Fixtures.allowPrompts
        let qa = try StitchCLI.run(["run", examples.appendingPathComponent("socratic_qa.yaml").path, "--component", "detector=\(m.detector)",
                                    "--input", "image=\(m.street)", "--input", "question=What is next to the dog?"] + components)
        XCTAssertEqual(qa.status, 0, qa.errors)
        let answer = try JSONSerialization.jsonObject(with: Data(qa.output.utf8)) as! [String: Any]
        XCTAssertEqual(Set(answer.keys), ["description", "tags", "prompt", "answer", "logprob"])
        XCTAssertEqual(answer["tags"] as? String, "cup, dining table")
        XCTAssert((answer["prompt"] as! String).hasSuffix("Objects I can detect in it: cup, dining table.\nQ: What is next to the dog?\nA:"))
        XCTAssertNotNil(answer["answer"] as? String)

        let summary = try StitchCLI.run(["run", examples.appendingPathComponent("image_set_summary.yaml").path, "--input", "first=\(m.zebra)",
                                         "--input", "second=\(m.street)", "--input", "third=\(m.zebra)"] + components)
        XCTAssertEqual(summary.status, 0, summary.errors)
        let outputs = try JSONSerialization.jsonObject(with: Data(summary.output.utf8)) as! [String: Any]
        let captions = (outputs["captions"] as! String).split(separator: "\n")
        XCTAssertEqual(captions.count, 3)
        XCTAssertEqual(captions[0], captions[2], "the same photo gets the same caption")
        XCTAssertNotNil(outputs["summary"] as? String)
    }
}
