import ArgumentParser
import StitchModelIO
import StitchModels
import StitchTensor

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

    /// The model `spec` as a capability (`any ImageTextScorer`, ...), whichever registered type its config names,
    /// its weight products at `precision`.
    func load<Capable>(_ spec: String, as capability: Capable.Type, precision: PrecisionOptions) throws -> Capable {
        try precision.loading { try ModelRegistry.standard.load(spec, as: capability, locator: locator) }
    }
}

/// `--precision` for every command that computes with models.
struct PrecisionOptions: ParsableArguments {
    @Option(help: "The precision of the models' weight products: fp32 (exact parity with the references), bf16 (bfloat16 products summed in FP32, as torch's bfloat16 autocast; on CPUs with AVX512-BF16: half the weight memory, faster decoding, and twice FP32's rate where the CPU runs its dot products fast, as AMD Zen 4 does; elsewhere the same products on the FP32 kernels, at bf16-weights' speed), bf16-weights or int8-weights (weights stored in bfloat16, or as 8-bit integers with a scale per output, products in FP32, on any CPU with AVX2: half or a quarter of the weight memory and faster decoding).")
    var precision: Precision = .fp32

    func validate() throws {
        if let reason = precision.unavailableReason { throw ValidationError("--precision \(precision.rawValue): \(reason)") }
    }

    /// `body`'s value, the models it loads at --precision.
    func loading<T>(_ body: () throws -> T) rethrows -> T { try Precision.$loading.withValue(precision, operation: body) }
}

extension Precision: ExpressibleByArgument {}

