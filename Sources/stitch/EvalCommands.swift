import ArgumentParser
import Foundation
import StitchMethods

struct Evaluate: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "eval", abstract: "Score outputs against references with the standard metrics.",
        subcommands: [EvaluateCaptions.self, EvaluateVQA.self])
}

struct EvaluateCaptions: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "captions",
        abstract: "BLEU-1..4, METEOR, ROUGE-L and CIDEr-D of captions, as the COCO caption evaluation computes them.",
        discussion: """
        References are a COCO annotations file ({"annotations": [{"image_id", "caption"}, ...]}); results are a COCO \
        results file ([{"image_id", "caption"}, ...]), one caption per image. Captions are tokenized as the evaluation's \
        PTBTokenizer does, then scored as pycocoevalcap scores them (document frequencies for CIDEr-D come from the \
        references of the evaluated images). METEOR is the official METEOR 1.5 jar run as pycocoevalcap runs it \
        (--meteor-jar, or the one an installed pycocoevalcap holds; needs java); METEOR-F, always given, is not \
        METEOR: its unigram F-mean with Porter-stem matching, without the fragmentation penalty or paraphrases, for \
        machines without Java. Result images without references are an error; reference images without a result and \
        captions left empty by tokenization are counted (and listed with --per-image, in the evaluation's order: the \
        references' images list). Prints one JSON object.
        """)

    @Option(help: "meteor-1.5.jar (with its data/ folder), auto (an installed pycocoevalcap's, when java is on the PATH) or none.")
    var meteorJar = "auto"

    @Option(help: "COCO-format results: [{\"image_id\": ..., \"caption\": ...}].")
    var results: String

    @Option(help: "COCO-format references: {\"annotations\": [{\"image_id\": ..., \"caption\": ...}]}.")
    var references: String

    @Flag(help: "Also list every image's scores.")
    var perImage = false

    func run() throws {
        let referenceFile = try jsonDocument(references)
        let referenceEntries = try Self.entries(jsonObjects(referenceFile, of: references, key: "annotations"), of: references)
        let resultEntries = try Self.entries(jsonObjects(results, key: nil), of: results)
        var referencesByImage: [String: [String]] = [:]
        for (image, caption) in referenceEntries { referencesByImage[image, default: []].append(caption) }
        var resultByImage: [String: String] = [:]
        for (image, caption) in resultEntries {
            guard resultByImage.updateValue(caption, forKey: image) == nil else { throw ValidationError("\(results): image \(image) has more than one caption") }
            guard referencesByImage[image] != nil else { throw ValidationError("\(results): image \(image) has no references in \(references)") }
        }
        guard !resultByImage.isEmpty else { throw ValidationError("\(results): no captions to score") }
        // The official evaluation's order: the references' images list (else the annotations' order), answered images only.
        // It matters: the tokenizer reads each set of captions as one text, and a few of its rules look at the next line.
        let listed = ((try? jsonObjects(referenceFile, of: references, key: "images")) ?? []).compactMap { $0["id"].map { "\($0)" } }
        var images: [String] = [], placed = Set<String>()
        for image in listed + referenceEntries.map(\.0) where resultByImage[image] != nil && placed.insert(image).inserted { images.append(image) }
        let rawReferences = images.map { referencesByImage[$0]! }, rawCandidates = images.map { resultByImage[$0]! }
        let lineBreaks = (rawReferences.joined() + rawCandidates).filter(CaptionTokenizer.holdsLineBreak).count
        if lineBreaks > 0 {
            FileHandle.standardError.write(Data("""
                warning: \(lineBreaks) captions hold line breaks other than LF (CR, VT, FF, U+2028, U+2029); as in the official \
                evaluation, captions after them are scored with the tokens of earlier captions\n
                """.utf8))
        }
        let candidates = CaptionTokenizer.tokenize(rawCandidates)
        let flatReferences = CaptionTokenizer.tokenize(rawReferences.flatMap { $0 })
        guard candidates.count == rawCandidates.count, flatReferences.count == rawReferences.joined().count else {
            throw ValidationError("a caption ends in CR, which joins it with the next caption's line; the official evaluation fails on such files")
        }
        var grouped: [[String]] = [], offset = 0
        for group in rawReferences {
            grouped.append(Array(flatReferences[offset..<offset + group.count]))
            offset += group.count
        }
        let (corpus, each) = CaptionMetrics.score(candidates: candidates, references: grouped)
        var report = Self.fields(corpus)
        report["images"] = candidates.count
        let unanswered = Set(referencesByImage.keys).subtracting(images).sorted()
        let empty = zip(images, candidates).filter { $0.1.isEmpty }.map(\.0)
        report["reference_images_without_result"] = unanswered.count
        report["empty_captions"] = empty.count
        var meteor: [Double]?
        if let jar = meteorJarURL() {
            let scores = try MeteorJar(jar: jar).score(candidates: candidates, references: grouped)
            report["METEOR"] = scores.corpus
            meteor = scores.perImage
        }
        if perImage {
            report["per_image"] = images.indices.map { i in
                var fields = Self.fields(each[i])
                fields["image_id"] = images[i]
                if let meteor { fields["METEOR"] = meteor[i] }
                return fields
            }
            report["reference_images_without_result_ids"] = unanswered
            report["empty_caption_ids"] = empty
        }
        try printJSONLine(report)
    }

    /// The METEOR jar to run: the one named, an installed pycocoevalcap's (auto, with java on the PATH), or none.
    func meteorJarURL() -> URL? {
        switch meteorJar {
        case "none": return nil
        case "auto": return MeteorJar.installed()
        default: return URL(fileURLWithPath: meteorJar)
        }
    }

    static func fields(_ scores: CaptionScores) -> [String: Any] {
        var fields: [String: Any] = ["METEOR-F": scores.meteorF, "ROUGE-L": scores.rougeL, "CIDEr-D": scores.ciderD]
        for (k, value) in scores.bleu.enumerated() { fields["BLEU-\(k + 1)"] = value }
        return fields
    }

    /// (image id as text, caption) pairs of the entries of the COCO file `path`.
    static func entries(_ items: [[String: Any]], of path: String) throws -> [(String, String)] {
        try items.enumerated().map { index, item in
            guard let image = item["image_id"].map({ "\($0)" }), let caption = item["caption"] as? String else {
                throw ValidationError("\(path): entry \(index) needs an image_id and a caption string")
            }
            guard caption.utf16.count <= CaptionTokenizer.maximumLength else {
                throw ValidationError("\(path): the caption of entry \(index) (image \(image)) is \(caption.utf16.count) characters long; "
                                      + "captions over \(CaptionTokenizer.maximumLength) are refused (the tokenizer's work grows with the square of their length)")
            }
            return (image, caption)
        }
    }
}

