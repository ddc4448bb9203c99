import CZlib
import Foundation
import StitchTensor

/// A file of named tensors: a safetensors file or a PyTorch checkpoint.
public protocol TensorFile: AnyObject {
    var path: String { get }
    var tensorNames: [String] { get }
    func shape(of name: String) -> [Int]?
    func dtype(of name: String) -> TensorDType?
    /// The tensor as Float32 (an error for integer dtypes).
    func tensor(_ name: String) throws(ModelIOError) -> Tensor
    /// The tensor in its stored dtype, row-major: what a safetensors copy of it holds.
    func entry(_ name: String) throws(ModelIOError) -> SafetensorsEntry
}

/// The ways a Hugging Face repository stores its weights, in the order Stitch prefers them:
/// memory-mappable safetensors before pickled PyTorch files, one file before shards.
public enum CheckpointLayout: String, CaseIterable, Sendable {
    case safetensors = "model.safetensors"
    case safetensorsShards = "model.safetensors.index.json"
    case pytorch = "pytorch_model.bin"
    case pytorchShards = "pytorch_model.bin.index.json"

    /// The file that names this layout: the weights themselves or the shard index.
    public var file: String { rawValue }

    public var isSharded: Bool { self == .safetensorsShards || self == .pytorchShards }

    /// The preferred layout among `files` (names relative to the repository or folder): the one decision every loader and download uses.
    public static func choose(among files: Set<String>) -> CheckpointLayout? {
        allCases.first { files.contains($0.file) }
    }

    /// Opens a weights file of either format, told apart by its name.
    public static func open(_ path: String) throws(ModelIOError) -> TensorFile {
        path.hasSuffix(".safetensors") ? try SafetensorsFile(path: path) : try PyTorchCheckpoint(path: path)
    }

    /// The shard file names an index file's `weight_map` lists, each a plain relative path inside the folder.
    public static func shardNames(indexFile: String) throws(ModelIOError) -> [String] {
        guard let data = FileManager.default.contents(atPath: indexFile) else {
            throw .cannotOpen(file: indexFile, reason: "unreadable")
        }
        guard let object = try? JSONSerialization.jsonObject(with: data) as? [String: Any],
              let map = object["weight_map"] as? [String: String] else {
            throw .invalidConfig(file: indexFile, field: "weight_map", detail: "missing or not an object of file names")
        }
        let names = Array(Set(map.values)).sorted()
        for name in names where name.hasPrefix("/") || name.split(separator: "/").contains(where: { $0 == ".." || $0 == "." }) || name.isEmpty {
            throw .invalidConfig(file: indexFile, field: "weight_map", detail: "shard '\(name)' is not a file inside the model's folder")
        }
        return names
    }
}

/// The weight files of one model folder, as `CheckpointLayout.choose` picks them.
public struct Checkpoint: Sendable {
    public let folder: URL
    public let layout: CheckpointLayout
    /// The files holding tensors, relative to `folder` (one, or the shards).
    public let files: [String]

    /// The checkpoint in `folder`, or an error saying what the folder lacks.
    public init(folder: URL) throws(ModelIOError) {
        let present = Set(CheckpointLayout.allCases.map(\.file).filter {
            FileManager.default.fileExists(atPath: folder.appendingPathComponent($0).path)
        })
        guard let layout = CheckpointLayout.choose(among: present) else {
            throw .modelNotFound(spec: folder.path, detail: "no weights in the folder (looked for \(CheckpointLayout.allCases.map(\.file).joined(separator: ", ")))")
        }
        self.folder = folder
        self.layout = layout
        files = layout.isSharded ? try CheckpointLayout.shardNames(indexFile: folder.appendingPathComponent(layout.file).path) : [layout.file]
    }

    /// The file that names the checkpoint: the weights file or the shard index.
    public var source: String { folder.appendingPathComponent(layout.file).path }

    public func open() throws(ModelIOError) -> [TensorFile] {
        var opened: [TensorFile] = []
        for file in files { opened.append(try CheckpointLayout.open(folder.appendingPathComponent(file).path)) }
        return opened
    }

    /// What tells one model from another, for result caches and ASIF indexes: the folder's name (a hub
    /// snapshot's is its commit); each weight file's name, size and a CRC-32 of 16 blocks spread over it,
    /// so retrained weights of the same shape differ; and a CRC-32 of each config and tokenizer file present.
    /// It does not depend on where the folder is or when it was copied.
    public var identity: String {
        let weights = files.map { name -> String in
            let path = folder.appendingPathComponent(name).path
            guard let handle = FileHandle(forReadingAtPath: path) else { return "\(name):missing" }
            defer { try? handle.close() }
            let size = Int((try? handle.seekToEnd()) ?? 0)
            var crc = crc32(0, nil, 0)
            let block = 4096, blocks = 16
            for i in 0..<blocks {
                let offset = size <= block ? 0 : (size - block) * i / (blocks - 1)
                try? handle.seek(toOffset: UInt64(offset))
                crc = Self.crc(crc, (try? handle.read(upToCount: block)) ?? Data())
                if size <= block { break }
            }
            return "\(name):\(size):\(String(crc, radix: 16))"
        }
        let settings = (["config.json", "vocab.json", "merges.txt", "vocab.txt", "spiece.model", "tokenizer.model"] + ModelFiles.tokenizerAndProcessorFiles).compactMap { name -> String? in
            guard let data = FileManager.default.contents(atPath: folder.appendingPathComponent(name).path) else { return nil }
            return "\(name):\(String(Self.crc(crc32(0, nil, 0), data), radix: 16))"
        }
        let parts = weights + settings
        return "\(folder.standardizedFileURL.lastPathComponent)[\(parts.joined(separator: ","))]"
    }

    private static func crc(_ running: uLong, _ data: Data) -> uLong {
        data.withUnsafeBytes { crc32(running, $0.bindMemory(to: Bytef.self).baseAddress, uInt($0.count)) }
    }
}
