import CStitchKernels
import Foundation

/// Applies `transform` to every element in place, in parallel chunks.
public func mapInPlace(_ x: inout Tensor, _ transform: (Float) -> Float) {
    x.withUnsafeMutableBufferPointer { buffer in
        let base = buffer.baseAddress!
        Parallel.forChunks(buffer.count) { range in
            for i in range { base[i] = transform(base[i]) }
        }
    }
}

/// The logistic sigmoid, in place.
public func sigmoid(_ x: inout Tensor) { forEachChunk(&x) { stitch_sigmoid($0, $1) } }

/// SwiGLU (Llama's MLP) of fused [..., 2n] gate and up halves: silu(gate) * up, [..., n], in one pass.
public func swiGLU(_ gateUp: Tensor) -> Tensor {
    let n = gateUp.lastDimension / 2
    var out = Tensor(uninitialized: Array(gateUp.shape.dropLast()) + [n])
    let rows = out.count / max(n, 1)
    gateUp.withUnsafeBufferPointer { source in
        out.withUnsafeMutableBufferPointer { target in
            let (from, to) = (source.baseAddress!, target.baseAddress!)
            forRowChunks(rows, width: n) { range in
                for r in range { stitch_swiglu(from + r * 2 * n, from + r * 2 * n + n, to + r * n, n) }
            }
        }
    }
    return out
}

/// Runs `body` on parallel chunks of the elements (pointer, count).
func forEachChunk(_ x: inout Tensor, _ body: (UnsafeMutablePointer<Float>, Int) -> Void) {
    x.withUnsafeMutableBufferPointer { buffer in
        let base = buffer.baseAddress!
        Parallel.forChunks(buffer.count) { range in body(base + range.lowerBound, range.count) }
    }
}

/// e^x for each value, by the kernels' exp (within about 1 ulp of expf; 0 and +inf outside its range).
func fastExponentials(_ x: [Float]) -> [Float] {
    var y = [Float](repeating: 0, count: x.count)
    x.withUnsafeBufferPointer { source in y.withUnsafeMutableBufferPointer { stitch_exp(source.baseAddress, $0.baseAddress, x.count) } }
    return y
}

/// Activation functions named as in Hugging Face configs (`hidden_act`, `activation_function`): GELU's exact form
/// (BERT, "gelu"; erf within 4.3e-7), its tanh form (GPT-2's "gelu_new", SigLIP's "gelu_pytorch_tanh"; an exp within
/// about 1 ulp of expf), quick GELU x sigmoid(1.702 x) (OpenAI CLIP), ReLU.
public enum Activation: String, Sendable, Codable {
    case gelu, geluNew = "gelu_new", geluPytorchTanh = "gelu_pytorch_tanh", quickGelu = "quick_gelu", relu, silu

    /// In place, in parallel chunks (`linear(_:weight:bias:activation:columns:)` fuses it into the product instead).
    public func apply(_ x: inout Tensor) {
        let kernel = self.kernel
        forEachChunk(&x) { stitch_bias_row_activation($0, $1, nil, kernel) }
    }

    var kernel: stitch_activation {
        switch self {
        case .gelu: return STITCH_ACTIVATION_GELU_ERF
        case .geluNew, .geluPytorchTanh: return STITCH_ACTIVATION_GELU_TANH
        case .quickGelu: return STITCH_ACTIVATION_QUICK_GELU
        case .relu: return STITCH_ACTIVATION_RELU
        case .silu: return STITCH_ACTIVATION_SILU
        }
    }
}

/// x += y, element-wise (residual connections).
public func addInPlace(_ x: inout Tensor, _ y: Tensor) {
    precondition(x.shape == y.shape, "cannot add \(y.shape) to \(x.shape)")
    y.withUnsafeBufferPointer { yp in
        x.withUnsafeMutableBufferPointer { xp in
            let (xb, yb) = (xp.baseAddress!, yp.baseAddress!)
            Parallel.forChunks(xp.count) { range in
                for i in range { xb[i] += yb[i] }
            }
        }
    }
}

/// Runs `body` on parallel ranges of `rows` rows of `width` values, parts of at least 8192 values (fewer do not repay
/// handing them to another thread).
func forRowChunks(_ rows: Int, width: Int, _ body: (Range<Int>) -> Void) {
    Parallel.forChunks(rows, minimumChunk: max(1, 8_192 / max(width, 1)), body)
}

