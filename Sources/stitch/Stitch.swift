import ArgumentParser
import StitchTensor

@main
struct Stitch: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "stitch",
        abstract: "Compose frozen pretrained models into vision-language pipelines.",
        discussion: """
        Models are given as a local folder or a Hugging Face hub id (org/name), looked up in the
        standard cache (HF_HUB_CACHE, else HF_HOME/hub, else ~/.cache/huggingface/hub) and downloaded
        there when absent unless HF_HUB_OFFLINE=1.
        """,
        subcommands: [Demo.self, Classify.self, EmbedImage.self, EmbedText.self, Generate.self, Caption.self, Detect.self, Run.self, Merge.self, Validate.self, ASIFCommand.self, Evaluate.self, VQA.self, Serve.self, Bench.self, BenchRowWorker.self, Tokenize.self, Preprocess.self, Fetch.self, Convert.self, Models.self])

    static func main() {
        Memory.keepFreedMemory()
        main(nil)
    }
}
