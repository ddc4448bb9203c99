import ArgumentParser
import CBLAS
import CStitchKernels
import Foundation
import StitchTensor

/// Benchmarks printed as ratios against the reference, run side by side on this machine:
/// the tensor core's products against raw OpenBLAS, then each model row against the
/// Python reference (same weights, same thread count), each side in its own process.
struct Bench: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Measure Stitch against its references and print the ratios.",
        discussion: """
        Model rows use real-size architectures: CLIP ViT-B/32, GPT-2 small, a ViT-B/16 + GPT-2 captioner, \
        OWL-ViT B/32, a Qwen2.5-0.5B-shaped Qwen2, BLIP-base captioning and SigLIP-base with random weights written once into \
        --work-dir by the Python reference (unless --clip / --gpt2 / --captioner / --owlvit / --qwen2 / --blip / --siglip name real folders), the real MiniLM and EfficientNet-Lite0 folders given by --minilm / --efficientnet, and the real
        YOLOX-Nano (--yolox, on --image). The reference side needs python3 with torch, transformers, \
        sentence-transformers, efficientnet-lite-pytorch, onnxruntime and opencv (Tests/Fixtures/requirements.txt); \
        the qwen2-*-llama.cpp rows need llama-cpp-python and gguf as well.
        """)

    @Option(help: "Minimum seconds spent timing each side of each row.")
    var seconds = 1.0

    @Option(help: "Rounds per model row, the two sides taking turns; each side's best round counts. On a shared machine memory-bound phases come and go (other tenants), and a side measured only in a slow phase would look slower than it is.")
    var rounds = 1

    @Option(help: "Threads for both sides (OpenBLAS and parallel loops; torch.set_num_threads).")
    var threads = Parallel.cores

    /// The model rows' precision; bf16 runs the reference under torch's bfloat16 autocast (bf16-weights and int8-weights:
    /// at FP32), and each row also reports how far the precision moved Stitch's result from its fp32 result.
    @OptionGroup var precisionOptions: PrecisionOptions
    var precision: Precision { precisionOptions.precision }

    /// What the model table compares at the bench's precision.
    var referenceNote: String {
        switch precision {
        case .fp32: return ""
        case .bf16: return "; bf16: Stitch's bfloat16 products against torch.autocast(\"cpu\", dtype=torch.bfloat16)"
        case .bf16Weights: return "; bf16-weights: Stitch's bfloat16 weights (products in FP32) against the reference at FP32"
        case .int8Weights: return "; int8-weights: Stitch's 8-bit integer weights (products in FP32) against the reference at FP32"
        }
    }

    @Flag(help: "Measure beside one CPU-bound process: a busy loop pinned to CPU 0 for the whole bench, as on a shared machine; Stitch's side runs at one thread too, in the same rounds (more threads slower by more than the rounds' spread are flagged SLOWER).")
    var contended = false

    @Option(help: "Comma-separated rows to run (default: all but \(BenchRow.allCases.filter(\.isOptIn).map(\.rawValue).joined(separator: ", "))): gemm, \(BenchRow.allCases.map(\.rawValue).joined(separator: ", ")).")
    var rows: String?

    @Option(help: "Where the random-weight CLIP and GPT-2 folders are kept between runs.")
    var workDir = FileManager.default.temporaryDirectory.appendingPathComponent("stitch-bench").path

    @Option(help: "The Python interpreter of the reference side.")
    var python = "python3"

    @Option(help: "A CLIP folder to use instead of random ViT-B/32 weights.")
    var clip: String?

    @Option(help: "A GPT-2 folder to use instead of random GPT-2 small weights.")
    var gpt2: String?

    @Option(help: "The all-MiniLM-L6-v2 folder (the row is skipped without it).")
    var minilm: String?

    @Option(help: "The EfficientNet-Lite0 folder (the row is skipped without it).")
    var efficientnet: String?

    @Option(help: "A ViT-GPT2 captioner folder to use instead of random nlpconnect/vit-gpt2-image-captioning-sized weights.")
    var captioner: String?

    @Option(help: "An OWL-ViT folder to use instead of random google/owlvit-base-patch32-sized weights.")
    var owlvit: String?

    @Option(help: "A Qwen2 folder to use instead of random Qwen2.5-0.5B-sized weights (the qwen2 rows).")
    var qwen2: String?

    @Option(help: "A BLIP captioning folder to use instead of random Salesforce/blip-image-captioning-base-sized weights.")
    var blip: String?

    @Option(help: "A SigLIP folder to use instead of random google/siglip-base-patch16-224-sized weights.")
    var siglip: String?

    @Option(help: "The YOLOX-Nano folder (ONNX file and class names) of the yolox row.")
    var yolox = "Tests/Fixtures/yolox-nano-coco"

    @Option(help: "The photo the yolox row detects in.")
    var image = "Tests/Fixtures/photos/coffee.png"

    @Option(help: "Photos (a folder of PNG and JPEG files) the CLIP rows classify zero-shot at a reduced --precision, top-1 compared with FP32's.")
    var photos = "Tests/Fixtures/photos"

    @Option(help: "The class names (a text file, one a line) of that zero-shot classification, each as \"a photo of a NAME.\".")
    var labels = "Tests/Fixtures/yolox-nano-coco/coco_labels.txt"

    @Option(help: "GPT-2 and CLIP tokenizer files copied into the random-weight folders (the magic row decodes text).")
    var tokenizers = "Tests/Fixtures/tokenizers"

    func run() throws {
        BLAS.configureThreads(threads)
        let busyLoop = contended ? try Self.startBusyLoop() : nil
        defer { busyLoop?.terminate(); busyLoop?.waitUntilExit() }
        guard rounds >= 1 else { throw ValidationError("--rounds must be at least 1, got \(rounds)") }
        let selected = rows.map { Set($0.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }) }
        if let selected {
            let unknown = selected.subtracting(["gemm"] + BenchRow.allCases.map(\.rawValue))
            guard unknown.isEmpty else { throw ValidationError("unknown bench rows: \(unknown.sorted().joined(separator: ", "))") }
        }
        // OPENBLAS_CORETYPE overrides OpenBLAS's own choice of kernels (some machines set it); the report says so.
        let coreType = ProcessInfo.processInfo.environment["OPENBLAS_CORETYPE"].map { " (OPENBLAS_CORETYPE=\($0))" } ?? ""
        print("stitch bench: \(threads) thread(s), OpenBLAS \(String(cString: openblas_get_config())), \(String(cString: openblas_get_corename())) kernels\(coreType)")
        print("CPU: \(Self.cpuDescription())")
        if let busyLoop { print("contended: a busy loop (pid \(busyLoop.processIdentifier)) pinned to CPU 0 throughout") }
        if selected?.contains("gemm") ?? true { GemmBench(seconds: seconds, threads: threads).run() }
        let modelRows = BenchRow.allCases.filter { selected?.contains($0.rawValue) ?? !$0.isOptIn }
        if !modelRows.isEmpty { try runModelRows(modelRows) }
    }

    /// `sh -c 'while :; do :; done'` pinned to CPU 0 (taskset), the neighbour of `--contended`.
    static func startBusyLoop() throws -> Process {
        let loop = Process()
        loop.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        loop.arguments = ["taskset", "-c", "0", "sh", "-c", "while :; do :; done"]
        loop.standardOutput = FileHandle.nullDevice
        loop.standardError = FileHandle.nullDevice
        do { try loop.run() } catch { throw ValidationError("--contended needs taskset (util-linux): \(error)") }
        return loop
    }

    /// The CPU's model name with its family and model numbers (a virtual machine may name only "AMD EPYC", whatever
    /// its generation), the variant of Stitch's kernels it runs, and its BF16 instructions (from /proc/cpuinfo), with
    /// whether Linux granted the AMX tiles: machines differ, so every bench report names its own.
    static func cpuDescription() -> String {
        let info = (try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8)) ?? ""
        let name = cpuName(cpuinfo: info)
        let flags = Set((cpuinfoField("flags", in: info) ?? "").split(separator: " ").map(String.init))
        let bf16 = ["avx512_bf16", "amx_bf16"].filter(flags.contains)
        let tiles = !flags.contains("amx_bf16") ? ""
            : stitch_amx_available() != 0 ? " (bf16 products on AMX tiles)" : " (AMX tiles not granted by Linux)"
        return "\(name), kernels \(String(cString: stitch_kernel_variant())), "
            + "BF16 instructions: \(bf16.isEmpty ? "none" : bf16.joined(separator: ", "))\(tiles)"
    }

    /// "AMD EPYC (family 25 model 1)" from /proc/cpuinfo's first processor: its model name, and its x86 family and
    /// model numbers where it has them.
    private static func cpuName(cpuinfo: String) -> String {
        let name = cpuinfoField("model name", in: cpuinfo) ?? "unknown model"
        guard let family = cpuinfoField("cpu family", in: cpuinfo), let model = cpuinfoField("model", in: cpuinfo) else { return name }
        return "\(name) (family \(family) model \(model))"
    }

    /// The value of the first "key : value" line of /proc/cpuinfo whose key is `key` exactly ("model" is not "model name").
    private static func cpuinfoField(_ key: String, in cpuinfo: String) -> String? {
        for line in cpuinfo.split(separator: "\n") {
            let parts = line.split(separator: ":", maxSplits: 1, omittingEmptySubsequences: false)
            if parts.count == 2 && parts[0].trimmingCharacters(in: .whitespaces) == key { return parts[1].trimmingCharacters(in: .whitespaces) }
        }
        return nil
    }

    private func runModelRows(_ modelRows: [BenchRow]) throws {
        let script = try referenceScript()
        let reference = ReferenceSide(python: python, script: script)
        let referenceProblem = reference.availability()
        var folders = BenchFolders(clip: clip, gpt2: gpt2, minilm: minilm, efficientnet: efficientnet, captioner: captioner,
                                   owlvit: owlvit, qwen2: qwen2, blip: blip, siglip: siglip, yolox: existing(yolox), image: existing(image),
                                   photos: existing(photos), labels: existing(labels))
        if [clip, gpt2, captioner, owlvit, qwen2, blip, siglip].contains(where: { $0 == nil }) && modelRows.contains(where: { $0.usesRandomWeights }) {
            if let referenceProblem {
                print("\nrandom-weight CLIP / GPT-2 need the Python reference to write them: \(referenceProblem)")
            } else {
                print("\npreparing random-weight CLIP ViT-B/32, GPT-2 small, ViT-GPT2, OWL-ViT B/32, Qwen2.5-0.5B, BLIP-base and SigLIP-base in \(workDir) (once) ...")
                try reference.prepare(workDir: workDir, tokenizers: tokenizers)
                folders.clip = folders.clip ?? workDir + "/clip-b32"
                folders.gpt2 = folders.gpt2 ?? workDir + "/gpt2-small"
                folders.captioner = folders.captioner ?? workDir + "/vit-gpt2"
                folders.owlvit = folders.owlvit ?? workDir + "/owlvit-b32"
                folders.qwen2 = folders.qwen2 ?? workDir + "/qwen2-0.5b"
                folders.blip = folders.blip ?? workDir + "/blip-base"
                folders.siglip = folders.siglip ?? workDir + "/siglip-base"
            }
        }
        print("")
        print("models: Stitch vs the Python reference, each row in fresh processes (time: best of runs over \(seconds)s"
              + (rounds > 1 ? ", best of \(rounds) rounds, the sides taking turns)" : ")")
              + referenceNote)
        let header = "row".padding(toLength: Self.rowLabelWidth, withPad: " ", startingAt: 0) + "work".padding(toLength: 28, withPad: " ", startingAt: 0)
            + "stitch ms  reference ms  speedup   stitch MB  reference MB"
        print(header)
        print(String(repeating: "-", count: header.count))
        for row in modelRows {
            let label = row.rawValue.padding(toLength: Self.rowLabelWidth, withPad: " ", startingAt: 0)
            guard let arguments = folders.arguments(for: row) else {
                print(label + "skipped: needs --\(row.neededFolders.joined(separator: " and --"))")
                continue
            }
            if row == .magic, let gpt2 = folders.gpt2, !FileManager.default.fileExists(atPath: gpt2 + "/vocab.json") {
                print(label + "skipped: \(gpt2) has no tokenizer files (--tokenizers names the folder to copy them from)")
                continue
            }
            if row.anchorCount != nil, let report = try ASIFBenchData.prepare(row, in: workDir) {
                print(label + "(\(report))")
            }
            func commonArguments(threads: Int) -> [String] {
                arguments + ["--threads", "\(threads)", "--seconds", "\(seconds)", "--work-dir", workDir, "--precision", precision.rawValue]
            }
            func stitchSide(threads: Int) -> [String] {
                ["_bench-row", row.rawValue] + commonArguments(threads: threads) + folders.stitchOnlyArguments(for: row)
            }
            let (common, stitchArguments) = (commonArguments(threads: threads), stitchSide(threads: threads))
            // Beside the busy loop Stitch runs at one thread too, in the same rounds: more threads must never cost time.
            let oneThreadArguments = contended && threads > 1 ? stitchSide(threads: 1) : nil
            var stitch: Measurement?
            var oneThread: Measurement?
            var python: Measurement?
            var referenceFailure: String?
            for _ in 0..<rounds {
                stitch = Measurement.faster(stitch, try Measurement.parse(runChild(Self.executable, stitchArguments), side: "stitch"))
                if let oneThreadArguments {
                    oneThread = Measurement.faster(oneThread, try Measurement.parse(runChild(Self.executable, oneThreadArguments), side: "stitch"))
                }
                guard referenceProblem == nil, referenceFailure == nil else { continue }
                do { python = Measurement.faster(python, try Measurement.parse(runChild(reference.python, [reference.script, row.rawValue] + common), side: "reference")) } catch {
                    referenceFailure = "\(error)".split(separator: "\n").last.map(String.init)
                }
            }
            guard let stitch else { continue }
            var line = label + stitch.note.padding(toLength: 28, withPad: " ", startingAt: 0) + String(format: "%9.2f", stitch.seconds * 1000)
            if let python {
                line += String(format: "  %12.2f  %6.2fx   %9.0f  %12.0f", python.seconds * 1000, python.seconds / stitch.seconds, stitch.peakMB, python.peakMB)
            } else {
                line += String(format: "  %12@  %7@   %9.0f  %12@", "n/a", "", stitch.peakMB, "n/a")
            }
            print(line)
            if let referenceFailure { print(String(repeating: " ", count: Self.rowLabelWidth) + "reference failed: \(referenceFailure)") }
            let indent = String(repeating: " ", count: Self.rowLabelWidth)
            if let oneThread { print(indent + Self.threadComparison(stitch, oneThread: oneThread, threads: threads)) }
            if contended && rounds > 1 {
                print(indent + Self.roundRanges([("stitch", stitch), ("at 1 thread", oneThread), ("reference", python)]))
            }
            if let mine = stitch.output, let theirs = python?.output {
                if mine == theirs {
                    print(indent + "same output on both sides (\(mine.count) values)")
                } else if precision == .fp32 {
                    print(indent + "OUTPUTS DIFFER: stitch \(mine) vs reference \(theirs)")
                } else {
                    // Rounded differently (torch's autocast also runs attention and norms in bfloat16), so only near.
                    print(indent + "\(zip(mine, theirs).filter { $0 == $1 }.count) of \(max(mine.count, theirs.count)) output values the same on both sides")
                }
            }
            if let agreement = stitch.agreement { print(indent + "stitch \(precision.rawValue): \(agreement)") }
            // Rows whose products are a small part of their time print no floor.
            if let floor = stitch.gemmFloor, let gflop = stitch.gemmGFLOP, floor > 0.05 * stitch.seconds {
                print(indent + String(format: "GEMM floor %.2f ms (%.2f GFLOP of products, each shape timed alone): stitch takes %.2fx it", floor * 1000, gflop, stitch.seconds / floor))
            }
        }
        if let referenceProblem { print("reference unavailable: \(referenceProblem)") }
    }

    /// Stitch at `threads` threads against itself at one, beside the busy loop. Where the CPUs left to Stitch are one,
    /// its short regions run on one thread at either count (the pool's dynamic adjustment; long ones still use every
    /// thread), so a row made of them differs only by the machine's noise: a difference within the spread of either
    /// side's rounds is a tie, not SLOWER. With one round there is no spread, and any difference counts.
    static func threadComparison(_ many: Measurement, oneThread one: Measurement, threads: Int) -> String {
        let ratio = many.seconds / one.seconds
        let spread = max(many.spread, one.spread)
        var line = String(format: "stitch at 1 thread %.2f ms: %d threads take %.2fx its time", one.seconds * 1000, threads, ratio)
        if ratio > 1 {
            line += ratio - 1 > spread ? (spread > 0 ? String(format: " (SLOWER, beyond the rounds' %.1f%% spread)", spread * 100) : " (SLOWER)")
                : String(format: " (a tie: within the rounds' %.1f%% spread)", spread * 100)
        }
        return line
    }

    /// Each side's best and slowest round. Beside the busy loop a side's rounds can differ severalfold (threads paused
    /// on the shared core for whole scheduler slices): the range shows how steady a side was, which its best round hides.
    static func roundRanges(_ sides: [(name: String, measured: Measurement?)]) -> String {
        "each side's rounds (ms): " + sides.compactMap { side in
            side.measured.map { side.name + String(format: " %.2f-%.2f", $0.seconds * 1000, $0.slowest * 1000) }
        }.joined(separator: ", ")
    }

    /// The width of the model table's first column: the longest row name (qwen2-prefill-llama.cpp) and a space.
    static let rowLabelWidth = 24

    /// The path when it exists: rows whose default files are absent are skipped.
    private func existing(_ path: String) -> String? { FileManager.default.fileExists(atPath: path) ? path : nil }

    /// bench_reference.py, shipped as a resource of the binary.
    private func referenceScript() throws -> String {
        guard let url = Bundle.module.url(forResource: "bench_reference", withExtension: "py") else {
            throw ValidationError("bench_reference.py is missing from the stitch bundle")
        }
        return url.path
    }

    /// This binary, for the child processes of the Stitch side.
    static var executable: String {
        (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0]
    }
}

