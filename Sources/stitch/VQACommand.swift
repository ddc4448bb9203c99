import ArgumentParser
import Foundation
import StitchGraph
import StitchMethods
import StitchModelIO
import StitchModels
import StitchRemote
import StitchTensor

extension OpenAIAPI: ExpressibleByArgument {}

/// Which language model completes prompts: a local model, or an OpenAI-compatible server.
struct LanguageModelOptions: ParsableArguments {
    @Option(help: "An OpenAI-compatible server (e.g. http://127.0.0.1:8080 or https://api.openai.com/v1); else STITCH_LM_BASE_URL. Without it the local --lm runs.")
    var lmUrl: String?

    @Option(help: "The server's model name.")
    var lmModel = "gpt-3.5-turbo-instruct"

    @Option(help: "The server's API key (else STITCH_LM_API_KEY or OPENAI_API_KEY); never printed.")
    var lmKey: String?

    @Option(help: "The server's API: completions, or chat (each prompt sent as one user message; for servers that offer only chat).")
    var lmApi: OpenAIAPI = .completions

    /// The server the user chose: --lm-url, else STITCH_LM_BASE_URL; nil runs the local model.
    var serverURL: String? {
        lmUrl ?? ProcessInfo.processInfo.environment["STITCH_LM_BASE_URL"].flatMap { $0.isEmpty ? nil : $0 }
    }
}