/// Runs `body` on each row of length `lastDimension`, rows spread over the cores.
func forEachRow(_ x: inout Tensor, _ body: (UnsafeMutablePointer<Float>, Int) -> Void) {
    let n = x.lastDimension
    let rows = x.count / max(n, 1)
    x.withUnsafeMutableBufferPointer { buffer in
        let base = buffer.baseAddress!
        forRowChunks(rows, width: n) { range in
            for r in range { body(base + r * n, n) }
        }
    }
}

/// Softmax over the last dimension, in place. Entries of -infinity get probability 0.
public func softmaxLastDimension(_ x: inout Tensor) {
    forEachRow(&x) { row, n in stitch_softmax(row, n) }
}

/// Log-softmax over the last dimension, in place.
public func logSoftmaxLastDimension(_ x: inout Tensor) {
    forEachRow(&x) { row, n in
        var maximum = -Float.infinity
        for j in 0..<n { maximum = max(maximum, row[j]) }
        var sum: Float = 0
        for j in 0..<n { sum += expf(row[j] - maximum) }
        let shift = maximum + logf(sum)
        for j in 0..<n { row[j] -= shift }
    }
}

/// Layer normalisation over the last dimension with affine weight and bias [n].
public func layerNorm(_ x: Tensor, weight: Tensor, bias: Tensor, epsilon: Float) -> Tensor {
    let n = x.lastDimension
    precondition(weight.count == n && bias.count == n, "layerNorm of rows \(n) with weight \(weight.shape) bias \(bias.shape)")
    return weight.withUnsafeBufferPointer { w in
        bias.withUnsafeBufferPointer { b in
            mapRows(x) { stitch_layer_norm($0, $1, $2, w.baseAddress, b.baseAddress, epsilon) }
        }
    }
}

/// transformers' RMSNorm (Llama, Qwen2): each row over its root mean square, times the weight [n].
public func rmsNorm(_ x: Tensor, weight: Tensor, epsilon: Float) -> Tensor {
    precondition(weight.count == x.lastDimension, "rmsNorm of rows \(x.lastDimension) with weight \(weight.shape)")
    return weight.withUnsafeBufferPointer { w in mapRows(x) { stitch_rms_norm($0, $1, $2, w.baseAddress, epsilon) } }
}

/// A tensor of x's shape whose rows of the last dimension are `body(row of x, row of the result, n)`, rows spread over
/// the cores.
func mapRows(_ x: Tensor, _ body: (UnsafePointer<Float>, UnsafeMutablePointer<Float>, Int) -> Void) -> Tensor {
    var out = Tensor(uninitialized: x.shape)
    let n = x.lastDimension
    let rows = x.count / max(n, 1)
    x.withUnsafeBufferPointer { source in
        out.withUnsafeMutableBufferPointer { target in
            let (from, to) = (source.baseAddress!, target.baseAddress!)
            forRowChunks(rows, width: n) { range in
                for r in range { body(from + r * n, to + r * n, n) }
            }
        }
    }
    return out
}

/// Indices of `values` from largest to smallest, equal values by lower index: the one ranking every "best first"
/// list uses (zero-shot labels, retrieval, re-ranked captions, in-context examples).
public func indicesByDescendingValue(_ values: [Float]) -> [Int] {
    values.indices.sorted { values[$0] > values[$1] || (values[$0] == values[$1] && $0 < $1) }
}

/// L2-normalises each row of the last dimension in place (sentence and CLIP embeddings).
public func l2NormalizeRows(_ x: inout Tensor, epsilon: Float = 1e-12) {
    forEachRow(&x) { row, n in
        var sum: Float = 0
        for j in 0..<n { sum += row[j] * row[j] }
        let scale = 1 / max(sum.squareRoot(), epsilon)
        for j in 0..<n { row[j] *= scale }
    }
}

/// A copy of x with each row of the last dimension L2-normalised (the cosines of two such are one product).
public func l2NormalizedRows(_ x: Tensor) -> Tensor {
    var unit = x
    l2NormalizeRows(&unit)
    return unit
}

public enum TensorError: Error, CustomStringConvertible, Equatable {
    case indexOutOfRange(index: Int, size: Int, what: String)

    public var description: String {
        switch self {
        case let .indexOutOfRange(index, size, what):
            return "\(what): index \(index) is outside 0..<\(size)"
        }
    }
}

