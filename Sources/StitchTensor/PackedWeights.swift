import CStitchKernels
import Foundation

/// The precision of a model's weight products, chosen when it loads. FP32 is the default and keeps exact parity with
/// the references; BF16 (opt-in) rounds weights and activations to bfloat16 and sums in single precision, as torch's
/// bfloat16 autocast does: on AVX512-BF16's dot products or AMX tiles where the CPU has them, else (AVX2) on the FP32
/// kernels, the same products summed in another order. BF16 weights and INT8 weights (opt-in) store only the
/// weights narrower, bfloat16 (half the memory) or 8-bit integers with a scale per output (a quarter), and compute in
/// FP32, on any CPU with the packed kernels (AVX2 or AVX-512): decoding, which waits on reading the weights, runs
/// faster. The same bits as FP32 on the rounded weights (for INT8: on the integers, then times the scales).
public enum Precision: String, Sendable, CaseIterable {
    case fp32, bf16
    case bf16Weights = "bf16-weights", int8Weights = "int8-weights"

    /// The precision of the models loaded inside `Precision.$loading.withValue(_:)`: each weight product (`Linear`,
    /// language-model heads) is packed at it once, at load. Task-local, so concurrent graph components each load at theirs.
    @TaskLocal public static var loading: Precision = .fp32

    /// Why this CPU cannot run `self`, or nil when it can.
    public var unavailableReason: String? {
        switch self {
        case .fp32: return nil
        case .bf16 where Self.bf16Instructions: return nil
        case .bf16, .bf16Weights, .int8Weights:
            return BLAS.hasPackedKernel ? nil : "\(rawValue) needs an x86-64 CPU with AVX2 and FMA or AVX-512; this one lacks them, so use fp32"
        }
    }

    /// Whether bf16 products run on BF16 instructions here (AVX512-BF16, and AMX tiles where granted). Elsewhere bf16
    /// weights take bf16-weights' panels and each product rounds its activations to bfloat16 first: the products
    /// autocast computes, summed by the FP32 kernels at their rate.
    public static var bf16Instructions: Bool { stitch_bf16_available() != 0 }
}

/// A weight matrix op(W) [k, n] packed once, at load, into the layout the product kernels read, so that products do not
/// repack it on every call: FP32 panels (`stitch_sgemm_packed`, the same bits as an unpacked product), the same panels
/// in bfloat16 (`stitch_sgemm_packed_bf16`) or 8-bit integers and scales (`stitch_sgemm_packed_int8`), or bfloat16 pairs
/// (`stitch_bf16_gemm`).
public final class PackedWeights: @unchecked Sendable {
    /// n: the product's output columns.
    public let outputs: Int
    /// k: the inputs each output sums over.
    public let inputs: Int
    public let precision: Precision
    /// How the weights are stored and multiplied: `precision`, but bf16 without BF16 instructions is stored as
    /// bf16-weights, its activations rounded to bfloat16 before each product.
    let kernel: Precision
    private let storage: UnsafeMutableRawPointer

    /// `weight` as nn.Linear stores it ([outputs, inputs]) or as transformers' Conv1D does ([inputs, outputs]), packed
    /// at `precision`; nil where this CPU has no kernel for it (FP32 without AVX-512 or AVX2: products stay with OpenBLAS;
    /// a reduced precision the CPU lacks, which commands refuse beforehand, falls back to FP32 with a message) or no
    /// memory is left for the packed copy (products stay with OpenBLAS, on the weights as loaded).
    public static func pack(_ weight: Tensor, layout: WeightLayout, precision: Precision) -> PackedWeights? {
        if let reason = precision.unavailableReason {
            sayOnce(precision, "stitch: \(reason); computing in fp32\n")
            return pack(weight, layout: layout, precision: .fp32)
        }
        let kernel = precision == .bf16 && !Precision.bf16Instructions ? Precision.bf16Weights : precision
        if kernel != precision {
            sayOnce(precision, "stitch: this CPU lacks AVX512-BF16, so bf16 products round their operands to bfloat16 for the FP32 kernels: the values of torch's bfloat16 autocast (summed in another order), at bf16-weights' speed\n")
        }
        precondition(weight.rank == 2, "a weight matrix is rank 2, got \(weight.shape)")
        return BLAS.hasPackedKernel ? PackedWeights(weight, layout: layout, precision: precision, kernel: kernel) : nil
    }