/// One measured row of one side, as its worker prints it.
struct Measurement: Decodable {
    let seconds: Double
    let peakMB: Double
    let note: String
    /// Token ids the row produced, for rows whose output both sides must agree on.
    let output: [Int]?
    /// At a reduced precision: how near Stitch's result is to its FP32 result.
    let agreement: String?
    /// Stitch's side: the seconds its matrix products alone take (each shape timed by itself), and their GFLOP.
    var gemmFloor: Double?
    let gemmGFLOP: Double?
    /// Over the rounds kept (`faster`): the slowest round's time, which with `seconds` spans the machine's noise.
    var slowestRound: Double?

    enum CodingKeys: String, CodingKey { case seconds, peakMB = "peak_mb", note, output, agreement, gemmFloor = "gemm_floor", gemmGFLOP = "gemm_gflop" }

    /// The round with the lower time (`earlier` nil: `later`), with the lower GEMM floor of the two: both are best
    /// times, which a slow phase of a shared machine only lengthens. It remembers the slowest round too.
    static func faster(_ earlier: Measurement?, _ later: Measurement) -> Measurement {
        guard let earlier else { return later }
        var faster = later.seconds < earlier.seconds ? later : earlier
        faster.gemmFloor = [earlier.gemmFloor, later.gemmFloor].compactMap { $0 }.min()
        faster.slowestRound = max(earlier.slowest, later.slowest)
        return faster
    }

