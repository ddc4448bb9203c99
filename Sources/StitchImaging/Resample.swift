/// Image resizing that reproduces Pillow's `Image.resize` bit for bit
/// (libImaging/Resample.c): separable convolution with a support widened by
/// the downscale factor (antialiasing), coefficients in 22-bit fixed point,
/// a horizontal pass into an 8-bit image and then a vertical pass.
/// transformers' image processors resize through Pillow, so this is what
/// parity with CLIPImageProcessor requires.
public enum ResampleFilter: Sendable {
    case bilinear, bicubic

    var support: Double { self == .bilinear ? 1 : 2 }

    func weight(_ x: Double) -> Double {
        let x = abs(x)
        switch self {
        case .bilinear:
            return x < 1 ? 1 - x : 0
        case .bicubic:
            let a = -0.5
            if x < 1 { return ((a + 2) * x - (a + 3)) * x * x + 1 }
            if x < 2 { return (((x - 5) * x + 8) * x - 4) * a }
            return 0
        }
    }
}

private let precisionBits = 32 - 8 - 2

/// For each output index of `indices` (counted from its start): the first input index, the tap count, and fixed-point weights.
private struct Coefficients {
    let taps: Int
    var first: [Int] = []
    var count: [Int] = []
    var weights: [Int32] = []

    init(inputSize: Int, outputSize: Int, indices: Range<Int>, filter: ResampleFilter) {
        let scale = Double(inputSize) / Double(outputSize)
        let filterScale = max(scale, 1)
        let support = filter.support * filterScale
        taps = Int(support.rounded(.up)) * 2 + 1
        for index in indices {
            let center = (Double(index) + 0.5) * scale
            let inverse = 1 / filterScale
            let low = max(Int(center - support + 0.5), 0)          // C's (int) truncates toward zero
            let high = min(Int(center + support + 0.5), inputSize)
            var row = [Double](repeating: 0, count: taps)
            var total = 0.0
            for x in 0..<(high - low) {
                row[x] = filter.weight((Double(x + low) - center + 0.5) * inverse)
                total += row[x]
            }
            first.append(low)
            count.append(high - low)
            for x in 0..<taps {
                let w = total != 0 ? row[x] / total : row[x]
                let fixed = w * Double(1 << precisionBits)
                weights.append(Int32(w < 0 ? (-0.5 + fixed).rounded(.towardZero) : (0.5 + fixed).rounded(.towardZero)))
            }
        }
    }
}

@inline(__always)
private func clip8(_ value: Int32) -> UInt8 {
    let shifted = value >> Int32(precisionBits)
    return shifted <= 0 ? 0 : shifted >= 255 ? 255 : UInt8(shifted)
}

extension RGBImage {
    /// The image resized to `width` x `height` exactly as Pillow resizes it.
    public func resized(width newWidth: Int, height newHeight: Int, filter: ResampleFilter = .bicubic) -> RGBImage {
        resized(width: newWidth, height: newHeight, columns: 0..<newWidth, rows: 0..<newHeight, filter: filter)
    }

    /// Only `columns` x `rows` of the image resized to `width` x `height`, each pixel exactly as Pillow computes it:
    /// a center crop of an extreme aspect ratio (1x65000 resized to 224 wide is 14.5 million rows) costs only what it keeps.
    public func resized(width newWidth: Int, height newHeight: Int, columns: Range<Int>, rows: Range<Int>, filter: ResampleFilter = .bicubic) -> RGBImage {
        precondition(newWidth > 0 && newHeight > 0, "cannot resize to \(newWidth)x\(newHeight)")
        precondition(columns.lowerBound >= 0 && columns.upperBound <= newWidth && rows.lowerBound >= 0 && rows.upperBound <= newHeight, "window outside the image")
        // Pillow skips the pass of a side whose size does not change; the window of such a side is a plain crop.
        var image = newWidth != width ? resampledHorizontally(to: newWidth, columns: columns, filter: filter)
            : cropped(left: columns.lowerBound, top: 0, width: columns.count, height: height)
        image = newHeight != height ? image.resampledVertically(to: newHeight, rows: rows, filter: filter)
            : image.cropped(left: 0, top: rows.lowerBound, width: image.width, height: rows.count)
        return image
    }

    private func resampledHorizontally(to newWidth: Int, columns: Range<Int>, filter: ResampleFilter) -> RGBImage {
        let c = Coefficients(inputSize: width, outputSize: newWidth, indices: columns, filter: filter)
        let outWidth = columns.count
        var out = [UInt8](repeating: 0, count: outWidth * height * 3)
        let half = Int32(1 << (precisionBits - 1))
        pixels.withUnsafeBufferPointer { src in
            for y in 0..<height {
                let row = y * width * 3
                for x in 0..<outWidth {
                    var sums = (half, half, half)
                    let k = x * c.taps
                    for t in 0..<c.count[x] {
                        let p = row + (c.first[x] + t) * 3
                        let w = c.weights[k + t]
                        sums.0 &+= Int32(src[p]) &* w
                        sums.1 &+= Int32(src[p + 1]) &* w
                        sums.2 &+= Int32(src[p + 2]) &* w
                    }
                    let o = (y * outWidth + x) * 3
                    out[o] = clip8(sums.0)
                    out[o + 1] = clip8(sums.1)
                    out[o + 2] = clip8(sums.2)
                }
            }
        }
        return RGBImage(width: outWidth, height: height, pixels: out)
    }

    private func resampledVertically(to newHeight: Int, rows: Range<Int>, filter: ResampleFilter) -> RGBImage {
        let c = Coefficients(inputSize: height, outputSize: newHeight, indices: rows, filter: filter)
        let outHeight = rows.count
        var out = [UInt8](repeating: 0, count: width * outHeight * 3)
        let half = Int32(1 << (precisionBits - 1))
        let stride = width * 3
        pixels.withUnsafeBufferPointer { src in
            for y in 0..<outHeight {
                let k = y * c.taps
                for i in 0..<stride {
                    var sum = half
                    for t in 0..<c.count[y] {
                        sum &+= Int32(src[(c.first[y] + t) * stride + i]) &* c.weights[k + t]
                    }
                    out[y * stride + i] = clip8(sum)
                }
            }
        }
        return RGBImage(width: width, height: outHeight, pixels: out)
    }

    /// The `width` x `height` window whose top-left corner is (`left`, `top`); areas outside the image are black.
    public func cropped(left: Int, top: Int, width cropWidth: Int, height cropHeight: Int) -> RGBImage {
        var out = [UInt8](repeating: 0, count: cropWidth * cropHeight * 3)
        for y in 0..<cropHeight {
            let sy = top + y
            guard sy >= 0 && sy < height else { continue }
            for x in 0..<cropWidth {
                let sx = left + x
                guard sx >= 0 && sx < width else { continue }
                let s = (sy * width + sx) * 3, o = (y * cropWidth + x) * 3
                out[o] = pixels[s]; out[o + 1] = pixels[s + 1]; out[o + 2] = pixels[s + 2]
            }
        }
        return RGBImage(width: cropWidth, height: cropHeight, pixels: out)
    }
}
