import ArgumentParser
import StitchModelIO
import StitchModels

/// Puts a model's files in the Hugging Face cache and prints the folder.
struct Fetch: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Download model files into the Hugging Face cache (or find them there) and print the folder.")

    @Argument(help: "A hub id such as openai/clip-vit-base-patch32, or a local folder.")
    var model: String

    @Option(name: .customLong("file"), help: "A file to fetch; repeat for several. Without it: config.json, the weights in the form the repository has, and its tokenizer and processor files.")
    var files: [String] = []

    @OptionGroup var hub: HubOptions

    func run() throws {
        let locator = hub.locator
        print(try (files.isEmpty ? locator.resolveModel(model, files: .wholeModel) : locator.resolve(model, files: files)).path)
    }
}

/// `--revision` for every command that takes models, and the locator it sets.
struct HubOptions: ParsableArguments {
    @Option(help: "Branch, tag, commit or refs/pr/N of the hub models given without one (org/name@revision names its own).")
    var revision: String?

    /// Where models are found: the Hugging Face cache and hub the environment names, at --revision.
    var locator: ModelLocator { ModelLocator.fromEnvironment().at(revision: revision) }

    /// The model `spec` as a capability (`any ImageTextScorer`, ...), whichever registered type its config names.
    func load<Capable>(_ spec: String, as capability: Capable.Type) throws -> Capable {
        try ModelRegistry.standard.load(spec, as: capability, locator: locator)
    }
}
