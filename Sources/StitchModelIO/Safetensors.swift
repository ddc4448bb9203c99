import CMapGuard
import Foundation
import StitchTensor

/// Element types of the safetensors format. Every one is validated; the
/// float types F32, F16 and BF16 can be read (as Float32).
public enum TensorDType: String, Sendable {
    case f64 = "F64", f32 = "F32", f16 = "F16", bf16 = "BF16"
    case f8e4m3 = "F8_E4M3", f8e5m2 = "F8_E5M2"
    case i64 = "I64", i32 = "I32", i16 = "I16", i8 = "I8"
    case u64 = "U64", u32 = "U32", u16 = "U16", u8 = "U8", bool = "BOOL"

    public var isFloatingPoint: Bool { [.f64, .f32, .f16, .bf16, .f8e4m3, .f8e5m2].contains(self) }

    public var byteSize: Int {
        switch self {
        case .f64, .i64, .u64: return 8
        case .f32, .i32, .u32: return 4
        case .f16, .bf16, .i16, .u16: return 2
        case .f8e4m3, .f8e5m2, .i8, .u8, .bool: return 1
        }
    }
}

/// Where one tensor lies in the file, as validated from the header.
public struct TensorInfo: Sendable, Equatable {
    public let name: String
    public let dtype: TensorDType
    public let shape: [Int]
    /// Byte range relative to the start of the data section.
    public let byteRange: Range<Int>
}

/// A read-only memory map of a whole file, unmapped when the last user is gone. It is registered with the SIGBUS
/// guard (CMapGuard): if the file shrinks while mapped, reads past its new end see zeros instead of killing the
/// process, and `MappedFiles` lets whoever is reading find out and fail.
final class MemoryMap: @unchecked Sendable {
    let base: UnsafeRawPointer
    let size: Int
    let path: String
    private var guardSlot: Int32 = -1

    /// Whether a read of this mapping went past the file's end since it was mapped.
    var changedOnDisk: Bool { stitch_map_guard_damaged(guardSlot) != 0 }

    init(path: String) throws(ModelIOError) {
        self.path = path
        let fd = open(path, O_RDONLY)
        guard fd >= 0 else { throw .cannotOpen(file: path, reason: String(cString: strerror(errno))) }
        defer { close(fd) }
        var info = stat()
        guard fstat(fd, &info) == 0 else { throw .cannotOpen(file: path, reason: String(cString: strerror(errno))) }
        guard (info.st_mode & S_IFMT) == S_IFREG else { throw .cannotOpen(file: path, reason: "not a regular file") }
        size = Int(info.st_size)
        if size == 0 {
            base = UnsafeRawPointer(bitPattern: 1)!   // never dereferenced: every read is bounds-checked against size 0
            return
        }
        guard let mapped = mmap(nil, size, PROT_READ, MAP_PRIVATE, fd, 0), mapped != MAP_FAILED else {
            throw .cannotOpen(file: path, reason: "mmap: " + String(cString: strerror(errno)))
        }
        base = UnsafeRawPointer(mapped)
        guardSlot = stitch_map_guard_register(base, size)
        MappedFiles.add(self)
    }

    deinit {
        guard size > 0 else { return }
        MappedFiles.remove(self)
        stitch_map_guard_unregister(guardSlot)
        munmap(UnsafeMutableRawPointer(mutating: base), size)
    }
}

/// The memory-mapped files of this process, for noticing that one changed on disk while in use: compare
/// `faults` before and after some work, and name `changedFiles()` in the error.
public enum MappedFiles {
    private static let lock = NSLock()
    nonisolated(unsafe) private static var live: [ObjectIdentifier: Weak] = [:]
    private struct Weak { weak var map: MemoryMap? }

    /// Reads past a mapped file's end (it shrank) absorbed so far in this process.
    public static var faults: UInt { stitch_map_guard_fault_count() }