    /// How much slower than the best round the slowest was (0 for one round): how far apart the same work measured
    /// twice in one run came out, so two sides closer than this are not told apart.
    var spread: Double { slowest / seconds - 1 }

    /// The slowest round's time: `seconds` where only one round was kept.
    var slowest: Double { slowestRound ?? seconds }

    static func parse(_ output: String, side: String) throws -> Measurement {
        guard let line = output.split(separator: "\n").last, let measurement = try? JSONDecoder().decode(Measurement.self, from: Data(line.utf8)) else {
            throw ValidationError("the \(side) worker printed no result: \(output.suffix(400))")
        }
        return measurement
    }
}

/// Runs a child process to completion; its standard output, or an error with its standard error.
func runChild(_ executable: String, _ arguments: [String]) throws -> String {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: executable.contains("/") ? executable : "/usr/bin/env")
    process.arguments = executable.contains("/") ? arguments : [executable] + arguments
    let (out, err) = (Pipe(), Pipe())
    process.standardOutput = out
    process.standardError = err
    try process.run()
    let output = String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
    let errors = String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
    process.waitUntilExit()
    guard process.terminationStatus == 0 else {
        throw ValidationError("\(executable) \(arguments.prefix(2).joined(separator: " ")) failed: \(errors.suffix(600))")
    }
    return output
}

