import ArgumentParser
import Foundation
import StitchModelIO
import StitchTokenizers

/// Text to token ids, one output line per input line, for checking and scripting.
struct Tokenize: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Print token ids for each text argument, or for each line of standard input.")

    enum Kind: String, ExpressibleByArgument, CaseIterable {
        case gpt2, clip, wordpiece, sentencepiece
        case tokenizerJSON = "tokenizer-json"
    }

    @Option(help: "Tokenizer: gpt2 (vocab.json + merges.txt), clip (vocab.json + merges.txt, or a bpe_simple_vocab_16e6.txt.gz file), wordpiece (vocab.txt), sentencepiece (spiece.model or tokenizer.model with tokenizer_config.json: SigLIP or Llama; or a .model file), tokenizer-json (tokenizer.json with tokenizer_config.json; or a .json file).")
    var kind: Kind

    @Option(help: "Model folder or hub id holding the tokenizer files (or, for clip, the .gz file).")
    var model: String

    @Flag(help: "Print the text of the ids instead of the ids.")
    var decode = false

    @Argument(help: "Texts to tokenize; standard input when none.")
    var texts: [String] = []

    @OptionGroup var hub: HubOptions

    func run() throws {
        let tokenizer = try load()
        let inputs = texts.isEmpty ? standardInputLines() : texts
        for text in inputs {
            let ids = try tokenizer.encode(text)
            print(decode ? try tokenizer.decode(ids) : ids.map(String.init).joined(separator: " "))
        }
    }

    private func load() throws -> any Tokenizer {
        let locator = hub.locator
        switch kind {
        case .clip where model.hasSuffix(".gz"): return try CLIPTokenizer(bpeFile: model)
        case .clip: return try CLIPTokenizer(folder: locator.resolve(model, files: ["vocab.json", "merges.txt"]))
        case .gpt2: return try GPT2Tokenizer(folder: locator.resolve(model, files: ["vocab.json", "merges.txt"]))
        case .wordpiece: return try WordPieceTokenizer(folder: locator.resolve(model, files: ["vocab.txt"]))
        case .sentencepiece where model.hasSuffix(".model"):
            return try SentencePieceTokenizer(modelFile: model, style: URL(fileURLWithPath: model).lastPathComponent == "spiece.model" ? .siglip : .llama(legacy: true))
        case .sentencepiece:
            let files = ModelFiles(required: [], optional: SentencePieceTokenizer.modelFiles + ModelFiles.tokenizerAndProcessorFiles, weights: false)
            return try SentencePieceTokenizer(folder: locator.resolveModel(model, files: files))
        case .tokenizerJSON where model.hasSuffix(".json"): return try TokenizerJSON(file: model)
        case .tokenizerJSON:
            let files = ModelFiles(required: [TokenizerJSON.fileName], optional: ModelFiles.tokenizerAndProcessorFiles, weights: false)
            return try TokenizerJSON(folder: locator.resolveModel(model, files: files))
        }
    }
}
