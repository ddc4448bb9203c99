import StitchModelIO
import StitchTensor

/// A dense layer as stored by PyTorch: nn.Linear ([out, in]) or transformers' Conv1D ([in, out]).
/// Where the CPU has Stitch's product kernels (AVX-512, or AVX2 with FMA) the weight is packed once, here, at the
/// precision the model loads at (`Precision.loading`), and only the packed form is kept; elsewhere products read it as
/// stored (OpenBLAS).
struct Linear {
    let bias: Tensor?
    let layout: WeightLayout
    /// The weight as stored, kept only where it is not packed.
    private let weight: Tensor?
    private let packed: PackedWeights?
    /// The precision of this layer's products (FP32 where its weight is not packed); attention takes its projections'.
    var precision: Precision { packed?.precision ?? .fp32 }

    /// `weight` and `bias` taken from `store` (a recording store's placeholders are not packed).
    init(weight: Tensor, bias: Tensor?, layout: WeightLayout = .outputsByInputs, from store: WeightStore) {
        self.init(weight: weight, bias: bias, layout: layout, packing: !store.isRecording)
    }

    /// `weight` packed at the loading precision where `packing` (and the CPU has a kernel for it), else kept as it is.
    init(weight: Tensor, bias: Tensor?, layout: WeightLayout = .outputsByInputs, packing: Bool = true) {
        packed = packing ? PackedWeights.pack(weight, layout: layout, precision: Precision.loading) : nil
        self.weight = packed == nil ? weight : nil
        if packed != nil { weight.releaseFilePages() }   // the copy is packed: the file's pages need not stay in memory
        self.bias = bias
        self.layout = layout
    }

    /// Takes `<prefix>.weight` (and `<prefix>.bias`) from the store.
    init(_ store: WeightStore, _ prefix: String, inputs: Int, outputs: Int, bias: Bool = true, layout: WeightLayout = .outputsByInputs) {
        self.init(weight: store.take("\(prefix).weight", shape: layout == .outputsByInputs ? [outputs, inputs] : [inputs, outputs]),
                  bias: bias ? store.take("\(prefix).bias", shape: [outputs]) : nil, layout: layout, from: store)
    }

    /// Several nn.Linear layers over the same input (`<prefix>.weight`, `<prefix>.bias` for each prefix, of
    /// `outputs[i]` outputs) fused into one, outputs stacked, so one product serves them all.
    init(_ store: WeightStore, fusing prefixes: [String], inputs: Int, outputs: [Int], bias: Bool = true) {
        precondition(prefixes.count == outputs.count, "one output size per fused layer")
        let parts = zip(prefixes, outputs)
        let weights = parts.map { store.take("\($0).weight", shape: [$1, inputs]) }
        self.init(weight: concatenate(weights, axis: 0), bias: bias ? concatenate(parts.map { store.take("\($0).bias", shape: [$1]) }, axis: 0) : nil,
                  from: store)
        if packed != nil { weights.forEach { $0.releaseFilePages() } }
    }

    /// activation(x · Wᵀ + bias): with packed weights, the bias and activation run as the product finishes each block.
    func callAsFunction(_ x: Tensor, activation: Activation? = nil) -> Tensor {
        if let packed { return linear(x, weight: packed, bias: bias, activation: activation) }
        return linear(x, weight: weight!, bias: bias, layout: layout, activation: activation)
    }

    /// Only the outputs `range` of an nn.Linear layer (a block of its weight's rows): x [..., in] -> [..., range.count].
    func callAsFunction(_ x: Tensor, outputs range: Range<Int>) -> Tensor {
        precondition(layout == .outputsByInputs, "output ranges are row blocks of an nn.Linear weight")
        guard let packed else { return linear(x, weight: weight!.rows(range), bias: bias?.rows(range)) }
        if range.lowerBound % 32 == 0 { return linear(x, weight: packed, bias: bias, columns: range) }
        // A range that does not start on a 32-column panel: all outputs, then the range's.
        let all = linear(x, weight: packed, bias: bias)
        return splitLastDimension(all, widths: [range.lowerBound, range.count, packed.outputs - range.upperBound])[1]
    }
}

