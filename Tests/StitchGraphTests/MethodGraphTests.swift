import Foundation
import StitchImaging
import StitchMethods
import StitchModelIO
import StitchModels
import StitchTensor
import StitchTestSupport
import StitchTokenizers
import XCTest
@testable import StitchGraph

/// Examples/socratic_caption.yaml and Examples/pica_okvqa.yaml, the methods' only implementations, against the
/// published-behaviour goldens (Tests/Fixtures/socratic and pica, make_fixtures.py).
final class MethodGraphTests: XCTestCase {
    static let examples = Fixtures.repositoryRoot.appendingPathComponent("Examples")

    /// A scorer whose embeddings are the goldens' rows: a text's by its text, an image's by its width (image i is i + 1
    /// pixels wide), so the graph ranks exactly what the notebook ranked.
    final class GoldenScorer: ImageTextScorer, @unchecked Sendable {
        let texts: [String: [Float]]
        let images: Tensor

        init(texts: [String: [Float]], images: Tensor) { (self.texts, self.images) = (texts, images) }

        func textEmbeddings(_ texts: [String]) throws -> Tensor {
            Tensor(shape: [texts.count, images.shape[1]], scalars: try texts.flatMap { text in
                guard let row = self.texts[text] else { throw MethodError.invalidInput("no golden embedding of '\(text)'") }
                return row
            })
        }
        func imageEmbeddings(_ images: [RGBImage]) throws -> Tensor { concatenate(images.map { self.images.row($0.width - 1).reshaped([1, self.images.shape[1]]) }, axis: 0) }
        func imageFeatures(of images: [RGBImage]) throws -> Tensor { try imageEmbeddings(images) }
        func textFeatures(of texts: [String]) throws -> Tensor { try textEmbeddings(texts) }
        func logits(imageFeatures: Tensor, textFeatures: Tensor) -> Tensor { matmul(imageFeatures, textFeatures, transposeB: true) }
    }

    /// An example graph with its `clip` component replaced by a test kind, read where it lies (its ../Prompts readable).
    func exampleGraph(_ name: String, clip kind: String, registry: OperationRegistry) throws -> Graph {
        let file = Self.examples.appendingPathComponent(name).path
        let text = try String(contentsOfFile: file, encoding: .utf8)
        let replaced = text.replacingOccurrences(of: "clip: {kind: scorer, model: openai/clip-vit-base-patch32}", with: "clip: {kind: \(kind), model: \(kind)}")
        XCTAssertNotEqual(text, replaced, "the example names its clip component as expected")
        return try Graph.parse(replaced, file: file, registry: registry)
    }

    func testSocraticGraphEqualsThePublishedNotebook() async throws {
        let tensors = try Fixtures.tensors("socratic/embeddings.safetensors")
        let golden = try Fixtures.json("socratic/prompts.json") as! [String: Any]
        let prompts = golden["prompts"] as! [String]
        let promptsFolder = Fixtures.repositoryRoot.appendingPathComponent("Prompts")
        func lines(_ name: String) throws -> [String] { Value.textLines(try String(contentsOf: promptsFolder.appendingPathComponent(name), encoding: .utf8)) }
        let objects = try lines("socratic_objects.txt")
        let subset = (golden["object_rows"] as! [Int]).map { objects[$0] }
        var texts: [String: [Float]] = [:]
        func add(_ labels: [String], _ template: String, _ key: String) {
            for (i, label) in labels.enumerated() { texts[template.replacingOccurrences(of: "{}", with: label)] = tensors[key]!.row(i).scalars }
        }
        add(try lines("socratic_image_types.txt"), "This is a {}.", "image_types")
        add(["no people", "people"], "There are {} in this photo.", "any_people")
        add(try lines("socratic_people.txt"), "There {} in this photo.", "people")
        add(try lines("socratic_places.txt"), "Photo of a {}.", "places")
        add(subset, "Photo of a {}.", "objects")
        let scorer = GoldenScorer(texts: texts, images: tensors["images"]!)
        let registry = OperationRegistry.standard(trust: GraphTrust(readableFolders: [promptsFolder.path]))
        registry.register(ComponentKind("golden", provides: "scorer", load: { _ in scorer }, identity: { _ in "golden" }))
        let graph = try exampleGraph("socratic_caption.yaml", clip: "golden", registry: registry)
            .setting("objects", "labels", to: .array(subset.map(Value.string)))
        let runner = GraphRunner(graph: graph, registry: registry, cacheFolder: nil)
        let folder = try Fixtures.temporaryFolder()
        defer { try? FileManager.default.removeItem(at: folder) }
        for (i, expected) in prompts.enumerated() {
            let image = folder.appendingPathComponent("\(i).jpg").path
            try RGBImage(width: i + 1, height: 1, pixels: Array(repeating: UInt8(10 * i), count: 3 * (i + 1))).writeJPEG(to: image)
            let outputs = try await runner.run(inputs: ["image": .string(image)], outputs: ["prompt"])
            XCTAssertEqual(outputs["prompt"], .string(expected), "image \(i)")
        }
        XCTAssertEqual(runner.stats.componentsLoaded, 1, "the prompt needs CLIP alone: the LM never loads")
        XCTAssertGreaterThan(Set(prompts.map { $0.contains("There are no people") }).count, 1, "both branches of the people question")
        print("Socratic graph: \(prompts.count) prompts byte-identical to the notebook's logic")
    }

