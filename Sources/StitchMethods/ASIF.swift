import CStitchKernels
import Foundation
import StitchModelIO
import StitchTensor

/// ASIF (Norelli et al. 2022): two unimodal encoders that never saw each other are compared
/// through an anchor set of N (image, caption) pairs. An image is represented by its cosine
/// similarities to the N anchor images, a text by its similarities to the N anchor captions;
/// the k largest entries are kept (the rest are 0), raised to the power p and L2-normalised,
/// and images and texts are compared in that shared N-dimensional space by dot product.
public struct ASIFSettings: Sendable {
    public var k: Int
    public var p: Float

    public init(k: Int = 800, p: Float = 8) {
        self.k = k
        self.p = p
    }
}

/// A sparse, unit-length relative representation: anchor indices (ascending) and values.
public struct RelativeRepresentation: Sendable, Equatable {
    public let indices: [Int32]
    public let values: [Float]
}

/// Unit-length anchor embeddings of one modality, [count, dimension], stored as F32 or F16;
/// usually a view of a memory-mapped index.
public struct AnchorMatrix: @unchecked Sendable {
    public let count: Int
    public let dimension: Int
    public let dtype: TensorDType
    let base: UnsafeRawPointer
    /// Keeps the mapping (or buffer) alive.
    let owner: AnyObject

    public init(tensor: Tensor) {
        precondition(tensor.rank == 2, "anchors must be [count, dimension], got \(tensor.shape)")
        let copy = tensor.scalars   // contiguous and owned
        let storage = AnchorStorage(copy)
        self.init(count: tensor.shape[0], dimension: tensor.shape[1], dtype: .f32, base: UnsafeRawPointer(storage.pointer), owner: storage)
    }

    init(count: Int, dimension: Int, dtype: TensorDType, base: UnsafeRawPointer, owner: AnyObject) {
        self.count = count
        self.dimension = dimension
        self.dtype = dtype
        self.base = base
        self.owner = owner
    }

    /// Drops from memory the pages of rows `range` of a memory-mapped index (read once, as a merge reads them): they
    /// stay in the file and come back if read again, but the process's resident memory stays near one block.
    func releasePages(_ range: Range<Int>) {
        guard owner is SafetensorsFile else { return }   // an owned buffer would lose its contents
        let page = Int(sysconf(Int32(_SC_PAGESIZE)))
        let start = Int(bitPattern: base) + range.lowerBound * dimension * dtype.byteSize
        let end = Int(bitPattern: base) + range.upperBound * dimension * dtype.byteSize
        let first = (start + page - 1) / page * page, last = end / page * page   // whole pages inside the rows only
        if last > first { madvise(UnsafeMutableRawPointer(bitPattern: first), last - first, MADV_DONTNEED) }
    }

    /// Rows `range` as F32 [range.count, dimension]: in place for F32; for F16 widened into
    /// `scratch` (at least range.count * dimension floats), so memory stays near the file's size.
    func rows(_ range: Range<Int>, scratch: UnsafeMutablePointer<Float>) -> UnsafePointer<Float> {
        if dtype == .f32 { return base.assumingMemoryBound(to: Float.self) + range.lowerBound * dimension }
        let (source, count) = (base + range.lowerBound * dimension * 2, range.count * dimension)
        // Widened in parallel slices: the conversion is a pass over memory like the product after it.
        Parallel.forChunks(count) { slice in
            widenHalfFloats(source + 2 * slice.lowerBound, count: slice.count, into: scratch + slice.lowerBound)
        }
        return UnsafePointer(scratch)
    }
}

final class AnchorStorage: @unchecked Sendable {
    let pointer: UnsafeMutablePointer<Float>
    init(_ values: [Float]) {
        pointer = .allocate(capacity: max(values.count, 1))
        pointer.initialize(from: values, count: values.count)
    }
    deinit { pointer.deallocate() }
}

