import Foundation
import StitchImaging
import StitchMethods
import StitchModelIO
import StitchModels
import StitchRemote
import StitchTensor

extension OperationRegistry {
    /// Every component kind and operation Stitch ships. Model components are named by the capability the
    /// operations need (`scorer`, `lm`, `captioner`, `detector`); whichever model type `models` finds in the
    /// component's folder loads, so any registered type with the capability plugs in. `clip` and `gpt2` are
    /// the older names of `scorer` and `lm`.
    public static func standard(models: ModelRegistry = .standard, trust: GraphTrust = GraphTrust()) -> OperationRegistry {
        let registry = OperationRegistry(trust: trust)
        registry.register(modelKind("scorer", as: (any ImageTextScorer).self, models: models))
        registry.register(modelKind("lm", as: (any CausalLanguageModel).self, models: models))
        registry.register(modelKind("captioner", as: (any ImageCaptioner).self, models: models))
        registry.register(detectorKind(models: models))
        registry.register(modelKind("clip", providing: "scorer", as: (any ImageTextScorer).self, models: models))
        registry.register(modelKind("gpt2", providing: "lm", as: (any CausalLanguageModel).self, models: models))
        registry.register(asifKind(models: models))
        registry.register(completionKind(models: models, trust: trust))
        for operation in clipOperations + languageModelOperations + asifOperations + visionOperations + methodOperations + [completeOperation] { registry.register(operation) }
        return registry
    }

    /// An ASIF anchor index (`model`: the index file) with the encoders it was built with
    /// (options `image_encoder`, `text_encoder`: folders or hub ids; `precision` theirs).
    static func asifKind(models: ModelRegistry) -> ComponentKind {
        ComponentKind("asif", load: { spec in
            guard let image = spec.options["image_encoder"]?.string, let text = spec.options["text_encoder"]?.string else {
                throw GraphError.badInput("an asif component needs image_encoder and text_encoder options")
            }
            let locator = locator(spec)
            let component = try Precision.$loading.withValue(try precision(spec)) {
                ASIFComponent(index: try AnchorIndex(path: spec.model), image: try models.imageEncoder(image, locator: locator),
                              text: try models.textEncoder(text, locator: locator))
            }
            try component.index.requireEncoders(image: component.image.identity, text: component.text.identity)
            return component
        }, identity: { spec in fileIdentity("asif", spec, file: spec.model) })
    }

    /// A language model for `lm_complete`: a local causal LM `model`, or with option `url` an
    /// OpenAI-compatible server (option `model` its model name, option `api` "completions" (default) or "chat" for a
    /// server that offers only chat completions). The API key (STITCH_LM_API_KEY or OPENAI_API_KEY) goes only to a
    /// server `trust` allows; the graph's own option alone picks the server.
    static func completionKind(models: ModelRegistry, trust: GraphTrust) -> ComponentKind {
        let local = modelKind("completion", as: (any CausalLanguageModel).self, models: models)
        return ComponentKind("completion", load: { spec in
            let url = spec.options["url"]?.string
            let apiName = spec.options["api"]?.string ?? OpenAIAPI.completions.rawValue
            guard let api = OpenAIAPI(rawValue: apiName) else {
                throw GraphError.badInput("option api of a completion component is \(OpenAIAPI.allCases.map(\.rawValue).joined(separator: " or ")), not '\(apiName)'")
            }
            // An empty key is none: no environment is consulted, so nothing the graph does not name picks a server.
            return CompletionComponent(try OpenAICompletionClient.backend(url: url, serverModel: spec.options["model"]?.string ?? spec.model,
                                                                          apiKey: trust.apiKey(for: url) ?? "", api: api, environment: [:]) {
                LocalCompletionBackend(model: try local.load(spec) as! any CausalLanguageModel, name: spec.model)
            })
        }, identity: { spec in
            spec.options["url"]?.string.map { "completion:\($0):\(spec.options["model"]?.string ?? spec.model):\(spec.options["api"]?.string ?? "completions")" }
                ?? local.identity(spec)
        })
    }

