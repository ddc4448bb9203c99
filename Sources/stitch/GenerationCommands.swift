import ArgumentParser
import Foundation
import StitchImaging
import StitchMethods
import StitchModelIO
import StitchModels

enum Strategy: String, ExpressibleByArgument, CaseIterable {
    case greedy, sample, beam, contrastive
}

struct Generate: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Continue a prompt with GPT-2 and print the continuation.",
        discussion: "Strategies: greedy, sample (--temperature --top-k --top-p --seed), beam (--beams --length-penalty --early-stopping), contrastive (--k --alpha).")

    @Option(help: "GPT-2 model folder or hub id.")
    var model = "gpt2"

    @Option(help: "The text to continue (empty: start from the end-of-text token).")
    var prompt: String

    @Option(help: "Decoding strategy: \(Strategy.allCases.map(\.rawValue).joined(separator: ", ")).")
    var strategy = Strategy.greedy

    @Option(help: "At most this many new tokens.")
    var maxTokens = 32

    @Option(help: "Stop once the continuation contains this string (repeatable).")
    var stop: [String] = []

    @Option(help: "Sampling temperature.") var temperature: Float = 1
    @Option(help: "Sample from the k most likely tokens only (0: all).") var topK = 0
    @Option(help: "Sample from the smallest set of tokens reaching this probability.") var topP: Float = 1
    @Option(help: "Seed of the sampler.") var seed: UInt64 = 0
    @Option(help: "Beams of beam search.") var beams = 4
    @Option(help: "Beam search length penalty (> 0 favours longer outputs).") var lengthPenalty = 1.0
    @Flag(help: "Beam search stops once `beams` hypotheses have finished.") var earlyStopping = false
    @Option(help: "Candidates per step of contrastive search.") var k = 4
    @Option(help: "Degeneration penalty weight of contrastive search.") var alpha = 0.6

    @Flag(help: "Print a JSON object with the text and token ids.")
    var json = false

    @OptionGroup var hub: HubOptions

    func run() throws {
        let gpt2 = try GPT2(folder: try hub.locator.resolveModel(model, files: GPT2.files))
        let conditions = StopConditions(maxTokens: maxTokens, strings: stop)
        let chosen: DecodingStrategy
        switch strategy {
        case .greedy: chosen = .greedy
        case .sample: chosen = .sample(SamplingSettings(temperature: temperature, topK: topK, topP: topP, seed: seed))
        case .beam: chosen = .beam(BeamSettings(beams: beams, lengthPenalty: lengthPenalty, earlyStopping: earlyStopping))
        case .contrastive: chosen = .contrastive(ContrastiveSettings(k: k, alpha: alpha, beta: 0))
        }
        let generated = try decode(gpt2, prompt: try gpt2.promptTokens(prompt), strategy: chosen, stop: conditions)
        let text = try conditions.text(of: generated, model: gpt2)
        if json { try printJSONLine(["text": text, "tokens": generated]) } else { print(text) }
    }
}

enum CaptionMethod: String, ExpressibleByArgument, CaseIterable {
    case magic, contrastive, captioner, socratic
}