    /// The fixed texts of the notebook's prompt, written out by hand.
    func testSocraticPromptTemplate() throws {
        let template = try String(contentsOf: Fixtures.repositoryRoot.appendingPathComponent("Prompts/socratic_caption.txt"), encoding: .utf8)
        let values = ["type": "photo", "people": "are two people", "place1": "beach", "place2": "harbor", "place3": "lake natural",
                      "objects": "surfboard, person, individual, umbrella"]
        XCTAssertEqual(try fillTemplate(template, values: .object(values.mapValues(Value.string)), node: "prompt"), .string("""
            I am an intelligent image captioning bot.
            This image is a photo. There are two people.
            I think this photo was taken at a beach, harbor, or lake natural.
            I think there might be a surfboard, person, individual, umbrella in this photo.
            A creative short caption I can generate to describe this image is:

            """))
    }

    /// On the published code's feature files, the graph's selection and prompts are the published ones; nothing loads
    /// (the features and the query are given, so the nodes that would compute them do not run).
    func testPICaGraphSelectsAndPromptsAsPublished() async throws {
        let files = ["train_question", "train_image", "val_question", "val_image"].map { Fixtures.url("pica/\($0).npy").path }
        let (trainQuestions, trainImages, valQuestions, valImages) = (try readNumpy(files[0]), try readNumpy(files[1]), try readNumpy(files[2]), try readNumpy(files[3]))
        let expected = (try Fixtures.json("pica/rankings.json") as! [String: Any])["published_selection"] as! [[Int]]
        let pool = (0..<trainQuestions.shape[0]).map { i in
            PICa.Example(context: "context \(i) {with braces}", question: "question \(i)?", answer: "answer \(i)")
        }
        let registry = OperationRegistry.standard(trust: GraphTrust(readableFolders: [Fixtures.repositoryRoot.appendingPathComponent("Prompts").path]))
        let shots = 2
        for (line, selection) in expected.enumerated().prefix(6) {
            let query = PICa.Example(context: "a dog. dog, bicycle", question: "what is line \(line)?")
            let graph = try Graph.load(Self.examples.appendingPathComponent("pica_okvqa.yaml").path, registry: registry)
                .setting("examples", "question", to: Value(valQuestions.row(line)))
                .setting("examples", "image", to: Value(valImages.row(line)))
                .setting("examples", "pool_questions", to: Value(trainQuestions))
                .setting("examples", "pool_images", to: Value(trainImages))
                .setting("examples", "count", to: .number(Double(selection.count)))
                .setting("prompts", "shots", to: .number(Double(shots)))
                .setting("prompts", "query", to: .object(query.fields.filter { $0.key != "answer" }.mapValues(Value.string)))
            let runner = GraphRunner(graph: graph, registry: registry, cacheFolder: nil)
            let poolValue = Value.array(pool.map { .object($0.fields.mapValues(Value.string)) })
            let outputs = try await runner.run(inputs: ["image": .string(Fixtures.photo("coffee.png").path), "question": .string(query.question), "pool": poolValue],
                                               outputs: ["prompts"])
            let published = try stride(from: 0, to: selection.count, by: shots).map { start in
                try PICa().prompt(examples: selection[start..<min(start + shots, selection.count)].map { pool[$0] }, test: query)
            }
            XCTAssertEqual(outputs["prompts"], .array(published.map(Value.string)), "val line \(line)")
            XCTAssertEqual(runner.stats.componentsLoaded, 0)
        }
    }
}
