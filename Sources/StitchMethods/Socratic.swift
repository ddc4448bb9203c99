import Foundation
import StitchImaging
import StitchModels
import StitchTensor
import StitchTokenizers

/// Socratic-model captioning (Zeng et al. 2022) as the published image-captioning notebook does it: CLIP ranks image
/// types ("This is a {t}."), whether there are people and then how many ("There are {p} in this photo.", "There {p} in
/// this photo."), Places365 places and Tencent ML-Images objects ("Photo of a {x}.") zero-shot by cosine similarity; the
/// best fill the five-line prompt; a language model samples candidate captions (10 at temperature 0.9, at most 64
/// tokens, no stop); CLIP re-ranks the candidates against the image.
public struct SocraticCaptioner: Sendable {
    /// The category lists: Prompts/socratic_*.txt hold the notebook's (Scripts/make-socratic-lists).
    public struct Categories: Sendable {
        /// `people` are the counts asked once CLIP sees people ("is one person", "are two people", ...).
        public var places, objects, imageTypes, people: [String]

        public init(places: [String], objects: [String], imageTypes: [String], people: [String]) {
            (self.places, self.objects, self.imageTypes, self.people) = (places, objects, imageTypes, people)
        }

        /// The lists in Prompts/ (socratic_places.txt, socratic_objects.txt, socratic_image_types.txt, socratic_people.txt), one per line.
        public init(folder: URL) throws {
            func lines(_ name: String) throws -> [String] {
                let file = folder.appendingPathComponent(name)
                guard let text = try? String(contentsOf: file, encoding: .utf8) else {
                    throw MethodError.unreadableFile(file.path, "missing or unreadable (the category lists are in the repository's Prompts/)")
                }
                let entries = text.split(whereSeparator: \.isNewline).map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
                guard !entries.isEmpty else { throw MethodError.unreadableFile(file.path, "no categories") }
                return entries
            }
            self.init(places: try lines("socratic_places.txt"), objects: try lines("socratic_objects.txt"),
                      imageTypes: try lines("socratic_image_types.txt"), people: try lines("socratic_people.txt"))
        }
    }

    /// The categories' texts as unit embeddings [n, d], made once for any number of images.
    public struct Vocabulary: Sendable {
        public let categories: Categories
        public let imageTypes, anyPeople, people, places, objects: Tensor
        /// The first question about people, as the notebook asks it.
        public static let anyPeopleLabels = ["no people", "people"]

        public init(categories: Categories, imageTypes: Tensor, anyPeople: Tensor, people: Tensor, places: Tensor, objects: Tensor) {
            self.categories = categories
            (self.imageTypes, self.anyPeople, self.people, self.places, self.objects) = (imageTypes, anyPeople, people, places, objects)
        }

        /// The notebook's texts embedded by `scorer`.
        public init(categories: Categories, scorer: any ImageTextScorer) throws {
            self.init(categories: categories,
                      imageTypes: try scorer.textEmbeddings(categories.imageTypes.map { "This is a \($0)." }),
                      anyPeople: try scorer.textEmbeddings(Self.anyPeopleLabels.map { "There are \($0) in this photo." }),
                      people: try scorer.textEmbeddings(categories.people.map { "There \($0) in this photo." }),
                      places: try scorer.textEmbeddings(categories.places.map { "Photo of a \($0)." }),
                      objects: try scorer.textEmbeddings(categories.objects.map { "Photo of a \($0)." }))
        }
    }

    /// What CLIP saw, best first.
    public struct Scene: Sendable, Equatable {
        public var imageType: String, people: String
        public var places: [String], objects: [String]
    }

    public var template: String
    public var places = 3, objects = 10

    public init(template: String) { self.template = template.trimmingCharacters(in: .whitespacesAndNewlines) }

    /// The filled template: {type}, {people}, {place1}...{place3}, {objects} (comma-separated).
    public func prompt(_ scene: Scene) -> String {
        var text = template.replacingOccurrences(of: "{type}", with: scene.imageType).replacingOccurrences(of: "{people}", with: scene.people)
            .replacingOccurrences(of: "{objects}", with: scene.objects.joined(separator: ", "))
        for (i, place) in scene.places.enumerated() { text = text.replacingOccurrences(of: "{place\(i + 1)}", with: place) }
        return text
    }

    /// The zero-shot view of a unit image embedding [d]: each list ranked by cosine similarity, best first; people
    /// counted only when "people" beats "no people" (else "are no people").
    public func scene(imageEmbedding: Tensor, vocabulary: Vocabulary) -> Scene {
        func ranked(_ embeddings: Tensor, _ labels: [String]) -> [String] {
            let scores = matmul(embeddings, imageEmbedding.reshaped([imageEmbedding.count, 1]))   // [n, 1]
            return indicesByDescendingValue(scores.scalars).map { labels[$0] }
        }
        let categories = vocabulary.categories
        let seesPeople = ranked(vocabulary.anyPeople, Vocabulary.anyPeopleLabels)[0] == "people"
        return Scene(imageType: ranked(vocabulary.imageTypes, categories.imageTypes)[0],
                     people: seesPeople ? ranked(vocabulary.people, categories.people)[0] : "are no people",
                     places: Array(ranked(vocabulary.places, categories.places).prefix(places)),
                     objects: Array(ranked(vocabulary.objects, categories.objects).prefix(objects)))
    }

    public func scene(of image: RGBImage, scorer: any ImageTextScorer, vocabulary: Vocabulary) throws -> Scene {
        scene(imageEmbedding: try scorer.imageEmbeddings([image]).row(0), vocabulary: vocabulary)
    }

    /// Samples `candidates` captions from the prompt (each stripped of surrounding whitespace, as the notebook does)
    /// and returns them ranked by CLIP's image-text logit, best first.
    public func caption(_ image: RGBImage, scorer: any ImageTextScorer, backend: CompletionBackend, vocabulary: Vocabulary, candidates: Int = 10,
                        temperature: Double = 0.9, maxTokens: Int = 64, seed: UInt64 = 0) throws -> (prompt: String, ranked: [(caption: String, score: Float)]) {
        let prompt = prompt(try scene(of: image, scorer: scorer, vocabulary: vocabulary))
        let texts = try backend.complete(CompletionRequest(prompt: prompt, maxTokens: maxTokens, temperature: temperature, count: candidates, seed: seed))
            .map { String(PythonText.strip($0.text[...])) }
        guard !texts.isEmpty else { return (prompt, []) }
        return (prompt, try scorer.rank(texts, for: image).map { (texts[$0.index], $0.logit) })
    }
}
