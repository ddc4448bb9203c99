import ArgumentParser
import Foundation
import StitchGraph
import StitchImaging
import StitchMethods
import StitchModels
import StitchTensor

/// The model rows of `stitch bench`; the Python reference implements the same names.
enum BenchRow: String, CaseIterable, ExpressibleByArgument {
    case clipImage1 = "clip-image-1", clipImage16 = "clip-image-16", clipText = "clip-text"
    case gpt2Greedy = "gpt2-greedy", magic, minilm, efficientnet
    case asif10k = "asif-10k", asif100k = "asif-100k", asif1600k = "asif-1.6m"
    case captioner, yolox, owlvit
    case blipCaption = "blip-caption", siglip
    case qwen2Prefill = "qwen2-prefill", qwen2Decode = "qwen2-decode"
    /// The qwen2 rows again, against llama.cpp (llama-cpp-python, an F32 GGUF of the same weights) instead of transformers.
    case qwen2PrefillLlamaCpp = "qwen2-prefill-llama.cpp", qwen2DecodeLlamaCpp = "qwen2-decode-llama.cpp"

    /// Rows run only when named: asif-1.6m writes 10 GB of files and its reference needs 11 GB of memory.
    var isOptIn: Bool { self == .asif1600k }

    /// Anchors in an ASIF row's random index.
    var anchorCount: Int? {
        switch self {
        case .asif10k: return 10_000
        case .asif100k: return 100_000
        case .asif1600k: return 1_600_000
        default: return nil
        }
    }

    /// The folder options (without dashes) the row needs.
    var neededFolders: [String] {
        switch self {
        case .clipImage1, .clipImage16, .clipText: return ["clip"]
        case .gpt2Greedy: return ["gpt2"]
        case .magic: return ["clip", "gpt2"]
        case .minilm: return ["minilm"]
        case .efficientnet: return ["efficientnet"]
        case .asif10k, .asif100k, .asif1600k: return []
        case .captioner: return ["captioner"]
        case .yolox: return ["yolox", "image"]
        case .owlvit: return ["owlvit"]
        case .blipCaption: return ["blip"]
        case .siglip: return ["siglip"]
        case .qwen2Prefill, .qwen2Decode, .qwen2PrefillLlamaCpp, .qwen2DecodeLlamaCpp: return ["qwen2"]
        }
    }

    /// Token ids of the qwen2 rows' prompts, the same on both sides.
    static func qwen2Prompt(_ length: Int, vocabulary: Int) -> [Int] { (0..<length).map { ($0 * 7919 + 13) % min(150_000, vocabulary) } }

    /// The owlvit row's text queries (the Python reference asks the same).
    static let owlvitQueries = ["a photo of a cat", "a dog", "a traffic light", "a stroller", "a red truck"]

    /// Options Stitch's side of the row uses where they are given: the CLIP rows' zero-shot check at a reduced precision.
    var stitchOnlyFolders: [String] {
        switch self {
        case .clipImage1, .clipImage16, .clipText: return ["photos", "labels"]
        default: return []
        }
    }

    var usesRandomWeights: Bool { ["clip", "gpt2", "captioner", "owlvit", "qwen2", "blip", "siglip"].contains { neededFolders.contains($0) } }

    /// The siglip row's 16 texts: 63 token ids and SigLIP's "</s>" (id 1) each, 64 in all as max_length padding makes them.
    static func siglipTexts(_ noise: [Float]) -> [[Int]] {
        (0..<16).map { text in noise[text * 63..<(text + 1) * 63].map { 2 + Int(($0 + 1) * 15_000) } + [1] }
    }
}

