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

/// A convolution layer prepared once: PyTorch-layout weight [cOut, cIn / groups, kh, kw] (groups 1,
/// or one per channel when `depthwise`), bias [cOut], stride and the activation applied in the same
/// pass. Applied to one image x [cIn, h, w] with a padding, it gives [cOut, hOut, wOut]:
/// - pointwise (1 x 1, stride 1, no padding): the matrix product weight [cOut, cIn] · x [cIn, h·w] by blocks of
///   columns, each block's bias and activation applied while it is in cache;
/// - dense, stride 1: the direct kernel (`stitch_conv_direct`) on weights packed at preparation;
/// - dense, other strides: im2col and one single-threaded sgemm per tile of output rows, then bias
///   and activation while the tile is in cache;
/// - depthwise: one channel per task, bias and activation as each channel finishes.
public struct Convolution: @unchecked Sendable {
    public let weight: Tensor
    public let stride: Int
    public let depthwise: Bool
    public let activation: ConvActivation
    let biases: [Float]
    /// Weights for the direct kernel (stride 1, kernels wider than 1 x 1): [ceil(cOut / 4)][cIn·kh·kw][4], each tap's
    /// 4 output-channel weights side by side.
    let packed: [Float]?
    /// The same weights for its channels-last variant: [ceil(cOut / 16)][cIn·kh·kw][16].
    let packedSixteens: [Float]?

    public init(weight: Tensor, bias: Tensor?, stride: Int = 1, depthwise: Bool = false, activation: ConvActivation = .none) {
        precondition(weight.rank == 4 && (!depthwise || (weight.shape[1] == 1 && weight.shape[3] <= 16)), "convolution weight \(weight.shape)")
        let cOut = weight.shape[0]
        precondition(bias == nil || bias!.shape == [cOut], "bias \(bias!.shape) for weight \(weight.shape)")
        self.weight = weight
        self.stride = stride
        self.depthwise = depthwise
        self.activation = activation
        biases = bias?.scalars ?? [Float](repeating: 0, count: cOut)
        if !depthwise && stride == 1 && weight.shape[2] * weight.shape[3] > 1 {
            let taps = weight.count / cOut
            /// [ceil(cOut / width)][taps][width]: each tap's `width` output-channel weights side by side, zeros past cOut.
            func packed(width: Int) -> [Float] {
                var packed = [Float](repeating: 0, count: (cOut + width - 1) / width * taps * width)
                weight.withUnsafeBufferPointer { w in
                    for co in 0..<cOut {
                        for t in 0..<taps { packed[((co / width) * taps + t) * width + co % width] = w[co * taps + t] }
                    }
                }
                return packed
            }
            (self.packed, packedSixteens) = (packed(width: 4), packed(width: 16))
        } else {
            (packed, packedSixteens) = (nil, nil)
        }
    }

    /// The convolution with its output channels-last, [hOut, wOut, cOut]: the values of `channelsLast(self(x, padding:))`,
    /// which dense stride-1 kernels write directly.
    public func channelsLastOutput(_ x: Tensor, padding: Padding2D = .symmetric(0)) -> Tensor {
        guard let packedSixteens else { return channelsLast(self(x, padding: padding)) }
        precondition(x.rank == 3 && x.shape[0] == weight.shape[1], "convolution of input \(x.shape) with weight \(weight.shape)")
        let (cIn, cOut, kh, kw) = (x.shape[0], weight.shape[0], weight.shape[2], weight.shape[3])
        let hOut = outputSize(x.shape[1], kernel: kh, stride: 1, before: padding.top, after: padding.bottom)
        let wOut = outputSize(x.shape[2], kernel: kw, stride: 1, before: padding.left, after: padding.right)
        var out = Tensor(uninitialized: [hOut, wOut, cOut])
        let (input, ph, pw) = paddedInput(x, padding: padding)
        defer { input.deallocate() }
        out.withUnsafeMutableBufferPointer { d in
            let macs = cOut * cIn * kh * kw * hOut * wOut
            Parallel.forChunks(hOut, parts: Self.worthwhileParts(macs: macs), work: macs) { rows in
                stitch_conv_direct_channels_last(input, cIn, ph * pw, pw, packedSixteens, cOut, kh, kw, biases, activation.kernel, d.baseAddress!,
                                                 wOut, rows.lowerBound, rows.upperBound)
            }
        }
        return out
    }