struct VQA: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "vqa",
        abstract: "Answer a question about an image with PICa: a language model prompted with the image as text.",
        discussion: """
        Runs Examples/pica_okvqa.yaml (or --graph, a copy with a step changed); flags not given keep the graph's settings. \
        The image becomes a context (caption and object tags). In-context examples come from --pool, a JSONL of \
        {"question", "answer", "image"?, "context"?} lines (a missing context is the graph's context of the entry's image), ranked by \
        CLIP similarity of the question plus the image (as published, give each pool entry one of its image's ground-truth \
        captions as its context); the top --shots x --ensemble are split into --ensemble prompts in the published format, \
        and the answer generated with the highest summed log-probability wins, cleaned as the published code cleans it.
        """)

    @Argument(help: "The image.") var image: String
    @Argument(help: "The question.") var question: String

    @Option(help: "Training pool (JSONL) to draw in-context examples from.") var pool: String?
    @Option(help: "In-context examples per prompt (the graph's: 16).") var shots: Int?
    @Option(help: "Prompts in the ensemble (the graph's: 5).") var ensemble: Int?
    @Option(help: "Image-text scorer folder or hub id, CLIP, SigLIP or BLIP retrieval (example ranking; the graph's: openai/clip-vit-base-patch32).") var clip: String?
    @Option(help: "QUESTIONS.npy,IMAGES.npy: precomputed unit CLIP features of the pool's questions and images, one row per --pool line (as the published code's feature files), instead of computing them.")
    var poolFeatures: String?
    @Option(help: "Local language model folder or hub id, when no --lm-url (the graph's: gpt2).") var lm: String?
    @Option(help: "New tokens per answer at most (the graph's: 5).") var maxTokens: Int?
    @OptionGroup var language: LanguageModelOptions
    @Option(help: "Captioner folder or hub id, ViT-GPT2 or BLIP (the graph's: nlpconnect/vit-gpt2-image-captioning).") var captioner: String?
    @Option(help: "Detector folder for object tags (the graph's: YOLOX-Nano).") var detector: String?
    @Flag(help: "Contexts without detector tags.") var noTags = false
    @OptionGroup var method: MethodGraphOptions
    @OptionGroup var hub: HubOptions

    @OptionGroup var precision: PrecisionOptions
    @Flag(help: "Print a JSON object with the answer, every candidate, the context and the prompts.") var json = false

    func validate() throws {
        guard (shots ?? 0) >= 0, (ensemble ?? 1) >= 1 else { throw ValidationError("--shots must be at least 0 and --ensemble at least 1") }
    }

    func run() throws {
        var pica = try MethodGraph(example: "pica_okvqa.yaml", options: method, language: language)
        for (name, model) in [("captioner", captioner), ("detector", detector), ("clip", clip)] { try pica.component(name, model: model, revision: hub.revision) }
        try pica.languageModel("lm", local: lm, language, revision: hub.revision)
        pica.precision(precision.precision)
        if noTags { try pica.set("context", "tags", .string("")) }
        try pica.set("answer", "max_tokens", maxTokens.map { .number(Double($0)) })
        let graphShots = pica.literal("prompts", "shots")?.number.map(Int.init) ?? 0
        let shots = self.shots ?? graphShots
        let ensemble = self.ensemble ?? (pica.literal("examples", "count")?.number).map { graphShots > 0 ? Int($0) / graphShots : 1 } ?? 1
        try pica.set("prompts", "shots", .number(Double(shots)))
        try pica.set("examples", "count", .number(Double(shots * ensemble)))
        let describing = pica.runner()
        let entries = try pool.map { try Self.loadPool($0) { try MethodGraph.run(describing, ["image": .string($0), "question": .string(""), "pool": .array([])], outputs: ["context"])["context"]! } } ?? []
        if entries.isEmpty || shots == 0 {
            try pica.set("prompts", "examples", .array([]))   // no examples: nothing to rank, no CLIP
        } else if let poolFeatures {
            let (questions, images) = try Self.loadFeatures(poolFeatures, rows: entries.count)
            try pica.set("examples", "pool_questions", questions)
            try pica.set("examples", "pool_images", images)
        }
        let outputs = try MethodGraph.run(pica.runner(), ["image": .string(image), "question": .string(question), "pool": .array(entries)])
        if json {
            try printJSONLine(outputs.mapValues(\.json))
        } else {
            print(outputs["answer"]?.string ?? "")
        }
    }

    /// The pool's entries; an entry without a context gets `describe` of its image.
    static func loadPool(_ path: String, describe: (String) throws -> Value) throws -> [Value] {
        guard let text = try? String(contentsOfFile: path, encoding: .utf8) else { throw ValidationError("\(path): missing or unreadable") }
        let lines: [(line: Int, value: Value)]
        do { lines = try Value.jsonLines(text) } catch { throw ValidationError("\(path): \(error)") }
        return try lines.map { number, value in
            guard case .object(var entry) = value, entry["question"]?.string != nil, entry["answer"]?.string != nil else {
                throw ValidationError("\(path):\(number): expected {\"question\", \"answer\", \"image\"?, \"context\"?}")
            }
            if let image = entry["image"], image.string == nil { throw ValidationError("\(path):\(number): \"image\" must be a path") }
            if entry["context"]?.string == nil {
                guard let image = entry["image"]?.string else { throw ValidationError("\(path):\(number): an entry needs a context or an image to describe") }
                guard FileManager.default.fileExists(atPath: image) else { throw ValidationError("\(path):\(number): image \(image) does not exist") }
                entry["context"] = try describe(image)
            }
            return .object(entry)
        }
    }

    /// The pool's question and image features from "QUESTIONS.npy,IMAGES.npy", each [rows, width], as graph values.
    static func loadFeatures(_ spec: String, rows: Int) throws -> (Value, Value) {
        let files = spec.split(separator: ",").map(String.init)
        guard files.count == 2 else { throw ValidationError("--pool-features takes QUESTIONS.npy,IMAGES.npy, got '\(spec)'") }
        let features = try files.map { file in
            let tensor = try readNumpy(file)
            guard tensor.shape.count == 2, tensor.shape[0] == rows else {
                throw ValidationError("\(file): features of shape \(tensor.shape), the pool needs \(rows) rows (one per pool line)")
            }
            return Value(tensor)
        }
        return (features[0], features[1])
    }
}