/// Relative representations of unit-length `queries` [q, dimension] against `anchors`: one GEMM
/// per block of anchors for the whole batch, keeping each query's k best similarities as it goes
/// (ties broken by the lower anchor index, as a stable sort would).
public func relativeRepresentations(_ queries: Tensor, anchors: AnchorMatrix, settings: ASIFSettings,
                                    blockSize: Int? = nil) -> [RelativeRepresentation] {
    precondition(queries.rank == 2 && queries.shape[1] == anchors.dimension, "queries \(queries.shape) for anchors of dimension \(anchors.dimension)")
    let (q, n, d) = (queries.shape[0], anchors.count, anchors.dimension)
    let k = max(1, min(settings.k, n))
    // One per query, each touched by its own row only; values in plain memory, so their updates need no exclusivity
    // checks at run time (which a class's properties, or an array of them captured by the parallel loop, do).
    let best = UnsafeMutableBufferPointer<KeptSimilarities>.allocate(capacity: q)
    _ = best.initialize(from: (0..<q).map { _ in KeptSimilarities(capacity: 2 * k) })
    // Blocks of about 4 MB of F32 rows stay in cache from widening to the product.
    let block = min(blockSize ?? max(256, (1 << 20) / max(d, 1)), max(n, 1))
    let similarities = UnsafeMutablePointer<Float>.allocate(capacity: q * block)
    let scratch = UnsafeMutablePointer<Float>.allocate(capacity: anchors.dtype == .f32 ? 1 : block * d)
    defer {
        similarities.deallocate()
        scratch.deallocate()
        best.deinitialize().deallocate()
    }
    queries.withUnsafeBufferPointer { query in
        for start in stride(from: 0, to: n, by: block) {
            let rows = min(block, n - start)
            // similarities [q, rows] = queries [q, d] · anchorsᵀ [d, rows]
            BLAS.splitGemm(transposeB: true, m: q, n: rows, k: d, a: query.baseAddress!, lda: d,
                           b: anchors.rows(start..<start + rows, scratch: scratch), ldb: d, c: similarities, ldc: rows)
            Parallel.forEach(q) { row in best[row].offer(similarities + row * rows, count: rows, firstIndex: start, keep: k) }
        }
    }
    return (0..<q).map { row in
        let order = best[row].best(k)   // in anchor order
        var values = order.map { powf($0.value, settings.p) }
        let norm = values.reduce(0) { $0 + $1 * $1 }.squareRoot()
        if norm > 0 { values = values.map { $0 / norm } }
        return RelativeRepresentation(indices: order.map(\.index), values: values)
    }
}

/// One query's best similarities so far, in anchor order: values above the running threshold are appended as they
/// are offered, and the list is cut back to the k best whenever it reaches twice that.
struct KeptSimilarities {
    /// Values, their anchor indices, and the cut's keys: plain memory owned by `storage`, so updates need no
    /// exclusivity or uniqueness checks at run time.
    private let storage: KeptStorage
    private var count = 0
    private var threshold = -Float.infinity

    init(capacity: Int) { storage = KeptStorage(capacity: capacity) }

    mutating func offer(_ offered: UnsafePointer<Float>, count n: Int, firstIndex: Int, keep k: Int) {
        let (values, indices) = (storage.values, storage.indices)
        var j = 0
        while j < n {
            var kept = count
            if kept < k {
                // Until k are kept (before the first cut, when the threshold is -inf): every value but NaN.
                let end = min(n, j + k - kept)
                for i in j..<end where offered[i] >= threshold {
                    (values[kept], indices[kept]) = (offered[i], Int32(firstIndex + i))
                    kept += 1
                }
                j = end
            } else {
                // Values that beat the threshold (a kept value that equals it has the lower index), no more than
                // 2k - kept of them at a time.
                let end = min(n, j + 2 * k - kept)
                kept = stitch_append_above(offered + j, end - j, threshold, Int32(firstIndex + j), values, indices, kept)
                j = end
            }
            count = kept
            if count >= 2 * k { cut(to: k) }
        }
    }

    /// Keeps the k best in anchor order (equal values by lower index); later offers must beat the k-th.
    private mutating func cut(to k: Int) {
        threshold = stitch_keep_best(storage.values, storage.indices, storage.keys, count, k)
        count = k
    }

    /// The k best, in anchor order.
    mutating func best(_ k: Int) -> [(value: Float, index: Int32)] {
        if count > k { cut(to: k) }
        return (0..<count).map { (storage.values[$0], storage.indices[$0]) }
    }
}

/// A `KeptSimilarities`'s memory: room for `capacity` values, indices and keys.
private final class KeptStorage {
    let values: UnsafeMutablePointer<Float>
    let indices: UnsafeMutablePointer<Int32>
    let keys: UnsafeMutablePointer<UInt32>

    init(capacity: Int) {
        (values, indices, keys) = (.allocate(capacity: max(capacity, 1)), .allocate(capacity: max(capacity, 1)), .allocate(capacity: max(capacity, 1)))
    }

    deinit {
        values.deallocate()
        indices.deallocate()
        keys.deallocate()
    }
}

/// Dot products [a, b] of relative representations in an N-anchor space: each row of `a` is
/// scattered into a dense N-vector once and every `b` reads its k entries from it.
public func relativeScores(_ a: [RelativeRepresentation], _ b: [RelativeRepresentation], anchorCount: Int) -> Tensor {
    var out = Tensor(zeros: [a.count, b.count])
    out.withUnsafeMutableBufferPointer { scores in
        let base = scores.baseAddress!
        Parallel.forEach(a.count) { row in
            let dense = UnsafeMutablePointer<Float>.allocate(capacity: max(anchorCount, 1))
            dense.initialize(repeating: 0, count: max(anchorCount, 1))
            defer { dense.deallocate() }
            for (index, value) in zip(a[row].indices, a[row].values) { dense[Int(index)] = value }
            for (column, other) in b.enumerated() {
                var sum: Float = 0
                for (index, value) in zip(other.indices, other.values) { sum += dense[Int(index)] * value }
                base[row * b.count + column] = sum
            }
        }
    }
    return out
}

/// Indices of each row of `scores` from best to worst (ties by lower index).
public func rankings(_ scores: Tensor) -> [[Int]] {
    (0..<scores.shape[0]).map { indicesByDescendingValue(scores.row($0).scalars) }
}
