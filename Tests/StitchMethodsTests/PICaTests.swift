import Foundation
import StitchModelIO
import StitchTensor
import StitchTestSupport
import XCTest
@testable import StitchMethods

final class PICaTests: XCTestCase {
    /// The prompt for fixed inputs, written out by hand from the published code (microsoft/PICa, gpt3_api_okvqa.py).
    func testPromptFormat() throws {
        let pica = PICa()
        let examples = [PICa.Example(context: "a man riding a wave on top of a surfboard.", question: "What is the man standing on?", answer: "surfboard"),
                        PICa.Example(context: "two zebras in a field", question: "How many stripes?", answer: "many")]
        let test = PICa.Example(context: PICa.context(caption: "a dog next to a bicycle", tags: "dog, bicycle, car"), question: "What brand is the bicycle?")
        let expected = """
        Please answer the question according to the above context.
        ===
        Context: a man riding a wave on top of a surfboard.
        ===
        Q: What is the man standing on?
        A: surfboard

        ===
        Context: two zebras in a field
        ===
        Q: How many stripes?
        A: many

        ===
        Context: a dog next to a bicycle. dog, bicycle, car
        ===
        Q: What brand is the bicycle?
        A:
        """
        XCTAssertEqual(try pica.prompt(examples: examples, test: test), expected)
        let header = try! String(contentsOf: Fixtures.repositoryRoot.appendingPathComponent("Prompts/pica_header.txt"), encoding: .utf8)
        XCTAssertEqual(try PICa(header: header).prompt(examples: examples, test: test), expected)
        XCTAssertEqual(try pica.prompt(examples: [], test: test), "Please answer the question according to the above context.\n===\n"
                       + "Context: a dog next to a bicycle. dog, bicycle, car\n===\nQ: What brand is the bicycle?\nA:")
    }

    /// Prompts and answer clean-up equal a reference written from the published code's logic on generated inputs
    /// (Tests/Fixtures/pica/prompts.json, make_fixtures.py make_pica_prompt_goldens).
    func testPromptsAndAnswersEqualThePublishedCode() throws {
        struct Case: Decodable { let examples: [[String]]; let test: [String]; let prompt: String }
        struct Golden: Decodable { let cases: [Case]; let answers: [String]; let cleaned: [String] }
        let golden = try JSONDecoder().decode(Golden.self, from: Data(contentsOf: Fixtures.url("pica/prompts.json")))
        for item in golden.cases {
            let examples = item.examples.map { PICa.Example(context: $0[0], question: $0[1], answer: $0[2]) }
            XCTAssertEqual(try PICa().prompt(examples: examples, test: PICa.Example(context: item.test[0], question: item.test[1])), item.prompt)
        }
        assertEveryInputMatches("PICa answer clean-up", inputs: golden.answers, expected: golden.cleaned, minimumCount: 200, PICa.cleanAnswer)
        print("PICa: \(golden.cases.count) prompts byte-identical to the published format")
    }

    /// On feature files as the published code reads them (.npy, float32), the selection equals its expression
    /// np.matmul(train, val[line]) (questions plus images), argsort()[-n:][::-1].
    func testSelectionOnPublishedFeatureFilesEqualsThePublishedCode() throws {
        let files = ["train_question", "train_image", "val_question", "val_image"].map { Fixtures.url("pica/\($0).npy").path }
        let (trainQuestions, trainImages, valQuestions, valImages) = (try readNumpy(files[0]), try readNumpy(files[1]), try readNumpy(files[2]), try readNumpy(files[3]))
        XCTAssertEqual(trainQuestions.shape, [400, 32])
        let expected = (try Fixtures.json("pica/rankings.json") as! [String: Any])["published_selection"] as! [[Int]]
        for (line, selection) in expected.enumerated() {
            let ranked = PICa.rankExamples(question: valQuestions.row(line), image: valImages.row(line), poolQuestions: trainQuestions, poolImages: trainImages)
            XCTAssertEqual(Array(ranked.prefix(selection.count)), selection, "val line \(line)")
        }
        print("PICa: the top \(expected[0].count) examples of \(expected.count) questions equal the published selection on .npy feature files")
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
