import CStitchKernels

/// The precision of a model's weight products, chosen when it loads. FP32 is the default and keeps exact parity with
/// the references; BF16 (opt-in) rounds weights and activations to bfloat16 and sums in single precision, as torch's
/// bfloat16 autocast does, where the CPU has AVX512-BF16.
public enum Precision: String, Sendable, CaseIterable {
    case fp32, bf16

    /// The precision of the models loaded inside `Precision.$loading.withValue(_:)`: each weight product (`Linear`,
    /// language-model heads) is converted once, at load. Task-local, so concurrent graph components each load at theirs.
    @TaskLocal public static var loading: Precision = .fp32

    /// Why this CPU cannot run `self`, or nil when it can.
    public var unavailableReason: String? {
        switch self {
        case .fp32: return nil
        case .bf16: return stitch_bf16_available() != 0 ? nil : "bf16 needs an x86-64 CPU with AVX-512 and AVX512-BF16 (Intel Cooper Lake or Sapphire Rapids and later, AMD Zen 4 and later); this one lacks them, so use fp32"
        }
    }
}

/// A weight matrix op(W) [k, n] in bfloat16, packed once for `stitch_bf16_gemm` (panels of 32 outputs, pairs of inputs
/// interleaved).
public final class BF16Matrix: @unchecked Sendable {
    /// n: the product's output columns.
    public let outputs: Int
    /// k: the inputs each output sums over.
    public let inputs: Int
    private let packed: UnsafeMutableBufferPointer<UInt16>

    /// `weight` as nn.Linear stores it ([outputs, inputs]) or as transformers' Conv1D does ([inputs, outputs]).
    public init(_ weight: Tensor, layout: WeightLayout) {
        precondition(weight.rank == 2, "a weight matrix is rank 2, got \(weight.shape)")
        let transposed = layout == .outputsByInputs
        (outputs, inputs) = transposed ? (weight.shape[0], weight.shape[1]) : (weight.shape[1], weight.shape[0])
        packed = .allocate(capacity: stitch_bf16_packed_count(outputs, inputs))
        let (n, k) = (outputs, inputs)
        weight.withUnsafeBufferPointer { w in
            stitch_bf16_pack(transposed ? 1 : 0, n, k, w.baseAddress!, weight.shape[1], packed.baseAddress!)
        }
    }

    deinit { packed.deallocate() }

    /// C[m, outputs] (row stride ldc) = bf16(A[m, inputs]) · op(W), split into blocks of whole 32-column panels over the
    /// threads (each block's arithmetic is the same however the columns are split).
    func product(m: Int, a: UnsafePointer<Float>, lda: Int, c: UnsafeMutablePointer<Float>, ldc: Int) {
        let (n, k) = (outputs, inputs)
        let threads = Parallel.threads
        // Below ~1 MFLOP per extra core (~0.25 M weights for one row) the split costs more than it saves.
        let parts = min(threads, max(1, m * n * k / (m == 1 ? 250_000 : 500_000)), max(1, n / 64))
        let block = ((n + parts - 1) / parts + 31) / 32 * 32
        let weights = UnsafePointer(packed.baseAddress!)
        Parallel.forEach((n + block - 1) / block, threads: threads) { part in
            stitch_bf16_gemm(m, k, a, lda, weights, part * block, min(n, part * block + block), c, ldc)
        }
    }
}

/// x [..., inputs] -> [..., outputs] through bfloat16 weights, with an optional bias [outputs] added in FP32.
public func linear(_ x: Tensor, weight: BF16Matrix, bias: Tensor?) -> Tensor {
    precondition(x.lastDimension == weight.inputs, "linear input \(x.shape) for a bf16 weight of \(weight.inputs) inputs")
    let m = x.count / max(weight.inputs, 1)
    var out = Tensor(uninitialized: Array(x.shape.dropLast()) + [weight.outputs])
    if m == 0 { return out }
    x.withUnsafeBufferPointer { xp in
        out.withUnsafeMutableBufferPointer { cp in
            weight.product(m: m, a: xp.baseAddress!, lda: weight.inputs, c: cp.baseAddress!, ldc: weight.outputs)
        }
    }
    if let bias { addRowVector(&out, bias) }
    return out
}
