import ArgumentParser
import Foundation
import StitchImaging
import StitchModelIO
import StitchModels
import StitchTensor

/// Prints one JSON object per line.
func printJSONLine(_ object: [String: Any]) throws {
    let data = try JSONSerialization.data(withJSONObject: object, options: [.sortedKeys, .withoutEscapingSlashes])
    print(String(decoding: data, as: UTF8.self))
}

/// Lines of standard input, for commands whose arguments may come from a pipe.
func standardInputLines() -> [String] {
    Array(AnyIterator { readLine(strippingNewline: true) })
}

struct EmbedImage: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "embed-image",
        abstract: "Embed images with CLIP (unit-length projections) or EfficientNet-Lite (pooled features); one JSON line per image.")

    @Option(help: "Model folder or hub id: a CLIP model or EfficientNet-Lite0.")
    var model = "openai/clip-vit-base-patch32"

    @Argument(help: "JPEG or PNG images; standard input lines when none.")
    var images: [String] = []

    @OptionGroup var hub: HubOptions

    func run() throws {
        let (folder, kind) = try hub.locator.resolveModel(model)
        let paths = images.isEmpty ? standardInputLines() : images
        switch kind {
        case .clip:
            let clip = try CLIP(folder: folder)
            for path in paths {
                let embedding = try clip.imageEmbeddings([RGBImage(contentsOf: path)])
                try printJSONLine(["image": path, "embedding": embedding.scalars])
            }
        case .efficientNet:
            let network = try EfficientNetLite(folder: folder)
            for path in paths {
                try printJSONLine(["image": path, "embedding": try network.features(of: RGBImage(contentsOf: path)).scalars])
            }
        case .gpt2, .sentenceEncoder:
            throw ValidationError("\(model) is a \(kind.rawValue) model; embed-image needs CLIP or EfficientNet-Lite")
        }
    }
}

struct EmbedText: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "embed-text",
        abstract: "Embed texts with CLIP's text tower or a sentence-transformers encoder; one JSON line per text.")

    @Option(help: "Model folder or hub id: a CLIP model or a BERT sentence encoder such as all-MiniLM-L6-v2.")
    var model = "openai/clip-vit-base-patch32"

    @Option(help: "Texts per forward pass.")
    var batchSize = 32

    @Argument(help: "Texts; standard input lines when none.")
    var texts: [String] = []

    @OptionGroup var hub: HubOptions

    func run() throws {
        let (folder, kind) = try hub.locator.resolveModel(model)
        let inputs = texts.isEmpty ? standardInputLines() : texts
        let embed: ([String]) throws -> Tensor
        switch kind {
        case .clip: embed = try CLIP(folder: folder).textEmbeddings
        case .sentenceEncoder: embed = try SentenceEncoder(folder: folder).encode
        case .gpt2, .efficientNet:
            throw ValidationError("\(model) is a \(kind.rawValue) model; embed-text needs CLIP or a sentence encoder")
        }
        for start in stride(from: 0, to: inputs.count, by: max(batchSize, 1)) {
            let batch = Array(inputs[start..<min(start + max(batchSize, 1), inputs.count)])
            let embeddings = try embed(batch)
            for (i, text) in batch.enumerated() { try printJSONLine(["text": text, "embedding": embeddings.row(i).scalars]) }
        }
    }
}

struct Classify: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Zero-shot image classification with CLIP: the top labels of each image with their probabilities.")

    @Option(help: "CLIP model folder or hub id.")
    var model = "openai/clip-vit-base-patch32"

    @Option(help: "Comma-separated candidate labels.")
    var labels: String

    @Option(name: .customLong("template"), help: "Prompt template with {} for the label; repeat to ensemble several.")
    var templates: [String] = ["a photo of a {}."]

    @Option(help: "How many labels to show per image.")
    var topK = 5

    @Flag(help: "One JSON line per image instead of text.")
    var json = false

    @Argument(help: "JPEG or PNG images.")
    var images: [String]

    func validate() throws {
        guard labels.split(separator: ",").contains(where: { !$0.trimmingCharacters(in: .whitespaces).isEmpty }) else {
            throw ValidationError("--labels needs at least one label")
        }
        guard templates.allSatisfy({ $0.contains("{}") }) else { throw ValidationError("every --template needs {} where the label goes") }
    }

    @OptionGroup var hub: HubOptions

    func run() throws {
        let clip = try CLIP(folder: try hub.locator.resolveModel(model, files: CLIP.files))
        let names = labels.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
        let labelRows = try clip.labelEmbeddings(names, templates: templates)   // embedded once for all images
        for path in images {
            let probabilities = clip.labelProbabilities(imageEmbeddings: try clip.imageEmbeddings([RGBImage(contentsOf: path)]),
                                                        labelEmbeddings: labelRows).scalars
            let ranked = probabilities.indices.sorted { probabilities[$0] > probabilities[$1] }.prefix(max(topK, 1))
            if json {
                try printJSONLine(["image": path, "labels": ranked.map { ["label": names[$0], "probability": probabilities[$0]] }])
            } else {
                for index in ranked { print("\(path)\t\(names[index])\t\(String(format: "%.4f", probabilities[index]))") }
            }
        }
    }
}
