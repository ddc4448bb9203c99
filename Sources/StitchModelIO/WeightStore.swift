import Foundation
import StitchTensor

/// The tensors of a checkpoint (one safetensors file or a sharded set), handed
/// out by name and expected shape. Problems are collected rather than thrown
/// one at a time, so `finish()` can report every missing, wrong-shape and
/// unused tensor of a bad checkpoint at once.
/// Used by one loader at a time, so it is not Sendable.
public final class WeightStore {
    public let source: String
    private var fileOf: [String: SafetensorsFile] = [:]
    private var used: Set<String> = []
    private var problems: [String] = []
    private let recording: Bool
    /// Every (name, shape) asked for, in order: a model's weight manifest.
    public private(set) var requested: [(name: String, shape: [Int])] = []

    public init(files: [SafetensorsFile], source: String) {
        self.source = source
        recording = false
        for file in files {
            for name in file.tensors.keys { fileOf[name] = file }
        }
    }

    /// Opens `model.safetensors`, or the shards listed by `model.safetensors.index.json`, in `folder`.
    public convenience init(folder: URL) throws(ModelIOError) {
        let single = folder.appendingPathComponent("model.safetensors").path
        let index = folder.appendingPathComponent("model.safetensors.index.json").path
        if FileManager.default.fileExists(atPath: single) {
            self.init(files: [try SafetensorsFile(path: single)], source: single)
        } else if FileManager.default.fileExists(atPath: index) {
            let shards = try Self.shardNames(indexFile: index)
            var files: [SafetensorsFile] = []
            for shard in shards { files.append(try SafetensorsFile(path: folder.appendingPathComponent(shard).path)) }
            self.init(files: files, source: index)
        } else {
            throw .modelNotFound(spec: folder.path, detail: "no model.safetensors or model.safetensors.index.json in the folder")
        }
    }

    private static func shardNames(indexFile: String) throws(ModelIOError) -> [String] {
        guard let data = FileManager.default.contents(atPath: indexFile) else {
            throw .cannotOpen(file: indexFile, reason: "unreadable")
        }
        guard let object = try? JSONSerialization.jsonObject(with: data) as? [String: Any],
              let map = object["weight_map"] as? [String: String] else {
            throw .invalidConfig(file: indexFile, field: "weight_map", detail: "missing or not an object of file names")
        }
        return Array(Set(map.values)).sorted()
    }

    /// A store without files that hands out zeros (allocated lazily) for every request and
    /// records it: building a model against it lists the weights its config implies.
    public init(recordingFor source: String) {
        self.source = source
        recording = true
    }

    public var names: [String] { fileOf.keys.sorted() }

    public func contains(_ name: String) -> Bool { fileOf[name] != nil }

    /// The shape stored for `name`, if present.
    public func shape(of name: String) -> [Int]? { fileOf[name]?.tensors[name]?.shape }

    /// The tensor `name`, which must have `shape`. On a problem it is recorded
    /// and zeros of `shape` are returned so loading can go on and find the rest;
    /// `finish()` then throws them all.
    public func take(_ name: String, shape: [Int]) -> Tensor {
        used.insert(name)
        requested.append((name, shape))
        if recording { return Tensor(zeros: shape) }
        guard let file = fileOf[name] else {
            problems.append("missing tensor '\(name)' (expected shape \(shape))")
            return Tensor(zeros: shape)
        }
        let stored = file.tensors[name]!.shape
        guard stored == shape else {
            problems.append("tensor '\(name)' has shape \(stored), expected \(shape)")
            return Tensor(zeros: shape)
        }
        do {
            return try file.tensor(name)
        } catch {
            problems.append(error.description)
            return Tensor(zeros: shape)
        }
    }

    /// Throws every recorded problem, plus the tensors nobody took (unless `ignoreUnused` accepts them).
    public func finish(ignoreUnused: (String) -> Bool = { _ in false }) throws(ModelIOError) {
        let unused = fileOf.keys.filter { !used.contains($0) && !ignoreUnused($0) }.sorted()
        let all = problems + unused.map { "unused tensor '\($0)' (shape \(shape(of: $0)!))" }
        if !all.isEmpty { throw .weightMismatch(source: source, problems: all) }
    }
}