/// The Python reference: bench_reference.py under the chosen interpreter.
struct ReferenceSide {
    let python: String
    let script: String

    /// Why the reference cannot run here, or nil when it can.
    func availability() -> String? {
        do {
            _ = try runChild(python, ["-c", "import torch, transformers"])
            return nil
        } catch {
            return "\(python) cannot import torch and transformers (pip install -r Tests/Fixtures/requirements.txt)"
        }
    }

    func prepare(workDir: String, tokenizers: String) throws {
        _ = try runChild(python, [script, "prepare", workDir, "--tokenizers", tokenizers])
    }
}

/// The model folders each row needs.
struct BenchFolders {
    var clip, gpt2, minilm, efficientnet, captioner, owlvit, qwen2, blip, siglip, yolox, image, photos, labels: String?

    private var byName: [String: String?] {
        ["clip": clip, "gpt2": gpt2, "minilm": minilm, "efficientnet": efficientnet, "captioner": captioner, "owlvit": owlvit,
         "qwen2": qwen2, "blip": blip, "siglip": siglip, "yolox": yolox, "image": image, "photos": photos, "labels": labels]
    }

    /// The row's folder options, or nil when one is missing.
    func arguments(for row: BenchRow) -> [String]? {
        var arguments: [String] = []
        for name in row.neededFolders {
            guard let folder = byName[name] ?? nil else { return nil }
            arguments += ["--\(name)", folder]
        }
        return arguments
    }

