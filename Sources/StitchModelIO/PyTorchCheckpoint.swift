import Foundation
import StitchTensor

/// A PyTorch checkpoint (`pytorch_model.bin`) read without Python and without running any of it:
/// the zip format `torch.save` writes since PyTorch 1.6 (`<name>/data.pkl` and one entry per
/// storage under `<name>/data/`) and the legacy format before it (magic number, protocol version
/// and system-info pickles, the state-dict pickle, the storage keys, then each storage's element
/// count and raw bytes). The pickle is read by `Unpickler`, which allows only what a state dict
/// needs. Tensors are strided views of storages; contiguous ones are used in place in the memory
/// map, so an F32 checkpoint stored uncompressed loads without copies, as safetensors does.
public final class PyTorchCheckpoint: TensorFile, @unchecked Sendable {
    public let path: String
    private let map: MemoryMap
    /// Bytes inflated from deflated zip entries, kept alive for the storages that point into them.
    private var inflated: [OwnedBytes] = []
    private var storages: [Storage] = []
    private var tensors: [String: StoredTensor] = [:]

    struct Storage {
        let key: String
        let dtype: TensorDType
        let bytes: UnsafeRawBufferPointer
    }

    struct StoredTensor {
        let storage: Int
        let offset: Int
        let shape: [Int]
        let stride: [Int]
        var dtype: TensorDType
    }

    /// The legacy format's first pickle: the integer 0x1950a86a20f9469cfc6c, little-endian.
    private static let legacyMagic: [UInt8] = [0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19]

    public init(path: String) throws(ModelIOError) {
        self.path = path
        map = try MemoryMap(path: path)
        if ZipArchive.looksLikeZip(map) {
            try readZip()
        } else if map.size >= 2, map.base.load(as: UInt8.self) == 0x80 {
            try readLegacy()
        } else {
            throw .invalidModel(file: path, detail: "not a PyTorch checkpoint: neither a zip archive nor a pickle (a tar-format checkpoint from PyTorch before 0.4 is not read)")
        }
    }

    public var tensorNames: [String] { Array(tensors.keys) }

    public func shape(of name: String) -> [Int]? { tensors[name]?.shape }

    public func dtype(of name: String) -> TensorDType? { tensors[name]?.dtype }

    public func tensor(_ name: String) throws(ModelIOError) -> Tensor {
        guard let stored = tensors[name] else { throw .missingTensor(file: path, tensor: name) }
        if let bytes = contiguousBytes(stored) {
            return try floatTensor(file: path, name: name, dtype: stored.dtype, shape: stored.shape, bytes: bytes, owner: self)
        }
        let gathered = OwnedBytes(gather(stored))
        return try floatTensor(file: path, name: name, dtype: stored.dtype, shape: stored.shape,
                               bytes: UnsafeRawBufferPointer(rebasing: gathered.buffer[0..<gathered.count]), owner: nil)
    }

    public func entry(_ name: String) throws(ModelIOError) -> SafetensorsEntry {
        guard let stored = tensors[name] else { throw .missingTensor(file: path, tensor: name) }
        return SafetensorsEntry(dtype: stored.dtype, shape: stored.shape, bytes: contiguousBytes(stored).map { Data($0) } ?? gather(stored))
    }

    // MARK: views

    /// The view's bytes in place when it is laid out row-major without gaps.
    private func contiguousBytes(_ tensor: StoredTensor) -> UnsafeRawBufferPointer? {
        var expected = 1
        for (size, stride) in zip(tensor.shape, tensor.stride).reversed() where size != 1 {
            guard stride == expected else { return nil }
            expected *= size
        }
        let width = tensor.dtype.byteSize
        let count = tensor.shape.reduce(1, *)
        let storage = storages[tensor.storage].bytes
        return UnsafeRawBufferPointer(rebasing: storage[(tensor.offset * width)..<((tensor.offset + count) * width)])
    }

