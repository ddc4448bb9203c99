import Foundation
import StitchImaging
import StitchModelIO
import StitchModels
import StitchTensor

/// An encoder of images into unit-length rows, with a name that identifies its weights.
public struct ImageEmbedder: Sendable {
    public let identity: String
    public let embed: @Sendable ([RGBImage]) throws -> Tensor
}

/// An encoder of texts into unit-length rows, with a name that identifies its weights.
public struct TextEmbedder: Sendable {
    public let identity: String
    public let embed: @Sendable ([String]) throws -> Tensor
}

extension ModelLocator {
    /// An image encoder from a model folder or hub id: CLIP's image tower or EfficientNet-Lite features.
    public func imageEmbedder(_ spec: String) throws -> ImageEmbedder {
        let (folder, kind) = try resolveModel(spec)
        let identity = Self.identity(kind, folder)
        switch kind {
        case .clip:
            let clip = try CLIP(folder: folder)
            return ImageEmbedder(identity: identity) { try clip.imageEmbeddings($0) }
        case .efficientNet:
            let network = try EfficientNetLite(folder: folder)
            return ImageEmbedder(identity: identity) { images in
                var features = concatenate(try images.map { try network.features(of: $0).reshaped([1, -1]) }, axis: 0)
                l2NormalizeRows(&features)
                return features
            }
        default:
            throw ModelError.invalidInput(model: spec, detail: "\(kind.rawValue) is not an image encoder (use CLIP or EfficientNet-Lite)")
        }
    }

    /// A text encoder from a model folder or hub id: CLIP's text tower or a sentence encoder.
    public func textEmbedder(_ spec: String) throws -> TextEmbedder {
        let (folder, kind) = try resolveModel(spec)
        let identity = Self.identity(kind, folder)
        switch kind {
        case .clip:
            let clip = try CLIP(folder: folder)
            return TextEmbedder(identity: identity) { try clip.textEmbeddings($0) }
        case .sentenceEncoder:
            let encoder = try SentenceEncoder(folder: folder)
            return TextEmbedder(identity: identity) { texts in
                var embeddings = try encoder.encode(texts)
                l2NormalizeRows(&embeddings)
                return embeddings
            }
        default:
            throw ModelError.invalidInput(model: spec, detail: "\(kind.rawValue) is not a text encoder (use CLIP or a sentence encoder)")
        }
    }

    /// The model kind and its checkpoint's identity: stable when a folder moves, different for other weights.
    static func identity(_ kind: ModelKind, _ folder: URL) -> String {
        "\(kind.rawValue):" + ((try? Checkpoint(folder: folder).identity) ?? folder.standardizedFileURL.lastPathComponent)
    }
}

/// Builds an anchor index from a JSONL file of {"image": path, "caption": text} lines (paths
/// relative to the file). Work is kept in `<output>.partial/` after every batch, so an interrupted
/// build resumes where it stopped; `shard` (i, n) takes the lines numbered i modulo n, and the
/// shards' indexes can be merged.
public struct AnchorIndexBuilder {
    public let image: ImageEmbedder
    public let text: TextEmbedder
    public var batchSize = 16
    public var dtype: TensorDType = .f32
    public var shard: (index: Int, count: Int) = (0, 1)

    public init(image: ImageEmbedder, text: TextEmbedder) {
        self.image = image
        self.text = text
    }

