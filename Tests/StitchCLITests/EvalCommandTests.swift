import Foundation
import StitchTestSupport
import XCTest

/// `stitch eval captions` from raw COCO-format files equals pycocoevalcap (PTBTokenizer, then the scorers).
final class EvalCommandTests: XCTestCase {
    func testCaptionEvaluationFromCOCOFiles() throws {
        let golden = try Fixtures.json("metrics/captions.json") as! [String: Any]
        let groups = golden["groups"] as! [[String: Any]]
        let folder = try Fixtures.temporaryFolder()
        defer { try? FileManager.default.removeItem(at: folder) }
        let references = folder.appendingPathComponent("refs.json"), results = folder.appendingPathComponent("res.json")
        let annotations = groups.enumerated().flatMap { i, g in (g["references"] as! [String]).map { ["image_id": i, "caption": $0] as [String: Any] } }
        try JSONSerialization.data(withJSONObject: ["annotations": annotations, "images": []]).write(to: references)
        try JSONSerialization.data(withJSONObject: groups.enumerated().map { i, g in ["image_id": i, "caption": g["candidate"]!] }).write(to: results)

        let run = try StitchCLI.run(["eval", "captions", "--results", results.path, "--references", references.path, "--per-image"])
        XCTAssertEqual(run.status, 0, run.errors)
        let report = try JSONSerialization.jsonObject(with: Data(run.output.utf8)) as! [String: Any]
        let bleu = golden["bleu"] as! [Double]
        for k in 0..<4 { XCTAssertEqual(report["BLEU-\(k + 1)"] as! Double, bleu[k], accuracy: 1e-4) }
        XCTAssertEqual(report["CIDEr-D"] as! Double, golden["cider"] as! Double, accuracy: 1e-4)
        XCTAssertEqual(report["ROUGE-L"] as! Double, golden["rouge_l"] as! Double, accuracy: 1e-4)
        XCTAssertEqual(report["images"] as? Int, groups.count)
        XCTAssertEqual((report["per_image"] as? [[String: Any]])?.count, groups.count)
        if let meteor = report["METEOR"] as? Double {   // an installed pycocoevalcap's jar and java were found
            XCTAssertEqual(meteor, golden["meteor"] as! Double, accuracy: 1e-9)
        }

        // Reference images without a result, and empty captions, are counted and listed, not dropped silently.
        try JSONSerialization.data(withJSONObject: [["image_id": 0, "caption": groups[0]["candidate"]!], ["image_id": 1, "caption": " . "]]).write(to: results)
        let partial = try StitchCLI.run(["eval", "captions", "--results", results.path, "--references", references.path, "--per-image", "--meteor-jar", "none"])
        XCTAssertEqual(partial.status, 0, partial.errors)
        let counted = try JSONSerialization.jsonObject(with: Data(partial.output.utf8)) as! [String: Any]
        XCTAssertEqual(counted["images"] as? Int, 2)
        XCTAssertEqual(counted["reference_images_without_result"] as? Int, groups.count - 2)
        XCTAssertEqual(counted["empty_captions"] as? Int, 1)
        XCTAssertEqual(counted["empty_caption_ids"] as? [String], ["1"])
        XCTAssertNil(counted["METEOR"], "--meteor-jar none")
        XCTAssertNotNil(counted["METEOR-F"])
        let missingJar = try StitchCLI.run(["eval", "captions", "--results", results.path, "--references", references.path, "--meteor-jar", "/nonexistent/meteor-1.5.jar"])
        XCTAssertNotEqual(missingJar.status, 0)
        XCTAssert(missingJar.errors.contains("/nonexistent/meteor-1.5.jar: no such METEOR jar"), missingJar.errors)

        // An image without references is an error naming both files.
        try JSONSerialization.data(withJSONObject: [["image_id": 999, "caption": "a cat"]]).write(to: results)
        let orphan = try StitchCLI.run(["eval", "captions", "--results", results.path, "--references", references.path])
        XCTAssertNotEqual(orphan.status, 0)
        XCTAssert(orphan.errors.contains("image 999 has no references"), orphan.errors)
        // A caption longer than any captioner writes is refused, naming the file and the image, not tokenized for hours.
        try JSONSerialization.data(withJSONObject: [["image_id": 0, "caption": String(repeating: "<!a ", count: 1100)]]).write(to: results)
        let long = try StitchCLI.run(["eval", "captions", "--results", results.path, "--references", references.path])
        XCTAssertNotEqual(long.status, 0)
        XCTAssert(long.errors.contains("image 0) is 4400 characters long"), long.errors)
        try Data("{not json".utf8).write(to: results)
        XCTAssert(try StitchCLI.run(["eval", "captions", "--results", results.path, "--references", references.path]).errors.contains("not valid JSON"))
    }

