import ArgumentParser
import Foundation
import StitchImaging
import StitchMethods
import StitchModelIO
import StitchModels
import StitchTensor

struct ASIFCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "asif",
        abstract: "ASIF: compare images and texts through an anchor set of (image, caption) pairs (Norelli et al. 2022).",
        subcommands: [ASIFBuild.self, ASIFMerge.self, ASIFClassify.self, ASIFRetrieve.self, ASIFEvaluate.self])
}

/// The encoders and ASIF settings every query command takes.
struct ASIFQueryOptions: ParsableArguments {
    @Option(help: "The anchor index file.")
    var index: String

    @Option(help: "Image encoder the index was built with (folder or hub id).")
    var imageEncoder = "efficientnet-lite0"

    @Option(help: "Text encoder the index was built with (folder or hub id).")
    var textEncoder = "sentence-transformers/all-MiniLM-L6-v2"

    @Option(help: "Anchors kept per relative representation.")
    var k = 800

    @Option(help: "Power applied to the kept similarities.")
    var p: Float = 8

    @Flag(help: "Skip the index checksum (it reads the whole file once).")
    var noVerify = false

    @OptionGroup var hub: HubOptions

    var settings: ASIFSettings { ASIFSettings(k: k, p: p) }

    func open(needsImages: Bool, needsTexts: Bool) throws -> (AnchorIndex, AnchorEncoder<RGBImage>?, AnchorEncoder<String>?) {
        let loaded = try AnchorIndex(path: index, verify: !noVerify)
        let locator = hub.locator
        let image = needsImages ? try ModelRegistry.standard.imageEncoder(imageEncoder, locator: locator) : nil
        let text = needsTexts ? try ModelRegistry.standard.textEncoder(textEncoder, locator: locator) : nil
        try loaded.requireEncoders(image: image?.identity, text: text?.identity)
        return (loaded, image, text)
    }
}

struct ASIFBuild: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "build", abstract: "Build an anchor index from a JSONL file of {\"image\": path, \"caption\": text} lines; resumable.")

    @Argument(help: "The anchors JSONL file (image paths relative to it).")
    var anchors: String

    @Option(name: .shortAndLong, help: "The index file to write.")
    var output: String

    @Option(help: "Image encoder (folder or hub id): EfficientNet-Lite0 or a CLIP model.")
    var imageEncoder = "efficientnet-lite0"

    @Option(help: "Text encoder (folder or hub id): a sentence encoder or a CLIP model.")
    var textEncoder = "sentence-transformers/all-MiniLM-L6-v2"

    @Option(help: "Storage of the anchor matrices: f32 or f16.")
    var dtype = "f32"

    @Option(help: "i/n: embed only the lines numbered i modulo n, into OUTPUT.shard-000i-of-000n.asif (merge them with `stitch asif merge`); auto: i and n from SLURM_ARRAY_TASK_* or JOB_COMPLETION_INDEX.")
    var shard: String?

    @Option(help: "The shard count of a Kubernetes Indexed Job (its completions), for --shard auto; else STITCH_SHARD_COUNT.")
    var shardCount: Int?

    @OptionGroup var hub: HubOptions

    func run() throws {
        guard let type = TensorDType(rawValue: dtype.uppercased()), type == .f32 || type == .f16 else { throw ValidationError("--dtype is f32 or f16") }
        let locator = hub.locator
        var builder = AnchorIndexBuilder(image: try ModelRegistry.standard.imageEncoder(imageEncoder, locator: locator),
                                         text: try ModelRegistry.standard.textEncoder(textEncoder, locator: locator))
        builder.dtype = type
        let part = try shard.map { try Shard.parse($0, count: shardCount) } ?? .whole
        builder.shard = (part.index, part.count)
        let output = part.file(for: self.output)
        var bar: ProgressBar?
        try builder.build(anchors: anchors, output: output) { done, total in
            if bar == nil { bar = ProgressBar(total: total, label: "anchors", done: done) } else { bar!.advance(to: done) }
        }
        let index = try AnchorIndex(path: output, verify: false)
        print("\(output): \(index.count) anchors, image \(index.images.dimension)-d (\(index.imageEncoder)), text \(index.texts.dimension)-d (\(index.textEncoder))")
    }
}

struct ASIFMerge: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "merge", abstract: "Merge indexes built with the same encoders (e.g. shards).")

    @Argument(help: "The indexes to merge, in order.")
    var parts: [String]

    @Option(name: .shortAndLong, help: "The merged index file.")
    var output: String

    @Option(help: "Storage of the merged matrices: f32 or f16.")
    var dtype = "f32"

    func run() throws {
        guard let type = TensorDType(rawValue: dtype.uppercased()), type == .f32 || type == .f16 else { throw ValidationError("--dtype is f32 or f16") }
        try AnchorIndex.merge(parts, dtype: type, to: output)
        print("\(output): \(try AnchorIndex(path: output, verify: false).count) anchors")
    }
}