    /// x's planes with their zero border, plus slack for the direct kernels' reads past a row's end: the buffer (for
    /// the caller to deallocate) and its padded height and width.
    private func paddedInput(_ x: Tensor, padding: Padding2D) -> (UnsafeMutablePointer<Float>, Int, Int) {
        let (cIn, h, w, kw) = (x.shape[0], x.shape[1], x.shape[2], weight.shape[3])
        let (ph, pw) = (h + padding.top + padding.bottom, w + padding.left + padding.right)
        let input = UnsafeMutablePointer<Float>.allocate(capacity: cIn * ph * pw + Self.readAhead + kw)
        input.initialize(repeating: 0, count: cIn * ph * pw + Self.readAhead + kw)
        x.withUnsafeBufferPointer { src in
            for c in 0..<cIn {
                for y in 0..<h {
                    (input + (c * ph + y + padding.top) * pw + padding.left).update(from: src.baseAddress! + (c * h + y) * w, count: w)
                }
            }
        }
        return (input, ph, pw)
    }

    public func callAsFunction(_ x: Tensor, padding: Padding2D = .symmetric(0)) -> Tensor {
        precondition(x.rank == 3 && x.shape[0] == (depthwise ? weight.shape[0] : weight.shape[1]),
                     "convolution of input \(x.shape) with weight \(weight.shape)")
        let (kh, kw) = (weight.shape[2], weight.shape[3])
        let hOut = outputSize(x.shape[1], kernel: kh, stride: stride, before: padding.top, after: padding.bottom)
        let wOut = outputSize(x.shape[2], kernel: kw, stride: stride, before: padding.left, after: padding.right)
        var out = Tensor(uninitialized: [weight.shape[0], hOut, wOut])
        x.withUnsafeBufferPointer { src in
            out.withUnsafeMutableBufferPointer { dst in
                let (shape, d) = ((x.shape[0], x.shape[1], x.shape[2]), dst.baseAddress!)
                if depthwise {
                    runDepthwise(src.baseAddress!, shape, padding: padding, into: d, hOut, wOut)
                } else if kh == 1 && kw == 1 && stride == 1 && padding == .symmetric(0) {
                    runPointwise(src.baseAddress!, channels: shape.0, plane: hOut * wOut, into: d)
                } else if let packed {
                    runDirect(x, packed, padding: padding, into: d, hOut, wOut)
                } else {
                    runIm2col(src.baseAddress!, shape, padding: padding, into: d, hOut, wOut)
                }
            }
        }
        return out
    }

    private func runDirect(_ x: Tensor, _ packed: [Float], padding: Padding2D, into d: UnsafeMutablePointer<Float>, _ hOut: Int, _ wOut: Int) {
        let (cIn, cOut, kh, kw) = (x.shape[0], weight.shape[0], weight.shape[2], weight.shape[3])
        let plane = hOut * wOut
        let (input, ph, pw) = paddedInput(x, padding: padding)
        defer { input.deallocate() }
        let macs = cOut * cIn * kh * kw * plane
        Parallel.forChunks(hOut, parts: Self.worthwhileParts(macs: macs), work: macs) { rows in
            stitch_conv_direct(input, cIn, ph * pw, pw, packed, cOut, kh, kw, biases, activation.kernel, d, plane, wOut, rows.lowerBound, rows.upperBound, 0, wOut)
        }
    }

    /// Floats the direct kernels may read past the last output column (their 32-column and up to 24-pixel tiles).
    static let readAhead = 32

    /// Columns of the output per product of `runPointwise`: the block of input (cIn x 512) and of output stay in L2
    /// between the product and the bias and activation.
    static let pointwiseBlock = 512

    private func runPointwise(_ s: UnsafePointer<Float>, channels cIn: Int, plane: Int, into d: UnsafeMutablePointer<Float>) {
        let cOut = weight.shape[0]
        // Parts of whole 32-column panels (the product kernel's width): only the last part's last panel is partial.
        let tiles = (plane + 31) / 32
        weight.withUnsafeBufferPointer { kernel in
            let macs = cOut * cIn * plane
            Parallel.forChunks(tiles, parts: Self.worthwhileParts(macs: macs), work: macs) { range in
                for start in Swift.stride(from: range.lowerBound * 32, to: min(plane, range.upperBound * 32), by: Self.pointwiseBlock) {
                    let columns = min(Self.pointwiseBlock, plane - start, range.upperBound * 32 - start)
                    applyWeights(kernel.baseAddress!, depth: cIn, to: s + start, ldb: plane, columns: columns, into: d + start, plane: plane)
                }
            }
        }
    }

    /// The weights [cOut, depth] times `columns` columns of b [depth, ldb] into the same columns of each output channel
    /// (planes `plane` apart from `output`), then bias and activation while those columns are in cache.
    private func applyWeights(_ kernel: UnsafePointer<Float>, depth: Int, to b: UnsafePointer<Float>, ldb: Int, columns: Int,
                              into output: UnsafeMutablePointer<Float>, plane: Int) {
        let cOut = weight.shape[0]
        BLAS.gemm(transposeA: false, transposeB: false, m: cOut, n: columns, k: depth, a: kernel, lda: depth, b: b, ldb: ldb, c: output, ldc: plane)
        for c in 0..<cOut { stitch_bias_activation(output + c * plane, columns, biases[c], activation.kernel) }
    }

