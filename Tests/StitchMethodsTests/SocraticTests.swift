import Foundation
import StitchImaging
import StitchModels
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

    /// The prompt for a fixed scene, written out by hand from the published template.
    func testPromptFromTemplate() throws {
        let scene = SocraticCaptioner.Scene(imageType: "photo", people: "are two people", places: ["beach", "harbor", "lake"],
                                            objects: ["surfboard", "person", "umbrella"])
        XCTAssertEqual(SocraticCaptioner(template: try template()).prompt(scene),
                       "I am an intelligent image captioning bot. This image is a photo. There are two people. I think this photo was taken at a "
                       + "beach, harbor, or lake. I think there might be a surfboard, person, umbrella in this photo. "
                       + "A creative short caption I can generate to describe this image is:")
    }

    /// CLIP's zero-shot choices feed the prompt, and the candidates come back in CLIP's order.
    func testCaptionOnFixtureModels() throws {
        let zebra = Fixtures.photo("chelsea.png")
        let clip = try TinyModels.clipWithTokenizer()
        let categories = try SocraticCaptioner.Categories(folder: Fixtures.repositoryRoot.appendingPathComponent("Prompts"))
        let socratic = SocraticCaptioner(template: try template())
        let image = try RGBImage(contentsOf: zebra.path)
        let scene = try socratic.scene(of: image, scorer: clip, categories: categories)
        XCTAssertEqual(scene.places.count, 3)
        XCTAssertEqual(scene.objects.count, 10)
        XCTAssert(categories.imageTypes.contains(scene.imageType) && categories.people.contains(scene.people))
        XCTAssert(Set(scene.places).isSubset(of: categories.places) && Set(scene.objects).isSubset(of: categories.objects))
        let probabilities = try clip.classify([image], labels: categories.places, templates: ["a photo of a {}."]).scalars
        XCTAssertEqual(scene.places[0], categories.places[probabilities.indices.max { probabilities[$0] < probabilities[$1] }!])

        let texts = ["zebras grazing in a field", "", "a red truck on a street", "two cats on a sofa"]
        let result = try socratic.caption(image, scorer: clip, backend: FixedBackend(texts: texts), categories: categories, candidates: 4)
        XCTAssertEqual(result.prompt, socratic.prompt(scene))
        let kept = texts.filter { !$0.isEmpty }
        XCTAssertEqual(result.ranked.map(\.caption), try clip.rank(kept, for: image).map { kept[$0.index] })
        XCTAssertEqual(result.ranked.map(\.score), result.ranked.map(\.score).sorted(by: >))
    }
}