    static let completeOperation = Operation(
        "lm_complete", "Complete a prompt with a completion component (local or a server): temperature 0 is greedy; n > 1 samples n "
        + "completions (seeds seed, seed + 1, ...), all in `texts`, the first in `text`.",
        arguments: [.component("lm", kind: "completion"), .value("prompt", .text), .value("max_tokens", .number, default: .number(32)),
                    .value("temperature", .number, default: .number(0)), .value("stop", .texts, default: .array([])),
                    .value("seed", .number, default: .number(0)), .value("n", .number, default: .number(1))],
        output: .record(["text": .text, "logprob": .number, "texts": .texts])) { input in
        let lm = try input.component("lm", as: CompletionComponent.self)
        let request = CompletionRequest(prompt: try input.text("prompt"), maxTokens: try input.integer("max_tokens"), temperature: try input.number("temperature"),
                                        count: try input.integer("n"), stop: try input.texts("stop"), logprobs: true, seed: UInt64(max(0, try input.integer("seed"))))
        try request.validate()
        let completions = try lm.backend.complete(request)
        guard let first = completions.first else { throw GraphError.operationFailed(node: input.node, detail: "the language model returned no completion") }
        return .object(["text": .string(first.text), "logprob": .number(first.totalLogprob), "texts": .array(completions.map { .string($0.text) })])
    }

    /// A component read from local files (one file, or every file of a folder), identified by their paths, sizes and modification dates.
    static func fileIdentity(_ kind: String, _ spec: ComponentSpec, file: String) -> String {
        let children = (try? FileManager.default.contentsOfDirectory(atPath: file))?.sorted().map { (file as NSString).appendingPathComponent($0) }
        let stamps = (children ?? [file]).map { path in
            let attributes = (try? FileManager.default.attributesOfItem(atPath: path)) ?? [:]
            return "\(URL(fileURLWithPath: path).standardizedFileURL.path):\((attributes[.size] as? NSNumber)?.intValue ?? 0):\((attributes[.modificationDate] as? Date)?.timeIntervalSince1970 ?? 0)"
        }
        return "\(kind):\(stamps.joined(separator: ",")):\(Value.object(spec.options).canonicalJSON)"
    }

    static let visionOperations: [Operation] = [
        Operation("caption", "A caption of the image by a captioner (ViT-GPT2, BLIP): strategy beam (default, 4 beams, 15 tokens), greedy, sample or "
                  + "contrastive; with a `prompt` (\"a picture of\") the caption continues it and begins with it.",
                  arguments: [.component("captioner", kind: "captioner"), .value("image", .image), .value("prompt", .text, default: .string(""))]
                    + decodingArguments(.captioner), output: .text) { input in
            let captioner = try input.component("captioner", as: (any ImageCaptioner).self)
            let prompt = try input.text("prompt")
            return .string(try captioner.caption(input.image("image"), prompt: prompt.isEmpty ? nil : prompt, options: decodingOptions(input)).text)
        },
        Operation("detect", """
                  Objects in the image: a detector's fixed classes (YOLOX-Nano), or what `queries` name (an open-vocabulary \
                  detector such as OWL-ViT, which embeds them once for all images). `tags`: the distinct labels best first joined \
                  by ", "; every detection.
                  """,
                  arguments: [.component("detector", kind: "detector"), .value("image", .image), .value("queries", .texts, optional: true),
                              .value("threshold", .number, default: .number(0.3)), .value("nms", .number, default: .number(0.45))],
                  output: .record(["tags": .text, "detections": .json])) { input in
            let image = try input.image("image"), threshold = Float(try input.number("threshold")), nms = Float(try input.number("nms"))
            let detections: [Detection]
            if input.arguments["queries"] != nil {
                guard let detector = try? input.component("detector", as: (any TextQueriedDetector).self) else {
                    throw GraphError.operationFailed(node: input.node, detail: "queries need a detector that takes text queries (such as OWL-ViT); this one has fixed classes")
                }
                detections = try detector.detect(image, queries: input.texts("queries"), threshold: threshold, nmsThreshold: nms)
            } else {
                guard let detector = try? input.component("detector", as: (any ObjectDetector).self) else {
                    throw GraphError.operationFailed(node: input.node, detail: "this detector finds what text queries name: give it queries")
                }
                detections = try detector.detect(image, threshold: threshold, nmsThreshold: nms)
            }
            var labels: [String] = []
            for d in detections where !labels.contains(d.label) { labels.append(d.label) }
            return .object(["tags": .string(labels.joined(separator: ", ")), "detections": .array(detections.map { d in
                .object(["label": .string(d.label), "score": .number(Double(d.score)), "box": .array(d.box.map { .number(Double($0)) })])
            })])
        },
    ]

