import Foundation
import StitchTensor

/// The tensors of a checkpoint (safetensors or PyTorch, one file or shards), handed
/// out by name and expected shape. Problems are collected rather than thrown
/// one at a time, so `finish()` can report every missing, wrong-shape and
/// unused tensor of a bad checkpoint at once.
/// Used by one loader at a time, so it is not Sendable.
public final class WeightStore {
    public let source: String
    private var fileOf: [String: TensorFile] = [:]
    private var used: Set<String> = []
    private var problems: [String] = []
    private let recording: Bool
    /// Every (name, shape) asked for, in order: a model's weight manifest.
    public private(set) var requested: [(name: String, shape: [Int])] = []

    public init(files: [TensorFile], source: String) {
        self.source = source
        recording = false
        for file in files {
            for name in file.tensorNames { fileOf[name] = file }
        }
    }

    /// Opens the checkpoint in `folder` in the layout `CheckpointLayout.choose` prefers.
    public convenience init(folder: URL) throws(ModelIOError) {
        let checkpoint = try Checkpoint(folder: folder)
        self.init(files: try checkpoint.open(), source: checkpoint.source)
    }

    /// A store without files that hands out zeros (allocated lazily) for every request and
    /// records it: building a model against it lists the weights its config implies.
    public init(recordingFor source: String) {
        self.source = source
        recording = true
    }

    public var names: [String] { fileOf.keys.sorted() }

    /// Whether this store only records what is asked for (`init(recordingFor:)`): its tensors are placeholders.
    public var isRecording: Bool { recording }

    public func contains(_ name: String) -> Bool { fileOf[name] != nil }

    /// The shape stored for `name`, if present.
    public func shape(of name: String) -> [Int]? { fileOf[name]?.shape(of: name) }

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
        let stored = file.shape(of: name)!
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

    /// Throws every recorded problem, plus the float tensors nobody took (unless `ignoreUnused` accepts them).
    public func finish(ignoreUnused: (String) -> Bool = { _ in false }) throws(ModelIOError) {
        // Integer and boolean tensors are buffers (causal masks, position ids, counters) that checkpoints carry along, never weights.
        let unused = fileOf.keys.filter { !used.contains($0) && !ignoreUnused($0) && fileOf[$0]!.dtype(of: $0)?.isFloatingPoint != false }.sorted()
        let all = problems + unused.map { "unused tensor '\($0)' (shape \(shape(of: $0)!))" }
        if !all.isEmpty { throw .weightMismatch(source: source, problems: all) }
    }
}
