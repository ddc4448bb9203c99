import ArgumentParser
import StitchImaging
import StitchModelIO
import StitchTensor

/// Writes the pixel tensor a model would see, to compare with other tools.
struct Preprocess: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Decode and preprocess images into a safetensors file of pixel tensors [3, 224, 224], one per image.")

    enum Preset: String, ExpressibleByArgument, CaseIterable {
        case clip, imagenet
    }

    @Option(help: "clip (CLIPImageProcessor) or imagenet (Resize 256, CenterCrop 224, ImageNet mean/std).")
    var preset: Preset = .clip

    @Option(name: .shortAndLong, help: "Output safetensors file; tensors are named by the image paths.")
    var output: String

    @Argument(help: "JPEG or PNG images.")
    var images: [String]

    func run() throws {
        let preprocessor: ImagePreprocessor = preset == .clip ? .clip : .imageNet
        var tensors: [String: Tensor] = [:]
        for path in images { tensors[path] = preprocessor(try RGBImage(contentsOf: path)) }
        try writeSafetensors(tensors, metadata: ["preset": preset.rawValue], to: output)
    }
}
