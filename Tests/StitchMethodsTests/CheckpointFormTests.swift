import Foundation
import StitchImaging
import StitchModelIO
import StitchModels
import StitchTensor
import StitchTestSupport
import XCTest
@testable import StitchMethods

/// Each tiny model as published checkpoints come: pytorch_model.bin in torch's zip format, in its legacy
/// format, and as two shards with an index (Tests/Fixtures/checkpoints, written by make_fixtures.py from the
/// same weights). Every form must give bit-identical features, logits and generated tokens to the safetensors form.
final class CheckpointFormTests: XCTestCase {
    let forms = ["zip", "legacy", "sharded"]
    let images = [Fixtures.url("images/rgb.jpg"), Fixtures.url("images/gradient.png")]

    func form(_ model: String, _ form: String) -> URL { Fixtures.url("checkpoints/\(model)/\(form)") }

    func testGPT2FormsAreIdentical() throws {
        let reference = try GPT2(folder: Fixtures.url("tiny-gpt2"))
        let prompt = [464, 2068, 7586, 21831, 18045, 625]
        for name in forms {
            let model = try GPT2(folder: form("tiny-gpt2", name))
            var a = reference.makeCache(), b = model.makeCache()
            XCTAssertEqual(try model.forward([prompt], cache: &b).scalars, try reference.forward([prompt], cache: &a).scalars, name)
            let stop = StopConditions(maxTokens: 12)
            XCTAssertEqual(try decode(model, prompt: prompt, strategy: .beam(BeamSettings(beams: 3)), stop: stop),
                           try decode(reference, prompt: prompt, strategy: .beam(BeamSettings(beams: 3)), stop: stop), name)
        }
    }

    func testCLIPFormsAreIdentical() throws {
        let reference = try CLIP(folder: Fixtures.url("tiny-clip"))
        let pixels = concatenate(try images.map { reference.preprocessor(try RGBImage(contentsOf: $0.path)).reshaped([1, 3, 224, 224]) }, axis: 0)
        let tokens = [[49406, 320, 1125, 539, 320, 22548, 49407], [49406, 1929, 49407]]
        for name in forms {
            let model = try CLIP(folder: form("tiny-clip", name))
            XCTAssertEqual(try model.imageFeatures(pixels).scalars, try reference.imageFeatures(pixels).scalars, name)
            XCTAssertEqual(try model.textFeatures(tokens).scalars, try reference.textFeatures(tokens).scalars, name)
        }
    }

    func testCaptionerFormsAreIdentical() throws {
        let reference = try VisionEncoderDecoder(folder: Fixtures.url("tiny-vit-gpt2"))
        for name in forms {
            let model = try VisionEncoderDecoder(folder: form("tiny-vit-gpt2", name))
            for path in images {
                let image = try RGBImage(contentsOf: path.path)
                let pixels = reference.preprocessor(image).reshaped([1, 3, 32, 32])
                XCTAssertEqual(try model.encoderStates(pixels).scalars, try reference.encoderStates(pixels).scalars, name)
                let stop = StopConditions(maxTokens: 12)
                XCTAssertEqual(try decode(model.decoder(for: image), prompt: model.startTokens, strategy: .beam(BeamSettings(beams: 4)), stop: stop),
                               try decode(reference.decoder(for: image), prompt: reference.startTokens, strategy: .beam(BeamSettings(beams: 4)), stop: stop), name)
            }
        }
    }

    func testSentenceEncoderFormsAreIdentical() throws {
        let reference = try SentenceEncoder(folder: Fixtures.url("tiny-bert"))
        let sentences = ["A dog runs on the beach.", "the cat was in the house", "unknown words: zyxwv"]
        let expected = try reference.encode(sentences).scalars
        XCTAssertGreaterThan(Set(expected).count, 10, "the embeddings are not degenerate")
        for name in forms {
            XCTAssertEqual(try SentenceEncoder(folder: form("tiny-bert", name)).encode(sentences).scalars, expected, name)
        }
    }
}