    /// Packed for `kernel`, the way products at `precision` run: `pack` picks it for this CPU (tests pick the other).
    init?(_ weight: Tensor, layout: WeightLayout, precision: Precision, kernel: Precision) {
        let transposed = layout == .outputsByInputs
        (outputs, inputs) = transposed ? (weight.shape[0], weight.shape[1]) : (weight.shape[1], weight.shape[0])
        self.precision = precision
        self.kernel = kernel
        let (n, k, ldw) = (outputs, inputs, weight.shape[1])
        let bytes: Int
        switch kernel {
        case .fp32: bytes = stitch_sgemm_packed_count(n, k) * MemoryLayout<Float>.stride
        case .bf16: bytes = stitch_bf16_packed_count(n, k) * MemoryLayout<UInt16>.stride
        case .bf16Weights: bytes = stitch_sgemm_packed_count(n, k) * MemoryLayout<UInt16>.stride
        case .int8Weights: bytes = Self.scalesOffset(n: n, k: k) + n * MemoryLayout<Float>.stride
        }
        guard let storage = stitch_weight_allocate(bytes) else { return nil }
        self.storage = storage
        switch kernel {
        case .fp32:
            weight.withUnsafeBufferPointer { stitch_sgemm_pack(transposed ? 1 : 0, n, k, $0.baseAddress!, ldw, storage.assumingMemoryBound(to: Float.self)) }
        case .bf16:
            weight.withUnsafeBufferPointer { stitch_bf16_pack(transposed ? 1 : 0, n, k, $0.baseAddress!, ldw, storage.assumingMemoryBound(to: UInt16.self)) }
        case .bf16Weights:
            weight.withUnsafeBufferPointer { stitch_sgemm_pack_bf16(transposed ? 1 : 0, n, k, $0.baseAddress!, ldw, storage.assumingMemoryBound(to: UInt16.self)) }
        case .int8Weights:
            let scales = (storage + Self.scalesOffset(n: n, k: k)).assumingMemoryBound(to: Float.self)
            weight.withUnsafeBufferPointer { stitch_sgemm_pack_int8(transposed ? 1 : 0, n, k, $0.baseAddress!, ldw, storage.assumingMemoryBound(to: Int8.self), scales) }
        }
    }

    /// INT8 weights: the integers first, then each output's scale, from the next 64-byte boundary.
    private static func scalesOffset(n: Int, k: Int) -> Int { (stitch_sgemm_packed_count(n, k) + 63) / 64 * 64 }

    /// The precisions whose fallback (a library caller loading at a precision this CPU lacks) or way of running here
    /// (bf16 without BF16 instructions) this process has been told of.
    nonisolated(unsafe) private static var toldOf: Set<Precision> = []
    private static let toldOfLock = NSLock()

    /// Writes `message` to standard error the first time this process packs weights at `precision`.
    private static func sayOnce(_ precision: Precision, _ message: String) {
        guard toldOfLock.withLock({ toldOf.insert(precision).inserted }) else { return }
        FileHandle.standardError.write(Data(message.utf8))
    }

    deinit { stitch_weight_free(storage) }

