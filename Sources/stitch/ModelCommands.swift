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
        abstract: "Embed images as unit-length vectors (CLIP's projection, EfficientNet-Lite's pooled features, any image embedder); one JSON line per image.")

    @Option(help: "Model folder or hub id of an image embedder: a CLIP model or EfficientNet-Lite0.")
    var model = "openai/clip-vit-base-patch32"

    @Argument(help: "JPEG or PNG images; standard input lines when none.")
    var images: [String] = []

    @OptionGroup var hub: HubOptions

    @OptionGroup var precision: PrecisionOptions

    func run() throws {
        let embedder = try hub.load(model, as: (any ImageEmbedder).self, precision: precision)
        for path in images.isEmpty ? standardInputLines() : images {
            try printJSONLine(["image": path, "embedding": try embedder.imageEmbeddings([RGBImage(contentsOf: path)]).scalars])
        }
    }
}

struct EmbedText: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "embed-text",
        abstract: "Embed texts as unit-length vectors (CLIP's text tower, a sentence-transformers encoder, any text embedder); one JSON line per text.")

    @Option(help: "Model folder or hub id of a text embedder: a CLIP model or a BERT sentence encoder such as all-MiniLM-L6-v2.")
    var model = "openai/clip-vit-base-patch32"

    @Option(help: "Texts per forward pass.")
    var batchSize = 32

    @Argument(help: "Texts; standard input lines when none.")
    var texts: [String] = []

    @OptionGroup var hub: HubOptions

    @OptionGroup var precision: PrecisionOptions

    func run() throws {
        let embedder = try hub.load(model, as: (any TextEmbedder).self, precision: precision)
        let inputs = texts.isEmpty ? standardInputLines() : texts
        for start in stride(from: 0, to: inputs.count, by: max(batchSize, 1)) {
            let batch = Array(inputs[start..<min(start + max(batchSize, 1), inputs.count)])
            let embeddings = try embedder.textEmbeddings(batch)
            for (i, text) in batch.enumerated() { try printJSONLine(["text": text, "embedding": embeddings.row(i).scalars]) }
        }
    }
}

struct Classify: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Zero-shot image classification with CLIP, SigLIP or any image-text scorer: the top labels of each image with their probabilities.",
        discussion: """
        CLIP's probabilities are a softmax over the labels (they sum to one); SigLIP's are each label's own sigmoid, as it was \
        trained, so several labels can be likely or none. JSON lines say which ("probabilities": "softmax" or "sigmoid").
        """)

    @Option(help: "Image-text scorer folder or hub id (CLIP, SigLIP).")
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

    @OptionGroup var precision: PrecisionOptions

    func run() throws {
        let clip = try hub.load(model, as: (any ImageTextScorer).self, precision: precision)
        let names = labels.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
        let labelRows = try clip.labelEmbeddings(names, templates: templates)   // embedded once for all images
        for path in images {
            let probabilities = clip.labelProbabilities(imageEmbeddings: try clip.imageEmbeddings([RGBImage(contentsOf: path)]),
                                                        labelEmbeddings: labelRows).scalars
            let ranked = indicesByDescendingValue(probabilities).prefix(max(topK, 1))
            if json {
                try printJSONLine(["image": path, "labels": ranked.map { ["label": names[$0], "probability": probabilities[$0]] },
                                   "probabilities": clip.labelProbabilityKind.rawValue])
            } else {
                for index in ranked { print("\(path)\t\(names[index])\t\(String(format: "%.4f", probabilities[index]))") }
            }
        }
    }
}
