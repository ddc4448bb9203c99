import CBLAS
import CStitchKernels

/// Matrix products: Stitch's kernels (CStitchKernels/gemm.c) on weights packed at load where the CPU has AVX-512 or AVX2
/// (`PackedWeights`), and on other operands of 2 rows or more where it has AVX-512; OpenBLAS's sgemm and sgemv for the
/// rest. Weight layouts follow PyTorch: `nn.Linear` stores [out, in]; GPT-2's `Conv1D` stores [in, out].
public enum WeightLayout: Sendable {
    case outputsByInputs   // nn.Linear: weight [out, in]
    case inputsByOutputs   // transformers Conv1D: weight [in, out]
}

public enum BLAS {
    /// Stitch parallelises products itself (`splitGemm`, attention heads, batches) on the same
    /// threads as its other parallel loops; OpenBLAS's own pool would spin on the cores those
    /// loops need, so OpenBLAS runs single-threaded from its first call on (`gemm`, `splitGemv`).
    private static let singleThreaded: Void = openblas_set_num_threads(1)

    /// How many cores Stitch's parallel loops and products use (default: all).
    public static func configureThreads(_ count: Int = Parallel.cores) {
        _ = singleThreaded
        Parallel.limit = max(1, min(count, Parallel.cores))
    }

    /// Whether this CPU runs Stitch's AVX-512 product kernel (and its matrix-vector kernel for x·Wᵀ): about 1.7 times
    /// the throughput of OpenBLAS 0.3.21's AVX2 (Haswell) kernels, which machines pinned by OPENBLAS_CORETYPE run.
    static let hasOwnKernel = stitch_sgemm_available() != 0

    /// Whether this CPU runs Stitch's kernel on weights packed at load (AVX-512, or AVX2 with FMA): every weight is packed
    /// then. With AVX2 the kernel matches OpenBLAS's Zen kernel on large products (its 6 x 16 blocks read 16-column groups
    /// packed for them: 91-95 GFLOP/s a core on 800 x 768 x 3072 on an AMD Zen 3 against OpenBLAS's 92), and saves its
    /// per-call costs (packing the weights, 20% of CLIP's one-image encoding; zeroing C; bias and activation in passes of
    /// their own); one row (a decoding step) streams each panel in order (GPT-2's 768 x 3072 at 24 GFLOP/s against sgemv's 22).
    static let hasPackedKernel = stitch_sgemm_packed_available() != 0

    /// Products of fewer rows stay with OpenBLAS: one row is a matrix-vector product (`splitGemv`); from two rows
    /// on, the kernel's 4- and 1-row tiles serve short ones (attention over a few tokens, which on OpenBLAS 0.3.21's
    /// Prescott kernels cost MAGiC 8% of its time).
    static let ownKernelRows = 2

    /// Rows of a product a thread takes when a product splits by rows: the kernel's block of rows (MC in gemm.c).
    static let rowsPerPart = 96

    /// The parts a product of m rows splits into over `threads`, claimed in order by whichever thread is free. With a
    /// share of two `rowsPerPart` blocks or more a thread: first one part a thread of whole blocks (a block streams the
    /// weights once, however the rows are split), two to four fifths of the share, then the rest in parts of whole
    /// 12-row tiles (the kernel's), a sixteenth of a share or two tiles, which the threads that finish first take. With
    /// one part a thread, the first one done waited for a thread woken late or sharing its core: beside a process busy
    /// 3 ms in 10 on one of two cores, CLIP's 16 images took 841-927 ms that way and 750 this way. Smaller shares: one
    /// part a thread, of whole 4-row tiles (a last tile of 4 rows costs a third of one of 12).
    static func rowParts(_ m: Int, threads: Int) -> [Range<Int>] {
        let share = m / threads
        guard share >= 2 * rowsPerPart else {
            let block = ((m + threads - 1) / threads + 3) / 4 * 4
            return stride(from: 0, to: m, by: block).map { $0..<min(m, $0 + block) }
        }
        let tile = 12, big = share * 4 / 5 / rowsPerPart * rowsPerPart
        var parts = (0..<threads).map { $0 * big..<($0 + 1) * big }
        let rest = m - threads * big, tiles = (rest + tile - 1) / tile
        let count = max(1, min(tiles / 2, rest / (share / 16)))
        var start = threads * big
        for piece in 0..<count {
            let end = piece == count - 1 ? m : start + (tiles / count + (piece < tiles % count ? 1 : 0)) * tile
            parts.append(start..<end)
            start = end
        }
        return parts
    }

    /// The width of the column blocks a product of m x k by k x n splits into over `threads`: a block per thread, but
    /// none below ~1 MFLOP of work per extra core (~0.25 M weights streamed, for one row) or 64 columns, below which the
    /// split costs more than it saves; whole multiples of `multiple` (the kernel's panel or vector width).
    static func columnBlock(m: Int, n: Int, k: Int, threads: Int, multiple: Int) -> Int {
        let parts = min(threads, max(1, m == 1 ? n * k / 250_000 : m * n * k / 500_000), max(1, n / 64))
        return max(multiple, ((n + parts - 1) / parts + multiple - 1) / multiple * multiple)
    }