    /// A strided view copied out row-major (its bounds were checked when the checkpoint was read).
    private func gather(_ tensor: StoredTensor) -> Data {
        let width = tensor.dtype.byteSize
        let count = tensor.shape.reduce(1, *)
        let source = storages[tensor.storage].bytes
        var out = Data(count: count * width)
        out.withUnsafeMutableBytes { target in
            var index = [Int](repeating: 0, count: tensor.shape.count)
            var element = tensor.offset
            for i in 0..<count {
                (target.baseAddress! + i * width).copyMemory(from: source.baseAddress! + element * width, byteCount: width)
                // Advance the multi-index, last dimension fastest.
                var dim = tensor.shape.count - 1
                while dim >= 0 {
                    index[dim] += 1
                    element += tensor.stride[dim]
                    if index[dim] < tensor.shape[dim] { break }
                    element -= index[dim] * tensor.stride[dim]
                    index[dim] = 0
                    dim -= 1
                }
            }
        }
        return out
    }

    // MARK: the zip format

    private func readZip() throws(ModelIOError) {
        let archive = try ZipArchive(map: map, path: path)
        let pickles = archive.entries.filter { $0.name.hasSuffix("/data.pkl") && $0.name.split(separator: "/").count == 2 }
        guard pickles.count == 1, let pickle = pickles.first else {
            let names = archive.entries.prefix(5).map(\.name).joined(separator: ", ")
            throw .invalidModel(file: path, detail: "not a PyTorch checkpoint: a zip archive without one <name>/data.pkl (it holds \(names.isEmpty ? "nothing" : names))")
        }
        let prefix = String(pickle.name.dropLast("data.pkl".count))
        if let order = archive.entry(prefix + "byteorder") {
            let text = String(decoding: try archive.data(order), as: UTF8.self)
            guard text == "little" else { throw .invalidModel(file: path, detail: "byteorder is '\(text)'; only little-endian checkpoints are read") }
        }
        let pickleData = OwnedBytes(try archive.data(pickle))
        do {
            var unpickler = Unpickler(file: path, bytes: UnsafeRawBufferPointer(rebasing: pickleData.buffer[0..<pickleData.count]))
            let root = try unpickler.load()
            var storageByKey: [String: Int] = [:]
            try collect(root, unpickler) { (id, unpickler) throws(ModelIOError) -> (Int, TensorDType) in
                // ("storage", storage class, key, location, element count)
                guard id.count == 5, case .string("storage") = id[0], case .global(let type) = id[1], let dtype = Unpickler.storageClasses[type],
                      case .string(let key) = id[2], case .int(let count) = id[4], count >= 0 else {
                    throw unpickler.fail("a persistent id that is not (\"storage\", type, key, location, size)")
                }
                if let known = storageByKey[key] { return (known, storages[known].dtype) }
                guard let entry = archive.entry(prefix + "data/" + key) else {
                    throw .invalidModel(file: path, detail: "storage '\(key)' has no entry \(prefix)data/\(key) in the archive")
                }
                let bytes: UnsafeRawBufferPointer
                if let stored = try archive.storedBytes(entry) {
                    bytes = stored
                } else {
                    let owned = OwnedBytes(try archive.data(entry))
                    inflated.append(owned)
                    bytes = UnsafeRawBufferPointer(rebasing: owned.buffer[0..<owned.count])
                }
                try addStorage(key: key, dtype: dtype, count: count, bytes: bytes)
                storageByKey[key] = storages.count - 1
                return (storages.count - 1, dtype)
            }
        }
        for name in tensors.keys { try checkBounds(name) }
    }

    // MARK: the legacy format

