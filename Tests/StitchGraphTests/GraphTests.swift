import Foundation
import StitchModelIO
import StitchTensor
import StitchTestSupport
import XCTest
@testable import StitchGraph

/// A registry with test operations: `slow` sleeps, `count` records how often a component loads.
final class TestRegistry {
    final class Counter: @unchecked Sendable {
        private let lock = NSLock()
        private var value = 0
        var count: Int { lock.withLock { value } }
        func increment() { lock.withLock { value += 1 } }
    }

    let loads = Counter(), runs = Counter()
    let registry = OperationRegistry()

    init() {
        let (loads, runs) = (loads, runs)
        registry.register(ComponentKind("fake", load: { _ in loads.increment(); return NSObject() }, identity: { "fake:\($0.model)" }))
        registry.register(Operation("slow", "Sleeps, then echoes its text.", arguments: [.value("text", .text), .value("seconds", .number, default: .number(0.3))], output: .text) { input in
            runs.increment()
            try await Task.sleep(nanoseconds: UInt64(try input.number("seconds") * 1e9))
            return .string(try input.text("text"))
        })
        registry.register(Operation("use", "Needs a fake component.", arguments: [.component("model", kind: "fake"), .value("text", .text)],
                                    output: .record(["text": .text, "length": .number])) { input in
            runs.increment()
            _ = try input.component("model", as: NSObject.self)
            let text = try input.text("text")
            return .object(["text": .string(text.uppercased()), "length": .number(Double(text.count))])
        })
    }
}

final class GraphValidationTests: XCTestCase {
    let registry = TestRegistry().registry

    /// Each malformed graph gives its own message at its own line; all problems come at once.
    func testEveryErrorClassIsReportedWithItsLine() {
        let valid = """
        components:
          m: {kind: fake, model: x}
        inputs:
          name: text
        nodes:
          greet: {op: template, template: "hi {n}", values: {n: $name}}
        outputs:
          out: $greet
        """
        XCTAssertNoThrow(try Graph.parse(valid, file: "ok.yaml", registry: registry))
        let cases: [(String, String, Int)] = [
            ("nodes: [unclosed", "YAML", 2),   // libyaml notices at the end of the input
            ("- a\n- b\n", "a graph is a mapping", 1),
            ("extra: 1\nnodes:\n  a: {op: template, template: x}\noutputs: {o: $a}\n", "unknown section 'extra'", 1),
            ("components:\n  m: {model: x}\nnodes:\n  a: {op: template, template: x}\noutputs: {o: $a}\n", "component 'm' has no kind", 2),
            ("components:\n  m: {kind: warp, model: x}\nnodes:\n  a: {op: template, template: x}\noutputs: {o: $a}\n", "unknown kind 'warp'", 2),
            ("inputs:\n  i: picture\nnodes:\n  a: {op: template, template: x}\noutputs: {o: $a}\n", "unknown type 'picture'", 2),
            ("nodes:\n  a: {template: x}\noutputs: {o: $a}\n", "no 'op'", 2),
            ("nodes:\n  a: {op: templat, template: x}\noutputs: {o: $a}\n", "unknown op 'templat'", 2),
            ("nodes:\n  a: {op: template}\noutputs: {o: $a}\n", "missing argument 'template'", 2),
            ("nodes:\n  a: {op: template, template: x, colour: red}\noutputs: {o: $a}\n", "no argument 'colour'", 2),
            ("nodes:\n  a: {op: top_k, scores: {}, k: many}\noutputs: {o: $a}\n", "'k' must be number", 2),
            ("inputs:\n  n: number\nnodes:\n  a: {op: split, text: $n}\noutputs: {o: $a}\n", "'text' must be text, but '$n' is number", 4),
            ("nodes:\n  a: {op: template, template: $ghost}\noutputs: {o: $a}\n", "'$ghost' is neither an input nor a node", 2),
            ("components:\n  m: {kind: fake, model: x}\nnodes:\n  a: {op: use, model: m, text: x}\n  b: {op: split, text: $a.colour}\noutputs: {o: $b}\n", "has no field 'colour'", 5),
            ("nodes:\n  a: {op: split, text: $b}\n  b: {op: join, texts: $a}\noutputs: {o: $a}\n", "cycle through nodes a -> b", 2),
            ("nodes:\n  a: {op: template, template: x}\n", "needs an 'outputs' mapping", 1),
            ("nodes:\n  a: {op: template, template: x}\noutputs:\n  o: $nowhere\n", "output 'o': '$nowhere' is neither", 4),
            ("nodes:\n  a: {op: use, model: m, text: x}\noutputs: {o: $a}\n", "'model' must name a component of kind fake", 2),
            ("nodes:\n  a: {op: template, template: {file: no/such/prompt.txt}}\noutputs: {o: $a}\n", "file 'no/such/prompt.txt' not found", 2),
        ]
        for (yaml, message, line) in cases {
            do {
                _ = try Graph.parse(yaml, file: "bad.yaml", registry: registry)
                XCTFail("accepted a graph that should fail with '\(message)':\n\(yaml)")
            } catch GraphError.invalid(let diagnostics) {
                let match = diagnostics.first { $0.message.contains(message) }
                XCTAssertNotNil(match, "expected '\(message)', got \(diagnostics)")
                XCTAssertEqual(match?.line, line, "\(message): \(diagnostics)")
                XCTAssert(diagnostics.allSatisfy { $0.description.hasPrefix("bad.yaml:") })
            } catch {
                XCTFail("unexpected error \(error)")
            }
        }
        // Several problems in one file are all reported.
        let many = "nodes:\n  a: {op: nope}\n  b: {op: template}\noutputs: {o: $c}\n"
        XCTAssertThrowsError(try Graph.parse(many, file: "m.yaml", registry: registry)) { error in
            guard case GraphError.invalid(let diagnostics) = error else { return XCTFail("\(error)") }
            XCTAssertEqual(diagnostics.count, 3, "\(diagnostics)")
        }
    }

