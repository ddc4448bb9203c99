import CStitchKernels

/// Zero padding around an image: rows added on top and bottom, columns on left and right.
public struct Padding2D: Sendable, Equatable {
    public var top, bottom, left, right: Int

    public init(top: Int, bottom: Int, left: Int, right: Int) {
        (self.top, self.bottom, self.left, self.right) = (top, bottom, left, right)
    }

    public static func symmetric(_ p: Int) -> Padding2D { Padding2D(top: p, bottom: p, left: p, right: p) }

    /// TensorFlow's "SAME" padding (output = ceil(input / stride)), extra on the bottom/right,
    /// as TF-ported PyTorch models (EfficientNet) compute it.
    public static func same(height: Int, width: Int, kernel: Int, stride: Int) -> Padding2D {
        func pads(_ size: Int) -> (Int, Int) {
            let output = (size + stride - 1) / stride
            let total = max((output - 1) * stride + kernel - size, 0)
            return (total / 2, total - total / 2)
        }
        let (top, bottom) = pads(height), (left, right) = pads(width)
        return Padding2D(top: top, bottom: bottom, left: left, right: right)
    }
}

private func outputSize(_ size: Int, kernel: Int, stride: Int, before: Int, after: Int) -> Int {
    (size + before + after - kernel) / stride + 1
}

/// What a convolution applies to each output after its bias, in the same pass.
public enum ConvActivation: Sendable {
    case none, silu, relu6

    var kernel: stitch_activation {
        switch self {
        case .none: return STITCH_ACTIVATION_NONE
        case .silu: return STITCH_ACTIVATION_SILU
        case .relu6: return STITCH_ACTIVATION_RELU6
        }
    }
}

/// 2-D convolution of one image x [cIn, h, w] with weight [cOut, cIn, kh, kw]
/// (PyTorch layout), bias [cOut] and an activation, giving [cOut, hOut, wOut].
/// The output is computed in tiles of whole rows spread over the cores; for each tile,
/// im2col (skipped for 1×1 stride-1 kernels), one single-threaded sgemm, then bias and
/// activation while the tile is still in cache.
public func conv2d(_ x: Tensor, weight: Tensor, bias: Tensor?, stride: Int = 1, padding: Padding2D = .symmetric(0),
                   activation: ConvActivation = .none) -> Tensor {
    precondition(x.rank == 3 && weight.rank == 4 && weight.shape[1] == x.shape[0],
                 "conv2d of input \(x.shape) with weight \(weight.shape)")
    let (cIn, h, w) = (x.shape[0], x.shape[1], x.shape[2])
    let (cOut, kh, kw) = (weight.shape[0], weight.shape[2], weight.shape[3])
    let hOut = outputSize(h, kernel: kh, stride: stride, before: padding.top, after: padding.bottom)
    let wOut = outputSize(w, kernel: kw, stride: stride, before: padding.left, after: padding.right)
    let plane = hOut * wOut, depth = cIn * kh * kw
    let direct = kh == 1 && kw == 1 && stride == 1 && padding == .symmetric(0)
    // Rows per tile: about 2048 outputs (an im2col tile of depth × 2048 stays in L2), and
    // enough tiles to keep every core busy.
    let rowsPerTile = max(1, min(max(2048 / max(wOut, 1), 1), (hOut + Parallel.limit - 1) / Parallel.limit))
    let tiles = (hOut + rowsPerTile - 1) / rowsPerTile
    let biases = bias?.scalars ?? [Float](repeating: 0, count: cOut)
    var out = Tensor(uninitialized: [cOut, hOut, wOut])
    x.withUnsafeBufferPointer { src in
        weight.withUnsafeBufferPointer { kernel in
            out.withUnsafeMutableBufferPointer { dst in
                let (s, k, d) = (src.baseAddress!, kernel.baseAddress!, dst.baseAddress!)
                Parallel.forEach(tiles) { tile in
                    let firstRow = tile * rowsPerTile, rows = min(rowsPerTile, hOut - firstRow)
                    let (start, columns) = (firstRow * wOut, rows * wOut)
                    let product = { (b: UnsafePointer<Float>, ldb: Int) in
                        // [cOut, depth] · [depth, columns] into columns start..<start+columns of each output channel
                        BLAS.gemm(transposeA: false, transposeB: false, m: cOut, n: columns, k: depth, a: k, lda: depth,
                                  b: b, ldb: ldb, c: d + start, ldc: plane)
                    }
                    if direct {
                        product(s + start, h * w)
                    } else {
                        // im2col row (c, i, j) holds input pixel (c, y·stride + i − top, x·stride + j − left) for each output (y, x) of the tile.
                        let cols = UnsafeMutablePointer<Float>.allocate(capacity: depth * columns)
                        defer { cols.deallocate() }
                        for c in 0..<cIn {
                            for i in 0..<kh {
                                for j in 0..<kw {
                                    let row = cols + ((c * kh + i) * kw + j) * columns
                                    let valid = validOutputs(offset: j - padding.left, stride: stride, inputSize: w, outputSize: wOut)
                                    for y in 0..<rows {
                                        let target = row + y * wOut
                                        let sy = (firstRow + y) * stride + i - padding.top
                                        guard sy >= 0 && sy < h else {
                                            target.initialize(repeating: 0, count: wOut)
                                            continue
                                        }
                                        let input = s + (c * h + sy) * w + j - padding.left
                                        for xo in 0..<valid.lowerBound { target[xo] = 0 }
                                        if stride == 1 {
                                            (target + valid.lowerBound).update(from: input + valid.lowerBound, count: valid.count)
                                        } else {
                                            for xo in valid { target[xo] = input[xo * stride] }
                                        }
                                        for xo in valid.upperBound..<wOut { target[xo] = 0 }
                                    }
                                }
                            }
                        }
                        product(cols, columns)
                    }
                    for c in 0..<cOut { stitch_bias_activation(d + c * plane + start, columns, biases[c], activation.kernel) }
                }
            }
        }
    }
    return out
}

