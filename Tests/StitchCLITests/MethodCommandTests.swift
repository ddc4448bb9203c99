import Foundation
import StitchImaging
import StitchMethods
import StitchModels
import StitchTestSupport
import XCTest

/// `stitch vqa` (PICa), `stitch caption --method magic|socratic`, the method graphs they run and the Socratic example graphs on the
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
        XCTAssert(wrong.errors.contains("q2.npy: features of shape [2, \(width)], the pool needs 3 rows (one per pool line)"), wrong.errors)

        // One implementation: `stitch vqa` is a run of Examples/pica_okvqa.yaml with its flags as inputs and settings.
        let described = folder.appendingPathComponent("described.jsonl")
        try """
        {"question": "What animal is this?", "answer": "zebra", "image": "\(m.zebra)", "context": "a zebra in a field"}
        {"question": "What is next to the dog?", "answer": "bicycle", "image": "\(m.street)", "context": "a dog next to a bicycle"}
        {"question": "How many wheels does a bicycle have?", "answer": "two", "context": "a bicycle leaning on a wall"}
        """.write(to: described, atomically: true, encoding: .utf8)
        let viaCommand = try StitchCLI.run(["vqa", m.street, "What is the dog next to?", "--pool", described.path, "--shots", "1", "--ensemble", "2"] + common)
        let viaGraph = try StitchCLI.run(["run", Self.examples.appendingPathComponent("pica_okvqa.yaml").path, "--input", "image=\(m.street)",
                                          "--input", "question=What is the dog next to?", "--input", "pool=@\(described.path)",
                                          "--set", "prompts.shots=1", "--set", "examples.count=2", "--no-cache", "--json"]
                                         + components(["clip": m.clip, "lm": m.gpt2, "captioner": m.captioner, "detector": m.detector]) + Fixtures.allowPrompts)
        XCTAssertEqual(viaCommand.status, 0, viaCommand.errors)
        XCTAssertEqual(viaGraph.status, 0, viaGraph.errors)
        let commandResult = try JSONSerialization.jsonObject(with: Data(viaCommand.output.utf8)) as! NSDictionary
        XCTAssertEqual(commandResult, try JSONSerialization.jsonObject(with: Data(viaGraph.output.utf8)) as! NSDictionary)
        XCTAssertEqual((commandResult["prompts"] as! [String]).count, 2)
    }

    static let examples = Fixtures.repositoryRoot.appendingPathComponent("Examples")

    func components(_ models: [String: String]) -> [String] {
        models.sorted { $0.key < $1.key }.flatMap { ["--component", "\($0.key)=\($0.value)"] }
    }

    /// The JSON object a command printed.
    func object(_ result: StitchCLI.Result) throws -> [String: Any] {
        XCTAssertEqual(result.status, 0, result.errors)
        return try XCTUnwrap(JSONSerialization.jsonObject(with: Data(result.output.utf8)) as? [String: Any], result.output)
    }

    func testSocraticCaption() throws {
        let m = try models()
        let result = try object(try StitchCLI.run(["caption", "--method", "socratic", "--clip", m.clip, "--lm", m.gpt2, "--candidates", "4", "--max-tokens", "8",
                                                   "--categories", Fixtures.repositoryRoot.appendingPathComponent("Prompts").path, "--json", m.zebra]))
        XCTAssertEqual(result["image"] as? String, m.zebra)
        XCTAssertFalse((result["caption"] as? String ?? "").isEmpty)
        let missing = try StitchCLI.run(["caption", "--method", "socratic", "--clip", m.clip, "--lm", m.gpt2, "--categories", folder.path, m.zebra])
        XCTAssertNotEqual(missing.status, 0)
        XCTAssert(missing.errors.contains("socratic_places.txt: missing or unreadable"), missing.errors)

        // One implementation: the command is a run of Examples/socratic_caption.yaml (the same seed, so the same samples).
        let viaGraph = try object(try StitchCLI.run(["run", Self.examples.appendingPathComponent("socratic_caption.yaml").path, "--input", "image=\(m.zebra)",
                                                     "--set", "candidates.n=4", "--set", "candidates.max_tokens=8", "--no-cache", "--json"]
                                                    + components(["clip": m.clip, "lm": m.gpt2]) + Fixtures.allowPrompts))
        XCTAssertEqual(result["caption"] as? String, viaGraph["caption"] as? String)
        let candidates = viaGraph["candidates"] as! [String], scores = viaGraph["scores"] as! [Double]
        XCTAssertEqual(candidates.count, 4)
        XCTAssertEqual(scores, scores.sorted(by: >), "candidates best first")
        XCTAssert((viaGraph["prompt"] as! String).hasPrefix("I am an intelligent image captioning bot.\nThis image is a "))
    }

    /// `stitch caption --method magic` is a run of Examples/magic.yaml: the published presets and the flags that override them.
    func testMagicCaptionRunsItsGraph() throws {
        let m = try models()
        let magic = Self.examples.appendingPathComponent("magic.yaml").path
        for (flags, settings) in [([String](), [String]()), (["--preset", "flickr30k", "--k", "3"], ["caption.preset=flickr30k", "caption.k=3"]),
                                  (["--title", "A day at the zoo", "--max-tokens", "6"], ["caption.max_tokens=6"])] {
            let viaCommand = try object(try StitchCLI.run(["caption", "--clip", m.clip, "--lm", m.gpt2, "--json", m.zebra] + flags))
            let title = flags.firstIndex(of: "--title").map { flags[$0 + 1] } ?? ""
            let viaGraph = try object(try StitchCLI.run(["run", magic, "--input", "image=\(m.zebra)", "--input", "title=\(title)", "--no-cache", "--json"]
                                                        + settings.flatMap { ["--set", $0] } + components(["clip": m.clip, "lm": m.gpt2])))
            XCTAssertEqual(viaCommand["caption"] as? String, viaGraph["caption"] as? String, "\(flags)")
            XCTAssertEqual(viaCommand["tokens"] as? [Int], viaGraph["tokens"] as? [Int], "\(flags)")
        }
    }

    /// Every method command takes any image-text scorer and captioner: MAGiC guided by SigLIP gives the in-process caption,
    /// and PICa runs with a BLIP caption as its context and SigLIP choosing its examples.
    func testMethodsTakeSigLIPAndBLIP() throws {
        let m = try models()
        let siglip = try Fixtures.modelWithTokenizer("tiny-siglip", in: folder)
        let flags = ["--k", "10", "--alpha", "0.6", "--beta", "1", "--max-tokens", "12", "--clip-text", "current"]
        let viaCommand = try object(try StitchCLI.run(["caption", "--clip", siglip.path, "--lm", m.gpt2, "--json", m.zebra] + flags))
        let lm = try GPT2(folder: URL(fileURLWithPath: m.gpt2))
        let expected = try magicCaption(lm, scorer: try SigLIP(folder: siglip), image: RGBImage(contentsOf: m.zebra), title: nil,
                                        settings: MagicSettings(k: 10, alpha: 0.6, beta: 1, textTokenization: .current), stop: StopConditions(maxTokens: 12))
        XCTAssertEqual(viaCommand["tokens"] as? [Int], expected.tokens)
        XCTAssertEqual(viaCommand["caption"] as? String, expected.text)
        let withCLIP = try object(try StitchCLI.run(["caption", "--clip", m.clip, "--lm", m.gpt2, "--json", m.zebra] + flags))
        XCTAssertNotEqual(withCLIP["tokens"] as? [Int], expected.tokens, "the scorer steers the caption")

        let pool = folder.appendingPathComponent("pool.jsonl")
        try """
        {"question": "What animal is this?", "answer": "zebra", "image": "\(m.zebra)"}
        {"question": "What is on the table?", "answer": "cup", "image": "\(m.street)"}
        """.write(to: pool, atomically: true, encoding: .utf8)
        let blip = Fixtures.url("tiny-blip").path
        let run = try StitchCLI.run(["vqa", m.street, "What is on the table?", "--pool", pool.path, "--shots", "1", "--ensemble", "1",
                                     "--clip", siglip.path, "--lm", m.gpt2, "--captioner", blip, "--detector", m.detector, "--json"])
        XCTAssertEqual(run.status, 0, run.errors)
        let result = try JSONSerialization.jsonObject(with: Data(run.output.utf8)) as! [String: Any]
        let caption = try BLIPCaptioner(folder: URL(fileURLWithPath: blip)).caption(RGBImage(contentsOf: m.street)).text
        XCTAssertEqual(result["context"] as? String, "\(caption). cup, dining table")
        XCTAssertNotNil(result["answer"] as? String)
    }

    /// A copy of each example graph with one step changed: the output changes as that step says, and every node
    /// before it comes from the cache.
    func testEditingOneStepRecomputesOnlyWhatFollows() throws {
        let m = try models()
        let copy = folder.appendingPathComponent("mine")
        try FileManager.default.createDirectory(at: copy.appendingPathComponent("Examples"), withIntermediateDirectories: true)
        try FileManager.default.copyItem(at: Fixtures.repositoryRoot.appendingPathComponent("Prompts"), to: copy.appendingPathComponent("Prompts"))
        let cache = folder.appendingPathComponent("cache").path
        /// Runs `yaml` (written into the copy's Examples/) with --trace; the outputs and which nodes came from the cache.
        func run(_ name: String, _ yaml: String, _ arguments: [String]) throws -> (outputs: [String: Any], cached: Set<String>, executed: Set<String>) {
            let file = copy.appendingPathComponent("Examples/\(name)")
            try yaml.write(to: file, atomically: true, encoding: .utf8)
            let result = try StitchCLI.run(["run", file.path, "--cache-dir", cache, "--trace", "--json", "--allow-path", copy.appendingPathComponent("Prompts").path] + arguments)
            let timings = result.errors.split(separator: "\n").map { $0.split(separator: "\t") }.filter { $0.count >= 3 }
            return (try object(result), Set(timings.filter { $0.last == "cached" }.map { String($0[0]) }), Set(timings.filter { $0.last != "cached" }.map { String($0[0]) }))
        }

        // Socratic: another prompt template, then another scorer for the re-ranking alone.
        let socratic = try String(contentsOf: Self.examples.appendingPathComponent("socratic_caption.yaml"), encoding: .utf8)
        let socraticArguments = ["--input", "image=\(m.zebra)", "--set", "candidates.n=3", "--set", "candidates.max_tokens=6"] + components(["clip": m.clip, "lm": m.gpt2])
        let zeroShot: Set = ["image_type", "any_people", "people_count", "people", "places", "objects"]
        let first = try run("socratic.yaml", socratic, socraticArguments)
        XCTAssertEqual(first.executed, zeroShot.union(["prompt", "candidates", "stripped", "rerank"]))
        let edited = socratic.replacingOccurrences(of: "template: {file: ../Prompts/socratic_caption.txt}", with: "template: \"A {type} at a {place1} with {objects}. Caption:\"")
        XCTAssertNotEqual(edited, socratic)
        let second = try run("socratic.yaml", edited, socraticArguments)
        XCTAssertEqual(second.cached, zeroShot)
        XCTAssertEqual(second.executed, ["prompt", "candidates", "stripped", "rerank"])
        let places = (first.outputs["prompt"] as! String).components(separatedBy: "taken at a ")[1].components(separatedBy: ", ")[0]
        XCTAssert((second.outputs["prompt"] as! String).hasPrefix("A photo at a \(places) with ") || (second.outputs["prompt"] as! String).contains(" at a \(places) with "),
                  second.outputs["prompt"] as! String)
        // The command runs the same edited copy with --graph.
        let viaCommand = try object(try StitchCLI.run(["caption", "--method", "socratic", "--graph", copy.appendingPathComponent("Examples/socratic.yaml").path,
                                                       "--candidates", "3", "--max-tokens", "6", "--clip", m.clip, "--lm", m.gpt2, "--json", m.zebra,
                                                       "--allow-path", copy.appendingPathComponent("Prompts").path]))
        XCTAssertEqual(viaCommand["caption"] as? String, second.outputs["caption"] as? String)
        let p14 = try Fixtures.modelWithTokenizer("tiny-clip-p14", in: folder).path
        let rescored = edited.replacingOccurrences(of: "  lm: {kind: completion, model: gpt2}", with: "  lm: {kind: completion, model: gpt2}\n  judge: {kind: scorer, model: \(p14)}")
            .replacingOccurrences(of: "rerank: {op: clip_rank, clip: clip,", with: "rerank: {op: clip_rank, clip: judge,")
        let third = try run("socratic.yaml", rescored, socraticArguments)
        XCTAssertEqual(third.executed, ["rerank"])
        XCTAssertEqual(Set(third.outputs["candidates"] as! [String]), Set(second.outputs["candidates"] as! [String]), "the same samples, ranked by another scorer")
        XCTAssertNotEqual(third.outputs["scores"] as! [Double], second.outputs["scores"] as! [Double])

        // PICa: two shots per prompt instead of one.
        let pool = folder.appendingPathComponent("pool.jsonl")
        try """
        {"question": "What animal is this?", "answer": "zebra", "context": "a zebra in a field"}
        {"question": "What is next to the dog?", "answer": "bicycle", "context": "a dog next to a bicycle"}
        {"question": "How many wheels does a bicycle have?", "answer": "two", "context": "a bicycle leaning on a wall"}
        {"question": "What colour is the cup?", "answer": "white", "context": "a cup on a table"}
        """.write(to: pool, atomically: true, encoding: .utf8)
        let pica = try String(contentsOf: Self.examples.appendingPathComponent("pica_okvqa.yaml"), encoding: .utf8)
            .replacingOccurrences(of: "    count: 80", with: "    count: 4")
        let picaArguments = ["--input", "image=\(m.street)", "--input", "question=What is the dog next to?", "--input", "pool=@\(pool.path)"]
            + components(["clip": m.clip, "lm": m.gpt2, "captioner": m.captioner, "detector": m.detector])
        let oneShot = try run("pica.yaml", pica.replacingOccurrences(of: "    shots: 16", with: "    shots: 1"), picaArguments)
        XCTAssertEqual((oneShot.outputs["prompts"] as! [String]).count, 4)
        let twoShots = try run("pica.yaml", pica.replacingOccurrences(of: "    shots: 16", with: "    shots: 2"), picaArguments)
        XCTAssertEqual((twoShots.outputs["prompts"] as! [String]).count, 2)
        XCTAssertEqual(twoShots.executed, ["prompts", "answer"])
        XCTAssert(twoShots.cached.isSuperset(of: ["caption", "objects", "context", "examples", "pool_question_embeddings", "pool_image_embeddings"]), "\(twoShots.cached)")
        XCTAssertEqual(twoShots.outputs["context"] as? String, oneShot.outputs["context"] as? String)
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
