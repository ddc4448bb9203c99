import Foundation
import StitchModelIO
import StitchTestSupport
import StitchTensor
import XCTest
@testable import stitch

/// The bench's measurement of one row by one side (Foundation has a `Measurement` too).
private typealias BenchRound = stitch.Measurement

/// Runs the built `stitch` binary the way a user does: arguments, standard input, environment.
enum StitchCLI {
    struct Result {
        let status: Int32
        let output: String
        let errors: String
    }

    static let binary: URL = {
        var folder = Bundle.main.bundleURL
        for _ in 0..<3 {
            let candidate = folder.appendingPathComponent("stitch")
            if FileManager.default.isExecutableFile(atPath: candidate.path) { return candidate }
            folder.deleteLastPathComponent()
        }
        fatalError("stitch binary not found near \(Bundle.main.bundleURL.path)")
    }()

    static func run(_ arguments: [String], input: String? = nil, environment: [String: String] = [:]) throws -> Result {
        let process = Process()
        process.executableURL = binary
        process.arguments = arguments
        process.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 }
        let (out, err, inp) = (Pipe(), Pipe(), Pipe())
        process.standardOutput = out
        process.standardError = err
        process.standardInput = inp
        try process.run()
        if let input { inp.fileHandleForWriting.write(Data(input.utf8)) }
        try inp.fileHandleForWriting.close()
        let output = String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        let errors = String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        process.waitUntilExit()
        return Result(status: process.terminationStatus, output: output, errors: errors)
    }
}

/// The foundation commands: tokenize, preprocess, fetch, bench.
final class CLITests: XCTestCase {
    func stitch(_ arguments: [String], input: String? = nil, environment: [String: String] = [:]) throws -> StitchCLI.Result {
        try StitchCLI.run(arguments, input: input, environment: environment)
    }

    var folder: URL!
    override func setUpWithError() throws { folder = try Fixtures.temporaryFolder() }
    override func tearDownWithError() throws { try? FileManager.default.removeItem(at: folder) }

    /// A Llama-architecture folder (config, safetensors, tokenizer.model) generates from text as transformers does.
    func testGenerateWithALlamaFolder() throws {
        struct Text: Decodable { let prompt: String; let ids, greedy: [Int]; let greedy_text: String }
        struct Golden: Decodable { let text: Text }
        let golden = try JSONDecoder().decode(Golden.self, from: Data(contentsOf: Fixtures.url("tiny-llama3/golden.json"))).text
        let run = try stitch(["generate", "--model", Fixtures.url("tiny-llama3").path, "--prompt", golden.prompt, "--max-tokens", "\(golden.greedy.count)", "--json"])
        XCTAssertEqual(run.status, 0, run.errors)
        let result = try JSONSerialization.jsonObject(with: Data(run.output.utf8)) as! [String: Any]
        XCTAssertEqual(result["tokens"] as? [Int], golden.greedy)
        XCTAssertEqual(result["text"] as? String, golden.greedy_text)
        let models = try stitch(["models", Fixtures.url("tiny-llama3").path])
        XCTAssert(models.output.contains("llama"), models.output + models.errors)

        // The same model with the tokenizer as tokenizer.json (the fast conversion of the same SentencePiece model).
        let copy = folder.appendingPathComponent("tiny-llama3")
        try FileManager.default.copyItem(at: Fixtures.url("tiny-llama3"), to: copy)
        try FileManager.default.removeItem(at: copy.appendingPathComponent("tokenizer.model"))
        try FileManager.default.copyItem(at: Fixtures.url("tokenizer-json/llama2.json"), to: copy.appendingPathComponent("tokenizer.json"))
        let fast = try stitch(["generate", "--model", copy.path, "--prompt", golden.prompt, "--max-tokens", "\(golden.greedy.count)", "--json"])
        XCTAssertEqual(fast.status, 0, fast.errors)
        let fastResult = try JSONSerialization.jsonObject(with: Data(fast.output.utf8)) as! [String: Any]
        XCTAssertEqual(fastResult["tokens"] as? [Int], golden.greedy)
        XCTAssertEqual(fastResult["text"] as? String, golden.greedy_text)
    }

