import Foundation
import StitchImaging
import StitchModels
import StitchTestSupport
import XCTest

/// `stitch validate` and `stitch run`: single runs, batches with resume and shards, the
/// Examples/ graphs on fixture models, and Ctrl-C.
final class GraphCommandTests: XCTestCase {
    var folder: URL!
    override func setUpWithError() throws { folder = try Fixtures.temporaryFolder() }
    override func tearDownWithError() throws { try? FileManager.default.removeItem(at: folder) }

    func write(_ name: String, _ text: String) throws -> String {
        let url = folder.appendingPathComponent(name)
        try text.write(to: url, atomically: true, encoding: .utf8)
        return url.path
    }

    /// Text operations only: no model needed.
    let textGraph = """
    inputs:
      name: text
      tags: texts
    nodes:
      greeting: {op: template, template: "hello {name}", values: {name: $name}}
      listed: {op: join, texts: $tags, separator: " / "}
    outputs:
      greeting: $greeting
      listed: $listed
    """

    func testValidateAndRun() throws {
        let graph = try write("g.yaml", textGraph)
        let valid = try StitchCLI.run(["validate", graph])
        XCTAssertEqual(valid.status, 0, valid.errors)
        let bad = try write("bad.yaml", "nodes:\n  a: {op: nope}\noutputs: {o: $b}\n")
        let invalid = try StitchCLI.run(["validate", bad])
        XCTAssertNotEqual(invalid.status, 0)
        XCTAssert(invalid.errors.contains("\(bad):2:") && invalid.errors.contains("\(bad):3:"), invalid.errors)
        // The size limits on graphs are the user's to raise (or lower), each named in its error.
        for (variable, value, message) in [("STITCH_MAX_GRAPH_BYTES", "100", "a graph file may be at most 100 bytes (STITCH_MAX_GRAPH_BYTES raises it)"),
                                           ("STITCH_MAX_GRAPH_VALUES", "10", "more than 10 YAML values once its aliases are expanded (STITCH_MAX_GRAPH_VALUES raises it)")] {
            let limited = try StitchCLI.run(["validate", graph], environment: [variable: value])
            XCTAssertNotEqual(limited.status, 0)
            XCTAssert(limited.errors.contains(message), limited.errors)
            XCTAssertEqual(try StitchCLI.run(["validate", graph], environment: [variable: "100000"]).status, 0)
        }

        let cache = folder.appendingPathComponent("cache").path
        let run = try StitchCLI.run(["run", graph, "--input", "name=zebra", "--input", "tags=a,b", "--json", "--cache-dir", cache, "--trace"])
        XCTAssertEqual(run.status, 0, run.errors)
        XCTAssertEqual(try JSONSerialization.jsonObject(with: Data(run.output.utf8)) as? [String: String], ["greeting": "hello zebra", "listed": "a / b"])
        XCTAssert(run.errors.contains("greeting") && run.errors.contains("ms"), run.errors)
        let cached = try StitchCLI.run(["run", graph, "--input", "name=zebra", "--input", "tags=a,b", "--cache-dir", cache, "--trace"])
        XCTAssert(cached.errors.components(separatedBy: "cached").count == 3, "both nodes from the cache: \(cached.errors)")
        XCTAssertNotEqual(try StitchCLI.run(["run", graph, "--input", "name=zebra"]).status, 0, "a missing input is an error")
        XCTAssertNotEqual(try StitchCLI.run(["run", graph, "--input", "colour=red"]).status, 0)
    }

