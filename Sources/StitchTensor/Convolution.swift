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

/// 2-D convolution of one image x [cIn, h, w] with weight [cOut, cIn, kh, kw]
/// (PyTorch layout) and optional bias [cOut], giving [cOut, hOut, wOut].
/// 1x1 convolutions are one sgemm; others go through im2col and one sgemm.
public func conv2d(_ x: Tensor, weight: Tensor, bias: Tensor?, stride: Int = 1, padding: Padding2D = .symmetric(0)) -> Tensor {
    precondition(x.rank == 3 && weight.rank == 4 && weight.shape[1] == x.shape[0],
                 "conv2d of input \(x.shape) with weight \(weight.shape)")
    let (cIn, h, w) = (x.shape[0], x.shape[1], x.shape[2])
    let (cOut, kh, kw) = (weight.shape[0], weight.shape[2], weight.shape[3])
    let hOut = outputSize(h, kernel: kh, stride: stride, before: padding.top, after: padding.bottom)
    let wOut = outputSize(w, kernel: kw, stride: stride, before: padding.left, after: padding.right)
    let columns: Tensor
    if kh == 1 && kw == 1 && stride == 1 && padding == .symmetric(0) {
        columns = x.reshaped([cIn, h * w])
    } else {
        // im2col: row (c, i, j) holds input pixel (c, y*stride + i - top, x*stride + j - left) for every output (y, x).
        var cols = Tensor(uninitialized: [cIn * kh * kw, hOut * wOut])
        x.withUnsafeBufferPointer { src in
            cols.withUnsafeMutableBufferPointer { dst in
                let (s, d) = (src.baseAddress!, dst.baseAddress!)
                Parallel.forEach(cIn) { c in
                    for i in 0..<kh {
                        for j in 0..<kw {
                            let row = d + ((c * kh + i) * kw + j) * hOut * wOut
                            for y in 0..<hOut {
                                let sy = y * stride + i - padding.top
                                for xo in 0..<wOut {
                                    let sx = xo * stride + j - padding.left
                                    row[y * wOut + xo] = (sy >= 0 && sy < h && sx >= 0 && sx < w) ? s[(c * h + sy) * w + sx] : 0
                                }
                            }
                        }
                    }
                }
            }
        }
        columns = cols
    }
    // [cOut, cIn*kh*kw] · [cIn*kh*kw, hOut*wOut]
    var out = matmul(weight.reshaped([cOut, cIn * kh * kw]), columns)
    if let bias { addChannelBias(&out, bias, plane: hOut * wOut) }
    return out.reshaped([cOut, hOut, wOut])
}

/// Depthwise 2-D convolution (groups == channels): x [c, h, w], weight [c, 1, kh, kw].
public func depthwiseConv2d(_ x: Tensor, weight: Tensor, bias: Tensor?, stride: Int = 1, padding: Padding2D = .symmetric(0)) -> Tensor {
    precondition(x.rank == 3 && weight.rank == 4 && weight.shape[0] == x.shape[0] && weight.shape[1] == 1,
                 "depthwise conv2d of input \(x.shape) with weight \(weight.shape)")
    let (c, h, w) = (x.shape[0], x.shape[1], x.shape[2])
    let (kh, kw) = (weight.shape[2], weight.shape[3])
    let hOut = outputSize(h, kernel: kh, stride: stride, before: padding.top, after: padding.bottom)
    let wOut = outputSize(w, kernel: kw, stride: stride, before: padding.left, after: padding.right)
    var out = Tensor(zeros: [c, hOut, wOut])
    x.withUnsafeBufferPointer { src in
        weight.withUnsafeBufferPointer { kernel in
            out.withUnsafeMutableBufferPointer { dst in
                let (s, k, d) = (src.baseAddress!, kernel.baseAddress!, dst.baseAddress!)
                Parallel.forEach(c) { channel in
                    let input = s + channel * h * w, taps = k + channel * kh * kw, output = d + channel * hOut * wOut
                    // Each tap (i, j) sweeps the output columns whose input column lies inside the image,
                    // so the inner loop is contiguous and unchecked; every output still sums its taps in (i, j) order.
                    let columns = (0..<kw).map { j in validOutputs(offset: j - padding.left, stride: stride, inputSize: w, outputSize: wOut) }
                    for y in 0..<hOut {
                        let row = output + y * wOut
                        for i in 0..<kh {
                            let sy = y * stride + i - padding.top
                            guard sy >= 0 && sy < h else { continue }
                            let inputRow = input + sy * w
                            for j in 0..<kw {
                                let tap = taps[i * kw + j], shift = j - padding.left
                                for xo in columns[j] { row[xo] += inputRow[xo * stride + shift] * tap }
                            }
                        }
                    }
                }
            }
        }
    }
    if let bias { addChannelBias(&out, bias, plane: hOut * wOut) }
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

/// Adds bias[c] to every element of channel c in x [c, plane...].
private func addChannelBias(_ x: inout Tensor, _ bias: Tensor, plane: Int) {
    let values = bias.scalars
    precondition(values.count * plane == x.count, "bias of \(values.count) channels for \(x.shape)")
    x.withUnsafeMutableBufferPointer { p in
        let base = p.baseAddress!
        Parallel.forEach(values.count) { c in
            for i in 0..<plane { base[c * plane + i] += values[c] }
        }
    }
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