    /// Parts worth splitting `macs` multiply-adds into: handing a part to a (spinning) pool worker
    /// costs about as much as a quarter million multiply-adds, so tiny layers stay on the caller.
    static func worthwhileParts(macs: Int) -> Int { max(1, macs / 250_000) }

    private func runIm2col(_ s: UnsafePointer<Float>, _ shape: (Int, Int, Int), padding: Padding2D, into d: UnsafeMutablePointer<Float>, _ hOut: Int, _ wOut: Int) {
        let (cIn, h, w) = shape
        let (kh, kw) = (weight.shape[2], weight.shape[3])
        let plane = hOut * wOut, depth = cIn * kh * kw
        // Rows per tile: about 2048 outputs (an im2col tile of depth × 2048 stays in L2), and
        // enough tiles to keep every core busy.
        let threads = Parallel.threads(work: weight.shape[0] * depth * plane)
        let rowsPerTile = max(1, min(max(2048 / max(wOut, 1), 1), (hOut + threads - 1) / threads))
        let tiles = (hOut + rowsPerTile - 1) / rowsPerTile
        weight.withUnsafeBufferPointer { kernel in
            let k = kernel.baseAddress!
            Parallel.forEach(tiles, threads: threads) { tile in
                let firstRow = tile * rowsPerTile, rows = min(rowsPerTile, hOut - firstRow)
                let (start, columns) = (firstRow * wOut, rows * wOut)
                // im2col row (c, i, j) holds input pixel (c, y·stride + i − top, x·stride + j − left) for each output (y, x) of the tile.
                let cols = UnsafeMutablePointer<Float>.allocate(capacity: depth * columns)
                defer { cols.deallocate() }
                for c in 0..<cIn {
                    for i in 0..<kh {
                        for j in 0..<kw {
                            let row = cols + ((c * kh + i) * kw + j) * columns
                            var (first, end) = (0, 0)
                            stitch_valid_columns(j - padding.left, stride, w, wOut, &first, &end)
                            let valid = first..<end
                            for y in 0..<rows {
                                let target = row + y * wOut
                                let sy = (firstRow + y) * stride + i - padding.top
                                guard sy >= 0 && sy < h else {
                                    target.initialize(repeating: 0, count: wOut)
                                    continue
                                }
                                let input = s + (c * h + sy) * w + j - padding.left
                                for xo in 0..<valid.lowerBound { target[xo] = 0 }
                                for xo in valid { target[xo] = input[xo * stride] }
                                for xo in valid.upperBound..<wOut { target[xo] = 0 }
                            }
                        }
                    }
                }
                applyWeights(k, depth: depth, to: cols, ldb: columns, columns: columns, into: d + start, plane: plane)
            }
        }
    }

    private func runDepthwise(_ s: UnsafePointer<Float>, _ shape: (Int, Int, Int), padding: Padding2D, into d: UnsafeMutablePointer<Float>, _ hOut: Int, _ wOut: Int) {
        let (c, h, w) = shape
        let (kh, kw) = (weight.shape[2], weight.shape[3])
        // A depthwise multiply-add costs several of the direct kernel's (short rows, no register
        // blocking), so the work counts 4 times when deciding how to split it.
        weight.withUnsafeBufferPointer { kernel in
            let k = kernel.baseAddress!
            let macs = c * kh * kw * hOut * wOut * 4
            Parallel.forChunks(c, parts: Self.worthwhileParts(macs: macs), work: macs) { channels in
                for channel in channels {
                    stitch_depthwise_channel(s + channel * h * w, h, w, k + channel * kh * kw, kh, kw, stride, padding.top, padding.left,
                                             d + channel * hOut * wOut, hOut, wOut, biases[channel], activation.kernel)
                }
            }
        }
    }
}

/// 2-D convolution of one image x [cIn, h, w] with weight [cOut, cIn, kh, kw] (PyTorch layout),
/// bias [cOut] and an activation, giving [cOut, hOut, wOut]. Layers applied repeatedly should
/// prepare a `Convolution` once instead.
public func conv2d(_ x: Tensor, weight: Tensor, bias: Tensor?, stride: Int = 1, padding: Padding2D = .symmetric(0),
                   activation: ConvActivation = .none) -> Tensor {
    Convolution(weight: weight, bias: bias, stride: stride, activation: activation)(x, padding: padding)
}

/// Depthwise 2-D convolution (groups == channels): x [c, h, w], weight [c, 1, kh, kw].
public func depthwiseConv2d(_ x: Tensor, weight: Tensor, bias: Tensor?, stride: Int = 1, padding: Padding2D = .symmetric(0),
                            activation: ConvActivation = .none) -> Tensor {
    Convolution(weight: weight, bias: bias, stride: stride, depthwise: true, activation: activation)(x, padding: padding)
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