    static let asifOperations: [Operation] = [
        Operation("asif_classify", "ASIF zero-shot classification: the best label and every label's score.",
                  arguments: [.component("asif", kind: "asif"), .value("image", .image), .value("labels", .texts),
                              .value("templates", .texts, default: .array([.string("a photo of a {}.")])),
                              .value("k", .number, default: .number(800)), .value("p", .number, default: .number(8))],
                  output: .record(["label": .text, "scores": .json])) { input in
            let asif = try input.component("asif", as: ASIFComponent.self)
            let labels = try input.texts("labels")
            let settings = ASIFSettings(k: try input.integer("k"), p: Float(try input.number("p")))
            let scores = try asif.index.classify(images: asif.image.embed([input.image("image")]), labels: labels,
                                                 templates: input.texts("templates"), text: asif.text, settings: settings).scalars
            let best = rankings(Tensor(shape: [1, scores.count], scalars: scores))[0].first ?? 0
            return .object(["label": .string(labels[best]),
                            "scores": .object(Dictionary(zip(labels, scores.map { .number(Double($0)) }), uniquingKeysWith: { a, _ in a }))])
        },
        Operation("asif_retrieve", "ASIF image-to-text retrieval from `texts` (default: the anchor captions, i.e. captioning by retrieval), best first.",
                  arguments: [.component("asif", kind: "asif"), .value("image", .image), .value("texts", .texts, default: .array([])),
                              .value("top", .number, default: .number(5)), .value("k", .number, default: .number(800)), .value("p", .number, default: .number(8))],
                  output: .record(["texts": .texts, "scores": .json])) { input in
            let asif = try input.component("asif", as: ASIFComponent.self)
            let given = try input.texts("texts")
            let pool = given.isEmpty ? asif.index.captions : given
            let settings = ASIFSettings(k: try input.integer("k"), p: Float(try input.number("p")))
            let scores = try asif.index.scores(images: try asif.image.embed([input.image("image")]), texts: try asif.text.embed(pool), settings: settings)
            let ranked = Array(rankings(scores)[0].prefix(max(0, try input.integer("top"))))
            return .object(["texts": .array(ranked.map { .string(pool[$0]) }), "scores": .array(ranked.map { .number(Double(scores[0, $0])) })])
        },
    ]
}

/// An anchor index with its two encoders, as graphs hold it.
final class ASIFComponent: @unchecked Sendable {
    let index: AnchorIndex
    let image: AnchorEncoder<RGBImage>
    let text: AnchorEncoder<String>

    init(index: AnchorIndex, image: AnchorEncoder<RGBImage>, text: AnchorEncoder<String>) {
        self.index = index
        self.image = image
        self.text = text
    }
}

extension OperationRegistry {

    /// Where a component's models are found: the environment's Hugging Face cache and hub, at option `revision`.
    static func locator(_ spec: ComponentSpec) -> ModelLocator {
        ModelLocator.fromEnvironment().at(revision: spec.options["revision"]?.string)
    }

    /// The precision a component's models load at: option `precision`, fp32 (default) or a reduced one (an error on a
    /// CPU without its kernels).
    static func precision(_ spec: ComponentSpec) throws -> Precision {
        guard let name = spec.options["precision"] else { return .fp32 }
        guard let precision = name.string.flatMap(Precision.init(rawValue:)) else {
            throw GraphError.badInput("option precision of a component is \(Precision.allCases.map(\.rawValue).joined(separator: " or ")), not \(name.canonicalJSON)")
        }
        if let reason = precision.unavailableReason { throw GraphError.badInput("precision \(precision.rawValue) of \(spec.model): \(reason)") }
        return precision
    }

    /// A component kind whose `model` (a folder or hub id) is loaded by the model type its config names (at option
    /// `precision`), and must have `capability`; identified by its checkpoint and options.
    static func modelKind<Capable>(_ name: String, providing: String? = nil, as capability: Capable.Type, models: ModelRegistry) -> ComponentKind {
        modelKind(name, providing: providing, models: models) { loaded, spec in _ = try ModelRegistry.require(loaded, spec: spec, as: capability) }
    }

    /// Detectors with fixed classes (YOLOX) and those asked with text queries (OWL-ViT); `detect` asks each for what it takes.
    static func detectorKind(models: ModelRegistry) -> ComponentKind {
        modelKind("detector", models: models) { loaded, spec in
            if !(loaded.object is any TextQueriedDetector) { _ = try ModelRegistry.require(loaded, spec: spec, as: (any ObjectDetector).self) }
        }
    }