/// The Stitch side of one bench row, in its own process so its peak memory is its own.
struct BenchRowWorker: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "_bench-row", abstract: "One row of `stitch bench` (internal).",
                                                    shouldDisplay: false)

    @Argument var row: BenchRow
    @Option var clip: String?
    @Option var gpt2: String?
    @Option var minilm: String?
    @Option var efficientnet: String?
    @Option var captioner: String?
    @Option var yolox: String?
    @Option var owlvit: String?
    @Option var qwen2: String?
    @Option var blip: String?
    @Option var siglip: String?
    @Option var image: String?
    @Option var photos: String?
    @Option var labels: String?
    @Option var threads = Parallel.cores
    @Option var seconds = 1.0
    @Option var workDir: String?
    @Option var precision: Precision = .fp32

    func folder(_ path: String?) throws -> URL {
        guard let path else { throw ValidationError("--\(row.neededFolders.joined(separator: " --")) required for \(row.rawValue)") }
        return URL(fileURLWithPath: path)
    }

    /// Deterministic pseudo-random values in [-1, 1): timing does not depend on them.
    func noise(_ count: Int) -> [Float] {
        var state: UInt64 = 0x9E37_79B9_7F4A_7C15
        return (0..<count).map { _ in
            state = state &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
            return Float(state >> 40) / Float(1 << 23) - 1
        }
    }

    func run() throws {
        BLAS.configureThreads(threads)
        let measured = try Precision.$loading.withValue(precision) { try measure(once: false) }
        var result: [String: Any] = ["seconds": measured.seconds, "peak_mb": peakResidentMB(), "note": measured.note]
        result["output"] = measured.output
        if precision != .fp32 {
            // How far the reduced precision moved the row's result from FP32's (computed once, untimed).
            let exact = try measure(once: true)
            result["agreement"] = ([Self.agreement(measured, exact)] + [try zeroShotAgreement()].compactMap { $0 }).joined(separator: "; ")
        }
        // The GEMM floor: the work once more with its products counted by shape, then each shape timed alone.
        let (once, shapes) = try Precision.$loading.withValue(precision) { try ProductShapes.recording { try measure(once: true) } }
        result["gemm_floor"] = shapes.reduce(0) { $0 + Double($1.value) * ProductShapes.bestTime($1.key, seconds: 0.02) } / once.units
        result["gemm_gflop"] = shapes.reduce(0) { $0 + Double($1.value) * $1.key.flops } / 1e9 / once.units
        print(String(decoding: try JSONSerialization.data(withJSONObject: result), as: UTF8.self))
    }

    /// What a row measured: its best time, what the work was, and what it computed (token ids, or feature rows).
    struct RowResult {
        var seconds = 0.0, note = ""
        /// What `seconds` is per (tokens of a decoding row): the work done once is this many of them.
        var units = 1.0
        var output: [Int]?
        var values: Tensor?
    }

    /// "feature cosine >= 0.99991" (the lowest over rows) or "tokens 15 of 16 the same" against `exact`.
    static func agreement(_ reduced: RowResult, _ exact: RowResult) -> String {
        if let low = reduced.values, let full = exact.values {
            let rows = low.shape[0]
            let (a, b) = (l2NormalizedRows(low), l2NormalizedRows(full))
            let lowest = (0..<rows).map { zip(a.row($0).scalars, b.row($0).scalars).reduce(Float(0)) { $0 + $1.0 * $1.1 } }.min() ?? 1
            return String(format: "feature cosine to fp32 >= %.5f over %d rows", lowest, rows)
        }
        if let low = reduced.output, let full = exact.output {
            let same = zip(low, full).filter { $0 == $1 }.count
            return "\(same) of \(max(low.count, full.count)) output values as at fp32"
        }
        return "no output to compare"
    }

    /// "zero-shot top-1 as at fp32 on 4 of 4 photos (80 labels; closest fp32 lead 0.039 logits)": each photo classified against "a photo of a NAME." for
    /// every class name, by the row's CLIP at its precision and at FP32; nil for other rows or without photos and labels.
    /// Photos or labels that cannot be read fail the row, as a missing folder does.
    func zeroShotAgreement() throws -> String? {
        guard row.stitchOnlyFolders.contains("photos"), let photos, let labels else { return nil }
        let files = try FileManager.default.contentsOfDirectory(atPath: photos)
            .filter { ["png", "jpg", "jpeg"].contains(URL(fileURLWithPath: $0).pathExtension.lowercased()) }.sorted()
        let names = Value.textLines(try String(contentsOfFile: labels, encoding: .utf8))
        guard !files.isEmpty, !names.isEmpty else { return nil }
        let images = try files.map { try RGBImage(contentsOf: "\(photos)/\($0)") }
        let prompts = names.map { "a photo of a \($0)." }
        // Each photo's best label and its lead over the second (in logits: how close a call it was).
        func topLabels(_ precision: Precision) throws -> [(label: Int, lead: Float)] {
            let model = try Precision.$loading.withValue(precision) { try CLIP(folder: folder(clip)) }
            let logits = model.logits(imageFeatures: try model.imageFeatures(of: images), textFeatures: try model.textFeatures(of: prompts))
            return (0..<images.count).map { image in
                let scores = logits.row(image).scalars
                let order = indicesByDescendingValue(scores)
                return (order[0], order.count > 1 ? scores[order[0]] - scores[order[1]] : 0)
            }
        }
        let reduced: [(label: Int, lead: Float)], exact: [(label: Int, lead: Float)]
        do {
            (reduced, exact) = (try topLabels(precision), try topLabels(.fp32))
        } catch {
            return "zero-shot check not run: \(error)"   // e.g. a CLIP folder without tokenizer files; the timing stands
        }
        let same = zip(reduced, exact).filter { $0.label == $1.label }.count
        return String(format: "zero-shot top-1 as at fp32 on %d of %d photos (%d labels; closest fp32 lead %.3f logits)", same, files.count,
                      names.count, exact.map(\.lead).min() ?? 0)
    }

    /// Runs the row: timed as best of runs over --seconds, or `once` (untimed).
    func measure(once: Bool) throws -> RowResult {
        func time(_ body: () throws -> Void) throws -> Double {
            if once { try body(); return 0 }
            return try bestTime(seconds: seconds, body)
        }
        var (measured, note): (Double, String) = (0, "")
        var output: [Int]?
        var values: Tensor?
        var units = 1.0
        switch row {
        case .clipImage1, .clipImage16:
            let clip = try CLIP(folder: folder(clip))
            let batch = row == .clipImage1 ? 1 : 16
            let pixels = Tensor(shape: [batch, 3, 224, 224], scalars: noise(batch * 3 * 224 * 224))
            (measured, note) = (try time { values = try clip.imageFeatures(pixels) }, "batch \(batch)")
        case .clipText:
            let clip = try CLIP(folder: folder(clip))
            let ids = noise(45 * 14).map { 1 + Int(($0 + 1) * 24_700) }
            let tokens = (0..<45).map { [49406] + ids[$0 * 14..<($0 + 1) * 14] + [49407] }
            (measured, note) = (try time { values = try clip.textFeatures(tokens) }, "45 texts x 16 tokens")
        case .gpt2Greedy:
            let gpt2 = try GPT2(folder: folder(gpt2))
            let prompt = [50256, 32, 4590, 286, 257]
            // 64 new tokens whatever they are, the end token chosen like any other (the reference passes eos_token_id=None too).
            var tokens: [Int] = []
            let total = try time { tokens = try greedyDecode(gpt2, prompt: prompt, stop: StopConditions(maxTokens: 64, atEndToken: false)) }
            (measured, note, output, units) = (total / 64, "per token, 64 new tokens", tokens, 64)
        case .magic:
            // One caption from the image: CLIP image features, then 16 MAGiC steps (the reference's defaults).
            let clipModel = try CLIP(folder: folder(clip))
            let captioner = MagicCaptioner(lm: try GPT2(folder: folder(gpt2)), scorer: clipModel)
            let pixels = Tensor(shape: [1, 3, 224, 224], scalars: noise(3 * 224 * 224))
            var tokens: [Int] = []
            let seconds = try time {
                let features = try clipModel.imageFeatures(pixels)
                // Today's tokenizer on both sides: the Python reference runs the transformers installed beside it.
                tokens = try captioner.generate(imageFeatures: features, prompt: [50256], settings: MagicSettings(textTokenization: .current),
                                                stop: StopConditions(maxTokens: 16, atEndToken: false))
            }
            (measured, note, output) = (seconds, "per caption, 16 tokens, k=45", tokens)
        case .asif10k, .asif100k, .asif1600k:
            guard let workDir else { throw ValidationError("--work-dir is required for \(row.rawValue)") }
            let index = try AnchorIndex(path: ASIFBenchData.path(for: row, in: workDir), verify: false)
            let (images, texts) = ASIFBenchData.queries()
            var best: [Int] = []
            let time = try time {
                best = rankings(try index.scores(images: images, texts: texts, settings: ASIFSettings(k: 800, p: 8))).map { $0[0] }
            }
            (measured, note, output) = (time, "16 images x 100 texts, k=800", best)
        case .minilm:
            let encoder = try SentenceEncoder(folder: folder(minilm))
            let sentences = (0..<32).map { "a photo of \($0) zebras standing next to a red truck on a sunny street" }
            (measured, note) = (try time { values = try encoder.encode(sentences) }, "batch 32")
        case .captioner:
            let model = try VisionEncoderDecoder(folder: folder(captioner))
            let pixels = Tensor(shape: [1, 3, 224, 224], scalars: noise(3 * 224 * 224))
            var tokens: [Int] = []
            // No end token (an id outside the vocabulary), so both sides run all 15 steps.
            let time = try time {
                tokens = try beamSearch(try model.decoder(pixels: pixels), prompt: model.startTokens, settings: BeamSettings(beams: 4),
                                        maxTokens: 15, endToken: model.config.decoder.vocabularySize)
            }
            (measured, note, output) = (time, "per caption, 4 beams x 15", tokens)
        case .blipCaption:
            let model = try BLIPCaptioner(folder: folder(blip))
            let size = model.config.vision.imageSize
            let pixels = Tensor(shape: [1, 3, size, size], scalars: noise(3 * size * size))
            var tokens: [Int] = []
            // No end token (an id outside the vocabulary), so both sides run all 20 steps.
            let time = try time {
                tokens = try beamSearch(try model.decoder(pixels: pixels), prompt: model.startTokens, settings: BeamSettings(beams: 3),
                                        maxTokens: 20, endToken: model.config.text.vocabularySize)
            }
            (measured, note, output) = (time, "per caption, 3 beams x 20", tokens)
        case .siglip:
            // One image and 16 labels (as a zero-shot classification embeds them), scored pairwise.
            let model = try SigLIP(folder: folder(siglip))
            let size = model.config.towers.imageSize
            let pixels = Tensor(shape: [1, 3, size, size], scalars: noise(3 * size * size))
            let texts = BenchRow.siglipTexts(noise(16 * 63))
            var best: [Int] = []
            let time = try time {
                let logits = model.logits(imageFeatures: try model.imageFeatures(pixels), textFeatures: try model.textFeatures(texts))
                best = Array(indicesByDescendingValue(logits.scalars).prefix(3))
            }
            (measured, note, output) = (time, "1 image + 16 texts x 64", best)
        case .yolox:
            // Per image from its file: decode, letterbox, network, decoding and NMS.
            let detector = try YOLOX(path: folder(yolox).path)
            let path = try folder(image).path
            var classes: [Int] = []
            let time = try time { classes = try detector.detect(try RGBImage(contentsOf: path)).map(\.classIndex) }
            (measured, note, output) = (time, "per image, 416x416", classes)
        case .owlvit:
            // Per 768 x 768 image with 5 text queries (embedded once, as Stitch reuses them for every image): the
            // best query of each of the 576 patches.
            let model = try OWLViT(folder: folder(owlvit))
            let pixels = Tensor(shape: [1, 3, 768, 768], scalars: noise(3 * 768 * 768))
            var best: [Int] = []
            let time = try time {
                let logits = try model.predict(pixels, queryEmbeddings: try model.queryEmbeddings(BenchRow.owlvitQueries)).logits.scalars
                let queries = BenchRow.owlvitQueries.count
                best = (0..<logits.count / queries).map { patch in (0..<queries).max { logits[patch * queries + $0] < logits[patch * queries + $1] }! }
            }
            (measured, note, output) = (time, "per 768x768 image, 5 queries", best)
        case .qwen2Prefill, .qwen2PrefillLlamaCpp:
            // A 512-token prompt (or the context, if shorter) through the model, the LM head on its last position only (the next token's logits).
            let model = try Llama(folder: folder(qwen2))
            let prompt = BenchRow.qwen2Prompt(min(512, model.contextLength), vocabulary: model.vocabularySize)
            var next = 0
            let time = try time {
                var cache = model.makeCache(batch: 1)
                let hidden = try model.forward([prompt], cache: &cache)   // [1, 512, d]
                next = indicesByDescendingValue(model.logits(hidden.row(0).rows(prompt.count - 1..<prompt.count)).scalars)[0]
            }
            (measured, note, output) = (time, "\(prompt.count)-token prompt, next token", [next])
        case .qwen2Decode, .qwen2DecodeLlamaCpp:
            let model = try Llama(folder: folder(qwen2))
            var tokens: [Int] = []
            let total = try time {
                tokens = try greedyDecode(model, prompt: BenchRow.qwen2Prompt(16, vocabulary: model.vocabularySize), stop: StopConditions(maxTokens: 32, atEndToken: false))
            }
            (measured, note, output, units) = (total / 32, "per token, 32 after 16", tokens, 32)
        case .efficientnet:
            let network = try EfficientNetLite(folder: folder(efficientnet))
            let pixels = Tensor(shape: [3, 224, 224], scalars: noise(3 * 224 * 224))
            (measured, note) = (try time { _ = network.logits(features: try network.features(pixels)) }, "batch 1")
        }
        return RowResult(seconds: measured, note: note, units: units, output: output, values: values)
    }
}