    /// Random edits and truncations of a valid graph never crash the parser: it returns a graph or diagnostics.
    /// Hostile sizes: an alias bomb (9^9 values in a few hundred bytes), an endless file, and a 20,000-node chain,
    /// which is validated and run in time linear in its size (it was quadratic).
    func testHostileSizesAreRefusedOrLinear() async throws {
        var anchors = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
        for level in 1..<9 { anchors.append("a\(level): &a\(level) [" + Array(repeating: "*a\(level - 1)", count: 9).joined(separator: ", ") + "]") }
        let bomb = "components: {}\ninputs: {word: text}\nanchors:\n" + anchors.map { "  " + $0 }.joined(separator: "\n")
            + "\nnodes:\n  up: {op: slow, text: $word, extra: *a8}\noutputs: {up: $up}\n"
        XCTAssertThrowsError(try Graph.parse(bomb, file: "bomb.yaml", registry: registry)) { error in
            XCTAssertEqual("\(error)", "bomb.yaml:1:1: the document stands for more than 2000000 YAML values once its aliases are expanded (STITCH_MAX_GRAPH_VALUES raises it)")
        }
        XCTAssertThrowsError(try Graph.load("/dev/zero", registry: registry)) { XCTAssert("\($0)".contains("may be at most 8388608 bytes"), "\($0)") }

        let count = 20_000
        let chain = "inputs: {word: text}\nnodes:\n  n0: {op: slow, text: $word, seconds: 0}\n"
            + (1..<count).map { "  n\($0): {op: slow, text: $n\($0 - 1), seconds: 0}\n" }.joined()
            + "outputs: {last: $n\(count - 1)}\n"
        let graph = try Graph.parse(chain, file: "chain.yaml", registry: registry)
        XCTAssertEqual(graph.order, (0..<count).map { "n\($0)" })
        let outputs = try await GraphRunner(graph: graph, registry: registry, cacheFolder: nil).run(inputs: ["word": .string("w")])
        XCTAssertEqual(outputs, ["last": .string("w")])
    }