struct Caption: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Caption images with MAGiC (a language model guided by CLIP, Su et al. 2022) or a trained captioner.",
        discussion: """
        magic: one LM and one CLIP are loaded for all images. The LM starts from its start token (MAGiC's \
        <-start_of_text-> when its tokenizer has it, else <|endoftext|>); with --title it continues the title \
        instead (story mode). --method contrastive ignores the image (beta = 0). \
        captioner: a ViT-GPT2 VisionEncoderDecoder (--captioner) decodes by beam search (--beams; 1 is greedy) \
        or, with --sample, by sampling (--temperature --top-k --top-p --seed). \
        socratic: CLIP ranks places, objects, image types and people counts (lists in --categories), the prompt \
        template (Prompts/socratic_caption.txt) asks a language model (--lm, or a server with --lm-url) for \
        --candidates sampled captions, and CLIP keeps the best. \
        Prints "image<TAB>caption" per image, or JSON lines with --json.
        """)

    @Argument(help: "JPEG or PNG images; standard input lines when none.")
    var images: [String] = []

    @Option(help: "magic, contrastive (the LM alone), captioner or socratic.")
    var method = CaptionMethod.magic

    @Option(help: "GPT-2 language model folder or hub id (default cambridgeltl/magic_mscoco; gpt2 for socratic).")
    var lm: String?

    @OptionGroup var language: LanguageModelOptions

    @Option(help: "Folder of the socratic category lists and prompt template.")
    var categories = "Prompts"

    @Option(help: "Captions the socratic LM samples for CLIP to choose from.") var candidates = 10

    @Option(help: "CLIP model folder or hub id.")
    var clip = "openai/clip-vit-base-patch32"

    @Option(help: "Captioner folder or hub id (--method captioner).")
    var captioner = "nlpconnect/vit-gpt2-image-captioning"

    @Option(help: "Candidates per step.") var k = 45
    @Option(help: "Degeneration penalty weight.") var alpha = 0.1
    @Option(help: "Weight of CLIP's image-text score.") var beta = 2.0
    @Option(help: "New tokens at most (default 16; 15 for the captioner, its checkpoint's max_length 16 with the start token).")
    var maxTokens: Int?
    @Option(help: "Beams of the captioner's beam search (1: greedy).") var beams = 4
    @Flag(help: "The captioner samples instead of beam search.") var sample = false
    @Option(help: "Sampling temperature (default 1; 0.9 for socratic).") var temperature: Float?
    @Option(help: "Sample from the k most likely tokens only (0: all).") var topK = 0
    @Option(help: "Sample from the smallest set of tokens reaching this probability.") var topP: Float = 1
    @Option(help: "Seed of the sampler.") var seed: UInt64 = 0

    @Option(help: "Stop once the caption contains this string (repeatable), e.g. \".\".")
    var stop: [String] = []

    @Option(help: "Story mode: a title the LM continues, guided by the image.")
    var title: String?

    @Flag(help: "Run the reference's full computation instead of Stitch's exact shortcuts (same output, slower).")
    var noSpeedups = false

    @Flag(help: "Print one JSON object per image.")
    var json = false

    @OptionGroup var hub: HubOptions

    func run() throws {
        let paths = images.isEmpty ? standardInputLines() : images
        guard !paths.isEmpty else { throw ValidationError("no images given") }
        let makeCaption: (RGBImage) throws -> (tokens: [Int], text: String)
        if method == .captioner {
            let model = try hub.load(captioner, as: (any ImageCaptioner).self)
            let strategy: DecodingStrategy = sample ? .sample(SamplingSettings(temperature: temperature ?? 1, topK: topK, topP: topP, seed: seed))
                : beams == 1 ? .greedy : .beam(BeamSettings(beams: beams))
            let conditions = StopConditions(maxTokens: maxTokens ?? 15, strings: stop)
            makeCaption = { try model.caption($0, strategy: strategy, stop: conditions) }
        } else if method == .socratic {
            let vision = try hub.load(clip, as: (any ImageTextScorer).self)
            let folder = URL(fileURLWithPath: categories)
            let lists = try SocraticCaptioner.Categories(folder: folder)
            let template = try String(contentsOf: folder.appendingPathComponent("socratic_caption.txt"), encoding: .utf8)
            let socratic = SocraticCaptioner(template: template)
            let backend = try language.backend(local: lm ?? "gpt2", hub: hub)
            let tokens = maxTokens ?? 20
            makeCaption = { image in
                let result = try socratic.caption(image, scorer: vision, backend: backend, categories: lists, candidates: candidates,
                                                  temperature: Double(temperature ?? 0.9), maxTokens: tokens, seed: seed)
                return ([], result.ranked.first?.caption ?? "")
            }
        } else {
            let language = try hub.load(lm ?? "cambridgeltl/magic_mscoco", as: (any CausalLanguageModel).self)
            let vision = try hub.load(clip, as: (any ImageTextScorer).self)
            guard title.map({ !$0.isEmpty }) ?? true else { throw ValidationError("--title is empty") }
            let settings = ContrastiveSettings(k: k, alpha: alpha, beta: method == .magic ? beta : 0, speedups: !noSpeedups)
            let conditions = StopConditions(maxTokens: maxTokens ?? 16, strings: stop)
            makeCaption = { [title] image in try magicCaption(language, scorer: vision, image: image, title: title, settings: settings, stop: conditions) }
        }
        let progress = ProgressBar(total: paths.count, label: "captioning")
        for path in paths {
            let started = Date()
            let caption = try makeCaption(try RGBImage(contentsOf: path))
            if json {
                try printJSONLine(["image": path, "caption": caption.text, "tokens": caption.tokens, "seconds": Date().timeIntervalSince(started)])
            } else {
                print("\(path)\t\(caption.text)")
            }
            fflush(nil)   // each caption reaches a pipe as soon as it is made
            progress.advance()
        }
    }
}