    func testTokenizeArgumentsAndStandardInput() throws {
        let vocabulary = Fixtures.tokenizerFile("gpt2-vocab.json")
        let merges = Fixtures.tokenizerFile("gpt2-merges.txt")
        let clip = Fixtures.tokenizerFile("bpe_simple_vocab_16e6.txt.gz")
        // A Hugging Face-style GPT-2 folder.
        try FileManager.default.createSymbolicLink(at: folder.appendingPathComponent("vocab.json"), withDestinationURL: vocabulary)
        try FileManager.default.createSymbolicLink(at: folder.appendingPathComponent("merges.txt"), withDestinationURL: merges)
        let gpt2 = try stitch(["tokenize", "--kind", "gpt2", "--model", folder.path, "Hello world", "Hello, world!"])
        XCTAssertEqual(gpt2.status, 0, gpt2.errors)
        XCTAssertEqual(gpt2.output, "15496 995\n15496 11 995 0\n")
        let piped = try stitch(["tokenize", "--kind", "gpt2", "--model", folder.path, "--decode"], input: "a photo of a zebra\nsecond line\n")
        XCTAssertEqual(piped.output, "a photo of a zebra\nsecond line\n")
        let clipIDs = try stitch(["tokenize", "--kind", "clip", "--model", clip.path, "A photo of a dog."])
        XCTAssertEqual(clipIDs.output, "49406 320 1125 539 320 1929 269 49407\n")
        // A SentencePiece model file (ids as LlamaTokenizer gives them, see SentencePieceTests).
        let llama = try stitch(["tokenize", "--kind", "sentencepiece", "--model", Fixtures.url("sentencepiece/llama.model").path, "Hello world 2024 😀"])
        XCTAssertEqual(llama.output, "1 530 607 531 469 536 271 529 324 530 557 563 557 571 530 598\n", llama.errors)
        // The same model converted to tokenizer.json gives the same ids; in a folder, tokenizer_config.json's flags apply.
        let json = try stitch(["tokenize", "--kind", "tokenizer-json", "--model", Fixtures.url("tokenizer-json/llama2.json").path, "Hello world 2024 😀"])
        XCTAssertEqual(json.output, llama.output, json.errors)
        try FileManager.default.copyItem(at: Fixtures.url("tokenizer-json/llama2.json"), to: folder.appendingPathComponent("tokenizer.json"))
        try Data(#"{"tokenizer_class": "LlamaTokenizerFast", "add_bos_token": false, "add_eos_token": true}"#.utf8).write(to: folder.appendingPathComponent("tokenizer_config.json"))
        let configured = try stitch(["tokenize", "--kind", "tokenizer-json", "--model", folder.path, "Hello world 2024 😀"])
        XCTAssertEqual(configured.output, "530 607 531 469 536 271 529 324 530 557 563 557 571 530 598 2\n", configured.errors)
        let text = try stitch(["tokenize", "--kind", "tokenizer-json", "--model", folder.path, "--decode", "Hello world"])
        XCTAssertEqual(text.output, "Hello world</s>\n", text.errors)
    }

    func testPreprocessWritesPixelsAndRejectsCorruptImages() throws {
        let output = folder.appendingPathComponent("pixels.safetensors").path
        let image = Fixtures.url("images/gradient.png").path
        let ok = try stitch(["preprocess", "--preset", "clip", "--output", output, image])
        XCTAssertEqual(ok.status, 0, ok.errors)
        let written = try SafetensorsFile(path: output)
        XCTAssertEqual(written.tensors[image]?.shape, [3, 224, 224])
        let golden = try Fixtures.tensors("images/clip_pixels.safetensors")["gradient.png"]!
        XCTAssertEqual(try written.tensor(image).scalars, golden.scalars)

        let corrupt = folder.appendingPathComponent("broken.jpg")
        try Data([0xFF, 0xD8, 0xFF, 0xE0, 1, 2, 3]).write(to: corrupt)
        let second = folder.appendingPathComponent("second.safetensors").path
        let failed = try stitch(["preprocess", "--output", second, image, corrupt.path])
        XCTAssertNotEqual(failed.status, 0)
        XCTAssert(failed.errors.contains(corrupt.path) && failed.errors.contains("corrupt JPEG"), failed.errors)
        XCTAssertFalse(FileManager.default.fileExists(atPath: second), "no output may be written when an input fails")

        // The decoded-size limit is the user's to change: lowered here, so both formats are refused from their headers.
        for photo in [image, Fixtures.photo("rocket.jpg").path] {
            let limited = try stitch(["preprocess", "--output", second, photo], environment: ["STITCH_MAX_IMAGE_PIXELS": "100"])
            XCTAssertNotEqual(limited.status, 0)
            XCTAssert(limited.errors.contains("is more than the 100 this reads (STITCH_MAX_IMAGE_PIXELS raises it)"), "\(limited)")
        }
    }

    /// Of its rounds a bench row keeps the faster time and the lower GEMM floor, whichever round each came from: both
    /// are best times, which only a slow phase of a shared machine lengthens.
    func testBenchRoundsKeepTheFasterTimeAndTheLowerFloor() throws {
        func round(_ seconds: Double, floor: Double?) throws -> BenchRound {
            let floorField = floor.map { #", "gemm_floor": \#($0), "gemm_gflop": 50"# } ?? ""
            return try BenchRound.parse(#"{"seconds": \#(seconds), "peak_mb": 300, "note": "batch 16"\#(floorField)}"#, side: "stitch")
        }
        for (first, second) in [(try round(0.13, floor: 0.24), try round(0.14, floor: 0.11)), (try round(0.14, floor: 0.11), try round(0.13, floor: 0.24))] {
            let kept = BenchRound.faster(BenchRound.faster(nil, first), second)
            XCTAssertEqual(kept.seconds, 0.13)
            XCTAssertEqual(kept.gemmFloor, 0.11)
        }
        XCTAssertEqual(BenchRound.faster(try round(0.2, floor: nil), try round(0.1, floor: 0.3)).gemmFloor, 0.3)
        XCTAssertNil(BenchRound.faster(try round(0.2, floor: nil), try round(0.1, floor: nil)).gemmFloor)
    }

    /// Beside the busy loop, 2 threads are SLOWER than 1 only when slower by more than either side's rounds spread (the
    /// noise of the same work measured again); with one round every difference counts. Each side's rounds are shown.
    func testContendedThreadsSlowerOnlyBeyondTheRoundsSpread() throws {
        func rounds(_ times: [Double]) throws -> BenchRound {
            try times.reduce(nil) { kept, seconds in
                BenchRound.faster(kept, try BenchRound.parse(#"{"seconds": \#(seconds), "peak_mb": 300, "note": "per token"}"#, side: "stitch"))
            }!
        }
        XCTAssertEqual(try rounds([0.0242, 0.0252, 0.0238]).slowestRound, 0.0252)
        XCTAssertEqual(try rounds([0.0242]).spread, 0)
        func comparison(_ many: [Double], _ one: [Double]) throws -> String {
            try Bench.threadComparison(rounds(many), oneThread: rounds(one), threads: 2)
        }
        // 2 threads 2.9% slower than 1; the 1-thread rounds 5% apart: a tie.
        let tie = try comparison([0.0240, 0.0245], [0.0240 / 1.029, 0.0240 / 1.029 * 1.05])
        XCTAssert(tie.contains("1.03x its time (a tie: within the rounds' 5.0% spread)"), tie)
        // The same 2.9% beyond rounds 1% apart, and with one round a side.
        let slower = try comparison([0.0240, 0.0241], [0.0240 / 1.029, 0.0240 / 1.029 * 1.01])
        XCTAssert(slower.contains("(SLOWER, beyond the rounds' 1.0% spread)"), slower)
        XCTAssert(try comparison([0.0240], [0.0239]).hasSuffix("(SLOWER)"))
        let faster = try comparison([0.0150, 0.0170], [0.0240, 0.0241])
        XCTAssert(faster.hasSuffix("0.62x its time"), faster)
        XCTAssertEqual(Bench.roundRanges([("stitch", try rounds([0.0197, 0.0188, 0.0210])), ("at 1 thread", nil), ("reference", try rounds([0.0418]))]),
                       "each side's rounds (ms): stitch 18.80-21.00, reference 41.80-41.80")
    }

    func testFetchOfflineErrorAndBenchRows() throws {
        let fetch = try stitch(["fetch", "org/absent-model"], environment: ["HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": folder.path])
        XCTAssertNotEqual(fetch.status, 0)
        XCTAssert(fetch.errors.contains("org/absent-model") && fetch.errors.contains("HF_HUB_OFFLINE"), fetch.errors)

        let bench = try stitch(["bench", "--seconds", "0", "--rows", "gemm"])
        XCTAssertEqual(bench.status, 0, bench.errors)
        XCTAssert(bench.output.contains("CLIP-B/32 vision mlp fc1") && bench.output.contains("GPT-2 LM head decode"), bench.output)
        XCTAssert(bench.output.contains("lowest ratio"), bench.output)
        // The report names its machine: the CPU model (on x86, with its family and model numbers), the kernels' variant
        // and the BF16 instructions.
        let x86 = (try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8))?.contains("cpu family") == true
        let numbers = x86 ? #" \(family \d+ model \d+\)"# : ""
        XCTAssertNotNil(bench.output.range(of: #"CPU: .+"# + numbers + #", kernels (x86-64-v4|x86-64-v3|baseline), BF16 instructions: "#,
                                           options: .regularExpression), bench.output)
        XCTAssertNotNil(bench.output.range(of: #"OpenBLAS .+, \w+ kernels"#, options: .regularExpression), bench.output)
        XCTAssertFalse(bench.output.contains("models:"), "only the selected rows run")

        // The Stitch side of the qwen2 rows, on the tiny Qwen2 fixture.
        for (row, count) in [("qwen2-prefill", 1), ("qwen2-decode", 32)] {
            let side = try stitch(["_bench-row", row, "--qwen2", Fixtures.url("tiny-qwen2").path, "--seconds", "0"])
            XCTAssertEqual(side.status, 0, side.errors)
            let measured = try JSONSerialization.jsonObject(with: Data(side.output.utf8)) as! [String: Any]
            XCTAssertEqual((measured["output"] as? [Int])?.count, count, side.output)
            XCTAssertGreaterThan(measured["seconds"] as? Double ?? 0, 0)
        }
        // A decoding row at bf16-weights says how many of its tokens are FP32's.
        if Precision.bf16Weights.unavailableReason == nil {
            let side = try stitch(["_bench-row", "qwen2-decode", "--qwen2", Fixtures.url("tiny-qwen2").path, "--seconds", "0", "--precision", "bf16-weights"])
            XCTAssertEqual(side.status, 0, side.errors)
            let agreement = (try JSONSerialization.jsonObject(with: Data(side.output.utf8)) as! [String: Any])["agreement"] as? String ?? ""
            XCTAssertNotNil(agreement.range(of: #"^([0-9]|[12][0-9]|3[0-2]) of 32 output values as at fp32$"#, options: .regularExpression), agreement)
            print("tiny Qwen2 at bf16-weights: \(agreement)")
        }
        // A CLIP row at bf16 compares zero-shot top-1 on the test photos with FP32's.
        let clip = folder.appendingPathComponent("tiny-clip-with-tokenizer")
        try FileManager.default.createDirectory(at: clip, withIntermediateDirectories: true)
        for file in ["config.json", "model.safetensors"] {
            try FileManager.default.copyItem(at: Fixtures.url("tiny-clip/\(file)"), to: clip.appendingPathComponent(file))
        }
        try FileManager.default.copyItem(at: Fixtures.url("tokenizers/bpe_simple_vocab_16e6.txt.gz"), to: clip.appendingPathComponent("bpe_simple_vocab_16e6.txt.gz"))
        let labels = Fixtures.url("yolox-nano-coco/coco_labels.txt").path
        let clipRow = try stitch(["_bench-row", "clip-image-1", "--clip", clip.path, "--seconds", "0", "--precision", "bf16",
                                  "--photos", Fixtures.url("photos").path, "--labels", labels])
        XCTAssertEqual(clipRow.status, 0, clipRow.errors)
        let agreement = (try JSONSerialization.jsonObject(with: Data(clipRow.output.utf8)) as! [String: Any])["agreement"] as? String ?? ""
        XCTAssertNotNil(agreement.range(of: #"feature cosine to fp32 >= (0\.9\d+|1\.00000) over 1 rows; zero-shot top-1 as at fp32 on [0-4] of 4 photos \(80 labels; closest fp32 lead \d"#,
                                        options: .regularExpression), agreement)
        print("tiny CLIP at bf16: \(agreement)")

        // The two sides take turns for --rounds, and the reference gets only the options it knows (not the zero-shot
        // check's): a stand-in interpreter records its arguments and answers as bench_reference.py does.
        let interpreter = folder.appendingPathComponent("fake-python")
        let record = folder.appendingPathComponent("reference-arguments.txt")
        try """
        #!/bin/sh
        [ "$1" = "-c" ] && exit 0
        echo "$@" >> '\(record.path)'
        echo '{"seconds": 1.0, "peak_mb": 1, "note": "stand-in"}'
        """.write(to: interpreter, atomically: true, encoding: .utf8)
        try FileManager.default.setAttributes([.posixPermissions: 0o755], ofItemAtPath: interpreter.path)
        let turns = try stitch(["bench", "--seconds", "0", "--rows", "clip-image-1", "--clip", clip.path, "--python", interpreter.path,
                                "--rounds", "2", "--work-dir", folder.appendingPathComponent("bench").path])
        XCTAssertEqual(turns.status, 0, turns.errors)
        XCTAssertNotNil(turns.output.range(of: #"clip-image-1 +batch 1 +[0-9.]+ +1000\.00 "#, options: .regularExpression), turns.output)
        let calls = try String(contentsOf: record, encoding: .utf8).split(separator: "\n").filter { $0.contains("clip-image-1") }
        XCTAssertEqual(calls.count, 2, "one reference run a round")
        XCTAssertFalse(calls.contains { $0.contains("--photos") || $0.contains("--labels") }, "\(calls)")
        XCTAssertFalse(turns.output.contains("stitch at 1 thread"), "the one-thread runs are for --contended")

        // Beside the busy loop Stitch's side also runs at one thread, in the same rounds, and the row compares the two.
        let contended = try stitch(["bench", "--seconds", "0", "--rows", "clip-image-1", "--clip", clip.path, "--python", interpreter.path,
                                    "--contended", "--threads", "2", "--work-dir", folder.appendingPathComponent("bench").path])
        XCTAssertEqual(contended.status, 0, contended.errors)
        XCTAssert(contended.output.contains("contended: a busy loop"), contended.output)
        XCTAssertNotNil(contended.output.range(of: #"\n +stitch at 1 thread [0-9.]+ ms: 2 threads take [0-9.]+x its time"#, options: .regularExpression),
                        contended.output)

        let noRounds = try stitch(["bench", "--rows", "gemm", "--rounds", "0"])
        XCTAssertNotEqual(noRounds.status, 0)
        XCTAssert(noRounds.errors.contains("--rounds must be at least 1, got 0"), noRounds.errors)

        let unknown = try stitch(["bench", "--rows", "gemm,warp-drive"])
        XCTAssertNotEqual(unknown.status, 0)
        XCTAssert(unknown.errors.contains("unknown bench rows: warp-drive"), unknown.errors)

        // Without a Python reference the Stitch side still runs and says why the other side is missing.
        do {
            let efficientnet = try Fixtures.realModel("efficientnet-lite0")
            let alone = try stitch(["bench", "--seconds", "0", "--rows", "efficientnet", "--efficientnet", efficientnet.path,
                                    "--python", "/nonexistent/python3", "--rounds", "2"])
            XCTAssertEqual(alone.status, 0, alone.errors)
            XCTAssert(alone.output.contains("best of 2 rounds, the sides taking turns"), alone.output)
            XCTAssert(alone.output.range(of: #"efficientnet +batch 1"#, options: .regularExpression) != nil && alone.output.contains("n/a"), alone.output)
            XCTAssert(alone.output.contains("reference unavailable: /nonexistent/python3 cannot import torch"), alone.output)
            let skipped = try stitch(["bench", "--seconds", "0", "--rows", "minilm", "--python", "/nonexistent/python3"])
            XCTAssert(skipped.output.contains("skipped: needs --minilm"), skipped.output)
        }
    }
}
