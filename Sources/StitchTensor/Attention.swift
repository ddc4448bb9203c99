import CStitchKernels

/// Keys and values of the positions seen so far, per layer, so that decoding
/// one more token costs one row of projections instead of the whole prefix.
/// Stored as [batch, capacity, width] (width = heads * headDim); grows by doubling.
public struct KVCache: Sendable {
    public let batch: Int
    public let width: Int
    public private(set) var length = 0
    private(set) var capacity: Int
    private(set) var keys: Tensor
    private(set) var values: Tensor

    public init(batch: Int, width: Int, capacity: Int = 32) {
        self.batch = batch
        self.width = width
        self.capacity = max(capacity, 1)
        // Positions at or past `length` are never read, so the storage starts uninitialised.
        keys = Tensor(uninitialized: [batch, self.capacity, width])
        values = Tensor(uninitialized: [batch, self.capacity, width])
    }

    /// Appends keys and values [batch, t, width] for t new positions.
    public mutating func append(keys newKeys: Tensor, values newValues: Tensor) {
        precondition(newKeys.shape == newValues.shape && newKeys.rank == 3 && newKeys.shape[0] == batch && newKeys.shape[2] == width,
                     "cache of [\(batch), ·, \(width)] cannot take keys \(newKeys.shape) and values \(newValues.shape)")
        let t = newKeys.shape[1]
        if length + t > capacity { grow(to: max(capacity * 2, length + t)) }
        for b in 0..<batch {
            Self.copy(rows: t, from: newKeys, row: b * t, to: &keys, row: b * capacity + length, width: width)
            Self.copy(rows: t, from: newValues, row: b * t, to: &values, row: b * capacity + length, width: width)
        }
        length += t
    }

    /// Keeps only the first `newLength` positions (e.g. to branch from a shared prefix).
    public mutating func truncate(to newLength: Int) {
        precondition(newLength >= 0 && newLength <= length, "cannot truncate a cache of \(length) to \(newLength)")
        length = newLength
    }

    /// A cache for `count * batch` rows, each batch row repeated `count` times
    /// consecutively: a shared prefix continued by several candidates.
    public func repeated(_ count: Int) -> KVCache {
        gathering((0..<batch * count).map { $0 / count })
    }

    /// A cache of the given batch rows, in that order (rows may repeat): the beams or the
    /// candidate that decoding keeps.
    public func gathering(_ rows: [Int]) -> KVCache {
        // Room for a few more positions, not the source's whole capacity: branches are often
        // many and short-lived (k decoding candidates), and append still grows when needed.
        var copy = KVCache(batch: rows.count, width: width, capacity: length + 8)
        for (target, source) in rows.enumerated() {
            precondition(source >= 0 && source < batch, "row \(source) of a cache of batch \(batch)")
            Self.copy(rows: length, from: keys, row: source * capacity, to: &copy.keys, row: target * copy.capacity, width: width)
            Self.copy(rows: length, from: values, row: source * capacity, to: &copy.values, row: target * copy.capacity, width: width)
        }
        copy.length = length
        return copy
    }

    private mutating func grow(to newCapacity: Int) {
        var grown = KVCache(batch: batch, width: width, capacity: newCapacity)
        for b in 0..<batch {
            Self.copy(rows: length, from: keys, row: b * capacity, to: &grown.keys, row: b * newCapacity, width: width)
            Self.copy(rows: length, from: values, row: b * capacity, to: &grown.values, row: b * newCapacity, width: width)
        }
        grown.length = length
        self = grown
    }

    /// Copies `rows` rows of `width` floats, addressed by flat row index.
    private static func copy(rows: Int, from source: Tensor, row sourceRow: Int, to target: inout Tensor, row targetRow: Int, width: Int) {
        source.withUnsafeBufferPointer { src in
            target.withUnsafeMutableBufferPointer { dst in
                (dst.baseAddress! + targetRow * width).update(from: src.baseAddress! + sourceRow * width, count: rows * width)
            }
        }
    }
}

/// Where one operand (queries, keys or values) of attention lives: rows of
/// `heads * headDim` floats that may be strided, e.g. one third of a fused
/// q/k/v projection [batch, t, 3 * width].
struct AttentionOperand {
    let base: UnsafePointer<Float>
    let rowStride: Int
    let batchStride: Int
}

