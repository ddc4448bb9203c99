import Foundation

/// Where a tensor's floats live: memory this process allocated, or memory
/// borrowed from elsewhere (a memory-mapped weight file) that must never be
/// written and is kept alive through `owner`.
public final class TensorStorage: @unchecked Sendable {
    public let base: UnsafeMutablePointer<Float>
    public let capacity: Int
    public let isReadOnly: Bool
    private let owner: AnyObject?

    /// Allocates `capacity` floats; zero-filled unless the caller overwrites every element.
    /// Zeros come from calloc, so large zero tensors cost no memory until written.
    init(capacity: Int, zeroed: Bool = true) {
        self.capacity = capacity
        let bytes = max(capacity, 1) * MemoryLayout<Float>.stride
        guard let raw = zeroed ? calloc(1, bytes) : malloc(bytes) else {
            fatalError("out of memory allocating \(capacity) floats")
        }
        base = raw.bindMemory(to: Float.self, capacity: capacity)
        isReadOnly = false
        owner = nil
        isFileMap = false
    }

    /// Whether the floats are a private, read-only memory map of a file, whose pages can be dropped and read again.
    let isFileMap: Bool

    /// Wraps floats owned by `owner` (for example a memory map: `isFileMap` when it is a private read-only map of a
    /// file) without copying.
    public init(borrowing pointer: UnsafePointer<Float>, capacity: Int, owner: AnyObject, isFileMap: Bool = false) {
        base = UnsafeMutablePointer(mutating: pointer)
        self.capacity = capacity
        isReadOnly = true
        self.owner = owner
        self.isFileMap = isFileMap
    }

    deinit {
        if owner == nil { free(base) }
    }
}

/// A dense, row-major Float32 tensor with value semantics.
///
/// Reshapes and slices along the first axis are views that share storage;
/// the first mutation of a shared or read-only view copies it (copy on write).
public struct Tensor: @unchecked Sendable {
    public private(set) var shape: [Int]
    private(set) var storage: TensorStorage
    private(set) var offset: Int

    public var count: Int { shape.reduce(1, *) }
    public var rank: Int { shape.count }

    /// A tensor of zeros.
    public init(zeros shape: [Int]) {
        precondition(shape.allSatisfy { $0 >= 0 }, "negative dimension in \(shape)")
        self.shape = shape
        storage = TensorStorage(capacity: shape.reduce(1, *))
        offset = 0
    }

    /// A tensor whose every element the caller writes before reading (skips zero-filling).
    public init(uninitialized shape: [Int]) {
        self.shape = shape
        storage = TensorStorage(capacity: shape.reduce(1, *), zeroed: false)
        offset = 0
    }

    public init(shape: [Int], scalars: [Float]) {
        precondition(shape.reduce(1, *) == scalars.count,
                     "shape \(shape) holds \(shape.reduce(1, *)) values, got \(scalars.count)")
        self.init(uninitialized: shape)
        scalars.withUnsafeBufferPointer { storage.base.update(from: $0.baseAddress!, count: $0.count) }
    }

    public init(shape: [Int], repeating value: Float) {
        self.init(uninitialized: shape)
        storage.base.initialize(repeating: value, count: count)
    }

    /// A read-only view of `storage` starting at `offset`.
    public init(shape: [Int], storage: TensorStorage, offset: Int = 0) {
        precondition(offset + shape.reduce(1, *) <= storage.capacity, "view \(shape)+\(offset) exceeds storage")
        self.shape = shape
        self.storage = storage
        self.offset = offset
    }

    public var scalars: [Float] {
        withUnsafeBufferPointer { Array($0) }
    }

    public func withUnsafeBufferPointer<R>(_ body: (UnsafeBufferPointer<Float>) throws -> R) rethrows -> R {
        try body(UnsafeBufferPointer(start: storage.base + offset, count: count))
    }

    public mutating func withUnsafeMutableBufferPointer<R>(_ body: (UnsafeMutableBufferPointer<Float>) throws -> R) rethrows -> R {
        makeUniquelyWritable()
        return try body(UnsafeMutableBufferPointer(start: storage.base + offset, count: count))
    }

    private mutating func makeUniquelyWritable() {
        if storage.isReadOnly || !isKnownUniquelyReferenced(&storage) {
            let copy = TensorStorage(capacity: count, zeroed: false)
            copy.base.update(from: storage.base + offset, count: count)
            storage = copy
            offset = 0
        }
    }

    /// The same elements under another shape; one dimension may be -1 (inferred).
    public func reshaped(_ newShape: [Int]) -> Tensor {
        var resolved = newShape
        if let inferred = newShape.firstIndex(of: -1) {
            let known = newShape.enumerated().filter { $0.offset != inferred }.map(\.element).reduce(1, *)
            precondition(known > 0 && count % known == 0, "cannot reshape \(shape) to \(newShape)")
            resolved[inferred] = count / known
        }
        precondition(resolved.reduce(1, *) == count, "cannot reshape \(shape) to \(newShape)")
        var view = self
        view.shape = resolved
        return view
    }

    /// Hands the pages of a tensor read from a memory-mapped file back to the system (a copy of it was made, as packed
    /// weights are): they stop counting towards this process's memory, and are read from the file again if used.
    /// Does nothing to other tensors.
    public func releaseFilePages() {
        guard storage.isFileMap else { return }
        let page = Int(sysconf(Int32(_SC_PAGESIZE)))
        let start = Int(bitPattern: storage.base), end = start + storage.capacity * MemoryLayout<Float>.stride
        let (first, last) = ((start + page - 1) / page * page, end / page * page)   // whole pages inside the tensor only
        if last > first { _ = madvise(UnsafeMutableRawPointer(bitPattern: first), last - first, MADV_DONTNEED) }
    }

    /// Rows `range` along the first axis, as a view.
    public func rows(_ range: Range<Int>) -> Tensor {
        precondition(rank >= 1 && range.lowerBound >= 0 && range.upperBound <= shape[0],
                     "rows \(range) out of bounds for \(shape)")
        let rowSize = shape.dropFirst().reduce(1, *)
        var view = self
        view.shape[0] = range.count
        view.offset = offset + range.lowerBound * rowSize
        return view
    }

    /// Row `index` along the first axis, as a view with that axis removed.
    public func row(_ index: Int) -> Tensor {
        rows(index..<index + 1).reshaped(Array(shape.dropFirst()))
    }

    /// Element access by full index, for tests and small lookups.
    public subscript(_ indices: Int...) -> Float {
        get {
            precondition(indices.count == rank, "index \(indices) for shape \(shape)")
            var flat = 0
            for (i, dim) in zip(indices, shape) {
                precondition(i >= 0 && i < dim, "index \(indices) out of bounds for \(shape)")
                flat = flat * dim + i
            }
            return storage.base[offset + flat]
        }
    }

    /// The last dimension; the size of one "row" for row-wise operations.
    public var lastDimension: Int { shape.last ?? 1 }
}

extension Tensor: CustomStringConvertible {
    public var description: String {
        let preview = withUnsafeBufferPointer { $0.prefix(6).map { String(format: "%.4g", $0) } }
        return "Tensor\(shape)[\(preview.joined(separator: ", "))\(count > 6 ? ", …" : "")]"
    }
}