    /// The mapped files, still in use, that shrank while mapped.
    public static func changedFiles() -> [String] {
        lock.withLock { live.values.compactMap(\.map).filter(\.changedOnDisk).map(\.path) }.sorted()
    }

    /// The error for work during which `faults` changed.
    public static func changedError() -> ModelIOError {
        let files = changedFiles()
        return .cannotOpen(file: files.isEmpty ? "a memory-mapped file" : files.joined(separator: ", "),
                           reason: "changed on disk (it shrank) while in use; load it again")
    }

    static func add(_ map: MemoryMap) { lock.withLock { live[ObjectIdentifier(map)] = Weak(map: map) } }
    static func remove(_ map: MemoryMap) { lock.withLock { live[ObjectIdentifier(map)] = nil } }
}

/// A memory-mapped safetensors file (https://github.com/huggingface/safetensors):
/// 8-byte little-endian header length, JSON header, then the raw data section.
/// Every offset in the header is checked against the real file length before use.
public final class SafetensorsFile: @unchecked Sendable {
    public let path: String
    public let tensors: [String: TensorInfo]
    public let metadata: [String: String]
    private let map: MemoryMap
    private let dataStart: Int

    /// Headers larger than this are refused rather than parsed (the format's own limit is 100 MB).
    static let maximumHeaderSize = 100_000_000

    public init(path: String) throws(ModelIOError) {
        self.path = path
        map = try MemoryMap(path: path)
        guard map.size >= 8 else {
            throw .truncated(file: path, detail: "\(map.size) bytes, shorter than the 8-byte header length")
        }
        let headerLength = Int(littleEndian: map.base.loadUnaligned(as: Int.self))
        guard headerLength >= 2, headerLength <= Self.maximumHeaderSize else {
            throw .invalidHeader(file: path, detail: "header length \(UInt64(bitPattern: Int64(headerLength))) is implausible")
        }
        guard 8 + headerLength <= map.size else {
            throw .truncated(file: path, detail: "header claims \(headerLength) bytes but only \(map.size - 8) follow")
        }
        dataStart = 8 + headerLength
        let headerBytes = Data(bytes: map.base + 8, count: headerLength)
        let parsed: Any
        do {
            parsed = try JSONSerialization.jsonObject(with: headerBytes)
        } catch {
            throw .invalidHeader(file: path, detail: "header is not valid JSON")
        }
        guard let entries = parsed as? [String: Any] else {
            throw .invalidHeader(file: path, detail: "header is not a JSON object")
        }
        let dataLength = map.size - dataStart
        var tensors: [String: TensorInfo] = [:]
        var metadata: [String: String] = [:]
        for (name, value) in entries {
            if name == "__metadata__" {
                guard let fields = value as? [String: Any] else {
                    throw .invalidHeader(file: path, detail: "__metadata__ is not an object")
                }
                for (key, field) in fields { metadata[key] = field as? String ?? "\(field)" }
                continue
            }
            tensors[name] = try Self.parseEntry(name: name, value: value, dataLength: dataLength, file: path)
        }
        self.tensors = tensors
        self.metadata = metadata
    }