/// Gathers rows of `table` [vocabulary, d] for each id, giving [ids.count, d].
public func embedding(_ ids: [Int], table: Tensor) throws(TensorError) -> Tensor {
    precondition(table.rank == 2, "embedding table must be [vocabulary, d], got \(table.shape)")
    let (vocabulary, d) = (table.shape[0], table.shape[1])
    if let bad = ids.first(where: { $0 < 0 || $0 >= vocabulary }) {
        throw .indexOutOfRange(index: bad, size: vocabulary, what: "embedding lookup")
    }
    var out = Tensor(uninitialized: [ids.count, d])
    table.withUnsafeBufferPointer { t in
        out.withUnsafeMutableBufferPointer { o in
            for (row, id) in ids.enumerated() {
                (o.baseAddress! + row * d).update(from: t.baseAddress! + id * d, count: d)
            }
        }
    }
    return out
}

/// Joins tensors along `axis`; all other dimensions must agree.
public func concatenate(_ tensors: [Tensor], axis: Int) -> Tensor {
    precondition(!tensors.isEmpty, "concatenate needs at least one tensor")
    let first = tensors[0].shape
    let axis = axis < 0 ? axis + first.count : axis
    for t in tensors {
        precondition(t.rank == first.count && zip(t.shape, first).enumerated().allSatisfy { $0.offset == axis || $0.element.0 == $0.element.1 },
                     "cannot concatenate \(t.shape) with \(first) along axis \(axis)")
    }
    var shape = first
    shape[axis] = tensors.map { $0.shape[axis] }.reduce(0, +)
    let outer = first[..<axis].reduce(1, *)
    let inner = first[(axis + 1)...].reduce(1, *)
    var out = Tensor(uninitialized: shape)
    out.withUnsafeMutableBufferPointer { o in
        var column = 0
        let outRow = shape[axis] * inner
        for t in tensors {
            let (block, start) = (t.shape[axis] * inner, column)
            if block > 0 { t.withUnsafeBufferPointer { src in
                // Blocks of a few values (a channels-last map's pixels) are copied inline, shorter than a call to
                // memmove is worth, and many of them in parallel chunks.
                Parallel.forChunks(outer, minimumChunk: max(1, 65_536 / max(block, 1))) { rows in
                    for i in rows {
                        let (from, to) = (src.baseAddress! + i * block, o.baseAddress! + i * outRow + start)
                        if block >= 256 { to.update(from: from, count: block) } else { for j in 0..<block { to[j] = from[j] } }
                    }
                }
            } }
            column += block
        }
    }
    return out
}

/// Swaps two axes (a copy): e.g. [B, T, H, D] -> [B, H, T, D].
public func transposed(_ x: Tensor, _ axisA: Int, _ axisB: Int) -> Tensor {
    var outShape = x.shape
    outShape.swapAt(axisA, axisB)
    let rank = x.rank
    var inStrides = [Int](repeating: 1, count: rank)
    for i in stride(from: rank - 2, through: 0, by: -1) { inStrides[i] = inStrides[i + 1] * x.shape[i + 1] }
    var permutedStrides = inStrides
    permutedStrides.swapAt(axisA, axisB)
    var out = Tensor(uninitialized: outShape)
    x.withUnsafeBufferPointer { src in
        out.withUnsafeMutableBufferPointer { dst in
            var index = [Int](repeating: 0, count: rank)
            for flat in 0..<dst.count {
                var source = 0
                for d in 0..<rank { source += index[d] * permutedStrides[d] }
                dst[flat] = src[source]
                var d = rank - 1
                while d >= 0 {
                    index[d] += 1
                    if index[d] < outShape[d] { break }
                    index[d] = 0
                    d -= 1
                }
            }
        }
    }
    return out
}

/// Widens IEEE half-precision values (little-endian bit patterns) to Float, exactly (zeros, subnormals, infinities and
/// NaNs kept), with F16C's conversion where the CPU has it (the kernel's x86-64-v3 and v4 variants).
public func widenHalfFloats(_ source: UnsafeRawPointer, count: Int, into target: UnsafeMutablePointer<Float>) {
    stitch_widen_half(source.assumingMemoryBound(to: UInt16.self), count, target)   // safetensors data is 2-byte aligned for F16
}

/// The k largest values' indices, largest first; equal values keep index order.
/// One pass with a sorted k-list, since k is small next to a vocabulary.
public func topIndices(_ values: [Float], _ k: Int) -> [Int] {
    let k = min(k, values.count)
    guard k > 0 else { return [] }
    var best: [Int] = []
    best.reserveCapacity(k + 1)
    for i in values.indices {
        if best.count == k, values[i] <= values[best[k - 1]] { continue }
        var (low, high) = (0, best.count)
        while low < high {
            let middle = (low + high) / 2
            if values[best[middle]] >= values[i] { low = middle + 1 } else { high = middle }
        }
        best.insert(i, at: low)
        if best.count > k { best.removeLast() }
    }
    return best
}
