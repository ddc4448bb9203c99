import ArgumentParser
import Foundation
import StitchModelIO
import StitchTokenizers

/// Text to token ids, one output line per input line, for checking and scripting.
struct Tokenize: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Print token ids for each text argument, or for each line of standard input.")

    enum Kind: String, ExpressibleByArgument, CaseIterable {
        case gpt2, clip, wordpiece
    }

    @Option(help: "Tokenizer: gpt2 (vocab.json + merges.txt), clip (vocab.json + merges.txt, or a bpe_simple_vocab_16e6.txt.gz file), wordpiece (vocab.txt).")
    var kind: Kind

    @Option(help: "Model folder or hub id holding the tokenizer files (or, for clip, the .gz file).")
    var model: String

    @Flag(help: "Print the tokens' text instead of their ids (gpt2 and clip).")
    var decode = false

    @Argument(help: "Texts to tokenize; standard input when none.")
    var texts: [String] = []

    @OptionGroup var hub: HubOptions

    func run() throws {
        let tokenizer = try load()
        let inputs = texts.isEmpty ? standardInputLines() : texts
        for text in inputs {
            let ids = tokenizer.encode(text)
            print(decode ? tokenizer.decode(ids) : ids.map(String.init).joined(separator: " "))
        }
    }

    private func load() throws -> any Tokenizer {
        if kind == .clip && model.hasSuffix(".gz") { return try CLIPTokenizer(bpeFile: model) }
        let files: [String] = kind == .wordpiece ? ["vocab.txt"] : ["vocab.json", "merges.txt"]
        let folder = try hub.locator.resolve(model, files: files)
        switch kind {
        case .gpt2: return try GPT2Tokenizer(folder: folder)
        case .clip: return try CLIPTokenizer(folder: folder)
        case .wordpiece: return try WordPieceTokenizer(folder: folder)
        }
    }
}
