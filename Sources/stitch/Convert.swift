import ArgumentParser
import Foundation
import StitchModelIO

/// Writes a safetensors copy of a model whose weights are pickled (pytorch_model.bin, sharded or not),
/// so it loads memory-mapped from then on.
struct Convert: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Write a model's weights as one model.safetensors in a new folder, with its config and tokenizer files.",
        discussion: """
        Reads any checkpoint Stitch loads (pytorch_model.bin in torch's zip or legacy format, sharded \
        checkpoints, safetensors) with its allow-list unpickler, which never runs code from the file. Every \
        tensor keeps its dtype and values. The output folder is written under a temporary name and renamed \
        when complete, so an interrupted run leaves nothing half-written.
        """)

    @Argument(help: "A model folder or hub id (org/name or org/name@revision).")
    var model: String

    @Option(name: .shortAndLong, help: "The folder to create.")
    var output: String

    @OptionGroup var hub: HubOptions

    func run() throws {
        let folder = try hub.locator.resolveModel(model, files: .wholeModel)
        let checkpoint = try Checkpoint(folder: folder)
        let target = URL(fileURLWithPath: output)
        if let existing = try? FileManager.default.contentsOfDirectory(atPath: target.path), !existing.isEmpty {
            throw ValidationError("\(output) already exists and is not empty")
        }
        var entries: [String: SafetensorsEntry] = [:]
        for file in try checkpoint.open() {
            for name in file.tensorNames { entries[name] = try file.entry(name) }
        }
        let partial = target.deletingLastPathComponent().appendingPathComponent(".\(target.lastPathComponent).partial-\(getpid())")
        try? FileManager.default.removeItem(at: partial)
        try FileManager.default.createDirectory(at: partial, withIntermediateDirectories: true)
        do {
            let weightFiles = Set(checkpoint.files + [checkpoint.layout.file])
            for relative in FileManager.default.subpaths(atPath: folder.path) ?? [] where !weightFiles.contains(relative) {
                let source = folder.appendingPathComponent(relative)
                guard !Self.isWeightFile(relative), !isDirectory(source) else { continue }
                let destination = partial.appendingPathComponent(relative)
                try FileManager.default.createDirectory(at: destination.deletingLastPathComponent(), withIntermediateDirectories: true)
                try FileManager.default.copyItem(at: source.resolvingSymlinksInPath(), to: destination)
            }
            try writeSafetensors(entries: entries, metadata: ["format": "pt"], to: partial.appendingPathComponent("model.safetensors").path)
            try? FileManager.default.removeItem(at: target)   // an empty folder the user made
            try FileManager.default.moveItem(at: partial, to: target)
        } catch {
            try? FileManager.default.removeItem(at: partial)
            throw error
        }
        print("\(output): \(entries.count) tensors from \(checkpoint.files.joined(separator: ", ")) -> model.safetensors")
    }

    /// Weights in any of the forms published repositories carry (none of which the copy needs).
    static func isWeightFile(_ name: String) -> Bool {
        let base = (name as NSString).lastPathComponent
        return [".bin", ".safetensors", ".h5", ".msgpack", ".ot", ".pt", ".pth", ".ckpt"].contains { base.hasSuffix($0) }
            || base.hasSuffix(".index.json")
    }

    private func isDirectory(_ url: URL) -> Bool {
        var directory: ObjCBool = false
        return FileManager.default.fileExists(atPath: url.path, isDirectory: &directory) && directory.boolValue
    }
}
