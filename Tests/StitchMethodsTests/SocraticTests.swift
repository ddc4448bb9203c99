import Foundation
import StitchImaging
import StitchModels
import StitchTensor
import StitchTestSupport
import XCTest
@testable import StitchMethods

final class SocraticTests: XCTestCase {
    /// Candidates given in order, for a known re-ranking.
    struct FixedBackend: CompletionBackend {
        let texts: [String]
        var name: String { "fixed" }
        func complete(_ request: CompletionRequest) throws -> [Completion] {
            texts.prefix(request.count).map { Completion(text: $0, finishReason: "stop") }
        }
    }

    func template() throws -> String {
        try String(contentsOf: Fixtures.repositoryRoot.appendingPathComponent("Prompts/socratic_caption.txt"), encoding: .utf8)
    }

    /// The prompt for a fixed scene, written out by hand from the published notebook.
    func testPromptFromTemplate() throws {
        let scene = SocraticCaptioner.Scene(imageType: "photo", people: "are two people", places: ["beach", "harbor", "lake natural"],
                                            objects: ["surfboard", "person, individual", "umbrella"])
        XCTAssertEqual(SocraticCaptioner(template: try template()).prompt(scene), """
            I am an intelligent image captioning bot.
            This image is a photo. There are two people.
            I think this photo was taken at a beach, harbor, or lake natural.
            I think there might be a surfboard, person, individual, umbrella in this photo.
            A creative short caption I can generate to describe this image is:
            """)
    }

    /// Scenes and prompts equal what the published notebook's logic builds from the same embeddings, over the real lists
    /// (Tests/Fixtures/socratic, make_fixtures.py make_socratic_goldens).
    func testScenesAndPromptsEqualThePublishedNotebook() throws {
        let categories = try SocraticCaptioner.Categories(folder: Fixtures.repositoryRoot.appendingPathComponent("Prompts"))
        XCTAssertEqual([categories.places.count, categories.imageTypes.count, categories.people.count], [365, 4, 5])
        XCTAssertEqual(categories.places[8], "outdoor apartment building", "two-level Places365 names reversed")
        let tensors = try Fixtures.tensors("socratic/embeddings.safetensors")
        let golden = try Fixtures.json("socratic/prompts.json") as! [String: Any]
        let objectRows = golden["object_rows"] as! [Int]
        let subset = SocraticCaptioner.Categories(places: categories.places, objects: objectRows.map { categories.objects[$0] },
                                                  imageTypes: categories.imageTypes, people: categories.people)
        let vocabulary = SocraticCaptioner.Vocabulary(categories: subset, imageTypes: tensors["image_types"]!, anyPeople: tensors["any_people"]!,
                                                      people: tensors["people"]!, places: tensors["places"]!, objects: tensors["objects"]!)
        let socratic = SocraticCaptioner(template: try template())
        let prompts = golden["prompts"] as! [String]
        for (i, expected) in prompts.enumerated() {
            XCTAssertEqual(socratic.prompt(socratic.scene(imageEmbedding: tensors["images"]!.row(i), vocabulary: vocabulary)), expected, "image \(i)")
        }
        XCTAssertGreaterThan(Set(prompts.map { $0.contains("There are no people") }).count, 1, "both branches of the people question")
        print("Socratic: \(prompts.count) prompts byte-identical to the notebook's logic")
    }

    /// CLIP's zero-shot choices feed the prompt, and the candidates come back in CLIP's order.
    func testCaptionOnFixtureModels() throws {
        let zebra = Fixtures.photo("chelsea.png")
        let clip = try TinyModels.clipWithTokenizer()
        let categories = try SocraticCaptioner.Categories(folder: Fixtures.repositoryRoot.appendingPathComponent("Prompts"))
        let vocabulary = try SocraticCaptioner.Vocabulary(categories: categories, scorer: clip)
        let socratic = SocraticCaptioner(template: try template())
        let image = try RGBImage(contentsOf: zebra.path)
        let scene = try socratic.scene(of: image, scorer: clip, vocabulary: vocabulary)
        XCTAssertEqual(scene.places.count, 3)
        XCTAssertEqual(scene.objects.count, 10)
        XCTAssert(Set(scene.places).isSubset(of: categories.places) && Set(scene.objects).isSubset(of: categories.objects))
        let places = try clip.textEmbeddings(categories.places.map { "Photo of a \($0)." })
        let scores = matmul(places, try clip.imageEmbeddings([image]).reshaped([places.shape[1], 1])).scalars
        XCTAssertEqual(scene.places[0], categories.places[scores.indices.max { scores[$0] < scores[$1] }!])

        let texts = ["  zebras grazing in a field\n", "", "a red truck on a street", "two cats on a sofa"]
        let result = try socratic.caption(image, scorer: clip, backend: FixedBackend(texts: texts), vocabulary: vocabulary, candidates: 4)
        XCTAssertEqual(result.prompt, socratic.prompt(scene))
        let stripped = texts.map { $0.trimmingCharacters(in: .whitespacesAndNewlines) }
        XCTAssertEqual(result.ranked.map(\.caption), try clip.rank(stripped, for: image).map { stripped[$0.index] })
        XCTAssertEqual(result.ranked.map(\.score), result.ranked.map(\.score).sorted(by: >))
    }
}
