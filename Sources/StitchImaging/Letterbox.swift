import StitchTensor

extension RGBImage {
    /// Bilinear resize bit-identical to OpenCV's `cv2.resize(..., INTER_LINEAR)` on 8-bit
    /// images (the resize YOLOX's preprocessing uses): 11-bit fixed-point weights from
    /// half-pixel-centred source coordinates, an exact integer horizontal pass, and the
    /// vertical pass rounded the way OpenCV's SIMD kernel does it, ((h0>>4)·β0>>16 +
    /// (h1>>4)·β1>>16 + 2) >> 2, which differs from exact rounding by one level at times.
    public func resizedBilinearOpenCV(width newWidth: Int, height newHeight: Int) -> RGBImage {
        precondition(newWidth > 0 && newHeight > 0, "resize to \(newWidth)x\(newHeight)")
        let coefficientScale: Float = 2048
        /// Source index and the two fixed-point weights for each destination index.
        func taps(count: Int, sourceCount: Int, clampWeights: Bool) -> [(index: Int, w0: Int32, w1: Int32)] {
            let scale = 1.0 / (Double(count) / Double(sourceCount))
            return (0..<count).map { d in
                var f = Float((Double(d) + 0.5) * scale - 0.5)
                var s = Int(f.rounded(.down))
                f -= Float(s)
                if clampWeights && s < 0 { (f, s) = (0, 0) }
                if clampWeights && s >= sourceCount - 1 { (f, s) = (0, sourceCount - 1) }
                return (s, Int32(((1 - f) * coefficientScale).rounded(.toNearestOrEven)), Int32((f * coefficientScale).rounded(.toNearestOrEven)))
            }
        }
        let columns = taps(count: newWidth, sourceCount: width, clampWeights: true)
        // Rows keep their weights at the edges; OpenCV clamps the row index instead.
        let rows = taps(count: newHeight, sourceCount: height, clampWeights: false)

        // The source rows the vertical pass reads (OpenCV clamps the row index), each given a row of the horizontal pass.
        let sourceRows = Array(Set(rows.flatMap { [min(max($0.index, 0), height - 1), min(max($0.index + 1, 0), height - 1)] })).sorted()
        var slot = [Int](repeating: 0, count: height)
        for (i, y) in sourceRows.enumerated() { slot[y] = i }
        // Each destination column's two source pixels (byte offsets in a row) and weights.
        let columnTaps = columns.map { (left: $0.index * 3, right: min($0.index + 1, width - 1) * 3, w0: $0.w0, w1: $0.w1) }

        // Horizontal pass over those rows: values scaled by 2048.
        let rowLength = newWidth * 3
        let horizontal = [Int32](unsafeUninitializedCapacity: sourceRows.count * rowLength) { dst, count in
            pixels.withUnsafeBufferPointer { src in
                columnTaps.withUnsafeBufferPointer { taps in
                    Parallel.forChunks(sourceRows.count, minimumChunk: 64) { range in
                        for i in range {
                            let row = src.baseAddress! + sourceRows[i] * width * 3, out = dst.baseAddress! + i * rowLength
                            for (x, tap) in taps.enumerated() {
                                let (l, r) = (row + tap.left, row + tap.right)
                                for c in 0..<3 { out[x * 3 + c] = Int32(l[c]) * tap.w0 + Int32(r[c]) * tap.w1 }
                            }
                        }
                    }
                }
            }
            count = sourceRows.count * rowLength
        }
        let result = [UInt8](unsafeUninitializedCapacity: newWidth * newHeight * 3) { out, count in
            horizontal.withUnsafeBufferPointer { h in
                Parallel.forChunks(newHeight, minimumChunk: 64) { range in
                    for y in range {
                        let tap = rows[y]
                        let top = h.baseAddress! + slot[min(max(tap.index, 0), height - 1)] * rowLength
                        let bottom = h.baseAddress! + slot[min(max(tap.index + 1, 0), height - 1)] * rowLength
                        let target = out.baseAddress! + y * rowLength
                        for i in 0..<rowLength {
                            let a = ((top[i] >> 4) &* tap.w0) >> 16
                            let b = ((bottom[i] >> 4) &* tap.w1) >> 16
                            target[i] = UInt8(clamping: (a &+ b &+ 2) >> 2)
                        }
                    }
                }
            }
            count = newWidth * newHeight * 3
        }
        return RGBImage(width: newWidth, height: newHeight, pixels: result)
    }
}

/// YOLOX's preprocessing: scale the image to fit a square (aspect kept, OpenCV bilinear),
/// put it in the top-left corner of a canvas filled with grey 114, and hand it over as
/// BGR planes of raw 0...255 values, [3, size, size]. `scale` maps input pixels back to
/// the original image.
public struct Letterbox: Sendable {
    public static let padValue: Float = 114
    public let pixels: Tensor
    public let scale: Float
    public let size: Int

    public init(_ image: RGBImage, size: Int) {
        let ratio = min(Double(size) / Double(image.height), Double(size) / Double(image.width))
        // Sizes as YOLOX computes them: int() of the scaled float sizes.
        let width = max(Int(Double(image.width) * ratio), 1), height = max(Int(Double(image.height) * ratio), 1)
        let resized = image.resizedBilinearOpenCV(width: width, height: height)
        var planes = Tensor(uninitialized: [3, size, size])
        resized.pixels.withUnsafeBufferPointer { source in
            planes.withUnsafeMutableBufferPointer { target in
                Parallel.forChunks(size, minimumChunk: 64) { rows in
                    for y in rows {
                        for c in 0..<3 {   // RGB → BGR planes, grey beyond the image
                            let plane = target.baseAddress! + (2 - c) * size * size + y * size
                            let filled = y < height ? width : 0
                            if filled > 0 {
                                let pixel = source.baseAddress! + y * width * 3
                                for x in 0..<width { plane[x] = Float(pixel[x * 3 + c]) }
                            }
                            (plane + filled).update(repeating: Self.padValue, count: size - filled)
                        }
                    }
                }
            }
        }
        pixels = planes
        scale = Float(ratio)
        self.size = size
    }
}