    private func readLegacy() throws(ModelIOError) {
        let all = UnsafeRawBufferPointer(start: map.base, count: map.size)
        var unpickler = Unpickler(file: path, bytes: all)
        guard case .bigInt(let magic) = try unpickler.load(), magic == Self.legacyMagic else {
            throw .invalidModel(file: path, detail: "not a PyTorch checkpoint: a pickle without torch's magic number")
        }
        guard case .int(1001) = try unpickler.load() else {
            throw .invalidModel(file: path, detail: "legacy PyTorch checkpoint of an unknown protocol version")
        }
        _ = try unpickler.load()   // system information: byte order and type sizes of the writer
        let root = try unpickler.load()
        // Storages come after the pickles, in the order of the key list: an 8-byte element count, then the bytes.
        var wanted: [String: (dtype: TensorDType, count: Int)] = [:]
        var views: [[PickleValue]] = []
        try collect(root, unpickler) { (id, unpickler) throws(ModelIOError) -> (Int, TensorDType) in
            // ("storage", storage class, root key, location, element count, view metadata or None)
            guard id.count == 6, case .string("storage") = id[0], case .global(let type) = id[1], let dtype = Unpickler.storageClasses[type],
                  case .string(let key) = id[2], case .int(let count) = id[4], count >= 0 else {
                throw unpickler.fail("a persistent id that is not (\"storage\", type, key, location, size, view)")
            }
            if let existing = wanted[key], existing.dtype != dtype {
                throw .invalidModel(file: path, detail: "storage '\(key)' is read both as \(existing.dtype.rawValue) and \(dtype.rawValue)")
            }
            wanted[key] = (dtype, max(count, wanted[key]?.count ?? 0))
            views.append(id)
            return (views.count - 1, dtype)   // a placeholder index, replaced below
        }
        guard case .list(let keyList) = try unpickler.load() else {
            throw .invalidModel(file: path, detail: "legacy checkpoint: the storage key list is missing")
        }
        var offset = unpickler.position
        var storageByKey: [String: Int] = [:]
        for item in unpickler.lists[keyList] {
            guard case .string(let key) = item, let info = wanted[key] else {
                throw .invalidModel(file: path, detail: "legacy checkpoint lists a storage that no tensor uses")
            }
            guard offset <= map.size - 8 else { throw .truncated(file: path, detail: "storage '\(key)' starts past the end of the file") }
            let count = Int(truncatingIfNeeded: UInt64(littleEndian: map.base.loadUnaligned(fromByteOffset: offset, as: UInt64.self)))
            let (bytes, overflow) = count.multipliedReportingOverflow(by: info.dtype.byteSize)
            guard count >= 0, !overflow, bytes <= map.size - offset - 8 else {
                throw .truncated(file: path, detail: "storage '\(key)' claims \(count) elements of \(info.dtype.rawValue) but the file ends \(map.size - offset - 8) bytes later")
            }
            try addStorage(key: key, dtype: info.dtype, count: info.count,
                           bytes: UnsafeRawBufferPointer(start: map.base + offset + 8, count: bytes))
            storageByKey[key] = storages.count - 1
            offset += 8 + bytes
        }
        // Each tensor's storage: its root storage, or a view of it (view key, element offset, element count).
        for name in Array(tensors.keys) {
            let id = views[tensors[name]!.storage]
            guard case .string(let key) = id[2], let root = storageByKey[key] else {
                throw .invalidModel(file: path, detail: "tensor '\(name)': its storage is not in the file")
            }
            var index = root
            if let view = unpickler.tuple(id[5]) {
                guard view.count == 3, case .string(let viewKey) = view[0], case .int(let start) = view[1], case .int(let count) = view[2],
                      start >= 0, count >= 0, start <= Int.max - count else {
                    throw .invalidModel(file: path, detail: "tensor '\(name)': malformed storage view")
                }
                let width = storages[root].dtype.byteSize
                let base = storages[root].bytes
                guard (start + count) <= base.count / width else {
                    throw .invalidModel(file: path, detail: "tensor '\(name)': storage view \(viewKey) reaches past its storage")
                }
                storages.append(Storage(key: viewKey, dtype: storages[root].dtype,
                                        bytes: UnsafeRawBufferPointer(rebasing: base[(start * width)..<((start + count) * width)])))
                index = storages.count - 1
            }
            tensors[name] = StoredTensor(storage: index, offset: tensors[name]!.offset, shape: tensors[name]!.shape,
                                         stride: tensors[name]!.stride, dtype: storages[index].dtype)
            try checkBounds(name)
        }
    }

