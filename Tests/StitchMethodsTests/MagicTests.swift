import Foundation
import StitchImaging
import StitchModels
import StitchTensor
import StitchTestSupport
import StitchTokenizers
import XCTest
@testable import StitchMethods

/// MAGiC on tiny-gpt2 + tiny-clip against the Python reference of the published algorithm
/// (Sources/stitch/Resources/magic_reference.py, run by make_fixtures.py).
final class MagicTests: XCTestCase {
    let golden = DecodingGolden.shared.magic

    func imageFeatures(_ clip: CLIP) throws -> [Tensor] {
        try golden.images.map { path in
            try clip.imageFeatures(clip.preprocessor.batch([RGBImage(contentsOf: Fixtures.repositoryRoot.appendingPathComponent(path).path)]))
        }
    }

    /// The published text path (the default) and today's, each with and without Stitch's shortcuts, token-identical
    /// to the reference; captions printed as the published code prints them.
    func testMagicEqualsReferenceWithAndWithoutSpeedups() throws {
        let clip = try TinyModels.clipWithTokenizer()
        let captioner = MagicCaptioner(lm: try TinyModels.gpt2WithTokenizer(), scorer: clip)
        let features = try imageFeatures(clip)
        var compared = 0
        for setting in golden.settings {
            for (index, image) in features.enumerated() {
                for (text, expected) in [(MagicText.published, setting.outputs[index]), (.current, setting.outputs_current[index])] {
                    for speedups in [true, false] {
                        let settings = MagicSettings(k: setting.k, alpha: setting.alpha, beta: setting.beta, speedups: speedups, textTokenization: text.tokenization)
                        // The reference always decodes max_tokens tokens and trims afterwards.
                        let tokens = try captioner.generate(imageFeatures: image, prompt: [50256], settings: settings,
                                                            stop: StopConditions(maxTokens: setting.max_tokens, atEndToken: false))
                        XCTAssertEqual(tokens, expected, "k \(setting.k) alpha \(setting.alpha) beta \(setting.beta) \(text) speedups \(speedups)")
                        compared += 1
                    }
                }
                XCTAssertEqual(try captioner.lm.publishedMagicText(prompt: [50256], tokens: setting.outputs[index], story: false), setting.texts[index])
            }
        }
        XCTAssertGreaterThanOrEqual(compared, 6 * 3 * 4)
        let differing = golden.settings.map { zip($0.outputs, $0.outputs_current).filter { $0 != $1 }.count }.reduce(0, +)
        XCTAssertGreaterThan(differing, 0, "the fixture tells the published text path from today's")
        print("MAGiC: \(compared) captions (\(features.count) images x \(golden.settings.count) settings, published and current text, speedups on and off) token-identical to the reference; \(differing) differ between the two text paths")
    }

    /// The published text path where candidates complete accents, contractions, punctuation, a half-decoded character
    /// (U+FFFD), CJK and emoji: the candidate texts, their CLIP ids and the image term equal the reference's (chelsea.png).
    func testTargetedCandidateTextsEqualReference() throws {
        let lm = try TinyModels.gpt2WithTokenizer(), clip = try TinyModels.clipWithTokenizer()
        let image = try imageFeatures(clip)[0]
        XCTAssertGreaterThanOrEqual(golden.targeted.count, 10)
        var worst: Float = 0
        for step in golden.targeted {
            let texts = try step.candidates.map { Transformers47.cleanUpTokenization(try lm.decode(step.generated + [$0])) }
            XCTAssertEqual(texts, step.clip_texts, step.text)
            XCTAssertEqual(try clip.tokenize(texts, tokenization: .transformers47), step.clip_ids, step.text)
            for shares in [true, false] {
                let scorer = MagicScorer(scorer: clip, imageFeatures: image, decode: lm.decode, sharesPrefixes: shares, tokenization: .transformers47)
                worst = max(worst, maxAbsoluteDifference(try scorer.scores(generated: step.generated, candidates: step.candidates), step.scores))
            }
        }
        print("MAGiC targeted steps: \(golden.targeted.count) candidate sets, image term max difference \(worst)")
        XCTAssertLessThanOrEqual(worst, 1e-5)
    }

    /// Story mode as published: "title <|endoftext|>" as the prompt, the story text between the end tokens.
    func testStoryModeEqualsReference() throws {
        let clip = try TinyModels.clipWithTokenizer()
        let captioner = MagicCaptioner(lm: try TinyModels.gpt2WithTokenizer(), scorer: clip)
        let story = golden.story
        XCTAssertEqual(try captioner.lm.magicPrompt(title: story.title), story.prompt)
        for (index, image) in try imageFeatures(clip).prefix(story.outputs.count).enumerated() {
            let tokens = try captioner.generate(imageFeatures: image, prompt: story.prompt,
                                                settings: MagicSettings(k: story.k, alpha: story.alpha, beta: story.beta),
                                                stop: StopConditions(maxTokens: story.max_tokens, atEndToken: false))
            XCTAssertEqual(tokens, story.outputs[index])
            XCTAssertEqual(try captioner.lm.publishedMagicText(prompt: story.prompt, tokens: tokens, story: true), story.texts[index])
        }
    }

    /// The published scripts' settings; their decoding length counts the prompt.
    func testPresetsAreThePublishedScripts() {
        XCTAssertEqual(MagicPreset.mscoco.maxNewTokens(promptLength: 1), 15)
        XCTAssertEqual(MagicPreset.flickr30k.maxNewTokens(promptLength: 1), 19)
        XCTAssertEqual([MagicPreset.mscoco, .flickr30k, .story].map { [$0.settings.k, Int($0.settings.alpha * 100), Int($0.settings.beta * 100)] },
                       [[45, 10, 200], [25, 10, 200], [5, 60, 15]])
        XCTAssertEqual(MagicPreset.story.maxNewTokens(promptLength: 8), 92)
        XCTAssertEqual(MagicPreset.mscoco.settings.textTokenization, .transformers47)
    }