    func testFuzzedYAMLNeverCrashes() {
        let source = Array("""
        components:
          m: {kind: fake, model: x}
        inputs:
          name: text
          count: number
        nodes:
          greet: {op: template, template: "hi {n} {{x}}", values: {n: $name, c: [$count, 1, "two"]}}
          parts: {op: split, text: $greet, separator: " "}
          upper: {op: use, model: m, text: $greet}
          joined: {op: join, texts: $parts}
        outputs:
          out: $joined
          len: $upper.length
        """.utf8)
        var generator = SystemRandomNumberGenerator()
        let alphabet = Array(" :{}[]$.-\n\t\"'#&*!|>%@`a1".utf8)
        var accepted = 0, rejected = 0
        for round in 0..<600 {
            var bytes = round % 3 == 0 ? Array(source.prefix(Int.random(in: 0...source.count, using: &generator))) : source
            for _ in 0..<Int.random(in: 0...4, using: &generator) where !bytes.isEmpty {
                let position = Int.random(in: 0..<bytes.count, using: &generator)
                switch Int.random(in: 0..<3, using: &generator) {
                case 0: bytes[position] = alphabet.randomElement(using: &generator)!
                case 1: bytes.remove(at: position)
                default: bytes.insert(alphabet.randomElement(using: &generator)!, at: position)
                }
            }
            do {
                _ = try Graph.parse(String(decoding: bytes, as: UTF8.self), file: "fuzz.yaml", registry: registry)
                accepted += 1
            } catch GraphError.invalid(let diagnostics) {
                XCTAssertFalse(diagnostics.isEmpty)
                rejected += 1
            } catch {
                XCTFail("round \(round): unexpected \(error)")
            }
        }
        print("fuzz: \(accepted) accepted, \(rejected) rejected with diagnostics, no crash")
        XCTAssertGreaterThan(rejected, 0)
    }

    func testTemplateFilling() throws {
        let values = Value.object(["a": .string("x"), "list": .array([.string("p"), .string("q")]), "n": .number(2)])
        XCTAssertEqual(try fillTemplate("{a}-{list}-{n} {{literal}}", values: values, node: "t"), .string("x-p, q-2 {literal}"))
        XCTAssertThrowsError(try fillTemplate("{missing}", values: values, node: "t")) { XCTAssert("\($0)".contains("{missing}")) }
        XCTAssertThrowsError(try fillTemplate("{a", values: values, node: "t"))
    }

    /// {lines:} and {jsonl:} files beside the graph, paths into results ($node.field.0), settings, and runs of only what
    /// the wanted outputs need.
    func testListFilesPathsSettingsAndPartialRuns() async throws {
        let folder = try Fixtures.temporaryFolder()
        defer { try? FileManager.default.removeItem(at: folder) }
        try "  red \n\n green\nblue\n".write(to: folder.appendingPathComponent("colours.txt"), atomically: true, encoding: .utf8)
        try "{\"name\": \"a\"}\n\n{\"name\": \"b\", \"x\": 0.12345679104328156}\n".write(to: folder.appendingPathComponent("pool.jsonl"), atomically: true, encoding: .utf8)
        let file = folder.appendingPathComponent("g.yaml").path
        let standard = OperationRegistry.standard()
        let yaml = """
            nodes:
              colours: {op: split, text: "x", separator: ","}
              listed: {op: join, texts: {lines: colours.txt}, separator: "|"}
              names: {op: pluck, values: {jsonl: pool.jsonl}, field: name}
              second: {op: template, template: "{n}", values: {n: $names.1}}
              missing: {op: template, template: "[{n}]", values: {n: $names.7}}
            outputs: {listed: $listed, second: $second, missing: $missing, names: $names}
            """
        let graph = try Graph.parse(yaml, file: file, registry: standard)
        let runner = GraphRunner(graph: graph, registry: standard, cacheFolder: nil)
        let outputs = try await runner.run(inputs: [:])
        XCTAssertEqual(outputs["listed"], .string("red|green|blue"))
        XCTAssertEqual(outputs["second"], .string("b"))
        XCTAssertEqual(outputs["missing"], .string("[null]"), "an item past the end is null")
        let partial = try await runner.run(inputs: [:], outputs: ["listed"])
        XCTAssertEqual(partial, ["listed": .string("red|green|blue")])
        XCTAssertEqual(runner.stats.executed, 4 + 1, "the partial run computed `listed` alone")

        // A setting replaces an argument (what only it read no longer runs); wrong names and types are refused.
        let set = try graph.setting("second", "values", to: .object(["n": .string("set")]))
        let setRunner = GraphRunner(graph: set, registry: standard, cacheFolder: nil)
        let setOutputs = try await setRunner.run(inputs: [:], outputs: ["second"])
        XCTAssertEqual(setOutputs, ["second": .string("set")])
        XCTAssertEqual(setRunner.stats.executed, 1)
        XCTAssertThrowsError(try graph.setting("nobody", "text", to: .string("x"))) { XCTAssert("\($0)".contains("no node 'nobody'"), "\($0)") }
        XCTAssertThrowsError(try graph.setting("listed", "glue", to: .string("x"))) { XCTAssert("\($0)".contains("join has no argument 'glue'"), "\($0)") }
        XCTAssertThrowsError(try graph.setting("listed", "texts", to: .number(3))) { XCTAssert("\($0)".contains("'texts' must be texts"), "\($0)") }
        do {
            _ = try await runner.run(inputs: [:], outputs: ["nothing"])
            XCTFail("an unknown output ran")
        } catch {
            XCTAssert("\(error)".contains("unknown output 'nothing'"), "\(error)")
        }

        // A path that leads nowhere, and a JSON Lines file with a bad line, are found before anything runs.
        try "{\"name\": \"a\"}\nnot json\n".write(to: folder.appendingPathComponent("bad.jsonl"), atomically: true, encoding: .utf8)
        for (text, message) in [("nodes:\n  a: {op: split, text: x}\n  b: {op: join, texts: $a.first}\noutputs: {o: $b}\n", "has no field 'first'"),
                                ("nodes:\n  a: {op: pluck, values: {jsonl: bad.jsonl}, field: name}\noutputs: {o: $a}\n", "file 'bad.jsonl': line 2 is not JSON")] {
            XCTAssertThrowsError(try Graph.parse(text, file: file, registry: standard)) { XCTAssert("\($0)".contains(message), "\($0)") }
        }
        // Numbers read back from JSON are the numbers written (what the cache relies on).
        XCTAssertEqual(try Value.parse(json: Value.number(0.12345679104328156).canonicalJSON), .number(0.12345679104328156))
    }