struct ASIFClassify: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "classify", abstract: "Zero-shot classification of images; prints image, label, score.")

    @OptionGroup var options: ASIFQueryOptions

    @Option(help: "Comma-separated class names.")
    var labels: String

    @Option(help: "Prompt template with {} for the label (repeatable; scores are averaged).")
    var template: [String] = ["a photo of a {}."]

    @Option(help: "Labels printed per image.")
    var topK = 1

    @Argument(help: "Images to classify.")
    var images: [String]

    func run() throws {
        let names = labels.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
        guard !names.isEmpty else { throw ValidationError("--labels names no class") }
        let (index, imageEncoder, textEncoder) = try options.open(needsImages: true, needsTexts: true)
        let embeddings = try imageEncoder!.embed(images.map { try RGBImage(contentsOf: $0) })
        let scores = try index.classify(images: embeddings, labels: names, templates: template, text: textEncoder!, settings: options.settings)
        printRanked(scores, queries: images, results: names, top: topK)
    }
}

struct ASIFRetrieve: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "retrieve",
        abstract: "Image to text (default pool: the index's captions, i.e. captioning by retrieval) or text to image retrieval.")

    @OptionGroup var options: ASIFQueryOptions

    @Option(help: "Query images (image to text).")
    var image: [String] = []

    @Option(help: "Query texts (text to image; --pool lists the candidate images).")
    var text: [String] = []

    @Option(help: "A file of candidates, one per line: captions for image queries, image paths for text queries.")
    var pool: String?

    @Option(help: "Results per query.")
    var top = 5

    func run() throws {
        guard image.isEmpty != text.isEmpty else { throw ValidationError("give --image queries or --text queries") }
        let candidates = try pool.map { try String(contentsOfFile: $0, encoding: .utf8).split(separator: "\n").map(String.init).filter { !$0.isEmpty } }
        let (index, imageEncoder, textEncoder) = try options.open(needsImages: true, needsTexts: true)
        let scores: Tensor, queries: [String], results: [String]
        if !image.isEmpty {
            results = candidates ?? index.captions
            scores = try index.scores(images: try imageEncoder!.embed(image.map { try RGBImage(contentsOf: $0) }), texts: try textEncoder!.embed(results), settings: options.settings)
            queries = image
        } else {
            guard let candidates else { throw ValidationError("text to image retrieval needs --pool with image paths") }
            results = candidates
            let all = try index.scores(images: try imageEncoder!.embed(candidates.map { try RGBImage(contentsOf: $0) }), texts: try textEncoder!.embed(text), settings: options.settings)
            scores = transposed(all, 0, 1)
            queries = text
        }
        printRanked(scores, queries: queries, results: results, top: top)
    }
}

struct ASIFEvaluate: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "eval",
        abstract: "Zero-shot top-1/top-5 accuracy from {\"image\", \"label\"} lines, and recall@1/5/10 both ways from {\"image\", \"caption\"} lines.")

    @OptionGroup var options: ASIFQueryOptions

    @Argument(help: "A labelled JSONL file (image paths relative to it).")
    var data: String

    @Option(help: "Prompt template with {} for the label.")
    var template = "a photo of a {}."

    func run() throws {
        let folder = URL(fileURLWithPath: data).deletingLastPathComponent()
        let rows = try String(contentsOfFile: data, encoding: .utf8).split(separator: "\n").enumerated().map { number, line -> [String: String] in
            guard let object = try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: String], object["image"] != nil else {
                throw ValidationError("\(data):\(number + 1): expected {\"image\": path, \"label\" or \"caption\": text}")
            }
            return object
        }
        let (index, imageEncoder, textEncoder) = try options.open(needsImages: true, needsTexts: true)
        let paths = rows.map { $0["image"]!.hasPrefix("/") ? $0["image"]! : folder.appendingPathComponent($0["image"]!).path }
        let images = try imageEncoder!.embed(paths.map { try RGBImage(contentsOf: $0) })
        var report: [String: Any] = ["items": rows.count]
        if rows.allSatisfy({ $0["label"] != nil }) {
            let labels = Array(Set(rows.map { $0["label"]! })).sorted()
            let ranked = rankings(try index.classify(images: images, labels: labels, templates: [template], text: textEncoder!, settings: options.settings))
            let truth = rows.map { labels.firstIndex(of: $0["label"]!)! }
            for n in [1, 5] { report["top\(n)"] = accuracy(ranked, truth, within: n) }
        }
        if rows.allSatisfy({ $0["caption"] != nil }) {
            let scores = try index.scores(images: images, texts: try textEncoder!.embed(rows.map { $0["caption"]! }), settings: options.settings)
            let truth = Array(rows.indices)
            for n in [1, 5, 10] {
                report["image_to_text_recall@\(n)"] = accuracy(rankings(scores), truth, within: n)
                report["text_to_image_recall@\(n)"] = accuracy(rankings(transposed(scores, 0, 1)), truth, within: n)
            }
        }
        try printJSONLine(report)
    }

    /// The share of rows whose true column is among their first `n` ranked columns.
    func accuracy(_ ranked: [[Int]], _ truth: [Int], within n: Int) -> Double {
        Double(zip(ranked, truth).filter { $0.prefix(n).contains($1) }.count) / Double(max(truth.count, 1))
    }
}

/// "query<TAB>result<TAB>score" for each query's `top` best results.
func printRanked(_ scores: Tensor, queries: [String], results: [String], top: Int) {
    for (row, ranked) in rankings(scores).enumerated() {
        for column in ranked.prefix(top) { print("\(queries[row])\t\(results[column])\t\(String(format: "%.4f", scores[row, column]))") }
    }
}