    func testBatchResumeAndShards() throws {
        let graph = try write("g.yaml", textGraph)
        let items = (0..<7).map { #"{"name": "n\#($0)", "tags": ["t\#($0)", "u"]}"# }.joined(separator: "\n") + "\n"
        let inputs = try write("items.jsonl", items)
        func results(_ path: String) throws -> [Int: String] {
            let text = try String(contentsOfFile: path, encoding: .utf8)
            var out: [Int: String] = [:]
            for line in text.split(separator: "\n") {
                let object = try JSONSerialization.jsonObject(with: Data(line.utf8)) as! [String: Any]
                let item = object["item"] as! Int
                XCTAssertNil(out[item], "item \(item) twice")
                out[item] = (object["outputs"] as! [String: String])["greeting"]
            }
            return out
        }
        let whole = folder.appendingPathComponent("whole.jsonl").path
        XCTAssertEqual(try StitchCLI.run(["run", graph, "--inputs", inputs, "--output", whole, "--no-cache"]).status, 0)
        let expected = try results(whole)
        XCTAssertEqual(expected, Dictionary(uniqueKeysWithValues: (0..<7).map { ($0, "hello n\($0)") }))

        // Three shards, each in a file of its own (part.jsonl -> part.shard-000i-of-0003.jsonl), together give exactly
        // the unsharded result.
        var merged: [Int: String] = [:]
        let sharded = folder.appendingPathComponent("part.jsonl").path
        let parts = (0..<3).map { folder.appendingPathComponent(String(format: "part.shard-%04d-of-0003.jsonl", $0)).path }
        for shard in 0..<3 {
            let result = try StitchCLI.run(["run", graph, "--inputs", inputs, "--output", sharded, "--shard", "\(shard)/3", "--no-cache"])
            XCTAssertEqual(result.status, 0, result.errors)
            merged.merge(try results(parts[shard])) { a, _ in XCTFail("an item in two shards"); return a }
        }
        XCTAssertEqual(merged, expected)
        XCTAssertFalse(FileManager.default.fileExists(atPath: sharded))

        // Resume: two items done and a line cut short by an interrupted run; the rest are run once.
        let resumed = folder.appendingPathComponent("resumed.jsonl").path
        let done = try String(contentsOfFile: whole, encoding: .utf8).split(separator: "\n").prefix(2).joined(separator: "\n")
        try (done + "\n{\"item\": 2, \"outp").write(toFile: resumed, atomically: true, encoding: .utf8)
        XCTAssertEqual(try StitchCLI.run(["run", graph, "--inputs", inputs, "--output", resumed, "--no-cache"]).status, 0)
        XCTAssertEqual(try results(resumed), expected)
        XCTAssertNotEqual(try StitchCLI.run(["run", graph, "--inputs", inputs, "--output", resumed, "--shard", "3/3"]).status, 0)

        // A file that is not this run's results is refused and left as it was: a line that is not a result (a huge
        // or fractional item, no outputs), an item past the inputs, the inputs file itself.
        let strangeLines = ["{\"item\": 1e300, \"outputs\": {}}", "{\"item\": 2.5, \"outputs\": {}}", "{\"item\": 3}", "{\"item\": 99, \"outputs\": {}}"]
        for (number, line) in strangeLines.enumerated() {
            let strange = folder.appendingPathComponent("strange\(number).jsonl").path
            let contents = done + "\n" + line + "\n"
            try contents.write(toFile: strange, atomically: true, encoding: .utf8)
            let rerun = try StitchCLI.run(["run", graph, "--inputs", inputs, "--output", strange, "--no-cache"])
            XCTAssertEqual(rerun.status, 64, line)
            XCTAssert(rerun.errors.contains(number == 3 ? "item 99 is past the 7 lines" : "strange\(number).jsonl:3: not a result line"), rerun.errors)
            XCTAssertEqual(try String(contentsOfFile: strange, encoding: .utf8), contents)
        }
        let itemsBefore = try Data(contentsOf: URL(fileURLWithPath: inputs))
        let intoInputs = try StitchCLI.run(["run", graph, "--inputs", inputs, "--output", folder.path + "/./items.jsonl", "--no-cache"])
        XCTAssert(intoInputs.status == 64 && intoInputs.errors.contains("is the --inputs file"), intoInputs.errors)
        XCTAssertEqual(try Data(contentsOf: URL(fileURLWithPath: inputs)), itemsBefore)

        // One writer per results file: a second run on a file another run holds stops before running anything.
        let held = open(resumed, O_RDWR)
        XCTAssertEqual(flock(held, LOCK_EX), 0)
        let second = try StitchCLI.run(["run", graph, "--inputs", inputs, "--output", resumed, "--no-cache"])
        close(held)
        XCTAssert(second.status == 64 && second.errors.contains("is being written by another run"), second.errors)
        XCTAssertEqual(try results(resumed), expected)

        // Shards' files merge into exactly the unsharded file: named, or found beside --output.
        let joined = folder.appendingPathComponent("joined.jsonl").path
        let merge = try StitchCLI.run(["merge"] + parts + ["--output", joined])
        XCTAssertEqual(merge.status, 0, merge.errors)
        XCTAssertEqual(try String(contentsOfFile: joined, encoding: .utf8), try String(contentsOfFile: whole, encoding: .utf8))
        let found = try StitchCLI.run(["merge", "--output", sharded, "--inputs", inputs])
        XCTAssertEqual(found.status, 0, found.errors)
        XCTAssertEqual(try String(contentsOfFile: sharded, encoding: .utf8), try String(contentsOfFile: whole, encoding: .utf8))

        // Clear errors, and nothing written: an item in two files, a missing shard, shards of another count, items
        // without results.
        let never = folder.appendingPathComponent("never.jsonl").path
        let conflicting = folder.appendingPathComponent("conflicting.jsonl").path
        try (try String(contentsOfFile: parts[0], encoding: .utf8).replacingOccurrences(of: "hello n0", with: "bye")).write(toFile: conflicting, atomically: true, encoding: .utf8)
        let stray = folder.appendingPathComponent("stray.shard-0001-of-0002.jsonl").path
        try FileManager.default.copyItem(atPath: parts[1], toPath: stray)
        for (files, message) in [([whole, conflicting], "item 0 is in both \(whole) and \(conflicting), with other outputs"),
                                 ([whole] + parts, "item 0 is in both \(whole) and \(parts[0])"),
                                 ([parts[0], parts[2]], "1 of 3 shards are missing (shards 1; e.g. \(parts[1]))"),
                                 (parts + [stray], "is a shard of 3 but \(stray) of 2"),
                                 ([stray], "1 of 2 shards are missing"),
                                 ([whole, folder.appendingPathComponent("absent.jsonl").path], "cannot read \(folder.appendingPathComponent("absent.jsonl").path)")] {
            let refused = try StitchCLI.run(["merge"] + files + ["--output", never])
            XCTAssert(refused.status == 64 && refused.errors.contains(message), "\(message): \(refused.errors)")
        }
        try (try String(contentsOfFile: parts[2], encoding: .utf8).split(separator: "\n").dropLast().map { $0 + "\n" }.joined()).write(toFile: parts[2], atomically: true, encoding: .utf8)
        let incomplete = try StitchCLI.run(["merge", "--output", sharded, "--inputs", inputs])
        XCTAssert(incomplete.status == 64 && incomplete.errors.contains("1 of the 7 items of \(inputs) have no result, e.g. items 5"), incomplete.errors)
        let gap = try StitchCLI.run(["merge", "--output", sharded])
        XCTAssert(gap.status == 64 && gap.errors.contains("1 items below item 6 have no result, e.g. items 5"), gap.errors)
        let swapped = [1, 0, 2].enumerated().map { index, source in
            let file = folder.appendingPathComponent(String(format: "swapped.shard-%04d-of-0003.jsonl", index)).path
            try? FileManager.default.copyItem(atPath: parts[source], toPath: file)
            return file
        }
        let misplaced = try StitchCLI.run(["merge"] + swapped + ["--output", never])
        XCTAssert(misplaced.errors.contains("\(swapped[0]): item 1 belongs to shard 1 of 3, not 0; were the shards run with another count?"), misplaced.errors)
        XCTAssertFalse(FileManager.default.fileExists(atPath: never))
    }

    /// --shard auto reads a Slurm job array's or a Kubernetes Indexed Job's variables, or says which it needs.
    func testShardAutoFromTheScheduler() throws {
        let graph = try write("g.yaml", textGraph)
        let inputs = try write("items.jsonl", (0..<5).map { #"{"name": "n\#($0)", "tags": ["t"]}"# }.joined(separator: "\n") + "\n")
        let output = folder.appendingPathComponent("out.jsonl").path
        let cases: [([String: String], [String], String?)] = [
            (["SLURM_ARRAY_TASK_ID": "7", "SLURM_ARRAY_TASK_MIN": "5", "SLURM_ARRAY_TASK_COUNT": "4"], [], "out.shard-0002-of-0004.jsonl"),
            (["SLURM_ARRAY_TASK_ID": "4", "SLURM_ARRAY_TASK_MIN": "0", "SLURM_ARRAY_TASK_MAX": "6", "SLURM_ARRAY_TASK_STEP": "2"], [], "out.shard-0002-of-0004.jsonl"),
            (["JOB_COMPLETION_INDEX": "1"], ["--shard-count", "3"], "out.shard-0001-of-0003.jsonl"),
            (["JOB_COMPLETION_INDEX": "0", "STITCH_SHARD_COUNT": "2"], [], "out.shard-0000-of-0002.jsonl"),
        ]
        for (environment, flags, file) in cases {
            let run = try StitchCLI.run(["run", graph, "--inputs", inputs, "--output", output, "--shard", "auto", "--no-cache"] + flags, environment: environment)
            XCTAssertEqual(run.status, 0, "\(environment): \(run.errors)")
            XCTAssert(FileManager.default.fileExists(atPath: folder.appendingPathComponent(file!).path), "\(environment): no \(file!)")
        }
        let clean = ["SLURM_ARRAY_TASK_ID": "", "JOB_COMPLETION_INDEX": "", "STITCH_SHARD_COUNT": ""]
        for (environment, message) in [(clean, "--shard auto needs a scheduler's variables: SLURM_ARRAY_TASK_ID with SLURM_ARRAY_TASK_COUNT"),
                                       (clean.merging(["JOB_COMPLETION_INDEX": "1"]) { $1 }, "give the job's completions as --shard-count or STITCH_SHARD_COUNT"),
                                       (clean.merging(["SLURM_ARRAY_TASK_ID": "3"]) { $1 }, "neither SLURM_ARRAY_TASK_COUNT nor SLURM_ARRAY_TASK_MAX"),
                                       (clean.merging(["JOB_COMPLETION_INDEX": "5", "STITCH_SHARD_COUNT": "2"]) { $1 }, "shard 5 of 2 is out of range"),
                                       (clean.merging(["SLURM_ARRAY_TASK_ID": "x"]) { $1 }, "SLURM_ARRAY_TASK_ID=x is not a whole number")] {
            let refused = try StitchCLI.run(["run", graph, "--inputs", inputs, "--output", output, "--shard", "auto"], environment: environment)
            XCTAssert(refused.status == 64 && refused.errors.contains(message), "\(message): \(refused.errors)")
        }
    }

    /// The Kubernetes examples can only be read here: each Indexed Job runs its shard with --shard auto and tells
    /// stitch its shard count, equal to its completions; each shard file pattern its merge Job reads is one it writes.
    func testKubernetesExamplesAgreeWithThemselves() throws {
        let folder = Fixtures.repositoryRoot.appendingPathComponent("Examples/kubernetes")
        for (job, merge, pattern) in [("stitch-run-indexed-job.yaml", "stitch-merge-job.yaml", "/data/results.jsonl"),
                                      ("asif-build-indexed-job.yaml", "asif-merge-job.yaml", "/data/anchors.shard-*-of-0016.asif")] {
            let text = try String(contentsOf: folder.appendingPathComponent(job), encoding: .utf8)
            func value(after key: String) -> String? {
                guard let range = text.range(of: key) else { return nil }
                return text[range.upperBound...].split(separator: "\n").first?.trimmingCharacters(in: CharacterSet(charactersIn: " \""))
            }
            XCTAssertEqual(value(after: "completionMode:"), "Indexed", job)
            let completions = try XCTUnwrap(value(after: "completions:"), job)
            XCTAssertEqual(value(after: "- name: STITCH_SHARD_COUNT\n              value:"), completions, job)
            XCTAssert(text.contains(#""--shard", "auto"]"#), job)
            XCTAssert(try String(contentsOf: folder.appendingPathComponent(merge), encoding: .utf8).contains(pattern), merge)
            XCTAssert(pattern.contains("-of-\(String(format: "%04d", Int(completions)!))") || !pattern.contains("shard"), pattern)
        }
    }

    /// Without --cache-dir, node results go under $XDG_CACHE_HOME, else $HOME, as the environment says.
    func testGraphCacheFollowsTheEnvironment() throws {
        let graph = try write("g.yaml", textGraph)
        let home = folder.appendingPathComponent("home"), xdg = folder.appendingPathComponent("xdg")
        for (environment, cache) in [(["HOME": home.path, "XDG_CACHE_HOME": ""], home.appendingPathComponent(".cache/stitch/graph")),
                                     (["HOME": home.path, "XDG_CACHE_HOME": xdg.path], xdg.appendingPathComponent("stitch/graph"))] {
            let result = try StitchCLI.run(["run", graph, "--input", "name=x", "--input", "tags=a"], environment: environment)
            XCTAssertEqual(result.status, 0, result.errors)
            XCTAssertFalse(((try? FileManager.default.contentsOfDirectory(atPath: cache.path)) ?? []).isEmpty, "nothing cached in \(cache.path)")
        }
    }

    /// Examples/magic_caption.yaml on the tiny fixture models: MAGiC's caption equals the reference's.
    func testMagicExampleGraph() throws {
        let zebra = Fixtures.photo("chelsea.png")
        let gpt2 = try Fixtures.modelWithTokenizer("tiny-gpt2", in: folder).path
        let clip = try Fixtures.modelWithTokenizer("tiny-clip", in: folder).path
        let example = Fixtures.repositoryRoot.appendingPathComponent("Examples/magic_caption.yaml").path
        XCTAssertEqual(try StitchCLI.run(["validate", example] + Fixtures.allowPrompts).status, 0)
        let result = try StitchCLI.run(["run", example] + Fixtures.allowPrompts + ["--component", "lm=\(gpt2)", "--component", "clip=\(clip)", "--input", "image=\(zebra.path)",
                                        "--input", "labels=zebra,dog,truck", "--json", "--no-cache"])
        XCTAssertEqual(result.status, 0, result.errors)
        let outputs = try JSONSerialization.jsonObject(with: Data(result.output.utf8)) as! [String: Any]
        let golden = try Fixtures.json("decoding/golden.json") as! [String: Any]
        // The example asks for the published MSCOCO setting: 15 new tokens of the reference's 16.
        let reference = Array((((golden["magic"] as! [String: Any])["settings"] as! [[String: Any]])[0]["outputs"] as! [[Int]])[0].prefix(15))
        XCTAssertEqual(outputs["tokens"] as? [Int], reference.firstIndex(of: 50256).map { Array(reference[...$0]) } ?? reference)
        XCTAssert(["zebra", "dog", "truck"].contains(outputs["label"] as? String ?? ""))
        let sentence = outputs["sentence"] as? String ?? ""
        XCTAssert(sentence.hasPrefix("This is a photo of a \(outputs["label"]!). Caption: "), sentence)
    }

    /// Ctrl-C during a run: exit status 130 and no partial files in the cache. The interrupt is sent once the first
    /// result line shows the run under way (and its Ctrl-C handling installed), however busy the machine is.
    func testInterruptStopsCleanly() throws {
        let items = (0..<200_000).map { #"{"name": "n\#($0)", "tags": ["a"]}"# }.joined(separator: "\n")
        let inputs = try write("items.jsonl", items)
        let graph = try write("g.yaml", textGraph)
        let cache = folder.appendingPathComponent("cache")
        let output = folder.appendingPathComponent("out.jsonl")
        let process = Process()
        process.executableURL = StitchCLI.binary
        process.arguments = ["run", graph, "--inputs", inputs, "--output", output.path, "--cache-dir", cache.path]
        process.standardError = FileHandle.nullDevice
        try process.run()
        let deadline = Date().addingTimeInterval(120)
        while process.isRunning, Date() < deadline, (try? Data(contentsOf: output))?.contains(UInt8(ascii: "\n")) != true {
            Thread.sleep(forTimeInterval: 0.005)
        }
        XCTAssertTrue(process.isRunning, "the batch ended before it could be interrupted")
        process.interrupt()
        process.waitUntilExit()
        XCTAssertEqual(process.terminationStatus, 130)
        let leftovers = (try? FileManager.default.contentsOfDirectory(atPath: cache.path)) ?? []
        XCTAssert(leftovers.allSatisfy { $0.hasSuffix(".json") }, "partial cache files: \(leftovers.filter { !$0.hasSuffix(".json") })")
        let lines = String(decoding: try Data(contentsOf: output), as: UTF8.self).split(separator: "\n", omittingEmptySubsequences: false)
        XCTAssert(lines.dropLast().allSatisfy { (try? JSONSerialization.jsonObject(with: Data($0.utf8))) != nil }, "every written line is whole")
    }
}

/// `stitch asif` commands and Examples/asif_classify.yaml on the real encoders (Scripts/fetch-test-models).
final class ASIFCommandTests: XCTestCase {
    func testBuildClassifyRetrieveEvaluateAndExampleGraph() throws {
        let efficientnet = try Fixtures.realModel("efficientnet-lite0")
        let minilm = try Fixtures.realModel("all-MiniLM-L6-v2")
        let zebra = Fixtures.photo("chelsea.png")
        let street = Fixtures.photo("coffee.png")
        let folder = try Fixtures.temporaryFolder()
        defer { try? FileManager.default.removeItem(at: folder) }
        let anchors = folder.appendingPathComponent("anchors.jsonl").path
        try """
        {"image": "\(zebra.path)", "caption": "a zebra standing in the grass"}
        {"image": "\(street.path)", "caption": "a dog next to a bicycle and a truck"}
        """.write(toFile: anchors, atomically: true, encoding: .utf8)
        let index = folder.appendingPathComponent("anchors.asif").path
        let encoders = ["--image-encoder", efficientnet.path, "--text-encoder", minilm.path]
        let built = try StitchCLI.run(["asif", "build", anchors, "-o", index, "--dtype", "f16"] + encoders)
        XCTAssertEqual(built.status, 0, built.errors)
        XCTAssert(built.output.contains("2 anchors"), built.output)
        // Built in two shards (each into a file of its own, the second's index from a Slurm array) and merged: the same anchors.
        for (shard, environment) in [("0/2", [String: String]()), ("auto", ["SLURM_ARRAY_TASK_ID": "1", "SLURM_ARRAY_TASK_COUNT": "2"])] {
            let part = try StitchCLI.run(["asif", "build", anchors, "-o", index, "--dtype", "f16", "--shard", shard] + encoders, environment: environment)
            XCTAssert(part.status == 0 && part.output.contains("1 anchors"), part.errors + part.output)
        }
        let shards = (0..<2).map { folder.appendingPathComponent("anchors.shard-000\($0)-of-0002.asif").path }
        let merged = folder.appendingPathComponent("merged.asif").path
        XCTAssertEqual(try StitchCLI.run(["asif", "merge"] + shards + ["-o", merged, "--dtype", "f16"]).status, 0)
        let query = ["--image", street.path, "--k", "2", "--top", "2"] + encoders
        let fromMerged = try StitchCLI.run(["asif", "retrieve", "--index", merged] + query), fromWhole = try StitchCLI.run(["asif", "retrieve", "--index", index] + query)
        XCTAssertEqual(fromMerged.status, 0, fromMerged.errors)
        XCTAssertEqual(fromMerged.output, fromWhole.output)

        let classified = try StitchCLI.run(["asif", "classify", "--index", index, "--labels", "zebra,dog", "--k", "2", zebra.path] + encoders)
        XCTAssertEqual(classified.status, 0, classified.errors)
        XCTAssert(classified.output.hasPrefix("\(zebra.path)\tzebra\t"), classified.output)
        let retrieved = try StitchCLI.run(["asif", "retrieve", "--index", index, "--image", street.path, "--k", "2", "--top", "1"] + encoders)
        XCTAssertEqual(retrieved.output, "\(street.path)\ta dog next to a bicycle and a truck\t" + retrieved.output.split(separator: "\t").last!)
        let evaluated = try StitchCLI.run(["asif", "eval", "--index", index, "--k", "2", anchors] + encoders)
        let report = try JSONSerialization.jsonObject(with: Data(evaluated.output.utf8)) as! [String: Any]
        XCTAssertEqual(report["image_to_text_recall@1"] as? Double, 1, evaluated.output)
        XCTAssertEqual(report["text_to_image_recall@1"] as? Double, 1, evaluated.output)

        let labelled = folder.appendingPathComponent("labelled.jsonl").path
        try """
        {"image": "\(zebra.path)", "label": "zebra"}
        {"image": "\(street.path)", "label": "dog"}
        """.write(toFile: labelled, atomically: true, encoding: .utf8)
        let accuracy = try StitchCLI.run(["asif", "eval", "--index", index, "--k", "2", labelled] + encoders)
        let scores = try JSONSerialization.jsonObject(with: Data(accuracy.output.utf8)) as! [String: Any]
        XCTAssertEqual(scores["top5"] as? Double, 1, accuracy.output)   // two labels: always within the top 5
        XCTAssertEqual(scores["top1"] as? Double, 1, accuracy.output)

        // The wrong encoder for the index is a clear error.
        let wrong = try StitchCLI.run(["asif", "classify", "--index", index, "--labels", "zebra", "--image-encoder", efficientnet.path,
                                       "--text-encoder", efficientnet.path, zebra.path])
        XCTAssertNotEqual(wrong.status, 0)

        let example = Fixtures.repositoryRoot.appendingPathComponent("Examples/asif_classify.yaml").path
        let ran = try StitchCLI.run(["run", example] + Fixtures.allowPrompts + ["--component", "asif=\(index)", "--component", "asif.image_encoder=\(efficientnet.path)",
                                     "--component", "asif.text_encoder=\(minilm.path)", "--input", "image=\(zebra.path)", "--input", "labels=zebra,truck",
                                     "--json", "--no-cache"])
        XCTAssertEqual(ran.status, 0, ran.errors)
        let outputs = try JSONSerialization.jsonObject(with: Data(ran.output.utf8)) as! [String: Any]
        XCTAssertEqual(outputs["label"] as? String, "zebra")
        XCTAssertEqual((outputs["caption"] as? [String])?.first, "a zebra standing in the grass")
    }
}

/// `stitch detect`, `stitch caption --method captioner` and Examples/scene_context.yaml
/// (the real YOLOX-Nano and the tiny fixture captioner).
final class VisionCommandTests: XCTestCase {
    func testDetectCaptionAndSceneContextGraph() throws {
        let detector = Fixtures.yolox
        let street = Fixtures.photo("coffee.png")
        let folder = try Fixtures.temporaryFolder()
        defer { try? FileManager.default.removeItem(at: folder) }

        let drawn = folder.appendingPathComponent("boxes.jpg").path
        let detected = try StitchCLI.run(["detect", "--model", detector.path, street.path, "--draw", drawn])
        XCTAssertEqual(detected.status, 0, detected.errors)
        let lines = detected.output.split(separator: "\n").map { $0.split(separator: "\t").map(String.init) }
        XCTAssertEqual(lines.map { $0[1] }, ["cup", "dining table"])
        XCTAssert(lines.allSatisfy { $0.count == 4 && $0[0] == street.path && $0[3].split(separator: ",").count == 4 }, detected.output)
        let original = try RGBImage(contentsOf: street.path), copy = try RGBImage(contentsOf: drawn)
        XCTAssertEqual([copy.width, copy.height], [original.width, original.height])
        // Each box carries its label, "cup 0.xx", on a band of the class colour at the box's top-left corner.
        func meanDifference(x: Range<Int>, y: Range<Int>) -> Double {
            var total = 0
            for row in y { for column in x { for c in 0..<3 { let i = (row * copy.width + column) * 3 + c; total += abs(Int(copy.pixels[i]) - Int(original.pixels[i])) } } }
            return Double(total) / Double(x.count * y.count * 3)
        }
        let box = lines[0][3].split(separator: ",").map { Int(Double($0)!.rounded()) }
        let scale = max(1, min(original.width, original.height) / 400), labelWidth = (lines[0][1].count + 5) * 6 * scale + 2 * scale
        let labelTop = box[1] >= 13 * scale ? box[1] - 13 * scale : box[1]
        let labelLeft = min(box[0], original.width - labelWidth)
        XCTAssertGreaterThan(meanDifference(x: labelLeft..<labelLeft + labelWidth, y: labelTop..<labelTop + 13 * scale), 40, "the label band is drawn")
        XCTAssertLessThan(meanDifference(x: 0..<original.width, y: 0..<original.height), 10, "the rest is the photo")
        let json = try StitchCLI.run(["detect", "--model", detector.path, "--json", "--threshold", "0.5", street.path])
        let record = try JSONSerialization.jsonObject(with: Data(json.output.utf8)) as! [String: Any]
        XCTAssertEqual((record["detections"] as! [[String: Any]]).map { $0["label"] as! String }, ["cup", "dining table"])
        let refused = try StitchCLI.run(["detect", "--model", detector.path, "--draw", drawn, street.path, street.path])
        XCTAssertNotEqual(refused.status, 0)
        XCTAssert(refused.errors.contains("--draw needs exactly one image"), refused.errors)

        // The captioner's beam-search caption equals transformers' (tiny-vit-gpt2/golden.json, 4 beams, 12 tokens).
        let captioner = try Fixtures.modelWithTokenizer("tiny-vit-gpt2", in: folder).path
        let captioned = try StitchCLI.run(["caption", "--method", "captioner", "--captioner", captioner, "--beams", "4", "--max-tokens", "12", "--json", street.path])
        XCTAssertEqual(captioned.status, 0, captioned.errors)
        let caption = try JSONSerialization.jsonObject(with: Data(captioned.output.utf8)) as! [String: Any]
        let golden = try Fixtures.json("tiny-vit-gpt2/golden.json") as! [String: Any]
        let beams = (golden["settings"] as! [[String: Any]]).first { $0["beams"] as? Int == 4 && $0["end_token"] as? Int == 999 }!
        XCTAssertEqual(caption["tokens"] as? [Int], (beams["outputs"] as! [[Int]])[0])

        // The example graph's caption node (4 beams, 15 tokens) equals the command's defaults.
        let defaults = try StitchCLI.run(["caption", "--method", "captioner", "--captioner", captioner, street.path])
        XCTAssertEqual(defaults.status, 0, defaults.errors)
        let defaultCaption = String(defaults.output.split(separator: "\t").last!.dropLast())
        let example = Fixtures.repositoryRoot.appendingPathComponent("Examples/scene_context.yaml").path
        let ran = try StitchCLI.run(["run", example] + Fixtures.allowPrompts + ["--component", "captioner=\(captioner)", "--component", "detector=\(detector.path)",
                                     "--input", "image=\(street.path)", "--json", "--no-cache"])
        XCTAssertEqual(ran.status, 0, ran.errors)
        let outputs = try JSONSerialization.jsonObject(with: Data(ran.output.utf8)) as! [String: Any]
        XCTAssertEqual(outputs["tags"] as? String, "cup, dining table")
        XCTAssertEqual(outputs["caption"] as? String, defaultCaption)
        XCTAssertEqual(outputs["context"] as? String, "\(defaultCaption). cup, dining table")
        XCTAssertEqual((outputs["detections"] as? [[String: Any]])?.count, 2)
    }

    /// `stitch caption --method captioner` with BLIP, with and without `--prompt`, gives generate()'s captions (tiny-blip/golden.json),
    /// and Examples/socratic_blip.yaml runs BLIP, SigLIP and an LM: its BLIP caption is the command's, its candidates ranked by SigLIP.
    func testBLIPCaptionsAndSocraticBLIPGraph() throws {
        let folder = try Fixtures.temporaryFolder()
        defer { try? FileManager.default.removeItem(at: folder) }
        let blip = Fixtures.url("tiny-blip").path, photo = Fixtures.photo("coffee.png").path
        let golden = ((try Fixtures.json("tiny-blip/golden.json") as! [String: Any])["captions"] as! [String: [String: [String: Any]]])["coffee.png"]!
        for (arguments, key, start) in [(["--strategy", "greedy", "--max-tokens", "16"], "greedy", 1),
                                        (["--beams", "3", "--max-tokens", "16", "--prompt", "a picture of"], "beam prompted", 4)] {
            let run = try StitchCLI.run(["caption", "--method", "captioner", "--captioner", blip, "--json", photo] + arguments)
            XCTAssertEqual(run.status, 0, run.errors)
            let caption = try JSONSerialization.jsonObject(with: Data(run.output.utf8)) as! [String: Any]
            XCTAssertEqual(caption["caption"] as? String, golden[key]!["text"] as? String, key)
            XCTAssertEqual(caption["tokens"] as? [Int], Array((golden[key]!["ids"] as! [Int]).dropFirst(start)), key)
        }
        let refused = try StitchCLI.run(["caption", "--method", "magic", "--prompt", "a picture of", photo])
        XCTAssert(refused.status != 0 && refused.errors.contains("--prompt is for --method captioner"), refused.errors)

        let siglipFolder = try Fixtures.modelWithTokenizer("tiny-siglip", in: folder)
        let lm = try Fixtures.modelWithTokenizer("tiny-gpt2", in: folder).path
        let command = try StitchCLI.run(["caption", "--method", "captioner", "--captioner", blip, "--beams", "3", "--max-tokens", "20", "--prompt", "a picture of", photo])
        let example = Fixtures.repositoryRoot.appendingPathComponent("Examples/socratic_blip.yaml").path
        let ran = try StitchCLI.run(["run", example] + Fixtures.allowPrompts + ["--component", "scorer=\(siglipFolder.path)", "--component", "captioner=\(blip)",
                                     "--component", "lm=\(lm)", "--set", "candidates.n=4", "--set", "candidates.max_tokens=6",
                                     "--input", "image=\(photo)", "--json", "--no-cache"])
        XCTAssertEqual(ran.status, 0, ran.errors)
        let outputs = try JSONSerialization.jsonObject(with: Data(ran.output.utf8)) as! [String: Any]
        XCTAssertEqual(outputs["blip_caption"] as? String, String(command.output.split(separator: "\t").last!.dropLast()))
        XCTAssert((outputs["prompt"] as? String)?.contains("A captioner says this is \(outputs["blip_caption"] as! String).") == true)
        let candidates = try XCTUnwrap(outputs["candidates"] as? [String])
        XCTAssertEqual(candidates.count, 4)
        let siglip = try SigLIP(folder: siglipFolder)
        let ranked = try siglip.rank(candidates, for: RGBImage(contentsOf: photo))
        XCTAssertEqual(ranked.map { candidates[$0.index] }, candidates, "SigLIP's order")
        for (got, want) in zip(outputs["scores"] as! [Double], ranked.map(\.logit)) { XCTAssertEqual(got, Double(want), accuracy: 1e-5) }
        XCTAssertEqual(outputs["caption"] as? String, candidates[0])
    }

    /// `stitch detect --queries` with the tiny OWL-ViT gives post_process_object_detection's detections (best first), and
    /// Examples/look_for_objects.yaml looks for what its LM proposes: the graph's detections are `stitch detect`'s for
    /// those queries.
    func testOpenVocabularyDetectionAndLookForGraph() throws {
        let folder = try Fixtures.temporaryFolder()
        defer { try? FileManager.default.removeItem(at: folder) }
        let owlvit = try Fixtures.modelWithTokenizer("tiny-owlvit", in: folder).path
        let golden = try Fixtures.json("tiny-owlvit/golden.json") as! [String: Any]
        let queries = golden["queries"] as! [String], threshold = golden["threshold"] as! Double
        let photo = Fixtures.photo("coffee.png")
        let detected = try StitchCLI.run(["detect", "--model", owlvit, "--queries", queries.joined(separator: ","), "--threshold", "\(threshold)", "--json", photo.path])
        XCTAssertEqual(detected.status, 0, detected.errors)
        let found = (try JSONSerialization.jsonObject(with: Data(detected.output.utf8)) as! [String: Any])["detections"] as! [[String: Any]]
        let expected = ((golden["detections"] as! [String: Any])["coffee.png"] as! [[String: Any]]).sorted { ($0["score"] as! Double) > ($1["score"] as! Double) }
        XCTAssertEqual(found.map { $0["label"] as! String }, expected.map { queries[$0["label"] as! Int] })
        for (got, want) in zip(found, expected) { XCTAssertEqual(got["score"] as! Double, want["score"] as! Double, accuracy: 1e-5) }

        let lm = try Fixtures.modelWithTokenizer("tiny-gpt2", in: folder).path
        let example = Fixtures.repositoryRoot.appendingPathComponent("Examples/look_for_objects.yaml").path
        let ran = try StitchCLI.run(["run", example] + Fixtures.allowPrompts + ["--component", "detector=\(owlvit)", "--component", "lm=\(lm)",
                                     "--input", "image=\(photo.path)", "--input", "question=Is there a cup on the table?", "--json", "--no-cache"])
        XCTAssertEqual(ran.status, 0, ran.errors)
        let outputs = try JSONSerialization.jsonObject(with: Data(ran.output.utf8)) as! [String: Any]
        let lookedFor = outputs["looked_for"] as! [String]
        XCTAssertFalse(lookedFor.isEmpty)
        let direct = try StitchCLI.run(["detect", "--model", owlvit, "--queries", lookedFor.joined(separator: ","), "--threshold", "0.1", "--nms", "0.3", "--json", photo.path])
        XCTAssertEqual(direct.status, 0, direct.errors)
        let directFound = (try JSONSerialization.jsonObject(with: Data(direct.output.utf8)) as! [String: Any])["detections"] as! [[String: Any]]
        XCTAssertEqual((outputs["detections"] as! [[String: Any]]).map { $0["label"] as! String }, directFound.map { $0["label"] as! String })
        var tags: [String] = []
        for d in directFound where !tags.contains(d["label"] as! String) { tags.append(d["label"] as! String) }
        XCTAssertEqual(outputs["found"] as? String, tags.joined(separator: ", "))
        XCTAssertNotNil(outputs["answer"] as? String)

        // OWL-ViT needs queries; queries need a detector that takes them (YOLOX has fixed classes).
        let unasked = try StitchCLI.run(["detect", "--model", owlvit, photo.path])
        XCTAssertNotEqual(unasked.status, 0)
        XCTAssert(unasked.errors.contains("finds what text queries name: give --queries"), unasked.errors)
        let refused = try StitchCLI.run(["detect", "--queries", "cat", photo.path])
        XCTAssertNotEqual(refused.status, 0)
        XCTAssert(refused.errors.contains("not a text-queried detector"), refused.errors)
        let yolox = try StitchCLI.run(["run", example] + Fixtures.allowPrompts + ["--component", "detector=\(Fixtures.yolox.path)", "--component", "lm=\(lm)",
                                       "--input", "image=\(photo.path)", "--input", "question=Is there a cup?", "--json", "--no-cache"])
        XCTAssertNotEqual(yolox.status, 0)
        XCTAssert(yolox.errors.contains("queries need a detector that takes text queries"), yolox.errors)
    }
}
