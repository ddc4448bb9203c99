import CStitchKernels

// Feature maps in channels-last layout, [h, w, c]: a 1 x 1 convolution is then a product of [h·w, cIn] rows with
// weights packed once at load (`linear`), and a depthwise one runs sixteen channels a vector whatever the plane's size.

/// A depthwise convolution (groups == channels) on channels-last maps, prepared once: PyTorch-layout weight
/// [c, 1, kh, kw], bias [c], stride and the activation applied in the same pass. x [h, w, c] -> [hOut, wOut, c].
public struct ChannelsLastDepthwise: Sendable {
    public let channels, kernelHeight, kernelWidth, stride: Int
    public let activation: ConvActivation
    /// [kh, kw, c]: each tap's weights for all channels side by side.
    let taps: [Float]
    let biases: [Float]

    public init(weight: Tensor, bias: Tensor?, stride: Int = 1, activation: ConvActivation = .none) {
        precondition(weight.rank == 4 && weight.shape[1] == 1 && weight.shape[2] <= 16 && weight.shape[3] <= 16, "depthwise weight \(weight.shape)")
        (channels, kernelHeight, kernelWidth) = (weight.shape[0], weight.shape[2], weight.shape[3])
        precondition(bias == nil || bias!.shape == [channels], "bias \(bias!.shape) for weight \(weight.shape)")
        self.stride = stride
        self.activation = activation
        let (c, taps) = (channels, kernelHeight * kernelWidth)
        let w = weight.scalars
        self.taps = (0..<taps * c).map { index in w[(index % c) * taps + index / c] }   // [c][taps] -> [taps][c]
        biases = bias?.scalars ?? [Float](repeating: 0, count: c)
    }

    public func callAsFunction(_ x: Tensor, padding: Padding2D) -> Tensor {
        precondition(x.rank == 3 && x.shape[2] == channels, "depthwise convolution of \(x.shape) with \(channels) channels")
        let (h, w) = (x.shape[0], x.shape[1])
        precondition(h + padding.top + padding.bottom >= kernelHeight && w + padding.left + padding.right >= kernelWidth,
                     "depthwise convolution of \(x.shape) padded by \(padding) with a \(kernelHeight) x \(kernelWidth) kernel")
        let hOut = (h + padding.top + padding.bottom - kernelHeight) / stride + 1
        let wOut = (w + padding.left + padding.right - kernelWidth) / stride + 1
        var out = Tensor(uninitialized: [hOut, wOut, channels])
        x.withUnsafeBufferPointer { src in
            out.withUnsafeMutableBufferPointer { dst in
                taps.withUnsafeBufferPointer { taps in
                    biases.withUnsafeBufferPointer { biases in
                        let (s, d, t, b) = (src.baseAddress!, dst.baseAddress!, taps.baseAddress!, biases.baseAddress!)
                        let (c, kh, kw, stride, activation) = (channels, kernelHeight, kernelWidth, stride, activation.kernel)
                        Parallel.forChunks(hOut, minimumChunk: max(1, 8192 / max(wOut * c, 1)), work: hOut * wOut * c * kh * kw) { rows in
                            stitch_depthwise_nhwc(s, h, w, c, t, kh, kw, stride, padding.top, padding.left, b, activation, d, wOut,
                                                  rows.lowerBound, rows.upperBound)
                        }
                    }
                }
            }
        }
        return out
    }
}

/// x [c, h, w] -> [h, w, c].
public func channelsLast(_ x: Tensor) -> Tensor {
    precondition(x.rank == 3, "channels-last of \(x.shape)")
    let (c, plane) = (x.shape[0], x.shape[1] * x.shape[2])
    var out = Tensor(uninitialized: [x.shape[1], x.shape[2], c])
    x.withUnsafeBufferPointer { src in
        out.withUnsafeMutableBufferPointer { dst in
            Parallel.forChunks(plane, minimumChunk: 4096) { pixels in
                // 64 pixels at a time, so that their output rows stay in cache while each channel is written into them.
                for start in Swift.stride(from: pixels.lowerBound, to: pixels.upperBound, by: 64) {
                    for channel in 0..<c {
                        let source = src.baseAddress! + channel * plane, target = dst.baseAddress! + channel
                        for pixel in start..<min(start + 64, pixels.upperBound) { target[pixel * c] = source[pixel] }
                    }
                }
            }
        }
    }
    return out
}

/// Max pooling of x [h, w, c] with a k×k window, stride 1 and k/2 padding that never wins (PyTorch's MaxPool2d pads
/// with -inf): [h, w, c]. Each output is the max of the window's inputs, channels a vector at a time.
public func maxPoolSameChannelsLast(_ x: Tensor, kernel: Int) -> Tensor {
    precondition(x.rank == 3, "max pool of \(x.shape)")
    let (h, w, c) = (x.shape[0], x.shape[1], x.shape[2])
    let r = kernel / 2
    var out = Tensor(uninitialized: x.shape)
    x.withUnsafeBufferPointer { src in
        out.withUnsafeMutableBufferPointer { dst in
            Parallel.forChunks(h, minimumChunk: max(1, 16_384 / max(w * c, 1))) { rows in
                for y in rows {
                    for xo in 0..<w {
                        let target = dst.baseAddress! + (y * w + xo) * c
                        target.update(from: src.baseAddress! + (y * w + xo) * c, count: c)
                        for yi in max(y - r, 0)...min(y + r, h - 1) {
                            for xi in max(xo - r, 0)...min(xo + r, w - 1) {
                                let source = src.baseAddress! + (yi * w + xi) * c
                                for channel in 0..<c { target[channel] = max(target[channel], source[channel]) }
                            }
                        }
                    }
                }
            }
        }
    }
    return out
}

/// Nearest-neighbour 2× upsampling of x [h, w, c] -> [2h, 2w, c].
public func upsample2xChannelsLast(_ x: Tensor) -> Tensor {
    precondition(x.rank == 3, "upsampling of \(x.shape)")
    let (h, w, c) = (x.shape[0], x.shape[1], x.shape[2])
    var out = Tensor(uninitialized: [2 * h, 2 * w, c])
    x.withUnsafeBufferPointer { src in
        out.withUnsafeMutableBufferPointer { dst in
            Parallel.forChunks(h, minimumChunk: max(1, 4096 / max(w * c, 1))) { rows in
                for y in rows {
                    let target = dst.baseAddress! + 2 * y * 2 * w * c
                    for xo in 0..<w {
                        let source = src.baseAddress! + (y * w + xo) * c
                        (target + 2 * xo * c).update(from: source, count: c)
                        (target + (2 * xo + 1) * c).update(from: source, count: c)
                    }
                    (target + 2 * w * c).update(from: target, count: 2 * w * c)
                }
            }
        }
    }
    return out
}
