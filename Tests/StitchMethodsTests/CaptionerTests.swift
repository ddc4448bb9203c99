import Foundation
import StitchImaging
import StitchModelIO
import StitchModels
import StitchTensor
import StitchTestSupport
import XCTest
@testable import StitchMethods

/// The tiny VisionEncoderDecoder (ViT + GPT-2 with cross-attention) of Tests/Fixtures/tiny-vit-gpt2
/// against transformers: pixels, decoder logits, and generate()'s greedy and beam-search captions.
final class CaptionerTests: XCTestCase {
    struct Golden: Decodable {
        struct Setting: Decodable {
            let beams: Int; let length_penalty: Double; let early_stopping: Bool; let max_tokens: Int; let end_token: Int; let outputs: [[Int]]
        }
        let images: [String]
        let decoder_input: [Int]
        let settings: [Setting]
    }

    func loadGolden() throws -> (Golden, [RGBImage]) {
        let golden = try JSONDecoder().decode(Golden.self, from: Data(contentsOf: Fixtures.url("tiny-vit-gpt2/golden.json")))
        return (golden, try golden.images.map { try RGBImage(contentsOf: Fixtures.repositoryRoot.appendingPathComponent($0).path) })
    }

    func testLogitsMatchTransformers() throws {
        let captioner = try VisionEncoderDecoder(folder: Fixtures.url("tiny-vit-gpt2"))
        XCTAssertNotEqual(captioner.config.encoder.hiddenSize, captioner.config.decoder.hiddenSize, "the fixture's encoder and decoder widths differ, so enc_to_dec_proj is used")
        let (golden, images) = try loadGolden()
        let tensors = try Fixtures.tensors("tiny-vit-gpt2/golden.safetensors")
        for (i, image) in images.enumerated() {
            let pixels = captioner.preprocessor(image)
            let pixelDifference = maxAbsoluteDifference(pixels.scalars, tensors["pixels.\(i)"]!.scalars)
            let decoder = try captioner.decoder(for: image)
            var cache = decoder.makeCache(batch: 1)
            let logits = decoder.logits(try decoder.forward([golden.decoder_input], cache: &cache)).scalars
            let difference = maxAbsoluteDifference(logits, tensors["logits.\(i)"]!.scalars)
            print("captioner image \(i): pixels max abs difference \(pixelDifference), decoder logits max abs difference \(difference)")
            XCTAssertLessThanOrEqual(pixelDifference, 1e-6)
            XCTAssertLessThanOrEqual(difference, 1e-4)
        }
    }

    func testCaptionsMatchGenerate() throws {
        let (golden, images) = try loadGolden()
        let captioner = try VisionEncoderDecoder(folder: Fixtures.url("tiny-vit-gpt2"))
        var compared = 0
        for setting in golden.settings {
            for (image, expected) in zip(images, setting.outputs) {
                let decoder = try captioner.decoder(for: image)
                let tokens: [Int]
                if setting.beams == 1 {
                    XCTAssertEqual(setting.end_token, decoder.endTokenID)
                    tokens = try greedyDecode(decoder, prompt: captioner.startTokens, stop: StopConditions(maxTokens: setting.max_tokens))
                } else {
                    tokens = try beamSearch(decoder, prompt: captioner.startTokens,
                                            settings: BeamSettings(beams: setting.beams, lengthPenalty: setting.length_penalty, earlyStopping: setting.early_stopping),
                                            maxTokens: setting.max_tokens, endToken: setting.end_token)
                }
                XCTAssertEqual(tokens, expected, "beams \(setting.beams), length penalty \(setting.length_penalty), end \(setting.end_token)")
                compared += 1
            }
        }
        print("captioner: \(compared) greedy and beam-search captions token-identical to transformers' generate")
        XCTAssertGreaterThanOrEqual(compared, 5)
    }

    /// Contrastive search and sampling run through the same conditioned decoder; candidates read the
    /// image memory too, so the shared-cache path equals copying the cache per candidate.
    func testCandidatePathsAttendToTheImage() throws {
        let captioner = try VisionEncoderDecoder(folder: Fixtures.url("tiny-vit-gpt2"))
        let pixels = Tensor(shape: [1, 3, 32, 32], scalars: (0..<3072).map { Float(($0 * 37) % 255) / 127.5 - 1 })
        let decoder = try captioner.decoder(pixels: pixels)
        var cache = decoder.makeCache(batch: 1)
        _ = try decoder.forward([captioner.startTokens + [5, 17]], cache: &cache)
        let shared = try decoder.forwardCandidates([3, 300, 42], after: cache).hidden
        let copied = try decoder.forwardCandidatesByCopying([3, 300, 42], after: cache).hidden
        XCTAssertLessThanOrEqual(maxAbsoluteDifference(shared.scalars, copied.scalars), 1e-5)
        let other = try captioner.decoder(pixels: Tensor(zeros: [1, 3, 32, 32]))
        XCTAssertNotEqual(try greedyDecode(decoder, prompt: captioner.startTokens, stop: StopConditions(maxTokens: 6)),
                          try greedyDecode(other, prompt: captioner.startTokens, stop: StopConditions(maxTokens: 6)))
        // A decoder cache without the image memory is refused, not silently run without cross-attention.
        var bare = captioner.decoder.makeCache(batch: 1)
        XCTAssertThrowsError(try captioner.decoder.forward([[5]], cache: &bare))
    }
}