    /// The options only Stitch's side of the row takes, those given (the CLIP rows' zero-shot check).
    func stitchOnlyArguments(for row: BenchRow) -> [String] {
        row.stitchOnlyFolders.flatMap { name in (byName[name] ?? nil).map { ["--\(name)", $0] } ?? [] }
    }
}

/// Best time of repeated calls, after a warm-up, over at least `seconds`.
func bestTime(seconds: Double, _ body: () throws -> Void) rethrows -> Double {
    try body()
    var best = Double.infinity
    let start = DispatchTime.now().uptimeNanoseconds
    var runs = 0
    repeat {
        let t0 = DispatchTime.now().uptimeNanoseconds
        try body()
        best = min(best, Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9)
        runs += 1
    } while runs < 3 || Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9 < seconds
    return best
}

struct GemmBench {
    let seconds: Double
    let threads: Int

    /// (label, rows m, inputs k, outputs n): x [m, k] times a PyTorch-layout weight [n, k].
    static let shapes: [(String, Int, Int, Int)] = [
        ("CLIP-B/32 vision patch embed", 49, 3072, 768),
        ("CLIP-B/32 vision q/k/v fused", 50, 768, 2304),
        ("CLIP-B/32 vision out proj", 50, 768, 768),
        ("CLIP-B/32 vision mlp fc1", 50, 768, 3072),
        ("CLIP-B/32 vision mlp fc2", 50, 3072, 768),
        ("CLIP-B/32 vision fc1, batch 16", 800, 768, 3072),
        ("CLIP text q/k/v fused (45x16 tok)", 720, 512, 1536),
        ("CLIP text mlp fc1 (45x16 tok)", 720, 512, 2048),
        ("CLIP text mlp fc2 (45x16 tok)", 720, 2048, 512),
        ("GPT-2 c_attn prefill (64 tok)", 64, 768, 2304),
        ("GPT-2 mlp c_fc prefill (64 tok)", 64, 768, 3072),
        ("GPT-2 mlp c_proj prefill (64 tok)", 64, 3072, 768),
        ("GPT-2 c_attn decode (1 tok)", 1, 768, 2304),
        ("GPT-2 c_fc decode, 45 candidates", 45, 768, 3072),
        ("GPT-2 LM head decode (1 tok)", 1, 768, 50257),
    ]