/// Scaled dot-product multi-head attention.
///
/// - query: [batch, tq, heads * headDim]; key/value: [batch, tk, heads * headDim], or
///   [1, tk, heads * headDim] shared by every batch row (cross-attention to one image).
/// - causal: query i (absolute position `tk - tq + i`) sees keys 0...tk-tq+i.
/// - keyMask: [batch, tk] with 1 for real tokens and 0 for padding (Hugging Face's attention_mask).
/// - precision: that of the projections feeding it; at BF16, heads of up to 128 keys take bfloat16 products where
///   the CPU's are fast (`stitch_bf16_attention_head`), as torch's autocast rounds its attention's products.
/// Returns [batch, tq, heads * headDim].
public func multiHeadAttention(query: Tensor, key: Tensor, value: Tensor, heads: Int,
                               causal: Bool, keyMask: Tensor? = nil, precision: Precision = .fp32) -> Tensor {
    precondition(query.rank == 3 && key.rank == 3 && key.shape == value.shape && (key.shape[0] == query.shape[0] || key.shape[0] == 1)
                 && query.shape[2] == key.shape[2], "attention shapes q \(query.shape) k \(key.shape) v \(value.shape)")
    let (batch, tq, tk, width) = (query.shape[0], query.shape[1], key.shape[1], key.shape[2])
    let keyBatchStride = key.shape[0] == 1 ? 0 : tk * width
    return query.withUnsafeBufferPointer { q in
        key.withUnsafeBufferPointer { k in
            value.withUnsafeBufferPointer { v in
                attend(query: AttentionOperand(base: q.baseAddress!, rowStride: width, batchStride: tq * width),
                       keys: AttentionOperand(base: k.baseAddress!, rowStride: width, batchStride: keyBatchStride),
                       values: AttentionOperand(base: v.baseAddress!, rowStride: width, batchStride: keyBatchStride),
                       batch: batch, queryLength: tq, keyLength: tk, width: width, heads: heads,
                       causalOffset: causal ? tk - tq : nil, keyMask: keyMask, precision: precision)
            }
        }
    }
}

/// Self-attention straight from a fused projection `qkv` [batch, t, 3 * width]
/// (queries, then keys, then values along the last axis), without splitting copies.
public func fusedSelfAttention(_ qkv: Tensor, heads: Int, causal: Bool, keyMask: Tensor? = nil, precision: Precision = .fp32) -> Tensor {
    precondition(qkv.rank == 3 && qkv.shape[2] % 3 == 0, "fused q/k/v must be [batch, t, 3 * width], got \(qkv.shape)")
    let (batch, t, width) = (qkv.shape[0], qkv.shape[1], qkv.shape[2] / 3)
    return qkv.withUnsafeBufferPointer { p in
        let operand = { (part: Int) in AttentionOperand(base: p.baseAddress! + part * width, rowStride: 3 * width, batchStride: t * 3 * width) }
        return attend(query: operand(0), keys: operand(1), values: operand(2), batch: batch, queryLength: t, keyLength: t,
                      width: width, heads: heads, causalOffset: causal ? 0 : nil, keyMask: keyMask, precision: precision)
    }
}

/// Causal self-attention that first appends this step's keys and values to `cache`
/// and then attends over everything cached (the decoding path). With `keyValueHeads` < `heads` (grouped-query
/// attention) the cache holds `keyValueHeads` heads and each serves `heads / keyValueHeads` query heads in turn;
/// with `window`, a query attends only to the `window` most recent positions, itself included (a sliding window).
public func cachedSelfAttention(query: Tensor, key: Tensor, value: Tensor, heads: Int, keyValueHeads: Int? = nil, window: Int? = nil,
                                cache: inout KVCache, keyMask: Tensor? = nil, precision: Precision = .fp32) -> Tensor {
    cache.append(keys: key, values: value)
    let (batch, tq, length, capacity, width) = (cache.batch, query.shape[1], cache.length, cache.capacity, query.lastDimension)
    let keyHeads = keyValueHeads ?? heads
    precondition(query.shape == [batch, tq, width] && heads % keyHeads == 0 && cache.width * heads == width * keyHeads,
                 "query \(query.shape) with \(heads) heads for a cache of [\(batch), ·, \(cache.width)] with \(keyHeads)")
    return query.withUnsafeBufferPointer { q in
        cache.keys.withUnsafeBufferPointer { k in
            cache.values.withUnsafeBufferPointer { v in
                attend(query: AttentionOperand(base: q.baseAddress!, rowStride: width, batchStride: tq * width),
                       keys: AttentionOperand(base: k.baseAddress!, rowStride: cache.width, batchStride: capacity * cache.width),
                       values: AttentionOperand(base: v.baseAddress!, rowStride: cache.width, batchStride: capacity * cache.width),
                       batch: batch, queryLength: tq, keyLength: length, width: width, heads: heads, keyValueHeads: keyHeads,
                       causalOffset: length - tq, window: window, keyMask: keyMask, precision: precision)
            }
        }
    }
}