    /// A model component loaded by whichever registered type its folder holds, once `check` accepts it.
    static func modelKind(_ name: String, providing: String? = nil, models: ModelRegistry,
                          check: @escaping @Sendable (LoadedModel, String) throws -> Void) -> ComponentKind {
        ComponentKind(name, provides: providing, load: { spec in
            let loaded = try Precision.$loading.withValue(try precision(spec)) { try models.load(spec.model, locator: locator(spec)) }
            try check(loaded, spec.model)
            return loaded.object
        }, identity: { spec in
            guard let folder = try? models.folder(spec.model, locator: locator(spec)) else { return "\(name):\(spec.model)" }
            guard let checkpoint = try? Checkpoint(folder: folder) else { return fileIdentity(name, spec, file: folder.path) }   // e.g. an ONNX detector
            return "\(name):\(checkpoint.identity):\(Value.object(spec.options).canonicalJSON)"
        })
    }

    static let clipOperations: [Operation] = [
        Operation("clip_embed_image", "CLIP's unit-length embedding of an image.",
                  arguments: [.component("clip", kind: "scorer"), .value("image", .image)], output: .json) { input in
            let clip = try input.component("clip", as: (any ImageTextScorer).self)
            return Value(try clip.imageEmbeddings([input.image("image")]).row(0))
        },
        Operation("clip_embed_text", "CLIP's unit-length embedding of a text.",
                  arguments: [.component("clip", kind: "scorer"), .value("text", .text)], output: .json) { input in
            let clip = try input.component("clip", as: (any ImageTextScorer).self)
            return Value(try clip.textEmbeddings([input.text("text")]).row(0))
        },
        Operation("clip_classify", "Zero-shot classification with a scorer: the best label, every label's probability and their kind "
                  + "(softmax over the labels for CLIP, each label's own sigmoid for SigLIP).",
                  arguments: [.component("clip", kind: "scorer"), .value("image", .image), .value("labels", .texts),
                              .value("templates", .texts, default: .array([.string("a photo of a {}.")]))],
                  output: .record(["label": .text, "probabilities": .json, "kind": .text])) { input in
            let clip = try input.component("clip", as: (any ImageTextScorer).self)
            let labels = try input.texts("labels")
            let probabilities = try clip.classify([input.image("image")], labels: labels, templates: input.texts("templates")).scalars
            let best = probabilities.indices.max { probabilities[$0] < probabilities[$1] } ?? 0
            return .object(["label": .string(labels[best]), "kind": .string(clip.labelProbabilityKind.rawValue),
                            "probabilities": .object(Dictionary(zip(labels, probabilities.map { .number(Double($0)) }), uniquingKeysWith: { a, _ in a }))])
        },
        Operation("clip_rank", "Texts ranked by a scorer's similarity to an image, best first, with their logits; `best` is the first (empty without texts).",
                  arguments: [.component("clip", kind: "scorer"), .value("image", .image), .value("texts", .texts)],
                  output: .record(["texts": .texts, "scores": .json, "best": .text])) { input in
            let clip = try input.component("clip", as: (any ImageTextScorer).self)
            let texts = try input.texts("texts")
            let ranked = texts.isEmpty ? [] : try clip.rank(texts, for: input.image("image"))
            return .object(["texts": .array(ranked.map { .string(texts[$0.index]) }), "scores": .array(ranked.map { .number(Double($0.logit)) }),
                            "best": .string(ranked.first.map { texts[$0.index] } ?? "")])
        },
    ]

    /// `DecodingOptions` as arguments, for operations that decode; `defaults` gives their defaults.
    static func decodingArguments(_ defaults: DecodingOptions) -> [OperationArgument] {
        [.value("strategy", .text, default: .string(defaults.strategy.rawValue)), .value("max_tokens", .number, default: .number(Double(defaults.maxTokens))),
         .value("stop", .texts, default: .array(defaults.stop.map(Value.string))),
         .value("temperature", .number, default: .number(Double(defaults.sampling.temperature))), .value("top_k", .number, default: .number(Double(defaults.sampling.topK))),
         .value("top_p", .number, default: .number(Double(defaults.sampling.topP))), .value("seed", .number, default: .number(Double(defaults.sampling.seed))),
         .value("beams", .number, default: .number(Double(defaults.beam.beams))), .value("length_penalty", .number, default: .number(defaults.beam.lengthPenalty)),
         .value("k", .number, default: .number(Double(defaults.contrastive.k))), .value("alpha", .number, default: .number(defaults.contrastive.alpha))]
    }