    /// Three COCO-format evaluations of 1,000+ images whose captions are adversarial (markup-like tokens, entities, quotes,
    /// runs of punctuation, dashes, numbers, abbreviations, contractions, other scripts, emoji, invisible characters; the
    /// third with line breaks inside captions), written and scored by pycocoevalcap in make_fixtures.py: every score of
    /// every image equal to 1e-9.
    func testAdversarialEvaluationsEqualPycocoevalcap() throws {
        for index in 1...3 {
            let name = "metrics/adversarial-\(index)"
            let golden = try Fixtures.json(name + "-scores.json") as! [String: Any]
            let run = try StitchCLI.run(["eval", "captions", "--results", Fixtures.url(name + "-results.json").path,
                                         "--references", Fixtures.url(name + "-references.json").path, "--per-image"])
            XCTAssertEqual(run.status, 0, run.errors)
            let report = try JSONSerialization.jsonObject(with: Data(run.output.utf8)) as! [String: Any]
            let perImage = report["per_image"] as! [[String: Any]]
            XCTAssertGreaterThanOrEqual(perImage.count, 1000)
            var worst = 0.0
            for metric in ["BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "ROUGE-L", "CIDEr-D"] {
                worst = max(worst, abs(report[metric] as! Double - (golden[metric] as! Double)))
                let expected = golden[metric + " per image"] as! [String: Double]
                XCTAssertEqual(Set(perImage.map { $0["image_id"] as! String }), Set(expected.keys))
                for image in perImage { worst = max(worst, abs(image[metric] as! Double - expected[image["image_id"] as! String]!)) }
            }
            var meteor = "not run (no java or pycocoevalcap here)"
            if let value = report["METEOR"] as? Double {
                XCTAssertEqual(value, golden["METEOR"] as! Double, accuracy: 1e-9)
                meteor = "difference \(abs(value - (golden["METEOR"] as! Double)))"
            }
            print("adversarial evaluation \(index) (\(perImage.count) images): BLEU-1..4, ROUGE-L, CIDEr-D max difference to pycocoevalcap \(worst), "
                  + "corpus and per image; METEOR \(meteor); CIDEr-D \(report["CIDEr-D"]!)")
            XCTAssertLessThanOrEqual(worst, 1e-9)
            XCTAssertEqual(run.errors.contains("line breaks other than LF"), index == 3, run.errors)
        }
    }

    /// `stitch eval vqa` on the 200 cases of Tests/Fixtures/metrics/vqa.json equals the official evaluator's overall accuracy.
    func testVQAEvaluation() throws {
        let golden = try Fixtures.json("metrics/vqa.json") as! [String: Any]
        let cases = golden["cases"] as! [[String: Any]]
        let folder = try Fixtures.temporaryFolder()
        defer { try? FileManager.default.removeItem(at: folder) }
        let annotations = folder.appendingPathComponent("annotations.json"), results = folder.appendingPathComponent("results.json")
        try JSONSerialization.data(withJSONObject: ["annotations": cases.map { c in
            ["question_id": c["question_id"]!, "answer_type": "other", "question_type": "what",
             "answers": (c["answers"] as! [String]).map { ["answer": $0] }] as [String: Any]
        }]).write(to: annotations)
        try JSONSerialization.data(withJSONObject: cases.map { ["question_id": $0["question_id"]!, "answer": $0["prediction"]!] }).write(to: results)
        let run = try StitchCLI.run(["eval", "vqa", "--results", results.path, "--annotations", annotations.path])
        XCTAssertEqual(run.status, 0, run.errors)
        let report = try JSONSerialization.jsonObject(with: Data(run.output.utf8)) as! [String: Any]
        XCTAssertEqual(report["overall"] as? Double, golden["overall"] as? Double)
        XCTAssertEqual(report["questions"] as? Int, 200)
        XCTAssertEqual((report["per_answer_type"] as? [String: Double])?["other"], golden["overall"] as? Double)
    }
}