/// This process's peak resident memory (VmHWM). Unlike getrusage's ru_maxrss, it starts
/// afresh at exec, so a child does not inherit the high-water mark of the bench that spawned it.
func peakResidentMB() -> Double {
    let status = (try? String(contentsOfFile: "/proc/self/status", encoding: .utf8)) ?? ""
    guard let line = status.split(separator: "\n").first(where: { $0.hasPrefix("VmHWM:") }),
          let kilobytes = Double(line.split(separator: " ").dropFirst().first ?? "") else { return .nan }
    return kilobytes / 1024
}

/// The random anchor indexes and queries of the ASIF rows: EfficientNet-Lite0 (1280-d) image and
/// MiniLM (384-d) text embeddings, F16 on disk, written once into the bench's work folder.
enum ASIFBenchData {
    static let (imageDimension, textDimension) = (1280, 384)

    static func path(for row: BenchRow, in workDir: String) -> String { "\(workDir)/\(row.rawValue).asif" }

    /// Anchors per shard file of a row's index: larger indexes are written as shards and merged, as a sharded build is.
    static let shardSize = 100_000

    /// Writes the row's index if it is not there yet, a block of rows at a time (shards of `shardSize` anchors, then
    /// `stitch asif merge` in a child process when there are several); returns what it measured when it wrote one.
    static func prepare(_ row: BenchRow, in workDir: String) throws -> String? {
        let path = path(for: row, in: workDir)
        guard let count = row.anchorCount, !FileManager.default.fileExists(atPath: path) else { return nil }
        try FileManager.default.createDirectory(atPath: workDir, withIntermediateDirectories: true)
        let shards = (count + shardSize - 1) / shardSize
        let files = shards == 1 ? [path] : (0..<shards).map { Shard(index: $0, count: shards).file(for: path) }
        var start = DispatchTime.now().uptimeNanoseconds
        for (number, file) in files.enumerated() {
            let rows = number * shardSize..<min(count, (number + 1) * shardSize)
            let writer = try AnchorIndexWriter(path: file, captions: rows.map { "anchor \($0)" }, imageDimension: imageDimension,
                                               textDimension: textDimension, dtype: .f16, imageEncoder: "random:\(imageDimension)",
                                               textEncoder: "random:\(textDimension)")
            for (dimension, seed) in [(imageDimension, 1), (textDimension, 2)] {
                var generator = SeededGenerator(seed: UInt64(count * 4 + number * 2 + seed))
                for block in stride(from: rows.lowerBound, to: rows.upperBound, by: AnchorIndexWriter.blockRows) {
                    try gaussian(min(AnchorIndexWriter.blockRows, rows.upperBound - block), dimension, &generator).withUnsafeBufferPointer { try writer.append($0) }
                }
            }
            try writer.finish()
        }
        var report = String(format: "index written: %.0f anchors/s, peak %.0f MB", Double(count) / (Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9),
                            peakResidentMB())
        if shards > 1 {
            start = DispatchTime.now().uptimeNanoseconds
            let peak = try mergePeakMB(files, into: path)
            report += String(format: "; %d shards merged in %.1f s, peak %.0f MB", shards, Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9, peak)
            for file in files { try FileManager.default.removeItem(atPath: file) }
        }
        return report
    }

