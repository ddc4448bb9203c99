import ArgumentParser
import Foundation
import StitchGraph
import StitchImaging
import StitchMethods
import StitchModelIO
import StitchModels

extension DecodingOptions.Strategy: ExpressibleByArgument {}

/// `DecodingOptions` as command-line options: each command starts from its own defaults and the user's flags change them.
struct DecodingArguments: ParsableArguments {
    @Option(help: "Decoding strategy: \(DecodingOptions.Strategy.allCases.map(\.rawValue).joined(separator: ", ")) (default: the command's).")
    var strategy: DecodingOptions.Strategy?
    @Option(help: "At most this many new tokens (default: the command's).") var maxTokens: Int?
    @Option(help: "Stop once the text contains this string (repeatable), e.g. \".\".") var stop: [String] = []
    @Option(help: "Sampling temperature (default 1).") var temperature: Float?
    @Option(help: "Sample from the k most likely tokens only (default 0: all).") var topK: Int?
    @Option(help: "Sample from the smallest set of tokens reaching this probability (default 1).") var topP: Float?
    @Option(help: "Seed of the sampler (default 0).") var seed: UInt64?
    @Option(help: "Beams of beam search (default 4).") var beams: Int?
    @Option(help: "Beam search length penalty (> 0 favours longer outputs; default 1).") var lengthPenalty: Double?
    @Flag(help: "Beam search stops once `beams` hypotheses have finished.") var earlyStopping = false
    @Option(help: "Candidates per step of contrastive search and MAGiC (default 4; 45 for MAGiC).") var k: Int?
    @Option(help: "Degeneration penalty weight of contrastive search and MAGiC (default 0.6; 0.1 for MAGiC).") var alpha: Double?

    /// `defaults` with every option the user gave.
    func options(_ defaults: DecodingOptions) -> DecodingOptions {
        var options = defaults
        if let strategy { options.strategy = strategy }
        if let maxTokens { options.maxTokens = maxTokens }
        options.stop += stop
        if let temperature { options.sampling.temperature = temperature }
        if let topK { options.sampling.topK = topK }
        if let topP { options.sampling.topP = topP }
        if let seed { options.sampling.seed = seed }
        if let beams { options.beam.beams = beams }
        if let lengthPenalty { options.beam.lengthPenalty = lengthPenalty }
        if earlyStopping { options.beam.earlyStopping = true }
        if let k { options.contrastive.k = k }
        if let alpha { options.contrastive.alpha = alpha }
        return options
    }
}

struct Generate: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Continue a prompt with a language model (GPT-2) and print the continuation.",
        discussion: "Strategies: greedy (default, 32 tokens), sample (--temperature --top-k --top-p --seed), beam (--beams --length-penalty --early-stopping), contrastive (--k --alpha).")

    @Option(help: "Language model folder or hub id.")
    var model = "gpt2"

    @Option(help: "The text to continue (empty: start from the end-of-text token).")
    var prompt: String

    @OptionGroup var decoding: DecodingArguments

    @Flag(help: "Print a JSON object with the text and token ids.")
    var json = false

    @OptionGroup var hub: HubOptions

    @OptionGroup var precision: PrecisionOptions

    func run() throws {
        let lm = try hub.load(model, as: (any CausalLanguageModel).self, precision: precision)
        let options = decoding.options(DecodingOptions())
        let generated = try decode(lm, prompt: try lm.promptTokens(prompt), options: options)
        let text = try options.stopConditions.text(of: generated, model: lm)
        if json { try printJSONLine(["text": text, "tokens": generated]) } else { print(text) }
    }
}

enum CaptionMethod: String, ExpressibleByArgument, CaseIterable {
    case magic, contrastive, captioner, socratic
}

extension MagicPreset: ExpressibleByArgument {}
extension MagicText: ExpressibleByArgument {}

