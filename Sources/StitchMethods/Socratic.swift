import Foundation
import StitchImaging
import StitchModels

/// Socratic-model captioning (Zeng et al. 2022): an image-text scorer (CLIP) ranks place categories, object
/// categories, image types and people counts zero-shot; the best fill a prompt template; a language model
/// samples candidate captions from it; the scorer re-ranks the candidates against the image.
public struct SocraticCaptioner: Sendable {
    public struct Categories: Sendable {
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

    /// CLIP's zero-shot view of the image: the best type and people count, the best `places` places and `objects` objects.
    public func scene(of image: RGBImage, scorer: any ImageTextScorer, categories: Categories) throws -> Scene {
        func ranked(_ labels: [String], _ template: String, _ count: Int) throws -> [String] {
            let probabilities = try scorer.classify([image], labels: labels, templates: [template]).scalars
            return Array(labels.indices.sorted { probabilities[$0] > probabilities[$1] || (probabilities[$0] == probabilities[$1] && $0 < $1) }
                .prefix(count).map { labels[$0] })
        }
        return Scene(imageType: try ranked(categories.imageTypes, "this is a {}.", 1)[0], people: try ranked(categories.people, "there {} in this photo.", 1)[0],
                     places: try ranked(categories.places, "a photo of a {}.", places), objects: try ranked(categories.objects, "a photo of a {}.", objects))
    }

    /// Samples `candidates` captions from the prompt (one line each, up to `maxTokens`) and returns them ranked by CLIP's
    /// image-text logit, best first; empty candidates are dropped.
    public func caption(_ image: RGBImage, scorer: any ImageTextScorer, backend: CompletionBackend, categories: Categories, candidates: Int = 10,
                        temperature: Double = 0.9, maxTokens: Int = 20, seed: UInt64 = 0) throws -> (prompt: String, ranked: [(caption: String, score: Float)]) {
        let prompt = prompt(try scene(of: image, scorer: scorer, categories: categories))
        let texts = try backend.complete(CompletionRequest(prompt: prompt, maxTokens: maxTokens, temperature: temperature, count: candidates,
                                                          stop: ["\n"], seed: seed))
            .map { $0.text.trimmingCharacters(in: .whitespacesAndNewlines) }.filter { !$0.isEmpty }
        guard !texts.isEmpty else { return (prompt, []) }
        return (prompt, try scorer.rank(texts, for: image).map { (texts[$0.index], $0.logit) })
    }
}
