import ArgumentParser
import Foundation
import StitchModels

/// What the model registry can load, and what a given model can do.
struct Models: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "List the registered model types (the config model_type / architectures each loads), or, given models, each one's type and capabilities.")

    @Argument(help: "Model folders or hub ids to describe (loads each).")
    var models: [String] = []

    @OptionGroup var hub: HubOptions

    func run() throws {
        let registry = ModelRegistry.standard
        if models.isEmpty {
            for type in registry.types.reversed() {
                let reads = type.recognizes != nil ? "files: an ONNX model" : "config: " + (type.modelTypes.map { "model_type \($0)" } + type.architectures).joined(separator: ", ")
                print("\(type.name)\t\(reads)")
            }
            return
        }
        for spec in models {
            let loaded = try registry.load(spec, locator: hub.locator)
            print("\(spec)\t\(loaded.type.name)\t\(Capability.of(loaded.object).map(\.rawValue).joined(separator: ", "))")
        }
    }
}
