import ArgumentParser
import Foundation
import StitchImaging
import StitchMethods
import StitchModelIO
import StitchModels
import StitchRemote

struct Demo: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Caption, detect, classify and answer a question about each photo of a demo file, with the published models.",
        discussion: """
        For each photo of the demo file (by default Examples/demo/demo.json: the bundled photos, a question each, \
        the labels CLIP chooses among and PICa's in-context examples) prints a MAGiC caption, a ViT-GPT2 caption, \
        YOLOX-Nano detections, CLIP's zero-shot label and PICa's answer (GPT-2), and writes an annotated image per \
        photo and one index.html showing them side by side. Hub models are downloaded into the standard cache on \
        first use. Offline (HF_HUB_OFFLINE=1 or no network) it says which models it could not get, runs what the \
        machine has (YOLOX-Nano is in the repository) and exits 0.
        """)

    @Argument(help: "The demo file (JSON): photos with their questions, labels, PICa examples.")
    var file = "Examples/demo/demo.json"

    @Option(name: .shortAndLong, help: "Folder for the annotated images and index.html.")
    var output = "stitch-demo"

    @Option(help: "MAGiC's language model.") var magicLm = "cambridgeltl/magic_mscoco"
    @Option(help: "Image-text scorer (CLIP, SigLIP, BLIP retrieval), for MAGiC and the zero-shot label.") var clip = "openai/clip-vit-base-patch32"
    @Option(help: "The trained captioner.") var captioner = "nlpconnect/vit-gpt2-image-captioning"
    @Option(help: "YOLOX-Nano folder.") var detector = "Tests/Fixtures/yolox-nano-coco"
    @Option(help: "PICa's language model.") var lm = "gpt2"
    @OptionGroup var hub: HubOptions

    struct Spec: Decodable {
        struct Photo: Decodable { let image: String; let question: String }
        struct Example: Decodable { let context: String; let question: String; let answer: String }
        let labels: [String]
        let photos: [Photo]
        let examples: [Example]
    }

    /// One photo's results; nil where the model it needs is missing.
    struct Report {
        var name: String
        var annotated: String
        var magic: String?
        var captioner: String?
        var detections: [Detection]?
        var label: (name: String, probability: Float)?
        var question: String
        var answer: String?

        /// CLIP's label and its probability: "a cup of coffee (0.93)".
        var labelText: String? { label.map { "\($0.name) (\(String(format: "%.2f", $0.probability)))" } }
    }

    func run() throws {
        guard let data = FileManager.default.contents(atPath: file) else { throw ValidationError("\(file): missing or unreadable") }
        let spec: Spec
        do { spec = try JSONDecoder().decode(Spec.self, from: data) } catch {
            throw ValidationError("\(file): not a demo file (labels, photos with image and question, examples): \(error)")
        }
        guard !spec.photos.isEmpty, !spec.labels.isEmpty else { throw ValidationError("\(file): needs photos and labels") }
        let folder = URL(fileURLWithPath: file).absoluteURL.deletingLastPathComponent()

        // Each model is optional: one that cannot be had is reported and its sections left out.
        var missing: [(model: String, role: String, reason: String)] = []
        var locator = hub.locator
        func get<Capable>(_ model: String, _ role: String, as capability: Capable.Type) -> Capable? {
            do { return try ModelRegistry.standard.load(model, as: capability, locator: locator) } catch {
                var reason = "\(error)"
                if case ModelIOError.download = error, !locator.offline {
                    // The hub is out of reach: the other models from the cache only, without waiting on retries.
                    locator.offline = true
                    reason += " (so the other models were looked for in the cache only)"
                }
                missing.append((model, role, reason))
                return nil
            }
        }
        let yolox = get(detector, "detections", as: (any ObjectDetector).self)
        let scorer = get(clip, "MAGiC caption, CLIP label", as: (any ImageTextScorer).self)
        let vitGPT2 = get(captioner, "ViT-GPT2 caption", as: (any ImageCaptioner).self)
        let magicLM = get(magicLm, "MAGiC caption", as: (any CausalLanguageModel).self)
        let answerer = get(lm, "PICa answer", as: (any CausalLanguageModel).self).map { LocalCompletionBackend(model: $0, name: lm) }
        let labelRows = try scorer?.labelEmbeddings(spec.labels, templates: ["a photo of {}."])

        try FileManager.default.createDirectory(atPath: output, withIntermediateDirectories: true)
        var reports: [Report] = []
        for photo in spec.photos {
            let path = URL(fileURLWithPath: photo.image, relativeTo: folder).standardizedFileURL.path   // relative to the demo file
            let image = try RGBImage(contentsOf: path)
            let name = URL(fileURLWithPath: path).deletingPathExtension().lastPathComponent
            var report = Report(name: URL(fileURLWithPath: path).lastPathComponent, annotated: "\(name).jpg", question: photo.question)
            var annotated = image
            if let yolox {
                let detections = try yolox.detect(image, threshold: 0.3, nmsThreshold: 0.45)
                Detect.annotate(&annotated, with: detections)
                report.detections = detections
            }
            try annotated.writeJPEG(to: URL(fileURLWithPath: output).appendingPathComponent(report.annotated).path)
            if let scorer, let labelRows {
                let probabilities = scorer.labelProbabilities(imageEmbeddings: try scorer.imageEmbeddings([image]), labelEmbeddings: labelRows).scalars
                let best = probabilities.indices.max { probabilities[$0] < probabilities[$1] }!
                report.label = (spec.labels[best], probabilities[best])
            }
            report.captioner = try vitGPT2?.caption(image, options: .captioner).text
            if let magicLM, let scorer {
                report.magic = try magicCaption(magicLM, scorer: scorer, image: image, title: nil, settings: MagicPreset.mscoco.settings,
                                                stop: StopConditions(maxTokens: MagicPreset.mscoco.maxNewTokens(promptLength: 1))).text
            }
            if let answerer {
                var tags: [String] = []
                for d in report.detections ?? [] where !tags.contains(d.label) { tags.append(d.label) }
                let context = PICa.context(caption: report.captioner ?? report.magic ?? "", tags: tags.joined(separator: ", "))
                let prompt = try PICa().prompt(examples: spec.examples.map { PICa.Example(context: $0.context, question: $0.question, answer: $0.answer) },
                                           test: PICa.Example(context: context, question: photo.question))
                report.answer = try PICa.answer(prompts: [prompt], backend: answerer).answer
            }
            print(Self.text(report))
            fflush(nil)
            reports.append(report)
        }
        let page = URL(fileURLWithPath: output).appendingPathComponent("index.html")
        try Data(Self.html(reports, missing: missing).utf8).write(to: page, options: .atomic)
        print("wrote \(output)/index.html and \(reports.count) annotated images")
        if !missing.isEmpty {
            var note = "stitch demo: ran without these models (offline, HF_HUB_OFFLINE=1, or not reachable; `stitch fetch MODEL` gets one when online):\n"
            for entry in missing { note += "  \(entry.model) (\(entry.role)): \(entry.reason)\n" }
            FileHandle.standardError.write(Data(note.utf8))
        }
    }

    static func describe(_ detections: [Detection]) -> String {
        detections.isEmpty ? "nothing found" : detections.map(Detect.labelText).joined(separator: ", ")
    }

    static func text(_ report: Report) -> String {
        let absent = "(model not available)"
        return """
        \(report.name)
          MAGiC caption:    \(report.magic ?? absent)
          ViT-GPT2 caption: \(report.captioner ?? absent)
          detections:       \(report.detections.map(describe) ?? absent)
          CLIP label:       \(report.labelText ?? absent)
          question:         \(report.question)
          PICa answer:      \(report.answer ?? absent)
        """
    }

    static func html(_ reports: [Report], missing: [(model: String, role: String, reason: String)]) -> String {
        func escape(_ text: String) -> String {
            text.replacingOccurrences(of: "&", with: "&amp;").replacingOccurrences(of: "<", with: "&lt;")
                .replacingOccurrences(of: ">", with: "&gt;").replacingOccurrences(of: "\"", with: "&quot;")
        }
        let absent = "<em>model not available</em>"
        var page = """
        <!DOCTYPE html>
        <html><head><meta charset="utf-8"><title>Stitch demo</title>
        <style>body{font-family:sans-serif;margin:2em}.photo{display:flex;gap:2em;margin-bottom:2em}img{max-width:480px}
        th{text-align:left;padding-right:1em;vertical-align:top}</style></head><body>
        <h1>Stitch demo</h1>

        """
        if !missing.isEmpty {
            page += "<p>Ran without: " + missing.map { "<code>\(escape($0.model))</code> (\(escape($0.role)))" }.joined(separator: ", ") + ".</p>\n"
        }
        for report in reports {
            let rows: [(String, String?)] = [
                ("MAGiC caption", report.magic.map(escape)),
                ("ViT-GPT2 caption", report.captioner.map(escape)),
                ("Detections", report.detections.map { escape(describe($0)) }),
                ("CLIP label", report.labelText.map(escape)),
                ("Question", escape(report.question)),
                ("PICa answer", report.answer.map(escape)),
            ]
            page += "<div class=\"photo\"><img src=\"\(escape(report.annotated))\" alt=\"\(escape(report.name))\"><table>\n"
            for (title, value) in rows { page += "<tr><th>\(title)</th><td>\(value ?? absent)</td></tr>\n" }
            page += "</table></div>\n"
        }
        return page + "</body></html>\n"
    }
}