/// The direct kernel for a head of up to 128 keys at `precision` (see `multiHeadAttention`).
private func attentionHead(_ precision: Precision) -> @convention(c) (Int, Int, Float, UnsafePointer<Float>?, Int, UnsafePointer<stitch_key_block>?, Int32,
                                                                      Int32, Int, Int, UnsafePointer<Float>?, UnsafeMutablePointer<Float>?, Int) -> Void {
    precision == .bf16 ? stitch_bf16_attention_head : stitch_attention_head
}

/// `width` is the queries' (and the output's); key and value head h / (heads / keyValueHeads) serves query head h.
private func attend(query: AttentionOperand, keys: AttentionOperand, values: AttentionOperand,
                    batch: Int, queryLength tq: Int, keyLength tk: Int, width: Int, heads: Int, keyValueHeads: Int? = nil,
                    causalOffset: Int?, window: Int? = nil, keyMask: Tensor?, precision: Precision) -> Tensor {
    precondition(width % heads == 0, "width \(width) does not split into \(heads) heads")
    if let keyMask { precondition(keyMask.shape == [batch, tk], "key mask \(keyMask.shape), expected [\(batch), \(tk)]") }
    let headDim = width / heads
    let scale = 1 / Float(headDim).squareRoot()
    // Masked scores take the most negative finite value, as Hugging Face does,
    // so a fully padded row becomes uniform instead of NaN.
    let masked = -Float.greatestFiniteMagnitude
    var out = Tensor(uninitialized: [batch, tq, width])
    let mask = keyMask?.scalars ?? []
    // Heads of a few keys in one pass (no packing); a window of 0 hides every key here, where the direct kernel reads 0 as none.
    let direct = stitch_attention_head_fits(tk, headDim) != 0 && (window ?? 1) > 0
    mask.withUnsafeBufferPointer { maskRows in out.withUnsafeMutableBufferPointer { o in
        let oBase = o.baseAddress!
        Parallel.forEach(batch * heads, threads: Parallel.threads(work: batch * heads * tq * tk * headDim * 2)) { task in
            let (b, h) = (task / heads, task % heads)
            let qHead = query.base + b * query.batchStride + h * headDim
            let keyHead = h / (heads / (keyValueHeads ?? heads))
            let kHead = keys.base + b * keys.batchStride + keyHead * headDim
            let vHead = values.base + b * values.batchStride + keyHead * headDim
            if direct {
                var block = stitch_key_block(keys: kHead, values: vHead, count: tk, key_stride: keys.rowStride, value_stride: values.rowStride)
                attentionHead(precision)(tq, headDim, scale, qHead, query.rowStride, &block, 1, causalOffset == nil ? 0 : 1, causalOffset ?? 0,
                                         window ?? 0, keyMask == nil ? nil : maskRows.baseAddress! + b * tk, oBase + b * tq * width + h * headDim, width)
                return
            }
            let scores = UnsafeMutablePointer<Float>.allocate(capacity: max(tq * tk, 1))
            defer { scores.deallocate() }
            // scores [tq, tk] = scale * Q_h [tq, d] · K_hᵀ [d, tk]
            BLAS.gemm(transposeA: false, transposeB: true, m: tq, n: tk, k: headDim, alpha: scale,
                      a: qHead, lda: query.rowStride, b: kHead, ldb: keys.rowStride, c: scores, ldc: tk)
            for i in 0..<tq {
                let row = scores + i * tk
                if let causalOffset {
                    let last = causalOffset + i
                    if last + 1 < tk { for j in (last + 1)..<tk { row[j] = masked } }
                    if let window, last - window >= 0 { for j in 0...min(last - window, tk - 1) { row[j] = masked } }
                }
                if keyMask != nil {
                    for j in 0..<tk where maskRows[b * tk + j] == 0 { row[j] = masked }
                }
                stitch_softmax(row, tk)
            }
            // out_h [tq, d] = P [tq, tk] · V_h [tk, d]
            BLAS.gemm(transposeA: false, transposeB: false, m: tq, n: headDim, k: tk,
                      a: scores, lda: tk, b: vHead, ldb: values.rowStride, c: oBase + b * tq * width + h * headDim, ldc: width)
        }
    } }
    return out
}