struct LayerNorm {
    let weight: Tensor
    let bias: Tensor
    let epsilon: Float

    init(_ store: WeightStore, _ prefix: String, size: Int, epsilon: Float) {
        weight = store.take("\(prefix).weight", shape: [size])
        bias = store.take("\(prefix).bias", shape: [size])
        self.epsilon = epsilon
    }

    func callAsFunction(_ x: Tensor) -> Tensor { layerNorm(x, weight: weight, bias: bias, epsilon: epsilon) }
}

/// The non-overlapping p×p patches of pixels [batch, c, s, s] as rows [batch * (s/p)², c * p * p],
/// row-major over the grid and flattened in a patch conv weight's (channel, row, column) order:
/// a stride-p convolution becomes one product with the weight reshaped to [d, c * p * p].
func flattenPatches(_ pixels: Tensor, patch p: Int) -> Tensor {
    let (batch, c, s) = (pixels.shape[0], pixels.shape[1], pixels.shape[2])
    let grid = s / p
    var patches = Tensor(uninitialized: [batch * grid * grid, c * p * p])
    pixels.withUnsafeBufferPointer { src in
        patches.withUnsafeMutableBufferPointer { dst in
            let (from, to) = (src.baseAddress!, dst.baseAddress!)
            // Bands of patches (image b, grid row gy) in parallel, each patch's rows of p pixels copied whole:
            // element by element on one core, this took 1.4% of CLIP ViT-B/32's batch of 16 at bfloat16.
            Parallel.forChunks(batch * grid, minimumChunk: 1) { bands in
                for band in bands {
                    let (b, gy) = band.quotientAndRemainder(dividingBy: grid)
                    var o = band * grid * c * p * p
                    for gx in 0..<grid {
                        for ch in 0..<c {
                            for i in 0..<p {
                                (to + o).update(from: from + ((b * c + ch) * s + gy * p + i) * s + gx * p, count: p)
                                o += p
                            }
                        }
                    }
                }
            }
        }
    }
    return patches
}

/// Token rows right-padded with `padding` to the longest, and their attention mask [rows, longest]: 1 for a token,
/// 0 for padding (Hugging Face's attention_mask).
func rightPadded(_ tokens: [[Int]], with padding: Int) -> (ids: [[Int]], mask: Tensor) {
    let length = tokens.map(\.count).max() ?? 0
    return (tokens.map { $0 + Array(repeating: padding, count: length - $0.count) },
            Tensor(shape: [tokens.count, length], scalars: tokens.flatMap { row in (0..<length).map { $0 < row.count ? 1 : 0 } }))
}

/// Splits x [..., parts * n] into `parts` tensors [..., n] (copies).
func splitLastDimension(_ x: Tensor, parts: Int) -> [Tensor] {
    splitLastDimension(x, widths: Array(repeating: x.lastDimension / parts, count: parts))
}

/// Splits x [..., sum of widths] into tensors [..., width] in order (copies).
func splitLastDimension(_ x: Tensor, widths: [Int]) -> [Tensor] {
    let total = x.lastDimension
    precondition(widths.reduce(0, +) == total, "widths \(widths) do not add up to \(total)")
    let rows = x.count / max(total, 1)
    var offset = 0
    return widths.map { width in
        defer { offset += width }
        var out = Tensor(uninitialized: Array(x.shape.dropLast()) + [width])
        x.withUnsafeBufferPointer { src in
            out.withUnsafeMutableBufferPointer { dst in
                for r in 0..<rows {
                    (dst.baseAddress! + r * width).update(from: src.baseAddress! + r * total + offset, count: width)
                }
            }
        }
        return out
    }
}

/// Errors of running a model on bad input (token ids out of range, too long sequences, wrong pixel shapes).
public enum ModelError: Error, CustomStringConvertible, Equatable {
    case invalidInput(model: String, detail: String)

    public var description: String {
        switch self {
        case let .invalidInput(model, detail): return "\(model): \(detail)"
        }
    }
}
