import Foundation
import StitchModelIO
import StitchModels
import StitchTokenizers
import XCTest

/// The tiny random-weight models of Tests/Fixtures, with the real tokenizers.
public enum TinyModels {
    public static let gpt2 = try! GPT2(folder: Fixtures.url("tiny-gpt2"))

    /// tiny-gpt2 with GPT-2's real tokenizer (decoding text needs it).
    public static func gpt2WithTokenizer() throws -> GPT2 {
        let (vocabulary, merges) = (Fixtures.tokenizerFile("gpt2-vocab.json"), Fixtures.tokenizerFile("gpt2-merges.txt"))
        let folder = Fixtures.url("tiny-gpt2")
        return try GPT2(config: loadConfig(GPT2Config.self, from: folder.appendingPathComponent("config.json")),
                        weights: WeightStore(folder: folder), tokenizer: GPT2Tokenizer(vocabularyFile: vocabulary.path, mergesFile: merges.path))
    }

    /// tiny-clip with CLIP's real tokenizer.
    public static func clipWithTokenizer() throws -> CLIP {
        let bpe = Fixtures.tokenizerFile("bpe_simple_vocab_16e6.txt.gz")
        let folder = Fixtures.url("tiny-clip")
        return try CLIP(config: loadConfig(CLIPConfig.self, from: folder.appendingPathComponent("config.json")),
                        weights: WeightStore(folder: folder), tokenizer: CLIPTokenizer(bpeFile: bpe.path))
    }
}