    /// C = activation(op(A)·op(B) + bias) for row-major operands (bias [n] and activation optional), split into column
    /// blocks of C computed on all cores, each block's bias and activation added as soon as its product is done (one
    /// parallel pass, not three). Each block is the same single-threaded sgemm on a slice of B, so results do not depend
    /// on the split.
    public static func splitGemm(transposeB: Bool, m: Int, n: Int, k: Int, a: UnsafePointer<Float>, lda: Int,
                                 b: UnsafePointer<Float>, ldb: Int, c: UnsafeMutablePointer<Float>, ldc: Int,
                                 bias: UnsafePointer<Float>? = nil, activation: stitch_activation = STITCH_ACTIVATION_NONE) {
        ProductShapes.note(m: m, n: n, k: k, packed: nil)
        if m == 1 {
            // One row (a decoding step): sgemm would first copy the whole of B into its packed
            // format, which costs more than the product; sgemv streams B once.
            splitGemv(transposeB: transposeB, n: n, k: k, x: a, b: b, ldb: ldb, y: c)
            stitch_finish_rows(c, ldc, 1, n, bias, activation)
            return
        }
        let threads = Parallel.threads(work: m * n * k)
        // Blocks of whole 32-column panels of Stitch's kernel.
        let block = columnBlock(m: m, n: n, k: k, threads: threads, multiple: 32)
        Parallel.forEach((n + block - 1) / block, threads: threads) { part in
            let start = part * block
            let width = min(block, n - start)
            // Columns start..<start+width of op(B): rows of B when transposed, columns otherwise.
            let slice = transposeB ? b + start * ldb : b + start
            product(transposeA: false, transposeB: transposeB, m: m, n: width, k: k, alpha: 1, a: a, lda: lda, b: slice, ldb: ldb,
                    beta: 0, c: c + start, ldc: ldc)
            stitch_finish_rows(c + start, ldc, m, width, bias.map { $0 + start }, activation)
        }
    }

    /// y[n] = x[k]·op(B) for one row x, split into blocks of outputs over the cores.
    private static func splitGemv(transposeB: Bool, n: Int, k: Int, x: UnsafePointer<Float>,
                                  b: UnsafePointer<Float>, ldb: Int, y: UnsafeMutablePointer<Float>) {
        _ = singleThreaded
        let threads = Parallel.threads(work: n * k)
        let block = columnBlock(m: 1, n: n, k: k, threads: threads, multiple: 16)
        Parallel.forEach((n + block - 1) / block, threads: threads) { part in
            let start = part * block
            let width = min(block, n - start)
            if transposeB && hasOwnKernel {
                stitch_sgemv_t(width, k, b + start * ldb, ldb, x, y + start)
            } else if transposeB {
                // B is [n, k]: y = B[start..<start+width, :] · x
                cblas_sgemv(CblasRowMajor, CblasNoTrans, Int32(width), Int32(k), 1, b + start * ldb, Int32(ldb), x, 1, 0, y + start, 1)
            } else {
                // B is [k, n]: y = B[:, start..<start+width]ᵀ · x
                cblas_sgemv(CblasRowMajor, CblasTrans, Int32(k), Int32(width), 1, b + start, Int32(ldb), x, 1, 0, y + start, 1)
            }
        }
    }

    /// C[m, n] = alpha * op(A) op(B) + beta * C on raw row-major pointers with leading dimensions.
    @inline(__always)
    public static func gemm(
        transposeA: Bool, transposeB: Bool, m: Int, n: Int, k: Int,
        alpha: Float = 1, a: UnsafePointer<Float>, lda: Int,
        b: UnsafePointer<Float>, ldb: Int,
        beta: Float = 0, c: UnsafeMutablePointer<Float>, ldc: Int
    ) {
        ProductShapes.note(m: m, n: n, k: k, packed: nil)
        product(transposeA: transposeA, transposeB: transposeB, m: m, n: n, k: k, alpha: alpha, a: a, lda: lda, b: b, ldb: ldb,
                beta: beta, c: c, ldc: ldc)
    }

    /// `gemm` without counting it (a part of a product already counted whole).
    @inline(__always)
    private static func product(transposeA: Bool, transposeB: Bool, m: Int, n: Int, k: Int, alpha: Float, a: UnsafePointer<Float>, lda: Int,
                                b: UnsafePointer<Float>, ldb: Int, beta: Float, c: UnsafeMutablePointer<Float>, ldc: Int) {
        if m >= ownKernelRows && hasOwnKernel && !transposeA && beta == 0 {
            // Many rows (a prompt, a batch of images or candidates): Stitch's AVX-512 kernel; alpha (attention's
            // scale) multiplies each sum after, as sgemm does.
            stitch_sgemm(transposeB ? 1 : 0, m, n, k, a, lda, b, ldb, c, ldc)
            if alpha != 1 {
                for row in 0..<m {
                    let sums = c + row * ldc
                    for j in 0..<n { sums[j] *= alpha }
                }
            }
            return
        }
        _ = singleThreaded
        cblas_sgemm(CblasRowMajor,
                    transposeA ? CblasTrans : CblasNoTrans,
                    transposeB ? CblasTrans : CblasNoTrans,
                    Int32(m), Int32(n), Int32(k), alpha, a, Int32(lda), b, Int32(ldb), beta, c, Int32(ldc))
    }
}

