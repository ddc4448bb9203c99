import CBLAS

/// Matrix products through OpenBLAS's sgemm. Weight layouts follow PyTorch:
/// `nn.Linear` stores [out, in]; GPT-2's `Conv1D` stores [in, out].
public enum WeightLayout: Sendable {
    case outputsByInputs   // nn.Linear: weight [out, in]
    case inputsByOutputs   // transformers Conv1D: weight [in, out]
}

public enum BLAS {
    /// Lets OpenBLAS use every core for large products.
    public static func configureThreads(_ count: Int = Parallel.cores) {
        openblas_set_num_threads(Int32(count))
    }

    /// C[m, n] = alpha * op(A) op(B) + beta * C on raw row-major pointers with leading dimensions.
    @inline(__always)
    public static func gemm(
        transposeA: Bool, transposeB: Bool, m: Int, n: Int, k: Int,
        alpha: Float = 1, a: UnsafePointer<Float>, lda: Int,
        b: UnsafePointer<Float>, ldb: Int,
        beta: Float = 0, c: UnsafeMutablePointer<Float>, ldc: Int
    ) {
        cblas_sgemm(CblasRowMajor,
                    transposeA ? CblasTrans : CblasNoTrans,
                    transposeB ? CblasTrans : CblasNoTrans,
                    Int32(m), Int32(n), Int32(k), alpha, a, Int32(lda), b, Int32(ldb), beta, c, Int32(ldc))
    }
}

/// `a` [..., m, k] times `b` [k, n] (or [n, k] when `transposeB`), giving [..., m, n].
/// Leading dimensions of `a` are folded into m: one sgemm call.
public func matmul(_ a: Tensor, _ b: Tensor, transposeB: Bool = false) -> Tensor {
    precondition(a.rank >= 1 && b.rank == 2, "matmul needs a [..., k] and b rank 2, got \(a.shape) and \(b.shape)")
    let k = a.lastDimension
    let m = a.count / max(k, 1)
    let n = transposeB ? b.shape[0] : b.shape[1]
    precondition((transposeB ? b.shape[1] : b.shape[0]) == k, "matmul inner dimensions differ: \(a.shape) x \(b.shape)\(transposeB ? "ᵀ" : "")")
    var out = Tensor(uninitialized: Array(a.shape.dropLast()) + [n])
    a.withUnsafeBufferPointer { ap in
        b.withUnsafeBufferPointer { bp in
            out.withUnsafeMutableBufferPointer { cp in
                BLAS.gemm(transposeA: false, transposeB: transposeB, m: m, n: n, k: k,
                          a: ap.baseAddress!, lda: k, b: bp.baseAddress!, ldb: b.shape[1],
                          c: cp.baseAddress!, ldc: n)
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
                Parallel.forEach(batch) { i in
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

/// x [..., in] -> [..., out] with an optional bias [out].
public func linear(_ x: Tensor, weight: Tensor, bias: Tensor?, layout: WeightLayout = .outputsByInputs) -> Tensor {
    var out = matmul(x, weight, transposeB: layout == .outputsByInputs)
    if let bias { addRowVector(&out, bias) }
    return out
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