struct EvaluateVQA: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "vqa",
        abstract: "VQA accuracy as the official VQA evaluator computes it (answer normalisation, min(1, matches / 3) over the annotators).",
        discussion: """
        Annotations are a VQA annotations file ({"annotations": [{"question_id", "answers": [{"answer"}, ...], \
        "answer_type", "question_type"}, ...]}); results are [{"question_id", "answer"}, ...]. Prints one JSON object: \
        overall accuracy and per answer type and question type, in percent rounded to 2 places as the evaluator does.
        """)

    @Option(help: "Results: [{\"question_id\": ..., \"answer\": ...}].")
    var results: String

    @Option(help: "VQA annotations: {\"annotations\": [{\"question_id\", \"answers\": [{\"answer\"}]}]}.")
    var annotations: String

    @Flag(help: "Also list every question's accuracy.")
    var perQuestion = false

    func run() throws {
        let annotationItems = try jsonObjects(annotations, key: "annotations")
        var byQuestion: [String: (answers: [String], answerType: String, questionType: String)] = [:]
        for (index, item) in annotationItems.enumerated() {
            guard let id = item["question_id"].map({ "\($0)" }), let answers = item["answers"] as? [[String: Any]] else {
                throw ValidationError("\(annotations): annotation \(index) needs a question_id and an answers list")
            }
            byQuestion[id] = (answers.compactMap { $0["answer"] as? String }, item["answer_type"] as? String ?? "other",
                              item["question_type"] as? String ?? "none")
        }
        var overall: [Double] = [], byAnswerType: [String: [Double]] = [:], byQuestionType: [String: [Double]] = [:]
        var each: [[String: Any]] = []
        for (index, item) in try jsonObjects(results, key: nil).enumerated() {
            guard let id = item["question_id"].map({ "\($0)" }), let answer = item["answer"] as? String else {
                throw ValidationError("\(results): result \(index) needs a question_id and an answer string")
            }
            guard let truth = byQuestion[id] else { throw ValidationError("\(results): question \(id) is not in \(annotations)") }
            let accuracy = VQAAccuracy.score(prediction: answer, answers: truth.answers)
            overall.append(accuracy)
            byAnswerType[truth.answerType, default: []].append(accuracy)
            byQuestionType[truth.questionType, default: []].append(accuracy)
            if perQuestion { each.append(["question_id": id, "accuracy": Self.percent([accuracy])]) }
        }
        guard !overall.isEmpty else { throw ValidationError("\(results): no answers to score") }
        var report: [String: Any] = ["overall": Self.percent(overall), "questions": overall.count,
                                     "per_answer_type": byAnswerType.mapValues(Self.percent), "per_question_type": byQuestionType.mapValues(Self.percent)]
        if perQuestion { report["per_question"] = each }
        try printJSONLine(report)
    }

    /// Mean accuracy in percent, rounded to 2 places like the evaluator.
    static func percent(_ values: [Double]) -> Double { (100 * values.reduce(0, +) / Double(values.count) * 100).rounded() / 100 }

}

/// The objects of a JSON file's array: the one under `key`, or the top-level array.
func jsonObjects(_ path: String, key: String?) throws -> [[String: Any]] { try jsonObjects(jsonDocument(path), of: path, key: key) }

/// A JSON file, parsed.
func jsonDocument(_ path: String) throws -> Any {
    guard let data = FileManager.default.contents(atPath: path) else { throw ValidationError("\(path): missing or unreadable") }
    guard let root = try? JSONSerialization.jsonObject(with: data) else { throw ValidationError("\(path): not valid JSON") }
    return root
}

/// The objects of the array under `key` of the parsed file `path`, or of its top-level array.
func jsonObjects(_ root: Any, of path: String, key: String?) throws -> [[String: Any]] {
    let list: Any? = key.map { (root as? [String: Any])?[$0] as Any } ?? root
    guard let items = list as? [[String: Any]] else {
        throw ValidationError("\(path): expected \(key.map { "an object with an \"\($0)\" array" } ?? "an array") of objects")
    }
    return items
}