    func testSHA256KnownVectors() {
        XCTAssertEqual(SHA256.hex(Array("".utf8)), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
        XCTAssertEqual(SHA256.hex(Array("abc".utf8)), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
        XCTAssertEqual(SHA256.hex(Array(String(repeating: "a", count: 1000).utf8)),
                       "41edece42d63e8d9bf515a9ba6932e1c20cbc9f5a5d134645adb5db1b9737ea3")
        // Fed in uneven pieces (as a download is checked), the digest is the same.
        let bytes = (0..<10_007).map { UInt8(truncatingIfNeeded: $0 &* 131) }
        var hasher = SHA256()
        var start = 0
        for size in [1, 63, 64, 65, 700, 3, 128] + Array(repeating: 1000, count: 9) where start < bytes.count {
            let end = min(bytes.count, start + size)
            bytes[start..<end].withUnsafeBytes { hasher.update($0) }
            start = end
        }
        bytes[start...].withUnsafeBytes { hasher.update($0) }
        XCTAssertEqual(hasher.finish(), "f8667e661bff83fe7bddc9bff5035e51ef3f3b62e6ba580629ed1833911dbe17")   // hashlib.sha256
    }
}

final class GraphRunnerTests: XCTestCase {
    var cache: URL!
    override func setUpWithError() throws { cache = try Fixtures.temporaryFolder() }
    override func tearDownWithError() throws { try? FileManager.default.removeItem(at: cache) }

    let graph = """
    components:
      m: {kind: fake, model: one}
    inputs:
      word: text
    nodes:
      left: {op: slow, text: $word}
      right: {op: slow, text: "right"}
      upper: {op: use, model: m, text: $left}
      both: {op: join, texts: [$upper.text, $right], separator: "+"}
    outputs:
      both: $both
      length: $upper.length
    """

    func testParallelNodesOverlapAndSecondRunComesFromTheCache() async throws {
        let test = TestRegistry()
        let parsed = try Graph.parse(graph, file: "g.yaml", registry: test.registry)
        let runner = GraphRunner(graph: parsed, registry: test.registry, cacheFolder: cache)
        let outputs = try await runner.run(inputs: ["word": .string("left")])
        XCTAssertEqual(outputs, ["both": .string("LEFT+right"), "length": .number(4)])
        let trace = runner.trace
        let (left, right) = (trace.first { $0.node == "left" }!, trace.first { $0.node == "right" }!)
        print("left \(left.start)-\(left.end) s, right \(right.start)-\(right.end) s")
        XCTAssertLessThan(max(left.start, right.start), min(left.end, right.end), "independent slow nodes must overlap")
        XCTAssertEqual(runner.stats, .init(executed: 4, cacheHits: 0, componentsLoaded: 1))
        XCTAssertEqual(test.loads.count, 1)

        // A second run (a new runner, as a new process would be) calls no model and loads nothing.
        let again = GraphRunner(graph: parsed, registry: test.registry, cacheFolder: cache)
        let runsBefore = test.runs.count
        let repeated = try await again.run(inputs: ["word": .string("left")])
        XCTAssertEqual(repeated, outputs)
        XCTAssertEqual(again.stats, .init(executed: 0, cacheHits: 4, componentsLoaded: 0))
        XCTAssertEqual(test.runs.count, runsBefore)
        XCTAssertEqual(test.loads.count, 1)
        // Another input reruns what depends on it, and only that.
        let changed = GraphRunner(graph: parsed, registry: test.registry, cacheFolder: cache)
        let other = try await changed.run(inputs: ["word": .string("other")])
        XCTAssertEqual(other["both"], .string("OTHER+right"))
        XCTAssertEqual(changed.stats, .init(executed: 3, cacheHits: 1, componentsLoaded: 1))
        // No partial files are left in the cache.
        XCTAssert(try FileManager.default.contentsOfDirectory(atPath: cache.path).allSatisfy { $0.hasSuffix(".json") })
    }

    func testBadInputsAndCancellation() async throws {
        let test = TestRegistry()
        let parsed = try Graph.parse(graph, file: "g.yaml", registry: test.registry)
        let runner = GraphRunner(graph: parsed, registry: test.registry, cacheFolder: nil)
        for (inputs, message) in [([:], "missing input 'word'"), (["word": Value.number(1)], "must be text"),
                                  (["word": .string("x"), "extra": .string("y")], "unknown input 'extra'")] as [([String: Value], String)] {
            do {
                _ = try await runner.run(inputs: inputs)
                XCTFail("accepted \(inputs)")
            } catch {
                XCTAssert("\(error)".contains(message), "\(error)")
            }
        }
        let task = Task { try await runner.run(inputs: ["word": .string("x")]) }
        try await Task.sleep(nanoseconds: 50_000_000)
        task.cancel()
        do {
            _ = try await task.value
            XCTFail("a cancelled run finished")
        } catch {
            XCTAssert(error is CancellationError, "\(error)")
        }
    }
}

/// The standard registry's model operations on the tiny fixture models.
final class ModelOperationTests: XCTestCase {
    func testModelOperationsOnFixtureModels() async throws {
        let zebra = Fixtures.photo("chelsea.png")
        let folder = try Fixtures.temporaryFolder()
        defer { try? FileManager.default.removeItem(at: folder) }
        for fixture in ["tiny-gpt2", "tiny-clip"] { _ = try Fixtures.modelWithTokenizer(fixture, in: folder) }
        let yaml = """
        components:
          lm: {kind: gpt2, model: \(folder.path)/tiny-gpt2}
          clip: {kind: clip, model: \(folder.path)/tiny-clip}
        inputs:
          image: image
          prompt: text
        nodes:
          image_vector: {op: clip_embed_image, clip: clip, image: $image}
          text_vector: {op: clip_embed_text, clip: clip, text: "a zebra"}
          ranked: {op: clip_rank, clip: clip, image: $image, texts: ["a zebra", "a red truck", "two cats"]}
          labels: {op: clip_classify, clip: clip, image: $image, labels: [zebra, truck, cat]}
          best: {op: top_k, scores: $labels.probabilities, k: 2}
          continued: {op: lm_generate, lm: lm, prompt: $prompt, max_tokens: 12}
          beamed: {op: lm_generate, lm: lm, prompt: $prompt, max_tokens: 6, strategy: beam, beams: 3}
          score: {op: lm_score, lm: lm, prompt: $prompt, continuation: " zebra crossing"}
        outputs:
          image_vector: $image_vector
          text_vector: $text_vector
          ranked: $ranked.texts
          scores: $ranked.scores
          label: $labels.label
          best: $best
          continued: $continued
          beamed: $beamed
          score: $score
        """
        let registry = OperationRegistry.standard()
        let graph = try Graph.parse(yaml, file: "models.yaml", registry: registry)
        let outputs = try await GraphRunner(graph: graph, registry: registry, cacheFolder: nil)
            .run(inputs: ["image": .string(zebra.path), "prompt": .string("A photo of a")])
        for name in ["image_vector", "text_vector"] {
            guard case .array(let items) = outputs[name]! else { return XCTFail(name) }
            XCTAssertEqual(items.count, 16)
            XCTAssertEqual(items.compactMap(\.number).map { $0 * $0 }.reduce(0, +), 1, accuracy: 1e-5)
        }
        XCTAssertEqual(Set(outputs["ranked"]!.strings!), ["a zebra", "a red truck", "two cats"])
        guard case .array(let scores) = outputs["scores"]! else { return XCTFail("scores") }
        XCTAssertEqual(scores.compactMap(\.number), scores.compactMap(\.number).sorted(by: >))
        XCTAssertEqual(outputs["best"]!.strings!.first, outputs["label"]!.string)
        // Greedy text and continuation score agree with transformers (tiny-gpt2/golden.json).
        let golden = try Fixtures.json("tiny-gpt2/golden.json") as! [String: Any]
        let expectedScore = (golden["continuation_logprobs"] as! [[Double]])[0].reduce(0, +)
        XCTAssertEqual(outputs["score"]!.number!, expectedScore, accuracy: 1e-3)
        XCTAssertFalse(outputs["continued"]!.string!.isEmpty)
        XCTAssertFalse(outputs["beamed"]!.string!.isEmpty)
    }

    /// Option `precision` of a model component: bf16, bf16-weights and int8-weights load it with bfloat16 products or
    /// narrower weights (near FP32's result, not equal to it); another value is a validation error naming the component.
    func testComponentPrecisionOption() async throws {
        let folder = try Fixtures.temporaryFolder()
        defer { try? FileManager.default.removeItem(at: folder) }
        _ = try Fixtures.modelWithTokenizer("tiny-clip", in: folder)
        let registry = OperationRegistry.standard()
        func graph(_ precision: String) -> String {
            """
            components:
              full: {kind: clip, model: \(folder.path)/tiny-clip}
              reduced: {kind: clip, model: \(folder.path)/tiny-clip, precision: \(precision)}
            inputs:
              image: image
            nodes:
              a: {op: clip_embed_image, clip: full, image: $image}
              b: {op: clip_embed_image, clip: reduced, image: $image}
            outputs:
              a: $a
              b: $b
            """
        }
        XCTAssertThrowsError(try Graph.parse(graph("fp16"), file: "p.yaml", registry: registry)) {
            XCTAssert("\($0)".contains("component 'reduced': precision is fp32 or bf16 or bf16-weights or int8-weights"), "\($0)")
        }
        let inputs: [String: Value] = ["image": .string(Fixtures.photo("chelsea.png").path)]
        for precision in Precision.allCases where precision != .fp32 {
            let runner = GraphRunner(graph: try Graph.parse(graph(precision.rawValue), file: "p.yaml", registry: registry), registry: registry, cacheFolder: nil)
            if let reason = precision.unavailableReason {
                do { _ = try await runner.run(inputs: inputs); XCTFail("\(precision.rawValue) loaded on a CPU without it") } catch { XCTAssert("\(error)".contains(reason), "\(error)") }
                continue
            }
            let outputs = try await runner.run(inputs: inputs)
            let (full, reduced) = (outputs["a"]!.json as! [Double], outputs["b"]!.json as! [Double])
            let dot = zip(full, reduced).map { $0 * $1 }.reduce(0, +)
            print("graph component at \(precision.rawValue): cosine to fp32 \(dot)")
            XCTAssertGreaterThanOrEqual(dot, 0.999, precision.rawValue)
            XCTAssertNotEqual(full, reduced, precision.rawValue)
        }
    }
}