struct Caption: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Caption images with MAGiC (a language model guided by CLIP, Su et al. 2022) or a trained captioner.",
        discussion: """
        magic, contrastive and socratic run Examples/magic.yaml and Examples/socratic_caption.yaml (or --graph, a copy with a \
        step changed); flags not given keep the graph's settings. \
        magic: one LM and one CLIP are loaded for all images. The LM starts from its start token (MAGiC's \
        <-start_of_text-> when its tokenizer has it, else <|endoftext|>); with --title it continues "TITLE <|endoftext|>" \
        instead (story mode). --method contrastive ignores the image (beta = 0). \
        Settings come from the published scripts (--preset): mscoco (k 45, alpha 0.1, beta 2.0, 15 new tokens; the \
        default), flickr30k (k 25, alpha 0.1, beta 2.0, 19 new tokens) or story (k 5, alpha 0.6, beta 0.15, 100 tokens \
        with the title; the default with --title); --k, --alpha, --beta, --max-tokens override them. Candidate texts \
        reach CLIP as the published code formed them (--clip-text published: transformers 4.7.0's decode clean-up, \
        then its slow CLIP tokenizer without ftfy: accents stripped, punctuation split off) and captions are printed as \
        it printed them; --clip-text current uses today's CLIPTokenizerFast instead. \
        captioner: a captioner (--captioner: ViT-GPT2 or BLIP) decodes by beam search (4 beams, 15 new tokens) or any \
        --strategy (greedy; sample with --temperature --top-k --top-p --seed; contrastive with --k --alpha); with \
        --prompt the caption continues that text and begins with it (BLIP's conditional captioning). \
        socratic: as the published notebook, CLIP ranks image types, people (none, or how many), the 365 Places365 \
        places and the Tencent ML-Images objects (lists in --categories; their CLIP texts are embedded once per run), the \
        five-line prompt (Prompts/socratic_caption.txt) asks a language model (--lm, or a server with --lm-url) for \
        --candidates captions (temperature 0.9, at most 64 tokens), and CLIP keeps the best. \
        Prints "image<TAB>caption" per image, or JSON lines with --json.
        """)

    @Argument(help: "JPEG or PNG images; standard input lines when none.")
    var images: [String] = []

    @Option(help: "magic, contrastive (the LM alone), captioner or socratic.")
    var method = CaptionMethod.magic

    @Option(help: "Language model folder or hub id (default: the graph's; cambridgeltl/magic_mscoco for magic, gpt2 for socratic).")
    var lm: String?

    @OptionGroup var language: LanguageModelOptions

    @Option(help: "Folder of the socratic category lists and prompt template (socratic_places.txt, socratic_objects.txt, socratic_image_types.txt, socratic_people.txt, socratic_caption.txt; default: the graph's, from Prompts/).")
    var categories: String?

    @Option(help: "Captions the socratic LM samples for CLIP to choose from (the graph's: 10).") var candidates: Int?

    @Option(help: "Image-text scorer folder or hub id: CLIP, SigLIP or BLIP retrieval (default: the graph's, openai/clip-vit-base-patch32).")
    var clip: String?

    @Option(help: "Captioner folder or hub id (--method captioner): ViT-GPT2 (nlpconnect/vit-gpt2-image-captioning) or BLIP (Salesforce/blip-image-captioning-base, -large).")
    var captioner = "nlpconnect/vit-gpt2-image-captioning"

    @Option(help: "Text the captioner's caption continues and begins with (--method captioner; BLIP's conditional captioning: \"a picture of\").")
    var prompt: String?

    @Option(help: "Weight of CLIP's image-text score in MAGiC (default: the preset's).") var beta: Double?

    @Option(help: "MAGiC settings of the published scripts: mscoco, flickr30k or story (default mscoco; story with --title).")
    var preset: MagicPreset?

    @Option(help: "How MAGiC's candidate texts reach CLIP: published (transformers 4.7.0, as the published code) or current.")
    var clipText: MagicText?

    @OptionGroup var decoding: DecodingArguments

    @Option(help: "Story mode: a title the LM continues, guided by the image.")
    var title: String?

    @Flag(help: "Run the reference's full computation instead of Stitch's exact shortcuts (same output, slower).")
    var noSpeedups = false

    @OptionGroup var graph: MethodGraphOptions

    @Flag(help: "Print one JSON object per image.")
    var json = false

    @OptionGroup var hub: HubOptions

    @OptionGroup var precision: PrecisionOptions

    func run() throws {
        let paths = images.isEmpty ? standardInputLines() : images
        guard !paths.isEmpty else { throw ValidationError("no images given") }
        guard title.map({ !$0.isEmpty }) ?? true else { throw ValidationError("--title is empty") }
        guard prompt == nil || method == .captioner else { throw ValidationError("--prompt is for --method captioner") }
        let makeCaption: (String) throws -> (tokens: [Int], text: String)
        switch method {
        case .captioner:
            let model = try hub.load(captioner, as: (any ImageCaptioner).self, precision: precision)
            let options = decoding.options(.captioner)
            makeCaption = { [prompt] in try model.caption(RGBImage(contentsOf: $0), prompt: prompt, options: options) }
        case .socratic:
            let runner = try socraticGraph().runner()
            makeCaption = { path in ([], try MethodGraph.run(runner, ["image": .string(path)], outputs: ["caption"])["caption"]?.string ?? "") }
        case .magic, .contrastive:
            let runner = try magicGraph().runner()
            makeCaption = { [title] path in
                let outputs = try MethodGraph.run(runner, ["image": .string(path), "title": .string(title ?? "")])
                return ((outputs["tokens"]?.json as? [Int]) ?? [], outputs["caption"]?.string ?? "")
            }
        }
        let progress = ProgressBar(total: paths.count, label: "captioning")
        for path in paths {
            let started = Date()
            guard FileManager.default.fileExists(atPath: path) else { throw ValidationError("\(path): no such image") }
            let caption = try makeCaption(path)
            if json {
                try printJSONLine(["image": path, "caption": caption.text, "tokens": caption.tokens, "seconds": Date().timeIntervalSince(started)])
            } else {
                print("\(path)\t\(caption.text)")
            }
            fflush(nil)   // each caption reaches a pipe as soon as it is made
            progress.advance()
        }
    }

    /// Examples/magic.yaml filled from the flags; contrastive is MAGiC with beta 0 (the image ignored).
    func magicGraph() throws -> MethodGraph {
        var magic = try MethodGraph(example: "magic.yaml", options: graph)
        try magic.component("lm", model: lm, revision: hub.revision)
        try magic.component("clip", model: clip, revision: hub.revision)
        magic.precision(precision.precision)
        try magic.set("caption", "preset", preset.map { .string($0.rawValue) })
        try magic.set("caption", "k", decoding.k.map { .number(Double($0)) })
        try magic.set("caption", "alpha", decoding.alpha.map(Value.number))
        try magic.set("caption", "beta", method == .contrastive ? .number(0) : beta.map(Value.number))
        try magic.set("caption", "max_tokens", decoding.maxTokens.map { .number(Double($0)) })
        try magic.set("caption", "stop", decoding.stop.isEmpty ? nil : .array(decoding.stop.map(Value.string)))
        try magic.set("caption", "clip_text", clipText.map { .string($0.rawValue) })
        try magic.set("caption", "speedups", noSpeedups ? .bool(false) : nil)
        return magic
    }

    /// Examples/socratic_caption.yaml filled from the flags; --categories replaces its lists and prompt.
    func socraticGraph() throws -> MethodGraph {
        var socratic = try MethodGraph(example: "socratic_caption.yaml", options: graph, language: language)
        try socratic.component("clip", model: clip, revision: hub.revision)
        try socratic.languageModel("lm", local: lm, language, revision: hub.revision)
        socratic.precision(precision.precision)
        try socratic.set("candidates", "n", candidates.map { .number(Double($0)) })
        try socratic.set("candidates", "temperature", decoding.temperature.map { .number(Double($0)) })
        try socratic.set("candidates", "max_tokens", decoding.maxTokens.map { .number(Double($0)) })
        try socratic.set("candidates", "seed", decoding.seed.map { .number(Double($0)) })
        if let categories {
            let folder = URL(fileURLWithPath: categories)
            func read(_ name: String) throws -> String {
                let file = folder.appendingPathComponent(name)
                guard let text = try? String(contentsOf: file, encoding: .utf8) else { throw ValidationError("\(file.path): missing or unreadable") }
                return text
            }
            for (node, file) in [("places", "socratic_places.txt"), ("objects", "socratic_objects.txt"), ("image_type", "socratic_image_types.txt"), ("people_count", "socratic_people.txt")] {
                let labels = Value.textLines(try read(file))
                guard !labels.isEmpty else { throw ValidationError("\(folder.appendingPathComponent(file).path): no categories") }
                try socratic.set(node, "labels", .array(labels.map(Value.string)))
            }
            let template = try read("socratic_caption.txt")
            try socratic.set("prompt", "template", .string(template.hasSuffix("\n") ? String(template.dropLast()) : template))
        }
        return socratic
    }
}