    // MARK: shared

    private func addStorage(key: String, dtype: TensorDType, count: Int, bytes: UnsafeRawBufferPointer) throws(ModelIOError) {
        let (needed, overflow) = count.multipliedReportingOverflow(by: dtype.byteSize)
        guard !overflow, bytes.count >= needed else {
            throw .truncated(file: path, detail: "storage '\(key)' holds \(bytes.count) bytes but claims \(count) elements of \(dtype.rawValue)\(overflow ? "" : " (\(needed) bytes)")")
        }
        storages.append(Storage(key: key, dtype: dtype, bytes: UnsafeRawBufferPointer(rebasing: bytes[0..<needed])))
    }

    /// Walks the unpickled root, a dict of name -> tensor, resolving each tensor's storage with `storage`.
    private func collect(_ root: PickleValue, _ unpickler: Unpickler,
                         storage: ([PickleValue], Unpickler) throws(ModelIOError) -> (Int, TensorDType)) throws(ModelIOError) {
        guard case .dict(let index) = root else {
            throw .invalidModel(file: path, detail: "not a state dict: the checkpoint holds a \(root.kind), not a dict of tensors")
        }
        for (key, value) in unpickler.dicts[index] {
            guard case .string(let name) = key else { throw .invalidModel(file: path, detail: "not a state dict: a key is a \(key.kind), not a name") }
            guard case .tensor(let viewIndex) = value else {
                throw .invalidModel(file: path, detail: "not a state dict: '\(name)' holds a \(value.kind), not a tensor")
            }
            let view = unpickler.views[viewIndex]
            let (storageIndex, dtype) = try storage(unpickler.tuples[view.storage], unpickler)
            guard view.offset >= 0, view.shape.allSatisfy({ $0 >= 0 }), view.stride.allSatisfy({ $0 >= 0 }) else {
                throw .invalidModel(file: path, detail: "tensor '\(name)' has a negative size, stride or offset")
            }
            tensors[name] = StoredTensor(storage: storageIndex, offset: view.offset, shape: view.shape, stride: view.stride, dtype: dtype)
        }
    }

    /// The view must lie inside its storage: offset + sum((size - 1) * stride) < elements, without overflow.
    private func checkBounds(_ name: String) throws(ModelIOError) {
        let tensor = tensors[name]!
        let elements = storages[tensor.storage].bytes.count / tensor.dtype.byteSize
        var count = 1, last = tensor.offset, overflow = false
        for (size, stride) in zip(tensor.shape, tensor.stride) {
            let product = count.multipliedReportingOverflow(by: size)
            count = product.partialValue
            overflow = overflow || product.overflow
            if size > 0 {
                let step = (size - 1).multipliedReportingOverflow(by: stride)
                let sum = last.addingReportingOverflow(step.partialValue)
                last = sum.partialValue
                overflow = overflow || step.overflow || sum.overflow
            }
        }
        guard !overflow, tensor.offset <= elements, count == 0 || last < elements else {
            throw .invalidModel(file: path, detail: "tensor '\(name)' (shape \(tensor.shape), stride \(tensor.stride), offset \(tensor.offset)) reaches past its storage of \(elements) elements")
        }
        // Only an overlapping view (stride 0, as expand() makes) has more elements than its storage; weights never are one,
        // and copying one out could need any amount of memory.
        guard count <= elements else {
            throw .invalidModel(file: path, detail: "tensor '\(name)' (shape \(tensor.shape), stride \(tensor.stride)) has more elements than its storage of \(elements): an overlapping view, not weights")
        }
    }
}

/// Bytes copied into a buffer of their own, so pointers into them stay valid while this object lives.
final class OwnedBytes {
    let buffer: UnsafeMutableRawBufferPointer
    let count: Int

    init(_ data: Data) {
        count = data.count
        buffer = .allocate(byteCount: max(data.count, 1), alignment: 64)
        data.copyBytes(to: buffer)
    }

    deinit { buffer.deallocate() }
}
