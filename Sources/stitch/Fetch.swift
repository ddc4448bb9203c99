import ArgumentParser
import StitchModelIO

/// Puts a model's files in the Hugging Face cache and prints the folder.
struct Fetch: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Download model files into the Hugging Face cache (or find them there) and print the folder.")

    @Argument(help: "A hub id such as openai/clip-vit-base-patch32, or a local folder.")
    var model: String

    @Option(name: .customLong("file"), help: "A file to fetch; repeat for several.")
    var files: [String] = ["config.json", "model.safetensors"]

    @Option(help: "Branch, tag or commit.")
    var revision = "main"

    func run() throws {
        print(try ModelLocator.fromEnvironment().resolve(model, files: files, revision: revision).path)
    }
}
