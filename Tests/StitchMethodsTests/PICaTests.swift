import Foundation
import StitchTensor
import StitchTestSupport
import XCTest
@testable import StitchMethods

final class PICaTests: XCTestCase {
    /// The prompt for fixed inputs, written out by hand from the published format.
    func testPromptFormat() {
        let pica = PICa()
        let examples = [PICa.Example(context: PICa.context(caption: "a man riding a wave on a surfboard", tags: "person, surfboard"),
                                     question: "What is the man standing on?", answer: "surfboard"),
                        PICa.Example(context: PICa.context(caption: "two zebras in a field", tags: ""), question: "How many stripes?", answer: "many")]
        let test = PICa.Example(context: "a dog next to a bicycle. dog, bicycle, car", question: "What brand is the bicycle?")
        let expected = """
        Please answer the question according to the above context.
        ===
        Context: a man riding a wave on a surfboard. person, surfboard
        Question: What is the man standing on?
        Answer: surfboard
        ===
        Context: two zebras in a field
        Question: How many stripes?
        Answer: many
        ===
        Context: a dog next to a bicycle. dog, bicycle, car
        Question: What brand is the bicycle?
        Answer:
        """
        XCTAssertEqual(pica.prompt(examples: examples, test: test), expected)
        // The Prompts/ templates are the same format.
        let header = try! String(contentsOf: Fixtures.repositoryRoot.appendingPathComponent("Prompts/pica_header.txt"), encoding: .utf8)
        let template = try! String(contentsOf: Fixtures.repositoryRoot.appendingPathComponent("Prompts/pica_example.txt"), encoding: .utf8)
        XCTAssertEqual(PICa(header: header, exampleTemplate: template).prompt(examples: examples, test: test), expected)
        XCTAssertEqual(pica.prompt(examples: [], test: test), "Please answer the question according to the above context.\n===\n"
                       + "Context: a dog next to a bicycle. dog, bicycle, car\nQuestion: What brand is the bicycle?\nAnswer:")
    }

    /// In-context example ranking equals numpy's (Tests/Fixtures/pica).
    func testExampleRankingMatchesNumpy() throws {
        let tensors = try Fixtures.tensors("pica/embeddings.safetensors")
        let rankings = (try Fixtures.json("pica/rankings.json") as! [String: Any])["rankings"] as! [[Int]]
        for (i, expected) in rankings.enumerated() {
            let got = PICa.rankExamples(question: tensors["questions"]!.row(i), image: tensors["images"]!.row(i),
                                        poolQuestions: tensors["pool_questions"]!, poolImages: tensors["pool_images"]!)
            XCTAssertEqual(Array(got.prefix(20)), Array(expected.prefix(20)), "query \(i)")
        }
        print("PICa: example rankings of \(rankings.count) queries over 50 pool entries equal numpy's (top 20)")
    }
}