/// Depthwise 2-D convolution (groups == channels): x [c, h, w], weight [c, 1, kh, kw], with
/// bias and activation applied to each channel as soon as it is done.
public func depthwiseConv2d(_ x: Tensor, weight: Tensor, bias: Tensor?, stride: Int = 1, padding: Padding2D = .symmetric(0),
                            activation: ConvActivation = .none) -> Tensor {
    precondition(x.rank == 3 && weight.rank == 4 && weight.shape[0] == x.shape[0] && weight.shape[1] == 1 && weight.shape[3] <= 16,
                 "depthwise conv2d of input \(x.shape) with weight \(weight.shape)")
    let (c, h, w) = (x.shape[0], x.shape[1], x.shape[2])
    let (kh, kw) = (weight.shape[2], weight.shape[3])
    let hOut = outputSize(h, kernel: kh, stride: stride, before: padding.top, after: padding.bottom)
    let wOut = outputSize(w, kernel: kw, stride: stride, before: padding.left, after: padding.right)
    let biases = bias?.scalars ?? [Float](repeating: 0, count: c)
    var out = Tensor(uninitialized: [c, hOut, wOut])
    x.withUnsafeBufferPointer { src in
        weight.withUnsafeBufferPointer { kernel in
            out.withUnsafeMutableBufferPointer { dst in
                let (s, k, d) = (src.baseAddress!, kernel.baseAddress!, dst.baseAddress!)
                Parallel.forEach(c) { channel in
                    stitch_depthwise_channel(s + channel * h * w, h, w, k + channel * kh * kw, kh, kw, stride, padding.top, padding.left,
                                             d + channel * hOut * wOut, hOut, wOut, biases[channel], activation.kernel)
                }
            }
        }
    }
    return out
}

/// The outputs xo whose input column xo * stride + offset lies in 0..<inputSize.
private func validOutputs(offset: Int, stride: Int, inputSize: Int, outputSize: Int) -> Range<Int> {
    var first = 0
    while first < outputSize && first * stride + offset < 0 { first += 1 }
    var end = first
    while end < outputSize && end * stride + offset < inputSize { end += 1 }
    return first..<end
}

/// Mean over the spatial axes of x [c, h, w], giving [c].
public func globalAveragePool(_ x: Tensor) -> Tensor {
    precondition(x.rank == 3, "global average pool of \(x.shape)")
    let (c, plane) = (x.shape[0], x.shape[1] * x.shape[2])
    let values = x.scalars
    return Tensor(shape: [c], scalars: (0..<c).map { channel in
        values[channel * plane..<(channel + 1) * plane].reduce(0, +) / Float(plane)
    })
}

/// Max pooling of x [c, h, w] with a k×k window, stride 1 and k/2 padding that never wins
/// (as PyTorch's MaxPool2d pads with -inf): output [c, h, w]. Max is separable, so rows then columns.
public func maxPoolSame(_ x: Tensor, kernel: Int) -> Tensor {
    let (c, h, w) = (x.shape[0], x.shape[1], x.shape[2])
    let r = kernel / 2
    var rows = Tensor(uninitialized: x.shape), out = Tensor(uninitialized: x.shape)
    x.withUnsafeBufferPointer { src in
        rows.withUnsafeMutableBufferPointer { mid in
            out.withUnsafeMutableBufferPointer { dst in
                let (s, m, d) = (src.baseAddress!, mid.baseAddress!, dst.baseAddress!)
                Parallel.forEach(c) { channel in
                    let plane = channel * h * w
                    for y in 0..<h {
                        for xo in 0..<w {
                            var best = -Float.infinity
                            for xi in max(xo - r, 0)...min(xo + r, w - 1) { best = max(best, s[plane + y * w + xi]) }
                            m[plane + y * w + xo] = best
                        }
                    }
                    for y in 0..<h {
                        for xo in 0..<w {
                            var best = -Float.infinity
                            for yi in max(y - r, 0)...min(y + r, h - 1) { best = max(best, m[plane + yi * w + xo]) }
                            d[plane + y * w + xo] = best
                        }
                    }
                }
            }
        }
    }
    return out
}

/// Nearest-neighbour 2× upsampling of x [c, h, w] -> [c, 2h, 2w].
public func upsample2x(_ x: Tensor) -> Tensor {
    let (c, h, w) = (x.shape[0], x.shape[1], x.shape[2])
    var out = Tensor(uninitialized: [c, 2 * h, 2 * w])
    x.withUnsafeBufferPointer { src in
        out.withUnsafeMutableBufferPointer { dst in
            for channel in 0..<c {
                for y in 0..<2 * h {
                    for xo in 0..<2 * w { dst[(channel * 2 * h + y) * 2 * w + xo] = src[(channel * h + y / 2) * w + xo / 2] }
                }
            }
        }
    }
    return out
}