    /// The `DecodingOptions` an operation's `decodingArguments` give.
    static func decodingOptions(_ input: OperationInput) throws -> DecodingOptions {
        let name = try input.text("strategy")
        guard let strategy = DecodingOptions.Strategy(rawValue: name) else {
            throw GraphError.operationFailed(node: input.node, detail: "unknown strategy '\(name)' (\(DecodingOptions.Strategy.allCases.map(\.rawValue).joined(separator: ", ")))")
        }
        return DecodingOptions(strategy: strategy, maxTokens: try input.integer("max_tokens"), stop: try input.texts("stop"),
                               sampling: SamplingSettings(temperature: Float(try input.number("temperature")), topK: try input.integer("top_k"),
                                                          topP: Float(try input.number("top_p")), seed: UInt64(max(0, try input.integer("seed")))),
                               beam: BeamSettings(beams: try input.integer("beams"), lengthPenalty: try input.number("length_penalty")),
                               contrastive: ContrastiveSettings(k: try input.integer("k"), alpha: try input.number("alpha")))
    }

    static let languageModelOperations: [Operation] = [
        Operation("lm_generate", "Continue a prompt (too long a prompt keeps its end): strategy greedy, sample, beam or contrastive.",
                  arguments: [.component("lm", kind: "lm"), .value("prompt", .text)] + decodingArguments(DecodingOptions()), output: .text) { input in
            let lm = try input.component("lm", as: (any CausalLanguageModel).self)
            let options = try decodingOptions(input)
            let tokens = try decode(lm, prompt: lm.fitted(try lm.promptTokens(input.text("prompt")), leaving: options.maxTokens), options: options)
            return .string(try options.stopConditions.text(of: tokens, model: lm))
        },
        Operation("lm_score", "Total log-probability of `continuation` after `prompt`.",
                  arguments: [.component("lm", kind: "lm"), .value("prompt", .text), .value("continuation", .text)], output: .number) { input in
            let lm = try input.component("lm", as: (any CausalLanguageModel).self)
            let prompt = try lm.promptTokens(input.text("prompt"))
            return .number(Double(try lm.logProbabilities(of: lm.encode(input.text("continuation")), after: prompt).reduce(0, +)))
        },
        Operation("magic_decode", "MAGiC: a caption (or, with a title, a story) guided by CLIP towards the image, with the settings of a published "
                  + "script (preset mscoco, flickr30k or story; auto: story with a title, else mscoco), each overridden by k, alpha, beta, max_tokens; "
                  + "candidate texts reach CLIP as the published code formed them (clip_text published, or current).",
                  arguments: [.component("lm", kind: "lm"), .component("clip", kind: "scorer"), .value("image", .image),
                              .value("preset", .text, default: .string("auto")),
                              .value("k", .number, optional: true), .value("alpha", .number, optional: true), .value("beta", .number, optional: true),
                              .value("max_tokens", .number, optional: true),
                              .value("title", .text, default: .string("")), .value("stop", .texts, default: .array([])),
                              .value("clip_text", .text, default: .string("published")), .value("speedups", .bool, default: .bool(true))],
                  output: .record(["text": .text, "tokens": .json])) { input in
            let lm = try input.component("lm", as: (any CausalLanguageModel).self), clip = try input.component("clip", as: (any ImageTextScorer).self)
            let title = try input.text("title").isEmpty ? nil : try input.text("title")
            let clipText = try input.text("clip_text"), presetName = try input.text("preset")
            guard let text = MagicText(rawValue: clipText) else { throw GraphError.invalidValue("clip_text must be published or current, got '\(clipText)'") }
            guard let preset = presetName == "auto" ? (title == nil ? .mscoco : .story) : MagicPreset(rawValue: presetName) else {
                throw GraphError.operationFailed(node: input.node, detail: "unknown preset '\(presetName)' (auto, \(MagicPreset.allCases.map(\.rawValue).joined(separator: ", ")))")
            }
            var settings = preset.settings
            if input.arguments["k"] != nil { settings.k = try input.integer("k") }
            if input.arguments["alpha"] != nil { settings.alpha = try input.number("alpha") }
            if input.arguments["beta"] != nil { settings.beta = try input.number("beta") }
            settings.textTokenization = text.tokenization
            settings.speedups = input.arguments["speedups"] == .bool(true)
            let maxTokens = input.arguments["max_tokens"] != nil ? try input.integer("max_tokens") : preset.maxNewTokens(promptLength: try lm.magicPrompt(title: title).count)
            let caption = try magicCaption(lm, scorer: clip, image: input.image("image"), title: title, settings: settings,
                                           stop: StopConditions(maxTokens: maxTokens, strings: try input.texts("stop")))
            return .object(["text": .string(caption.text), "tokens": .array(caption.tokens.map { .number(Double($0)) })])
        },
    ]
}

/// A completion backend as graphs hold it.
final class CompletionComponent: @unchecked Sendable {
    let backend: CompletionBackend
    init(_ backend: CompletionBackend) { self.backend = backend }
}