    private static func parseEntry(name: String, value: Any, dataLength: Int, file: String) throws(ModelIOError) -> TensorInfo {
        guard let fields = value as? [String: Any] else {
            throw .badTensorEntry(file: file, tensor: name, detail: "entry is not an object")
        }
        guard let dtypeName = fields["dtype"] as? String else {
            throw .badTensorEntry(file: file, tensor: name, detail: "missing dtype")
        }
        guard let dtype = TensorDType(rawValue: dtypeName) else {
            throw .badTensorEntry(file: file, tensor: name, detail: "unknown dtype \(dtypeName)")
        }
        guard let shape = integers(fields["shape"]), shape.allSatisfy({ $0 >= 0 }) else {
            throw .badTensorEntry(file: file, tensor: name, detail: "shape is not a list of non-negative integers")
        }
        guard let offsets = integers(fields["data_offsets"]), offsets.count == 2 else {
            throw .badTensorEntry(file: file, tensor: name, detail: "data_offsets is not a pair of integers")
        }
        let (begin, end) = (offsets[0], offsets[1])
        guard begin >= 0, begin <= end else {
            throw .badTensorEntry(file: file, tensor: name, detail: "data_offsets [\(begin), \(end)] are not an increasing pair")
        }
        guard end <= dataLength else {
            throw .truncated(file: file, detail: "tensor '\(name)' ends at byte \(end) of the data section, which holds only \(dataLength) bytes")
        }
        let (elements, overflow) = shape.reduce((1, false)) { acc, dim in
            let product = acc.0.multipliedReportingOverflow(by: dim)
            return (product.partialValue, acc.1 || product.overflow)
        }
        let bytes = elements.multipliedReportingOverflow(by: dtype.byteSize)
        guard !overflow, !bytes.overflow, bytes.partialValue == end - begin else {
            let needed = overflow || bytes.overflow ? "more bytes than a 64-bit size holds" : "\(bytes.partialValue) bytes"
            throw .badTensorEntry(file: file, tensor: name, detail: "shape \(shape) of \(dtypeName) needs \(needed) but data_offsets span \(end - begin)")
        }
        return TensorInfo(name: name, dtype: dtype, shape: shape, byteRange: begin..<end)
    }

    /// A JSON list of whole numbers small enough to be exact, or nil.
    private static func integers(_ value: Any?) -> [Int]? {
        guard let list = value as? [Any] else { return nil }
        var result: [Int] = []
        for item in list {
            guard let number = item as? NSNumber else { return nil }
            let exact = number.doubleValue
            guard exact == exact.rounded(), abs(exact) < 9e15 else { return nil }
            result.append(Int(exact))
        }
        return result
    }

    /// The raw little-endian bytes of a tensor, in place in the mapping (valid while this file lives).
    public func bytes(_ name: String) throws(ModelIOError) -> UnsafeRawBufferPointer {
        guard let info = tensors[name] else { throw .missingTensor(file: path, tensor: name) }
        return UnsafeRawBufferPointer(start: map.base + dataStart + info.byteRange.lowerBound, count: info.byteRange.count)
    }

    /// Whether the file shrank on disk after a read of it went past its new end (the read saw zeros).
    public var changedOnDisk: Bool { map.changedOnDisk }

    /// The whole data section (all tensors' bytes), e.g. for a checksum.
    public var dataSection: UnsafeRawBufferPointer {
        UnsafeRawBufferPointer(start: map.base + dataStart, count: map.size - dataStart)
    }

    /// The tensor as Float32 (an error for integer and 8-bit float tensors). F32 data that is suitably aligned is returned as a
    /// read-only view of the mapping (no copy); F16 and BF16 are converted.
    public func tensor(_ name: String) throws(ModelIOError) -> Tensor {
        guard let info = tensors[name] else { throw .missingTensor(file: path, tensor: name) }
        return try floatTensor(file: path, name: name, dtype: info.dtype, shape: info.shape, bytes: try bytes(name), owner: map)
    }
}

extension SafetensorsFile: TensorFile {
    public var tensorNames: [String] { Array(tensors.keys) }
    public func shape(of name: String) -> [Int]? { tensors[name]?.shape }
    public func dtype(of name: String) -> TensorDType? { tensors[name]?.dtype }
    public func entry(_ name: String) throws(ModelIOError) -> SafetensorsEntry {
        guard let info = tensors[name] else { throw .missingTensor(file: path, tensor: name) }
        return SafetensorsEntry(dtype: info.dtype, shape: info.shape, bytes: Data(try bytes(name)))
    }
}