    /// Columns `columns` of A[m, inputs] · op(W) into C [m, columns.count] (row stride ldc), then `bias` (indexed by
    /// output; nil: none) and `activation` on each block of rows while it is in cache. Many rows split into blocks of
    /// rows over the threads, fewer into blocks of whole 32-column panels; each output's arithmetic is the same however
    /// the work is split. `columns` starts on a panel (a multiple of 32).
    func product(m: Int, a: UnsafePointer<Float>, lda: Int, columns: Range<Int>, c: UnsafeMutablePointer<Float>, ldc: Int,
                 bias: UnsafePointer<Float>?, activation: stitch_activation) {
        precondition(columns.lowerBound % 32 == 0 && columns.upperBound <= outputs, "columns \(columns) of \(outputs) do not start on a panel")
        let (n, k) = (columns.count, inputs)
        guard n > 0 else { return }
        ProductShapes.note(m: m, n: n, k: k, packed: precision)
        // bf16 on bf16-weights' kernels: the activations rounded to bfloat16 once, before the work splits (about 1% of
        // CLIP's image products on an AVX2 core).
        var (a, lda) = (a, lda)
        let rounded = kernel != precision ? UnsafeMutablePointer<Float>.allocate(capacity: m * k) : nil
        defer { rounded?.deallocate() }
        if let rounded {
            stitch_bf16_round_rows(m, k, a, lda, rounded)
            (a, lda) = (UnsafePointer(rounded), k)
        }
        let threads = Parallel.threads(work: m * n * k)
        let (storage, kernel, first) = (UnsafeRawPointer(storage), kernel, columns.lowerBound)
        func run(rows: Range<Int>, begin: Int, end: Int) {
            let (a, c, bias) = (a + rows.lowerBound * lda, c + rows.lowerBound * ldc + (begin - first), bias.map { $0 + begin })
            switch kernel {
            case .fp32: stitch_sgemm_packed(rows.count, k, a, lda, storage.assumingMemoryBound(to: Float.self), begin, end, c, ldc, bias, activation)
            case .bf16: stitch_bf16_gemm(rows.count, k, a, lda, storage.assumingMemoryBound(to: UInt16.self), begin, end, c, ldc, bias, activation)
            case .bf16Weights:
                stitch_sgemm_packed_bf16(rows.count, k, a, lda, storage.assumingMemoryBound(to: UInt16.self), begin, end, c, ldc, bias, activation)
            case .int8Weights:
                let scales = (storage + Self.scalesOffset(n: outputs, k: k)).assumingMemoryBound(to: Float.self)
                stitch_sgemm_packed_int8(rows.count, k, a, lda, storage.assumingMemoryBound(to: Int8.self), scales, begin, end, c, ldc, bias, activation)
            }
        }
        // Split by rows, each thread packs only its own rows of A (split by columns, every thread packs all of A: 6% of
        // MiniLM's time) and reads the packed weights, which need no packing, from the shared cache.
        if threads > 1 && m >= threads * BLAS.rowsPerPart {
            let parts = BLAS.rowParts(m, threads: threads)
            Parallel.forEach(parts.count, threads: threads) { part in run(rows: parts[part], begin: first, end: first + n) }
            return
        }
        let block = BLAS.columnBlock(m: m, n: n, k: k, threads: threads, multiple: 32)
        Parallel.forEach((n + block - 1) / block, threads: threads) { part in
            run(rows: 0..<m, begin: first + part * block, end: first + min(n, part * block + block))
        }
    }
}

/// x [..., inputs] -> activation(x · op(W) + bias) [..., outputs] through packed weights (or only the outputs `columns`,
/// which start on a multiple of 32), bias [outputs] added in FP32: the bias and activation run on each block of rows
/// as the product finishes it, the same bits as `addRowVector` then `Activation.apply`.
public func linear(_ x: Tensor, weight: PackedWeights, bias: Tensor?, activation: Activation? = nil, columns: Range<Int>? = nil) -> Tensor {
    precondition(x.lastDimension == weight.inputs, "linear input \(x.shape) for packed weights of \(weight.inputs) inputs")
    precondition(bias == nil || bias!.count == weight.outputs, "bias \(bias!.shape) for packed weights of \(weight.outputs) outputs")
    let columns = columns ?? 0..<weight.outputs
    let m = x.count / max(weight.inputs, 1)
    var out = Tensor(uninitialized: Array(x.shape.dropLast()) + [columns.count])
    if m == 0 { return out }
    x.withUnsafeBufferPointer { xp in
        out.withUnsafeMutableBufferPointer { cp in
            withBiasPointer(bias) { biasPointer in
                weight.product(m: m, a: xp.baseAddress!, lda: weight.inputs, columns: columns, c: cp.baseAddress!, ldc: columns.count,
                               bias: biasPointer, activation: activation?.kernel ?? STITCH_ACTIVATION_NONE)
            }
        }
    }
    return out
}

func withBiasPointer(_ bias: Tensor?, _ body: (UnsafePointer<Float>?) -> Void) {
    guard let bias else { return body(nil) }
    bias.withUnsafeBufferPointer { body($0.baseAddress) }
}