/// One sequence of a packed batch: its rows in the packed tensor, and how many leading
/// positions of the shared prefix cache it continues.
public struct PackedSegment: Sendable {
    public let rows: Range<Int>
    public let sharedLength: Int

    public init(rows: Range<Int>, sharedLength: Int) {
        self.rows = rows
        self.sharedLength = sharedLength
    }
}

/// Causal self-attention for sequences packed one after another without padding, each continuing
/// the first `sharedLength` positions of `prefix` (batch row 0), which all of them read in place.
/// qkv [total, 3 * width] (queries, keys, values) -> [total, width]; row j of a segment sees the
/// shared positions and its own rows 0...j.
public func packedPrefixAttention(_ qkv: Tensor, segments: [PackedSegment], prefix: KVCache, heads: Int, precision: Precision = .fp32) -> Tensor {
    let width = prefix.width
    precondition(qkv.rank == 2 && qkv.shape[1] == 3 * width, "packed q/k/v must be [total, \(3 * width)], got \(qkv.shape)")
    precondition(segments.allSatisfy { $0.sharedLength <= prefix.length && $0.rows.upperBound <= qkv.shape[0] }, "segments outside the prefix or the batch")
    let headDim = width / heads
    let scale = 1 / Float(headDim).squareRoot()
    let masked = -Float.greatestFiniteMagnitude
    var out = Tensor(uninitialized: [qkv.shape[0], width])
    qkv.withUnsafeBufferPointer { packed in
        prefix.keys.withUnsafeBufferPointer { prefixKeys in
            prefix.values.withUnsafeBufferPointer { prefixValues in
                out.withUnsafeMutableBufferPointer { o in
                    let (oBase, stride) = (o.baseAddress!, 3 * width)
                    let work = segments.reduce(0) { $0 + $1.rows.count * ($1.sharedLength + $1.rows.count) } * heads * headDim * 2
                    Parallel.forEach(segments.count * heads, threads: Parallel.threads(work: work)) { task in
                        let (segment, h) = (segments[task / heads], task % heads)
                        let (t, shared) = (segment.rows.count, segment.sharedLength)
                        let n = shared + t
                        guard t > 0 else { return }
                        let q = packed.baseAddress! + segment.rows.lowerBound * stride + h * headDim
                        let (ownKeys, ownValues) = (q + width, q + 2 * width)
                        let output = oBase + segment.rows.lowerBound * width + h * headDim
                        if stitch_attention_head_fits(n, headDim) != 0 {
                            let blocks = [stitch_key_block(keys: prefixKeys.baseAddress! + h * headDim, values: prefixValues.baseAddress! + h * headDim,
                                                           count: shared, key_stride: width, value_stride: width),
                                          stitch_key_block(keys: ownKeys, values: ownValues, count: t, key_stride: stride, value_stride: stride)]
                            attentionHead(precision)(t, headDim, scale, q, stride, blocks, 2, 1, shared, 0, nil, output, width)
                            return
                        }
                        let scores = UnsafeMutablePointer<Float>.allocate(capacity: t * n)
                        defer { scores.deallocate() }
                        // scores [t, n]: the shared prefix's columns, then the segment's own.
                        if shared > 0 {
                            BLAS.gemm(transposeA: false, transposeB: true, m: t, n: shared, k: headDim, alpha: scale,
                                      a: q, lda: stride, b: prefixKeys.baseAddress! + h * headDim, ldb: width, c: scores, ldc: n)
                        }
                        BLAS.gemm(transposeA: false, transposeB: true, m: t, n: t, k: headDim, alpha: scale,
                                  a: q, lda: stride, b: ownKeys, ldb: stride, c: scores + shared, ldc: n)
                        for i in 0..<t {
                            let row = scores + i * n
                            for j in (shared + i + 1)..<n { row[j] = masked }
                            stitch_softmax(row, n)
                        }
                        // out [t, headDim] = P_shared · V_prefix + P_own · V_own
                        if shared > 0 {
                            BLAS.gemm(transposeA: false, transposeB: false, m: t, n: headDim, k: shared,
                                      a: scores, lda: n, b: prefixValues.baseAddress! + h * headDim, ldb: width, c: output, ldc: width)
                        }
                        BLAS.gemm(transposeA: false, transposeB: false, m: t, n: headDim, k: t,
                                  a: scores + shared, lda: n, b: ownValues, ldb: stride, beta: shared > 0 ? 1 : 0, c: output, ldc: width)
                    }
                }
            }
        }
    }
    return out
}