    func run() {
        print("")
        print("sgemm: tensor core `matmul` (allocates its output) vs raw cblas_sgemm with OpenBLAS's own \(threads) thread(s), into a preallocated buffer")
        let header = "shape".padding(toLength: 38, withPad: " ", startingAt: 0) + "   m     k     n   stitch GF/s   openblas GF/s   ratio"
        print(header)
        print(String(repeating: "-", count: header.count))
        var worst = Double.infinity
        for (label, m, k, n) in Self.shapes {
            let x = Tensor(shape: [m, k], scalars: (0..<m * k).map { Float(($0 * 7919) % 1000) / 1000 - 0.5 })
            let w = Tensor(shape: [n, k], scalars: (0..<n * k).map { Float(($0 * 104_729) % 1000) / 1000 - 0.5 })
            var output = Tensor(zeros: [m, n])
            let stitch = bestTime(seconds: seconds) { _ = matmul(x, w, transposeB: true) }
            // Raw OpenBLAS as a user would call it, threaded by OpenBLAS; Stitch keeps it single-threaded.
            openblas_set_num_threads(Int32(threads))
            defer { openblas_set_num_threads(1) }
            let raw = bestTime(seconds: seconds) {
                x.withUnsafeBufferPointer { xp in
                    w.withUnsafeBufferPointer { wp in
                        output.withUnsafeMutableBufferPointer { op in
                            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, Int32(m), Int32(n), Int32(k), 1,
                                        xp.baseAddress, Int32(k), wp.baseAddress, Int32(k), 0, op.baseAddress, Int32(n))
                        }
                    }
                }
            }
            let flops = 2.0 * Double(m * k * n)
            let ratio = raw / stitch
            worst = min(worst, ratio)
            print(label.padding(toLength: 38, withPad: " ", startingAt: 0)
                  + String(format: "%4d  %4d  %5d   %11.1f   %13.1f   %5.2f", m, k, n, flops / stitch / 1e9, flops / raw / 1e9, ratio))
        }
        print(String(format: "lowest ratio (stitch / openblas throughput): %.2f", worst))
    }
}