    /// Texts that share a CLIP token prefix: the cached-prefix path gives the full features.
    func testPrefixSharedTextFeaturesEqualFullOnes() throws {
        let clip = try TinyModels.clipWithTokenizer()
        let texts = ["a zebra standing", "a zebra standing in", "a zebra standings", "a zebra", "a zebra standing in the grass at night"]
        let tokens = try clip.tokenize(texts)
        let full = try clip.textFeatures(tokens)
        var cache = clip.makeTextCache()
        try clip.extendTextCache(&cache, to: Array(tokens[0].dropLast()))   // <sot> a zebra standing
        // Every text shares 0, 1 or 3 cached tokens, or (mixed in one packed batch) as many as it can.
        for shared in [[0, 0, 0, 0, 0], [1, 1, 1, 1, 1], [3, 3, 3, 3, 3], [4, 4, 3, 3, 4]] {
            let tails = zip(tokens, shared).map { Array($0[$1...]) }
            let features = try clip.textFeatures(tails: tails, sharedLengths: shared,
                                                 poolPositions: zip(tokens, shared).map { clip.poolPosition($0) - $1 }, after: cache)
            let difference = maxAbsoluteDifference(features.scalars, full.scalars)
            print("CLIP text features after cached prefixes of \(shared) tokens: max abs difference \(difference)")
            XCTAssertLessThanOrEqual(difference, 1e-5)
        }
        // Extending to another text keeps the common part and recomputes the rest.
        try clip.extendTextCache(&cache, to: Array(tokens[2].dropLast()))
        XCTAssertEqual(cache.tokens, Array(tokens[2].dropLast()))
        let features = try clip.textFeatures(tails: [[tokens[2].last!]], sharedLengths: [cache.tokens.count], poolPositions: [0], after: cache)
        XCTAssertLessThanOrEqual(maxAbsoluteDifference(features.scalars, full.rows(2..<3).scalars), 1e-5)
    }

    /// The scorer's magic scores with prefix sharing equal the plain computation over a few steps, on both text paths.
    func testScorerSharingMatchesPlainScores() throws {
        for tokenization in Transformers47.Tokenization.allCases { try assertSharingMatchesPlainScores(tokenization) }
    }

    func assertSharingMatchesPlainScores(_ tokenization: Transformers47.Tokenization) throws {
        let lm = try TinyModels.gpt2WithTokenizer(), clip = try TinyModels.clipWithTokenizer()
        let image = try imageFeatures(clip)[0]
        let shared = MagicScorer(scorer: clip, imageFeatures: image, decode: lm.decode, sharesPrefixes: true, tokenization: tokenization)
        let plain = MagicScorer(scorer: clip, imageFeatures: image, decode: lm.decode, sharesPrefixes: false, tokenization: tokenization)
        var generated: [Int] = []
        // Candidates mixing new words, word continuations, punctuation and duplicates of one text.
        let candidates = [257, 1110, 82, 13, 11, 262, 318, 257, 50256]
        for step in 0..<4 {
            let a = try shared.scores(generated: generated, candidates: candidates)
            let b = try plain.scores(generated: generated, candidates: candidates)
            XCTAssertLessThanOrEqual(maxAbsoluteDifference(a, b), 1e-6, "\(tokenization) step \(step)")
            XCTAssertEqual(a.reduce(0, +), 1, accuracy: 1e-5)
            let chosen = step % candidates.count
            try shared.chose(chosen)
            try plain.chose(chosen)
            generated.append(candidates[chosen])
        }
    }
    /// MAGiC with SigLIP in CLIP's place (tiny-gpt2 + tiny-siglip): token-identical to the published algorithm with the scorer
    /// swapped (magic_reference.magic_search with SigLIP's logits of max_length-padded texts), today's text path.
    func testMagicWithSigLIPScorerEqualsReference() throws {
        struct Golden: Decodable {
            struct Magic: Decodable {
                struct Setting: Decodable { let k: Int; let alpha: Double; let beta: Double; let max_tokens: Int; let outputs: [[Int]] }
                let images: [String]
                let settings: [Setting]
            }
            let magic: Magic
        }
        let golden = try JSONDecoder().decode(Golden.self, from: Data(contentsOf: Fixtures.url("tiny-siglip/golden.json"))).magic
        let folder = try Fixtures.temporaryFolder()
        defer { try? FileManager.default.removeItem(at: folder) }
        let siglip = try SigLIP(folder: Fixtures.modelWithTokenizer("tiny-siglip", in: folder))
        let captioner = MagicCaptioner(lm: try TinyModels.gpt2WithTokenizer(), scorer: siglip)
        var compared = 0
        for setting in golden.settings {
            for (index, name) in golden.images.enumerated() {
                let features = try siglip.imageFeatures(of: [RGBImage(contentsOf: Fixtures.photo(name).path)])
                let settings = MagicSettings(k: setting.k, alpha: setting.alpha, beta: setting.beta, textTokenization: .current)
                let tokens = try captioner.generate(imageFeatures: features, prompt: [50256], settings: settings,
                                                    stop: StopConditions(maxTokens: setting.max_tokens, atEndToken: false))
                XCTAssertEqual(tokens, setting.outputs[index], "\(name) k \(setting.k) alpha \(setting.alpha) beta \(setting.beta)")
                compared += 1
            }
        }
        XCTAssertEqual(compared, 6)
        print("MAGiC with SigLIP as the scorer: \(compared) captions token-identical to the reference")
    }
}