    /// Runs `stitch asif merge` on `files` and returns its peak resident memory (from wait4's rusage of that child).
    static func mergePeakMB(_ files: [String], into path: String) throws -> Double {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: Bench.executable)
        process.arguments = ["asif", "merge"] + files + ["-o", path, "--dtype", "f16"]
        process.standardOutput = FileHandle.nullDevice
        try process.run()
        var status: Int32 = 0
        var usage = rusage()
        guard wait4(process.processIdentifier, &status, 0, &usage) == process.processIdentifier, status == 0 else {
            throw ValidationError("stitch asif merge failed for \(path) (status \(status))")
        }
        return Double(usage.ru_maxrss) / 1024
    }

    /// 16 image and 100 text queries, the same on both sides (bench_reference.py draws them alike).
    static func queries() -> (Tensor, Tensor) {
        var generator = SeededGenerator(seed: 7)
        var (images, texts) = (gaussian(16, imageDimension, &generator), gaussian(100, textDimension, &generator))
        l2NormalizeRows(&images)
        l2NormalizeRows(&texts)
        return (images, texts)
    }

    /// Roughly normal values (sum of four uniforms, centred) from a seeded generator.
    static func gaussian(_ rows: Int, _ columns: Int, _ generator: inout SeededGenerator) -> Tensor {
        var values = [Float](repeating: 0, count: rows * columns)
        for i in values.indices {
            var sum: Float = 0
            for _ in 0..<4 { sum += Float(generator.next() >> 40) / Float(1 << 24) }
            values[i] = sum - 2
        }
        return Tensor(shape: [rows, columns], scalars: values)
    }
}
