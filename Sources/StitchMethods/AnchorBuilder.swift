import Foundation
import StitchImaging
import StitchModelIO
import StitchModels
import StitchTensor

/// An encoder of inputs into unit-length rows, with the identity of its weights (ASIF indexes record it).
public struct AnchorEncoder<Input>: Sendable {
    public let identity: String
    public let embed: @Sendable ([Input]) throws -> Tensor
}

extension ModelRegistry {
    /// ASIF's image side: any model that embeds images (CLIP's image tower, EfficientNet-Lite features).
    public func imageEncoder(_ spec: String, locator: ModelLocator) throws -> AnchorEncoder<RGBImage> {
        let loaded = try load(spec, locator: locator)
        let model = try Self.require(loaded, spec: spec, as: (any ImageEmbedder).self)
        return AnchorEncoder(identity: Self.identity(loaded)) { try model.imageEmbeddings($0) }
    }

    /// ASIF's text side: any model that embeds texts (CLIP's text tower, a sentence encoder).
    public func textEncoder(_ spec: String, locator: ModelLocator) throws -> AnchorEncoder<String> {
        let loaded = try load(spec, locator: locator)
        let model = try Self.require(loaded, spec: spec, as: (any TextEmbedder).self)
        return AnchorEncoder(identity: Self.identity(loaded)) { try model.textEmbeddings($0) }
    }

    /// The model type and its checkpoint's identity: stable when a folder moves, different for other weights.
    static func identity(_ loaded: LoadedModel) -> String {
        "\(loaded.type.name):" + ((try? Checkpoint(folder: loaded.folder).identity) ?? loaded.folder.standardizedFileURL.lastPathComponent)
    }
}

/// Builds an anchor index from a JSONL file of {"image": path, "caption": text} lines (paths
/// relative to the file). Work is kept in `<output>.partial/` after every batch, so an interrupted
/// build resumes where it stopped; `shard` (i, n) takes the lines numbered i modulo n, and the
/// shards' indexes can be merged.
public struct AnchorIndexBuilder {
    public let image: AnchorEncoder<RGBImage>
    public let text: AnchorEncoder<String>
    public var batchSize = 16
    public var dtype: TensorDType = .f32
    public var shard: (index: Int, count: Int) = (0, 1)

    public init(image: AnchorEncoder<RGBImage>, text: AnchorEncoder<String>) {
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
        let writer = try AnchorIndexWriter(path: output, captions: pairs.map(\.caption), imageDimension: partial.imageDimension,
                                           textDimension: partial.textDimension, dtype: dtype, imageEncoder: image.identity, textEncoder: text.identity)
        try partial.stream(into: writer)
        try writer.finish()
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
    private(set) var imageDimension = 0, textDimension = 0

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

    /// Hands the rows to `writer`, images then texts, a block at a time (memory stays at one block).
    func stream(into writer: AnchorIndexWriter) throws {
        for (name, dimension) in [("images.f32", imageDimension), ("texts.f32", textDimension)] where done > 0 {
            let file = folder.appendingPathComponent(name)
            let handle = try FileHandle(forReadingFrom: file)
            defer { try? handle.close() }
            for start in stride(from: 0, to: done, by: AnchorIndexWriter.blockRows) {
                let bytes = (min(start + AnchorIndexWriter.blockRows, done) - start) * dimension * 4
                guard let data = try handle.read(upToCount: bytes), data.count == bytes else {
                    throw AnchorIndexError.notAnIndex(file: file.path, detail: "fewer rows than the build recorded; delete \(folder.path) to start over")
                }
                try data.withUnsafeBytes { try writer.append($0.bindMemory(to: Float.self)) }
            }
        }
    }
}
