import ArgumentParser
import Foundation
import StitchImaging
import StitchMethods
import StitchModelIO
import StitchModels
import StitchRemote
import StitchTensor

/// Which language model completes prompts: a local GPT-2, or an OpenAI-compatible server.
struct LanguageModelOptions: ParsableArguments {
    @Option(help: "An OpenAI-compatible server (e.g. http://127.0.0.1:8080 or https://api.openai.com/v1); else STITCH_LM_BASE_URL. Without it the local --lm runs.")
    var lmUrl: String?

    @Option(help: "The server's model name.")
    var lmModel = "gpt-3.5-turbo-instruct"

    @Option(help: "The server's API key (else STITCH_LM_API_KEY or OPENAI_API_KEY); never printed.")
    var lmKey: String?

    /// The server when one is named (flag or STITCH_LM_BASE_URL), else the local GPT-2 `local`.
    func backend(local: String, hub: HubOptions) throws -> CompletionBackend {
        try OpenAICompletionClient.backend(url: lmUrl, serverModel: lmModel, apiKey: lmKey) {
            LocalCompletionBackend(model: try hub.load(local, as: (any CausalLanguageModel).self), name: local)
        }
    }
}

/// Image -> text for PICa: the captioner's caption and, unless switched off, the detector's tags.
struct SceneTextOptions: ParsableArguments {
    @Option(help: "Captioner folder or hub id.")
    var captioner = "nlpconnect/vit-gpt2-image-captioning"

    @Option(help: "YOLOX-Nano folder for object tags.")
    var detector = "Tests/Fixtures/yolox-nano-coco"

    @Flag(help: "Contexts without detector tags.")
    var noTags = false

    func describer(hub: HubOptions) throws -> (RGBImage) throws -> String {
        let model = try hub.load(captioner, as: (any ImageCaptioner).self)
        let yolox = noTags ? nil : try hub.load(detector, as: (any ObjectDetector).self)
        return { image in
            let caption = try model.caption(image, options: .captioner).text
            var tags: [String] = []
            for d in try yolox?.detect(image, threshold: 0.3, nmsThreshold: 0.45) ?? [] where !tags.contains(d.label) { tags.append(d.label) }
            return PICa.context(caption: caption, tags: tags.joined(separator: ", "))
        }
    }
}