    /// `progress` gets (anchors done, anchors in this shard) after every batch; throwing from it stops the build resumably.
    public func build(anchors: String, output: String, progress: (Int, Int) throws -> Void = { _, _ in }) throws {
        guard let data = FileManager.default.contents(atPath: anchors) else { throw AnchorIndexError.notAnIndex(file: anchors, detail: "cannot read the anchors file") }
        let folder = URL(fileURLWithPath: anchors).deletingLastPathComponent()
        var pairs: [(image: String, caption: String)] = []
        for (number, line) in String(decoding: data, as: UTF8.self).split(separator: "\n", omittingEmptySubsequences: false).enumerated()
        where !line.trimmingCharacters(in: .whitespaces).isEmpty && number % shard.count == shard.index {
            guard let object = try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any],
                  let path = object["image"] as? String, let caption = object["caption"] as? String else {
                throw AnchorIndexError.notAnIndex(file: "\(anchors):\(number + 1)", detail: #"expected {"image": path, "caption": text}"#)
            }
            pairs.append((path.hasPrefix("/") ? path : folder.appendingPathComponent(path).path, caption))
        }
        let partial = try PartialAnchors(folder: URL(fileURLWithPath: output + ".partial"), identity: "\(image.identity)|\(text.identity)|\(anchors)|\(shard)")
        try progress(partial.done, pairs.count)
        for start in stride(from: partial.done, to: pairs.count, by: batchSize) {
            let batch = pairs[start..<min(start + batchSize, pairs.count)]
            let images = try image.embed(batch.map { try RGBImage(contentsOf: $0.image) })
            let texts = try text.embed(batch.map(\.caption))
            try partial.append(images: images, texts: texts, captions: batch.map(\.caption))
            try progress(partial.done, pairs.count)
        }
        let (images, texts) = try partial.matrices()
        try AnchorIndex.write(images: images, texts: texts, captions: pairs.map(\.caption), imageEncoder: image.identity,
                              textEncoder: text.identity, dtype: dtype, to: output)
        try FileManager.default.removeItem(at: partial.folder)
    }
}

/// The rows embedded so far: raw F32 files appended per batch, and a count written after them,
/// so rows past the count (from a batch cut short) are ignored on resume.
final class PartialAnchors {
    let folder: URL
    /// What the work is for (encoders, anchors file, shard): a folder left by another build is discarded.
    private let identity: String
    private(set) var done = 0
    private var imageDimension = 0, textDimension = 0

    init(folder: URL, identity: String) throws {
        self.folder = folder
        self.identity = identity
        let state = folder.appendingPathComponent("state.json")
        if let data = FileManager.default.contents(atPath: state.path),
           let saved = try? JSONSerialization.jsonObject(with: data) as? [String: Any], saved["identity"] as? String == identity {
            done = saved["done"] as? Int ?? 0
            imageDimension = saved["image_dimension"] as? Int ?? 0
            textDimension = saved["text_dimension"] as? Int ?? 0
        } else {
            try? FileManager.default.removeItem(at: folder)   // another build's leftovers
            try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
            try Data().write(to: folder.appendingPathComponent("images.f32"))
            try Data().write(to: folder.appendingPathComponent("texts.f32"))
        }
        try truncate("images.f32", rows: done, dimension: imageDimension)
        try truncate("texts.f32", rows: done, dimension: textDimension)
    }

    private func truncate(_ name: String, rows: Int, dimension: Int) throws {
        let handle = try FileHandle(forWritingTo: folder.appendingPathComponent(name))
        defer { try? handle.close() }
        try handle.truncate(atOffset: UInt64(rows * dimension * 4))
    }

    func append(images: Tensor, texts: Tensor, captions: [String]) throws {
        (imageDimension, textDimension) = (images.shape[1], texts.shape[1])
        for (name, tensor) in [("images.f32", images), ("texts.f32", texts)] {
            let handle = try FileHandle(forWritingTo: folder.appendingPathComponent(name))
            defer { try? handle.close() }
            try handle.seekToEnd()
            try handle.write(contentsOf: tensor.withUnsafeBufferPointer { Data(buffer: $0) })
            try handle.synchronize()
        }
        done += captions.count
        let state: [String: Any] = ["identity": identity, "done": done, "image_dimension": imageDimension, "text_dimension": textDimension]
        try JSONSerialization.data(withJSONObject: state).write(to: folder.appendingPathComponent("state.json"), options: .atomic)
    }

    func matrices() throws -> (Tensor, Tensor) {
        func read(_ name: String, _ dimension: Int) throws -> Tensor {
            let data = try Data(contentsOf: folder.appendingPathComponent(name))
            let values = data.prefix(done * dimension * 4).withUnsafeBytes { Array($0.bindMemory(to: Float.self)) }
            return Tensor(shape: [done, dimension], scalars: values)
        }
        return (try read("images.f32", imageDimension), try read("texts.f32", textDimension))
    }
}