/// Little-endian `bytes` of `dtype` as a Float32 tensor: F32 borrowed in place when aligned and `owner` keeps the bytes
/// alive, else copied; F16 and BF16 widened; other dtypes are an error naming the file and tensor.
func floatTensor(file: String, name: String, dtype: TensorDType, shape: [Int], bytes: UnsafeRawBufferPointer, owner: AnyObject?) throws(ModelIOError) -> Tensor {
    let count = shape.reduce(1, *)
    guard let source = bytes.baseAddress ?? (count == 0 ? UnsafeRawPointer(bitPattern: 8) : nil) else { return Tensor(zeros: shape) }
    switch dtype {
    case .f32:
        if let owner, Int(bitPattern: source) % MemoryLayout<Float>.alignment == 0 {
            // Both callers' owners keep a private read-only map of the file (`MemoryMap`).
            return Tensor(shape: shape, storage: TensorStorage(borrowing: source.assumingMemoryBound(to: Float.self), capacity: count, owner: owner, isFileMap: true))
        }
        var out = Tensor(uninitialized: shape)
        out.withUnsafeMutableBufferPointer { UnsafeMutableRawBufferPointer($0).copyMemory(from: UnsafeRawBufferPointer(start: source, count: count * 4)) }
        return out
    case .f16:
        var out = Tensor(uninitialized: shape)
        if Int(bitPattern: source) % 2 == 0 {
            out.withUnsafeMutableBufferPointer { widenHalfFloats(source, count: count, into: $0.baseAddress!) }
        } else {   // a legacy PyTorch file can leave storages at odd offsets
            let aligned = Array(UnsafeRawBufferPointer(start: source, count: count * 2))
            aligned.withUnsafeBytes { raw in out.withUnsafeMutableBufferPointer { widenHalfFloats(raw.baseAddress!, count: count, into: $0.baseAddress!) } }
        }
        return out
    case .bf16:
        var out = Tensor(uninitialized: shape)
        out.withUnsafeMutableBufferPointer { dst in
            for i in 0..<count {
                let bits = UInt32(UInt16(littleEndian: source.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self))) << 16
                dst[i] = Float(bitPattern: bits)
            }
        }
        return out
    default:
        throw .unsupportedDtype(file: file, tensor: name, dtype: dtype.rawValue)
    }
}

/// One tensor to write: its dtype, shape and little-endian bytes.
public struct SafetensorsEntry {
    public let dtype: TensorDType
    public let shape: [Int]
    public let bytes: Data

    public init(dtype: TensorDType, shape: [Int], bytes: Data) {
        self.dtype = dtype
        self.shape = shape
        self.bytes = bytes
    }

    /// A Float32 tensor stored as F32, or rounded to F16.
    public init(_ tensor: Tensor, as dtype: TensorDType = .f32) {
        precondition(dtype == .f32 || dtype == .f16, "tensors are written as F32 or F16")
        self.dtype = dtype
        shape = tensor.shape
        bytes = tensor.withUnsafeBufferPointer { values in
            dtype == .f32 ? Data(buffer: values) : Data(values.map { Float16($0).bitPattern.littleEndian }.withUnsafeBufferPointer { Data(buffer: $0) })
        }
    }
}

/// A safetensors file written without holding its data: the entries' names, dtypes and shapes first, then their
/// bytes appended in the file's order (sorted names), then the metadata (which may depend on the data, such as a
/// checksum) in the header, and the file renamed into place. Memory stays at whatever the caller appends at once.
public final class SafetensorsStreamWriter {
    public let path: String
    private let temporary: String
    private let handle: FileHandle
    private let entries: [(name: String, dtype: TensorDType, shape: [Int])]
    private let headerRoom: Int
    private var remaining: Int
    private var finished = false