struct VQA: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "vqa",
        abstract: "Answer a question about an image with PICa: a language model prompted with the image as text.",
        discussion: """
        The image becomes a context (caption and object tags). In-context examples come from --pool, a JSONL of \
        {"question", "answer", "image"?, "context"?} lines (a missing context is computed from the image), ranked by \
        CLIP similarity of the question plus the image (as published, give each pool entry one of its image's ground-truth \
        captions as its context); the top --shots x --ensemble are split into --ensemble prompts in the published format, \
        and the answer generated with the highest summed log-probability wins, cleaned as the published code cleans it.
        """)

    @Argument(help: "The image.") var image: String
    @Argument(help: "The question.") var question: String

    @Option(help: "Training pool (JSONL) to draw in-context examples from.") var pool: String?
    @Option(help: "In-context examples per prompt.") var shots = 16
    @Option(help: "Prompts in the ensemble.") var ensemble = 5
    @Option(help: "CLIP folder or hub id (example ranking).") var clip = "openai/clip-vit-base-patch32"
    @Option(help: "QUESTIONS.npy,IMAGES.npy: precomputed unit CLIP features of the pool's questions and images, one row per --pool line (as the published code's feature files), instead of computing them.")
    var poolFeatures: String?
    @Option(help: "Local GPT-2 folder or hub id (when no --lm-url).") var lm = "gpt2"
    @Option(help: "New tokens per answer at most.") var maxTokens = 5
    @OptionGroup var language: LanguageModelOptions
    @OptionGroup var scene: SceneTextOptions
    @OptionGroup var hub: HubOptions
    @Flag(help: "Print a JSON object with the answer, every candidate and the prompts.") var json = false

    func validate() throws {
        guard shots >= 0, ensemble >= 1 else { throw ValidationError("--shots must be at least 0 and --ensemble at least 1") }
    }

    func run() throws {
        let describe = try scene.describer(hub: hub)
        let photo = try RGBImage(contentsOf: image)
        let test = PICa.Example(context: try describe(photo), question: question)
        let examples = try pool.map { try Self.loadPool($0, describe: describe) } ?? []
        var groups: [[PICa.Example]] = [[]]
        if !examples.isEmpty && shots > 0 {
            let vision = try hub.load(clip, as: (any ImageTextScorer).self)
            let questionEmbedding = try vision.textEmbeddings([question]).row(0)
            let (poolQuestions, poolImages) = try poolFeatures.map { try Self.loadFeatures($0, rows: examples.count, width: questionEmbedding.count) }
                ?? (try vision.textEmbeddings(examples.map(\.example.question)), try Self.imageEmbeddings(examples.map(\.image), clip: vision))
            let ranked = PICa.rankExamples(question: questionEmbedding, image: try vision.imageEmbeddings([photo]).row(0),
                                           poolQuestions: poolQuestions, poolImages: poolImages)
            let chosen = ranked.prefix(shots * ensemble).map { examples[$0].example }
            groups = stride(from: 0, to: chosen.count, by: shots).map { Array(chosen[$0..<min($0 + shots, chosen.count)]) }
        }
        let pica = PICa()
        let prompts = groups.map { pica.prompt(examples: $0, test: test) }
        let result = try PICa.answer(prompts: prompts, backend: try language.backend(local: lm, hub: hub), maxTokens: maxTokens)
        if json {
            try printJSONLine(["answer": result.answer, "context": test.context, "prompts": prompts,
                               "candidates": result.candidates.map { ["answer": $0.answer, "logprob": $0.logprob] as [String: Any] }])
        } else {
            print(result.answer)
        }
    }

    struct PoolEntry {
        let example: PICa.Example
        let image: RGBImage?
    }

    static func loadPool(_ path: String, describe: (RGBImage) throws -> String) throws -> [PoolEntry] {
        guard let text = try? String(contentsOfFile: path, encoding: .utf8) else { throw ValidationError("\(path): missing or unreadable") }
        return try text.split(whereSeparator: \.isNewline).enumerated().map { number, line in
            guard let object = (try? JSONSerialization.jsonObject(with: Data(line.utf8))) as? [String: Any],
                  let question = object["question"] as? String, let answer = object["answer"] as? String else {
                throw ValidationError("\(path):\(number + 1): expected {\"question\", \"answer\", \"image\"?, \"context\"?}")
            }
            let image = try (object["image"] as? String).map { try RGBImage(contentsOf: $0) }
            guard let context = try (object["context"] as? String) ?? image.map(describe) else {
                throw ValidationError("\(path):\(number + 1): an entry needs a context or an image to describe")
            }
            return PoolEntry(example: PICa.Example(context: context, question: question, answer: answer), image: image)
        }
    }

    /// The pool's question and image features from "QUESTIONS.npy,IMAGES.npy", each [rows, width].
    static func loadFeatures(_ spec: String, rows: Int, width: Int) throws -> (Tensor, Tensor) {
        let files = spec.split(separator: ",").map(String.init)
        guard files.count == 2 else { throw ValidationError("--pool-features takes QUESTIONS.npy,IMAGES.npy, got '\(spec)'") }
        let features = try files.map { file in
            let tensor = try readNumpy(file)
            guard tensor.shape == [rows, width] else {
                throw ValidationError("\(file): features of shape \(tensor.shape), the pool needs [\(rows), \(width)] (one row per pool line, CLIP's width)")
            }
            return tensor
        }
        return (features[0], features[1])
    }

    /// Unit image embeddings of the pool; entries without an image get zeros (no image similarity).
    static func imageEmbeddings(_ images: [RGBImage?], clip: any ImageTextScorer) throws -> Tensor {
        let present = images.compactMap { $0 }
        let embedded = present.isEmpty ? nil : try clip.imageEmbeddings(present)
        let width = try embedded?.shape[1] ?? clip.textEmbeddings([""]).shape[1]
        var next = 0
        return concatenate(images.map { image in
            guard image != nil, let embedded else { return Tensor(zeros: [1, width]) }
            defer { next += 1 }
            return embedded.row(next).reshaped([1, width])
        }, axis: 0)
    }
}
