import CZlib
import Foundation
import StitchModelIO
import StitchTensor

public enum AnchorIndexError: Error, CustomStringConvertible {
    /// Not an index, or not one these queries fit.
    case notAnIndex(file: String, detail: String)
    case checksumMismatch(file: String, stored: String, computed: String)
    case encoderMismatch(file: String, modality: String, index: String, given: String)
    case incompatible(files: [String], detail: String)

    public var description: String {
        switch self {
        case let .notAnIndex(file, detail): return "\(file): not a usable ASIF index: \(detail)"
        case let .checksumMismatch(file, stored, computed): return "\(file): checksum mismatch (stored crc32 \(stored), data has \(computed)): the file is corrupt"
        case let .encoderMismatch(file, modality, index, given):
            return "\(file): built with \(modality) encoder \(index), but the query encoder is \(given)"
        case let .incompatible(files, detail): return "cannot merge \(files.joined(separator: ", ")): \(detail)"
        }
    }
}

/// An ASIF anchor index: a safetensors file holding `image_anchors` [N, Di] and `text_anchors`
/// [N, Dt] (unit rows, F32 or F16), the anchor `captions` (U8, one JSON string per line), and
/// metadata naming the format version, both encoders, N and a CRC-32 of the data section.
/// The matrices are searched in place in the memory mapping.
public final class AnchorIndex: @unchecked Sendable {
    public static let format = "stitch-asif", version = "1"

    public let path: String
    public let images: AnchorMatrix
    public let texts: AnchorMatrix
    public let captions: [String]
    public let imageEncoder: String
    public let textEncoder: String
    private let file: SafetensorsFile

    public var count: Int { images.count }

    /// Opens an index; `verify` checks the CRC-32 of all its data (reads the whole file once).
    public init(path: String, verify: Bool = true) throws {
        self.path = path
        file = try SafetensorsFile(path: path)
        let metadata = file.metadata
        guard metadata["format"] == Self.format else { throw AnchorIndexError.notAnIndex(file: path, detail: "no '\(Self.format)' format in its metadata") }
        guard metadata["version"] == Self.version else {
            throw AnchorIndexError.notAnIndex(file: path, detail: "format version \(metadata["version"] ?? "?"), this Stitch reads version \(Self.version)")
        }
        guard let imageEncoder = metadata["image_encoder"], let textEncoder = metadata["text_encoder"],
              let count = metadata["count"].flatMap(Int.init), let checksum = metadata["crc32"] else {
            throw AnchorIndexError.notAnIndex(file: path, detail: "metadata lacks image_encoder, text_encoder, count or crc32")
        }
        self.imageEncoder = imageEncoder
        self.textEncoder = textEncoder
        if verify {
            var crc = CRC32()
            crc.update(file.dataSection)
            let computed = crc.hex
            guard computed == checksum else { throw AnchorIndexError.checksumMismatch(file: path, stored: checksum, computed: computed) }
        }
        images = try Self.matrix("image_anchors", in: file, count: count)
        texts = try Self.matrix("text_anchors", in: file, count: count)
        let lines = String(decoding: try file.bytes("captions"), as: UTF8.self).split(separator: "\n").filter { !$0.allSatisfy(\.isWhitespace) }
        captions = try lines.map { line in
            guard let caption = try? JSONSerialization.jsonObject(with: Data(line.utf8), options: [.fragmentsAllowed]) as? String else {
                throw AnchorIndexError.notAnIndex(file: path, detail: "a caption line is not a JSON string")
            }
            return caption
        }
        guard captions.count == count else { throw AnchorIndexError.notAnIndex(file: path, detail: "\(captions.count) captions for \(count) anchors") }
    }

    private static func matrix(_ name: String, in file: SafetensorsFile, count: Int) throws -> AnchorMatrix {
        guard let info = file.tensors[name] else { throw AnchorIndexError.notAnIndex(file: file.path, detail: "no '\(name)' tensor") }
        guard info.shape.count == 2, info.shape[0] == count, info.shape[1] > 0, info.dtype == .f32 || info.dtype == .f16 else {
            throw AnchorIndexError.notAnIndex(file: file.path, detail: "'\(name)' is \(info.dtype.rawValue) \(info.shape), expected F32 or F16 [\(count), dimension]")
        }
        let bytes = try file.bytes(name)
        return AnchorMatrix(count: count, dimension: info.shape[1], dtype: info.dtype, base: bytes.baseAddress ?? UnsafeRawPointer(bitPattern: 8)!, owner: file)
    }