    /// `metadataRoom`: the longest metadata `finish` will be given (the header's room is reserved with it).
    public init(path: String, entries: [(name: String, dtype: TensorDType, shape: [Int])], metadataRoom: [String: String]) throws {
        self.path = path
        self.entries = entries.sorted { $0.name < $1.name }
        temporary = path + ".partial-\(getpid())"
        guard FileManager.default.createFile(atPath: temporary, contents: nil) else {
            throw ModelIOError.cannotOpen(file: temporary, reason: String(cString: strerror(errno)))
        }
        handle = try FileHandle(forWritingTo: URL(fileURLWithPath: temporary))
        remaining = self.entries.reduce(0) { $0 + $1.shape.reduce($1.dtype.byteSize, *) }
        var room = try safetensorsHeader(self.entries, metadata: metadataRoom).count + 64
        room += (8 - room % 8) % 8
        headerRoom = room
        try handle.write(contentsOf: Data(count: 8 + room))   // the header goes here at the end
    }

    deinit {
        if !finished { try? handle.close(); try? FileManager.default.removeItem(atPath: temporary) }
    }

    /// The next bytes of the data section.
    public func append(_ bytes: UnsafeRawBufferPointer) throws {
        guard bytes.count <= remaining else { throw ModelIOError.invalidModel(file: path, detail: "more data than the entries declared") }
        try handle.write(contentsOf: Data(bytes))
        remaining -= bytes.count
    }

    /// Writes the header with `metadata` and renames the file into place; on any failure the partial file is removed.
    public func finish(metadata: [String: String]) throws {
        defer {
            if !finished { try? handle.close(); try? FileManager.default.removeItem(atPath: temporary) }
            finished = true
        }
        guard remaining == 0 else { throw ModelIOError.invalidModel(file: path, detail: "\(remaining) bytes of data missing") }
        var json = try safetensorsHeader(entries, metadata: metadata)
        guard json.count <= headerRoom else { throw ModelIOError.invalidModel(file: path, detail: "the metadata is longer than the room reserved for it") }
        json.append(Data(repeating: 0x20, count: headerRoom - json.count))   // spaces: still one JSON object
        try handle.seek(toOffset: 0)
        try handle.write(contentsOf: withUnsafeBytes(of: UInt64(headerRoom).littleEndian) { Data($0) })
        try handle.write(contentsOf: json)
        try handle.synchronize()
        try handle.close()
        guard rename(temporary, path) == 0 else {
            throw ModelIOError.cannotOpen(file: path, reason: String(cString: strerror(errno)))
        }
        finished = true
    }

}

/// A safetensors header (unpadded JSON) for `entries` laid out back to back in the given order.
private func safetensorsHeader(_ entries: [(name: String, dtype: TensorDType, shape: [Int])], metadata: [String: String]) throws -> Data {
    var header: [String: Any] = metadata.isEmpty ? [:] : ["__metadata__": metadata]
    var offset = 0
    for entry in entries {
        let size = entry.shape.reduce(entry.dtype.byteSize, *)
        header[entry.name] = ["dtype": entry.dtype.rawValue, "shape": entry.shape, "data_offsets": [offset, offset + size]]
        offset += size
    }
    return try JSONSerialization.data(withJSONObject: header, options: [.sortedKeys])
}

/// Writes tensors as a safetensors file (F32), atomically: a temporary file
/// in the same folder is renamed over the destination only when complete.
public func writeSafetensors(_ tensors: [String: Tensor], metadata: [String: String] = [:], to path: String) throws {
    try writeSafetensors(entries: tensors.mapValues { SafetensorsEntry($0) }, metadata: metadata, to: path)
}

/// Writes entries of any dtype as a safetensors file, atomically.
public func writeSafetensors(entries: [String: SafetensorsEntry], metadata: [String: String] = [:], to path: String) throws {
    let names = entries.keys.sorted()
    var json = try safetensorsHeader(names.map { ($0, entries[$0]!.dtype, entries[$0]!.shape) }, metadata: metadata)
    while json.count % 8 != 0 { json.append(0x20) }   // pad so the data section stays 8-byte aligned
    var file = Data()
    withUnsafeBytes(of: UInt64(json.count).littleEndian) { file.append(contentsOf: $0) }
    file.append(json)
    for name in names { file.append(entries[name]!.bytes) }
    try file.write(to: URL(fileURLWithPath: path), options: .atomic)
}