/// `a` [..., m, k] times `b` [k, n] (or [n, k] when `transposeB`), giving [..., m, n].
/// Leading dimensions of `a` are folded into m; the product is split over the cores (`BLAS.splitGemm`).
public func matmul(_ a: Tensor, _ b: Tensor, transposeB: Bool = false) -> Tensor {
    product(a, b, transposeB: transposeB, bias: nil, activation: STITCH_ACTIVATION_NONE)
}

/// activation(a · op(b) + bias) [..., m, n] for `a` [..., m, k], op(b) [k, n], bias [n] (nil: none).
private func product(_ a: Tensor, _ b: Tensor, transposeB: Bool, bias: Tensor?, activation: stitch_activation) -> Tensor {
    precondition(a.rank >= 1 && b.rank == 2, "matmul needs a [..., k] and b rank 2, got \(a.shape) and \(b.shape)")
    let k = a.lastDimension
    let m = a.count / max(k, 1)
    let n = transposeB ? b.shape[0] : b.shape[1]
    precondition((transposeB ? b.shape[1] : b.shape[0]) == k, "matmul inner dimensions differ: \(a.shape) x \(b.shape)\(transposeB ? "ᵀ" : "")")
    precondition(bias == nil || bias!.count == n, "bias \(bias!.shape) for \(n) outputs")
    var out = Tensor(uninitialized: Array(a.shape.dropLast()) + [n])
    a.withUnsafeBufferPointer { ap in
        b.withUnsafeBufferPointer { bp in
            out.withUnsafeMutableBufferPointer { cp in
                withBiasPointer(bias) { biasPointer in
                    BLAS.splitGemm(transposeB: transposeB, m: m, n: n, k: k, a: ap.baseAddress!, lda: k,
                                   b: bp.baseAddress!, ldb: b.shape[1], c: cp.baseAddress!, ldc: n, bias: biasPointer, activation: activation)
                }
            }
        }
    }
    return out
}

/// Batched product: a [batch, m, k] (or [batch, k, m]) times b [batch, k, n] (or [batch, n, k]).
public func batchedMatmul(_ a: Tensor, _ b: Tensor, transposeA: Bool = false, transposeB: Bool = false) -> Tensor {
    precondition(a.rank == 3 && b.rank == 3 && a.shape[0] == b.shape[0], "batchedMatmul needs [B, ·, ·] pairs, got \(a.shape) and \(b.shape)")
    let batch = a.shape[0]
    let (m, k) = transposeA ? (a.shape[2], a.shape[1]) : (a.shape[1], a.shape[2])
    let (kb, n) = transposeB ? (b.shape[2], b.shape[1]) : (b.shape[1], b.shape[2])
    precondition(k == kb, "batchedMatmul inner dimensions differ: \(a.shape) x \(b.shape)")
    var out = Tensor(uninitialized: [batch, m, n])
    a.withUnsafeBufferPointer { ap in
        b.withUnsafeBufferPointer { bp in
            out.withUnsafeMutableBufferPointer { cp in
                let (aBase, bBase, cBase) = (ap.baseAddress!, bp.baseAddress!, cp.baseAddress!)
                Parallel.forEach(batch, threads: Parallel.threads(work: batch * m * n * k)) { i in
                    BLAS.gemm(transposeA: transposeA, transposeB: transposeB, m: m, n: n, k: k,
                              a: aBase + i * m * k, lda: a.shape[2],
                              b: bBase + i * k * n, ldb: b.shape[2],
                              c: cBase + i * m * n, ldc: n)
                }
            }
        }
    }
    return out
}

/// x [..., in] -> activation(x · op(W) + bias) [..., out], the bias [out] and activation optional.
public func linear(_ x: Tensor, weight: Tensor, bias: Tensor?, layout: WeightLayout = .outputsByInputs, activation: Activation? = nil) -> Tensor {
    product(x, weight, transposeB: layout == .outputsByInputs, bias: bias, activation: activation?.kernel ?? STITCH_ACTIVATION_NONE)
}

/// Adds `vector` [n] to every row of `x` [..., n] in place.
public func addRowVector(_ x: inout Tensor, _ vector: Tensor) {
    let n = x.lastDimension
    precondition(vector.count == n, "row vector of \(vector.count) for rows of \(n)")
    let rows = x.count / max(n, 1)
    vector.withUnsafeBufferPointer { v in
        x.withUnsafeMutableBufferPointer { xp in
            let base = xp.baseAddress!
            Parallel.forChunks(rows, minimumChunk: max(1, 16_384 / max(n, 1))) { range in
                for r in range {
                    let row = base + r * n
                    for j in 0..<n { row[j] += v[j] }
                }
            }
        }
    }
}