    /// Writes an index atomically. `images` [N, Di] and `texts` [N, Dt] are L2-normalised here.
    public static func write(images: Tensor, texts: Tensor, captions: [String], imageEncoder: String, textEncoder: String,
                             dtype: TensorDType = .f32, to path: String) throws {
        precondition(images.rank == 2 && texts.rank == 2 && images.shape[0] == texts.shape[0] && captions.count == images.shape[0],
                     "anchors: images \(images.shape), texts \(texts.shape), \(captions.count) captions")
        let writer = try AnchorIndexWriter(path: path, captions: captions, imageDimension: images.shape[1], textDimension: texts.shape[1],
                                           dtype: dtype, imageEncoder: imageEncoder, textEncoder: textEncoder)
        try images.withUnsafeBufferPointer { try writer.append($0) }
        try texts.withUnsafeBufferPointer { try writer.append($0) }
        try writer.finish()
    }

    /// Concatenates indexes built with the same encoders (e.g. shards) into one, a block of rows at a time: memory
    /// stays near the captions plus one block, however many anchors.
    public static func merge(_ paths: [String], dtype: TensorDType = .f32, to output: String) throws {
        let parts = try paths.map { path in
            let part = try AnchorIndex(path: path)   // verifying its CRC reads every page of the part...
            part.images.releasePages(0..<part.count)   // ...which need not stay in memory until they are copied
            part.texts.releasePages(0..<part.count)
            return part
        }
        guard let first = parts.first else { throw AnchorIndexError.incompatible(files: paths, detail: "nothing to merge") }
        for part in parts where part.imageEncoder != first.imageEncoder || part.textEncoder != first.textEncoder
            || part.images.dimension != first.images.dimension || part.texts.dimension != first.texts.dimension {
            throw AnchorIndexError.incompatible(files: [first.path, part.path], detail: "different encoders or dimensions")
        }
        let writer = try AnchorIndexWriter(path: output, captions: parts.flatMap(\.captions), imageDimension: first.images.dimension,
                                           textDimension: first.texts.dimension, dtype: dtype, imageEncoder: first.imageEncoder, textEncoder: first.textEncoder)
        for matrices in [parts.map(\.images), parts.map(\.texts)] {
            let block = AnchorIndexWriter.blockRows
            let scratch = UnsafeMutablePointer<Float>.allocate(capacity: block * matrices[0].dimension)
            defer { scratch.deallocate() }
            for matrix in matrices {
                for start in stride(from: 0, to: matrix.count, by: block) {
                    let range = start..<min(start + block, matrix.count)
                    try writer.append(UnsafeBufferPointer(start: matrix.rows(range, scratch: scratch), count: range.count * matrix.dimension))
                    matrix.releasePages(range)
                }
            }
        }
        try writer.finish()
    }

    /// Checks that queries come from the encoders the index was built with.
    public func requireEncoders(image: String?, text: String?) throws {
        if let image, image != imageEncoder { throw AnchorIndexError.encoderMismatch(file: path, modality: "image", index: imageEncoder, given: image) }
        if let text, text != textEncoder { throw AnchorIndexError.encoderMismatch(file: path, modality: "text", index: textEncoder, given: text) }
    }
}

/// An index file written as its rows come: the captions, then every image row, then every text row, each row
/// made unit-length and stored as `dtype`, the CRC-32 computed as they go, and the header written last.
public final class AnchorIndexWriter {
    /// Rows its sources hand over at a time: small beside any index, large enough to keep the writes efficient.
    public static let blockRows = 8192
    private let stream: SafetensorsStreamWriter
    private let count: Int
    private let dimensions: [Int]
    private let dtype: TensorDType
    private var rowsWritten = [0, 0]   // image rows, text rows
    private var crc = CRC32()
    private let metadata: [String: String]

    public init(path: String, captions: [String], imageDimension: Int, textDimension: Int, dtype: TensorDType, imageEncoder: String, textEncoder: String) throws {
        precondition(dtype == .f32 || dtype == .f16, "anchors are stored as F32 or F16")
        var captionBytes = Data(try captions.map { caption in
            String(decoding: try JSONSerialization.data(withJSONObject: caption, options: [.fragmentsAllowed]), as: UTF8.self) + "\n"
        }.joined().utf8)
        // Padding keeps the matrices after it 8-byte aligned, so F32 rows are used in place.
        while captionBytes.count % 8 != 0 { captionBytes.append(0x20) }
        (count, dimensions, self.dtype) = (captions.count, [imageDimension, textDimension], dtype)
        metadata = ["format": AnchorIndex.format, "version": AnchorIndex.version, "image_encoder": imageEncoder, "text_encoder": textEncoder,
                    "count": "\(captions.count)"]
        // Entries in the file's order (sorted names): captions, image_anchors, text_anchors.
        stream = try SafetensorsStreamWriter(path: path, entries: [("captions", .u8, [captionBytes.count]), ("image_anchors", dtype, [count, imageDimension]),
                                                                   ("text_anchors", dtype, [count, textDimension])],
                                             metadataRoom: metadata.merging(["crc32": "00000000"]) { $1 })
        try captionBytes.withUnsafeBytes { bytes in
            crc.update(bytes)
            try stream.append(bytes)
        }
    }

    /// The next rows (row-major, F32): image rows until all `count` are in, then text rows.
    public func append(_ rows: UnsafeBufferPointer<Float>) throws {
        let side = rowsWritten[0] < count ? 0 : 1
        let dimension = dimensions[side]
        precondition(rows.count % dimension == 0 && rowsWritten[side] + rows.count / dimension <= count, "anchor rows past the declared count")
        var unit = Tensor(shape: [rows.count / dimension, dimension], scalars: Array(rows))
        l2NormalizeRows(&unit)
        let bytes = SafetensorsEntry(unit, as: dtype).bytes
        try bytes.withUnsafeBytes { raw in
            crc.update(raw)
            try stream.append(raw)
        }
        rowsWritten[side] += rows.count / dimension
    }

    public func finish() throws {
        precondition(rowsWritten == [count, count], "anchor rows missing: \(rowsWritten) of \(count)")
        try stream.finish(metadata: metadata.merging(["crc32": crc.hex]) { $1 })
    }
}

extension AnchorMatrix {
    /// A Float32 copy [count, dimension].
    func tensor() -> Tensor {
        let scratch = UnsafeMutablePointer<Float>.allocate(capacity: max(1, count * dimension))
        defer { scratch.deallocate() }
        return Tensor(shape: [count, dimension], scalars: Array(UnsafeBufferPointer(start: rows(0..<count, scratch: scratch), count: count * dimension)))
    }
}

/// zlib's CRC-32, fed byte ranges in order.
struct CRC32 {
    private var value = crc32(0, nil, 0)

    mutating func update(_ bytes: UnsafeRawBufferPointer) {
        var offset = 0
        while offset < bytes.count {
            let length = min(1 << 30, bytes.count - offset)   // zlib takes 32-bit lengths
            value = crc32(value, bytes.baseAddress!.assumingMemoryBound(to: UInt8.self) + offset, uInt(length))
            offset += length
        }
    }

    /// 8 hex digits.
    var hex: String {
        let digits = String(value, radix: 16)
        return String(repeating: "0", count: 8 - digits.count) + digits
    }
}

extension AnchorIndex {
    /// ASIF similarities [images, texts] of unit-length image and text embeddings from the index's encoders.
    public func scores(images: Tensor, texts: Tensor, settings: ASIFSettings) throws -> Tensor {
        for (queries, anchors, modality) in [(images, self.images, "image"), (texts, self.texts, "text")] where queries.rank != 2 || queries.shape[1] != anchors.dimension {
            throw AnchorIndexError.notAnIndex(file: path, detail: "\(modality) queries are \(queries.shape) but its \(modality) anchors are \(anchors.dimension)-d")
        }
        let scores = relativeScores(relativeRepresentations(images, anchors: self.images, settings: settings),
                                    relativeRepresentations(texts, anchors: self.texts, settings: settings), anchorCount: count)
        if file.changedOnDisk { throw MappedFiles.changedError() }
        return scores
    }

    /// Zero-shot scores [images, labels]: each label in every template ("{}" marks the label),
    /// scores averaged over the templates.
    public func classify(images: Tensor, labels: [String], templates: [String], text: AnchorEncoder<String>, settings: ASIFSettings) throws -> Tensor {
        let prompts = labels.flatMap { label in templates.map { $0.replacingOccurrences(of: "{}", with: label) } }
        let all = try scores(images: images, texts: try text.embed(prompts), settings: settings)   // [images, labels * templates]
        var out = Tensor(zeros: [images.shape[0], labels.count])
        out.withUnsafeMutableBufferPointer { averaged in
            all.withUnsafeBufferPointer { source in
                for row in 0..<images.shape[0] {
                    for column in 0..<labels.count * templates.count {
                        averaged[row * labels.count + column / templates.count] += source[row * prompts.count + column] / Float(templates.count)
                    }
                }
            }
        }
        return out
    }
}
