import StitchTestSupport
import XCTest
@testable import StitchTensor

/// Tensor operations against torch outputs (Tests/Fixtures/tensor/ops.safetensors),
/// within 1e-5 relative error (absolute below magnitude 1).
final class OpsParityTests: XCTestCase {
    static let golden = try! Fixtures.tensors("tensor/ops.safetensors")
    let tolerance: Float = 1e-5

    func g(_ name: String) -> Tensor { Self.golden[name]! }

    func assertClose(_ got: Tensor, _ expected: String, file: StaticString = #filePath, line: UInt = #line) {
        let want = g(expected)
        XCTAssertEqual(got.shape, want.shape, "shape of \(expected)", file: file, line: line)
        let difference = maxRelativeDifference(got.scalars, want.scalars)
        print("\(expected): max relative difference \(difference)")
        XCTAssertLessThanOrEqual(difference, tolerance, expected, file: file, line: line)
    }

    func testMatmulAndLinear() {
        assertClose(matmul(g("matmul.a"), g("matmul.b")), "matmul.out")
        assertClose(batchedMatmul(g("bmm.a"), g("bmm.b")), "bmm.out")
        assertClose(linear(g("linear.x"), weight: g("linear.w"), bias: g("linear.b")), "linear.out")
        assertClose(linear(g("linear.x"), weight: g("conv1d.w"), bias: g("linear.b"), layout: .inputsByOutputs), "conv1d.out")
        // Transposed operands give the same product.
        let at = transposed(g("bmm.a"), 1, 2), bt = transposed(g("bmm.b"), 1, 2)
        assertClose(batchedMatmul(at, bt, transposeA: true, transposeB: true), "bmm.out")
    }

    func testNormalisationAndActivations() {
        assertClose(layerNorm(g("layernorm.x"), weight: g("layernorm.w"), bias: g("layernorm.b"), epsilon: 1e-5), "layernorm.out")
        var soft = g("softmax.x"); softmaxLastDimension(&soft); assertClose(soft, "softmax.out")
        var logSoft = g("softmax.x"); logSoftmaxLastDimension(&logSoft); assertClose(logSoft, "logsoftmax.out")
        var erf = g("act.x"); Activation.gelu.apply(&erf); assertClose(erf, "gelu.out")
        var tanh = g("act.x"); Activation.geluNew.apply(&tanh); assertClose(tanh, "gelu_tanh.out")
        var quick = g("act.x"); Activation.quickGelu.apply(&quick); assertClose(quick, "quick_gelu.out")
    }

    func testAttentionCausalAndPadded() {
        assertClose(multiHeadAttention(query: g("attn.q"), key: g("attn.k"), value: g("attn.v"), heads: 3, causal: true), "attn.causal")
        assertClose(multiHeadAttention(query: g("attn.q"), key: g("attn.k"), value: g("attn.v"), heads: 3, causal: false,
                                       keyMask: g("attn.mask")), "attn.padded")
    }

    /// Feeding the sequence in steps through a KV cache gives the rows of full causal attention.
    func testKVCacheStepsEqualFullCausalAttention() {
        let (q, k, v) = (g("attn.q"), g("attn.k"), g("attn.v"))   // [2, 7, 12]
        func steps(_ x: Tensor, _ range: Range<Int>) -> Tensor {
            concatenate((0..<2).map { x.row($0).rows(range).reshaped([1, range.count, 12]) }, axis: 0)
        }
        var cache = KVCache(batch: 2, width: 12, capacity: 2)   // small capacity forces growth
        var outputs: [Tensor] = []
        for range in [0..<4, 4..<5, 5..<7] {
            outputs.append(cachedSelfAttention(query: steps(q, range), key: steps(k, range), value: steps(v, range), heads: 3, cache: &cache))
        }
        XCTAssertEqual(cache.length, 7)
        assertClose(concatenate(outputs, axis: 1), "attn.causal")

        // A shared prefix repeated for several continuations attends like the original rows.
        var prefix = KVCache(batch: 2, width: 12)
        _ = cachedSelfAttention(query: steps(q, 0..<6), key: steps(k, 0..<6), value: steps(v, 0..<6), heads: 3, cache: &prefix)
        var branched = prefix.repeated(3)
        let last = concatenate((0..<2).flatMap { b in Array(repeating: steps(q, 6..<7).row(b).reshaped([1, 1, 12]), count: 3) }, axis: 0)
        let lastK = concatenate((0..<2).flatMap { b in Array(repeating: steps(k, 6..<7).row(b).reshaped([1, 1, 12]), count: 3) }, axis: 0)
        let lastV = concatenate((0..<2).flatMap { b in Array(repeating: steps(v, 6..<7).row(b).reshaped([1, 1, 12]), count: 3) }, axis: 0)
        let out = cachedSelfAttention(query: last, key: lastK, value: lastV, heads: 3, cache: &branched)
        for b in 0..<2 {
            for copy in 0..<3 {
                let row = out.row(b * 3 + copy).scalars
                let expected = g("attn.causal").row(b).row(6).scalars
                XCTAssertLessThanOrEqual(maxRelativeDifference(row, expected), tolerance)
            }
        }
    }
}

final class TensorBasicsTests: XCTestCase {
    func testViewsShareStorageAndCopyOnWrite() {
        let base = Tensor(shape: [3, 2], scalars: [1, 2, 3, 4, 5, 6])
        let view = base.rows(1..<3)
        XCTAssertEqual(view.shape, [2, 2])
        XCTAssertEqual(view.scalars, [3, 4, 5, 6])
        XCTAssertEqual(base.reshaped([-1]).shape, [6])
        XCTAssertEqual(base.reshaped([2, -1]).shape, [2, 3])
        var changed = view
        changed.withUnsafeMutableBufferPointer { $0[0] = 99 }
        XCTAssertEqual(changed.scalars, [99, 4, 5, 6])
        XCTAssertEqual(base.scalars, [1, 2, 3, 4, 5, 6], "writing a view must not change the tensor it came from")
        XCTAssertEqual(base[2, 1], 6)
        XCTAssertEqual(base.row(1).scalars, [3, 4])
    }

    func testEmbeddingConcatenateTranspose() throws {
        let table = Tensor(shape: [4, 2], scalars: [0, 1, 10, 11, 20, 21, 30, 31])
        XCTAssertEqual(try embedding([3, 0, 3], table: table).scalars, [30, 31, 0, 1, 30, 31])
        XCTAssertThrowsError(try embedding([4], table: table)) { error in
            XCTAssertEqual(error as? TensorError, .indexOutOfRange(index: 4, size: 4, what: "embedding lookup"))
        }
        let a = Tensor(shape: [2, 1], scalars: [1, 2]), b = Tensor(shape: [2, 2], scalars: [3, 4, 5, 6])
        XCTAssertEqual(concatenate([a, b], axis: 1).scalars, [1, 3, 4, 2, 5, 6])
        XCTAssertEqual(concatenate([b, b], axis: 0).shape, [4, 2])
        let t = Tensor(shape: [2, 3], scalars: [1, 2, 3, 4, 5, 6])
        XCTAssertEqual(transposed(t, 0, 1).scalars, [1, 4, 2, 5, 3, 6])
        var rows = Tensor(shape: [2, 2], scalars: [3, 4, 0, 0])
        l2NormalizeRows(&rows)
        XCTAssertEqual(rows.scalars, [0.6, 0.8, 0, 0])
    }

    /// The vectorised exp behind the GELUs, sigmoid and SiLU stays within 2 ulp of expf and saturates like it.
    func testFastExpAccuracy() {
        let inputs = (0...2_000_000).map { -87 + Float($0) * (175.5 / 2_000_000) }
        var worst: Float = 0
        for (x, fast) in zip(inputs, fastExponentials(inputs)) {
            let exact = expf(x)
            worst = max(worst, abs(fast - exact) / exact.ulp)
        }
        print("fast exp: max error \(worst) ulp over [-87, 88.5]")
        XCTAssertLessThanOrEqual(worst, 2)
        XCTAssertEqual(fastExponentials([-100, 100, 0]), [0, .infinity, 1])
    }

    /// The vectorised exact GELU (erf within 4.3e-7, as a rational function): within 3e-7 of x Φ(x) times max(1, |x|)
    /// over [-12, 12], and x itself or 0 beyond erf's range.
    func testGeluErfAccuracy() {
        let inputs = (0...2_400_000).map { -12 + Float($0) * (24 / 2_400_000) }
        var gelu = Tensor(shape: [inputs.count], scalars: inputs)
        Activation.gelu.apply(&gelu)
        var worst = 0.0
        for (x, fast) in zip(inputs, gelu.scalars) {
            let exact = 0.5 * Double(x) * (1 + erf(Double(x) / 2.0.squareRoot()))
            worst = max(worst, abs(Double(fast) - exact) / max(1, abs(Double(x))))
        }
        print("GELU (erf): max error \(worst) x max(1, |x|) over [-12, 12]")
        XCTAssertLessThanOrEqual(worst, 3e-7)
        var extremes = Tensor(shape: [4], scalars: [-100, 100, 0, -0])
        Activation.gelu.apply(&extremes)
        XCTAssertEqual(extremes.scalars, [-0, 100, 0, -0])
    }

    /// Large inputs take the parallel paths; results must equal a serial computation.
    func testParallelPathsMatchSerial() {
        let n = 300_000
        var x = Tensor(shape: [n / 100, 100], scalars: (0..<n).map { Float($0 % 97) / 13 - 3 })
        // Row by row, each call is too small to split: the serial path.
        let serial = (0..<n / 100).flatMap { row -> [Float] in
            var part = x.row(row)
            Activation.quickGelu.apply(&part)
            return part.scalars
        }
        Activation.quickGelu.apply(&x)
        XCTAssertEqual(x.scalars, serial)
        var y = Tensor(shape: [n / 100, 100], repeating: 1)
        addInPlace(&y, x)
        XCTAssertEqual(y.scalars, serial.map { $0 + 1 })
    }
}

/// Seeded values in [-1, 1] in steps of 0.001, the same on every run.
struct Noise {
    var seed: UInt64

    mutating func callAsFunction(_ count: Int) -> [Float] {
        (0..<count).map { _ in
            seed = seed &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
            return Float(Int(seed >> 40) % 2001 - 1000) / 1000
        }
    }
}

final class ConvolutionParityTests: XCTestCase {
    let golden = OpsParityTests.golden

    func assertClose(_ got: Tensor, _ name: String, line: UInt = #line) {
        let want = golden[name]!
        XCTAssertEqual(got.shape, want.shape, name, line: line)
        let difference = maxRelativeDifference(got.scalars, want.scalars)
        print("\(name): max relative difference \(difference)")
        XCTAssertLessThanOrEqual(difference, 1e-5, name, line: line)
    }

    func testConvolutionsMatchTorch() {
        let x = golden["conv.x"]!
        assertClose(conv2d(x, weight: golden["conv.w"]!, bias: golden["conv.b"]!, stride: 2, padding: .symmetric(1)), "conv.out")
        XCTAssertEqual(Padding2D.same(height: 9, width: 11, kernel: 3, stride: 2), .symmetric(1), "odd sizes pad evenly")
        let same = Padding2D.same(height: 10, width: 12, kernel: 3, stride: 2)
        XCTAssertEqual(same, Padding2D(top: 0, bottom: 1, left: 0, right: 1))
        assertClose(conv2d(x, weight: golden["conv.w"]!, bias: golden["conv.b"]!, stride: 2, padding: same), "conv.same_out")
        assertClose(conv2d(x, weight: golden["pointwise.w"]!, bias: nil), "pointwise.out")
        let depthwisePadding = Padding2D.same(height: 10, width: 12, kernel: 5, stride: 2)
        XCTAssertEqual(depthwisePadding, Padding2D(top: 1, bottom: 2, left: 1, right: 2))
        assertClose(depthwiseConv2d(x, weight: golden["depthwise.w"]!, bias: golden["depthwise.b"]!, stride: 2, padding: depthwisePadding), "depthwise.out")
        // The same on channels-last maps (YOLOX's layout): [h, w, c] in and out.
        let channelsLastDepthwise = ChannelsLastDepthwise(weight: golden["depthwise.w"]!, bias: golden["depthwise.b"]!, stride: 2)
        let got = channelsLastDepthwise(channelsLast(x), padding: depthwisePadding), want = channelsLast(golden["depthwise.out"]!)
        XCTAssertEqual(got.shape, want.shape)
        let difference = maxRelativeDifference(got.scalars, want.scalars)
        print("channels-last depthwise.out: max relative difference \(difference)")
        XCTAssertLessThanOrEqual(difference, 1e-5)
        XCTAssertEqual(globalAveragePool(Tensor(shape: [2, 1, 2], scalars: [1, 3, 5, 7])).scalars, [2, 6])
    }

    /// The direct kernel's channels-last variant gives the NCHW kernel's values, transposed (the same sums in the same
    /// order: the same bits in optimised builds, within rounding where a debug build contracts them differently):
    /// output channels past a 16-channel block, pixels past a block of pixels (24 with AVX-512, 6 otherwise), each activation.
    func testChannelsLastDirectConvolutionEqualsTransposedOutput() {
        var noise = Noise(seed: 5)
        for (cIn, cOut, h, w, kernel, activation) in [(12, 16, 9, 50, 3, ConvActivation.silu), (5, 20, 7, 19, 3, .relu6), (3, 7, 6, 31, 5, .none)] {
            let x = Tensor(shape: [cIn, h, w], scalars: noise(cIn * h * w))
            let convolution = Convolution(weight: Tensor(shape: [cOut, cIn, kernel, kernel], scalars: noise(cOut * cIn * kernel * kernel)),
                                          bias: Tensor(shape: [cOut], scalars: noise(cOut)), activation: activation)
            let padding = Padding2D.symmetric(kernel / 2)
            let direct = convolution.channelsLastOutput(x, padding: padding), transposed = channelsLast(convolution(x, padding: padding))
            XCTAssertEqual(direct.shape, [h, w, cOut])
            let difference = maxAbsoluteDifference(direct.scalars, transposed.scalars)
            print("\(cIn) -> \(cOut) channels, \(h)x\(w), \(activation): max difference \(difference)")
            XCTAssertLessThanOrEqual(difference, 1e-5, "\(cIn) -> \(cOut) channels, \(h)x\(w), \(activation)")
        }
    }

    /// The channels-last depthwise kernel (YOLOX's) against the NCHW one, transposed: channels past a 16-channel block,
    /// strides 1 and 2, each activation.
    func testChannelsLastDepthwiseEqualsTransposedOutput() {
        var noise = Noise(seed: 7)
        for (c, h, w, stride, activation) in [(20, 9, 13, 1, ConvActivation.silu), (7, 8, 11, 2, .relu6), (32, 6, 10, 1, .none)] {
            let x = Tensor(shape: [c, h, w], scalars: noise(c * h * w))
            let weight = Tensor(shape: [c, 1, 3, 3], scalars: noise(c * 9)), bias = Tensor(shape: [c], scalars: noise(c))
            let padding = Padding2D.same(height: h, width: w, kernel: 3, stride: stride)
            let got = ChannelsLastDepthwise(weight: weight, bias: bias, stride: stride, activation: activation)(channelsLast(x), padding: padding)
            let nchw = Convolution(weight: weight, bias: bias, stride: stride, depthwise: true, activation: activation)
            let want = channelsLast(nchw(x, padding: padding))
            XCTAssertEqual(got.shape, want.shape)
            let difference = maxAbsoluteDifference(got.scalars, want.scalars)
            print("channels-last depthwise, \(c) channels, \(h)x\(w), stride \(stride), \(activation): max difference \(difference)")
            XCTAssertLessThanOrEqual(difference, 1e-5, "\(c) channels, stride \(stride), \(activation)")
        }
    }

    /// Every path (the pointwise product, the direct kernel, im2col, depthwise at strides 1, 2 and 3) against sums in
    /// Double, on shapes that leave partial tiles: channels not a multiple of 12 or 4, planes past one 512-column block
    /// and not a multiple of 32 or 16, each activation.
    func testConvolutionPathsAgainstSumsInDouble() {
        var noise = Noise(seed: 11)
        let cases: [(cIn: Int, cOut: Int, h: Int, w: Int, kernel: Int, stride: Int, padding: Padding2D, depthwise: Bool, activation: ConvActivation)] = [
            (37, 29, 23, 27, 1, 1, .symmetric(0), false, .silu),     // pointwise: 621 columns, 12 + 12 + 4 + 1 rows
            (16, 16, 13, 13, 1, 1, .symmetric(0), false, .relu6),    // pointwise: one partial 32-column tile per part
            (5, 7, 11, 19, 3, 1, .symmetric(1), false, .silu),       // direct kernel
            (6, 9, 12, 17, 3, 2, .same(height: 12, width: 17, kernel: 3, stride: 2), false, .none),   // im2col
            (7, 7, 15, 35, 3, 1, .symmetric(1), true, .silu),        // depthwise, a partial 16-column block
            (5, 5, 20, 41, 5, 2, .same(height: 20, width: 41, kernel: 5, stride: 2), true, .relu6),
            (3, 3, 16, 50, 3, 3, .symmetric(1), true, .none),        // depthwise, a stride without its own path
        ]
        for c in cases {
            let x = Tensor(shape: [c.cIn, c.h, c.w], scalars: noise(c.cIn * c.h * c.w))
            let weight = Tensor(shape: [c.cOut, c.depthwise ? 1 : c.cIn, c.kernel, c.kernel], scalars: noise(c.cOut * (c.depthwise ? 1 : c.cIn) * c.kernel * c.kernel))
            let bias = noise(c.cOut)
            let got = Convolution(weight: weight, bias: Tensor(shape: [c.cOut], scalars: bias), stride: c.stride, depthwise: c.depthwise,
                                  activation: c.activation)(x, padding: c.padding)
            let hOut = (c.h + c.padding.top + c.padding.bottom - c.kernel) / c.stride + 1
            let wOut = (c.w + c.padding.left + c.padding.right - c.kernel) / c.stride + 1
            XCTAssertEqual(got.shape, [c.cOut, hOut, wOut])
            let (input, taps) = (x.scalars, weight.scalars)
            var want: [Float] = []
            for co in 0..<c.cOut {
                for y in 0..<hOut {
                    for xo in 0..<wOut {
                        var sum = Double(bias[co])
                        for ci in (c.depthwise ? co..<co + 1 : 0..<c.cIn) {
                            for i in 0..<c.kernel {
                                for j in 0..<c.kernel {
                                    let (sy, sx) = (y * c.stride + i - c.padding.top, xo * c.stride + j - c.padding.left)
                                    guard sy >= 0 && sy < c.h && sx >= 0 && sx < c.w else { continue }
                                    let tap = taps[((co * (c.depthwise ? 1 : c.cIn) + (c.depthwise ? 0 : ci)) * c.kernel + i) * c.kernel + j]
                                    sum += Double(tap) * Double(input[(ci * c.h + sy) * c.w + sx])
                                }
                            }
                        }
                        switch c.activation {
                        case .none: break
                        case .silu: sum /= 1 + exp(-sum)
                        case .relu6: sum = min(max(sum, 0), 6)
                        }
                        want.append(Float(sum))
                    }
                }
            }
            let difference = maxRelativeDifference(got.scalars, want)
            print("\(c.depthwise ? "depthwise" : "dense") \(c.kernel)x\(c.kernel) stride \(c.stride), \(c.cIn) -> \(c.cOut) channels on \(c.h)x\(c.w): max difference \(difference)")
            XCTAssertLessThanOrEqual(difference, 2e-6)
        }
    }
}

final class HalfWideningTests: XCTestCase {
    /// F16 widening (F16C where the CPU has it) equals Swift's exact Float16 conversion for all 65,536 bit patterns:
    /// zeros, subnormals, infinities, and NaNs as NaNs of the same sign.
    func testHalfWideningIsExactForEveryBitPattern() {
        let patterns = (0...UInt16.max).map { $0.littleEndian }
        var widened = [Float](repeating: 0, count: patterns.count)
        patterns.withUnsafeBytes { source in widened.withUnsafeMutableBufferPointer { widenHalfFloats(source.baseAddress!, count: patterns.count, into: $0.baseAddress!) } }
        var mismatches = 0
        for (pattern, value) in zip(0...UInt16.max, widened) {
            let exact = Float(Float16(bitPattern: pattern))
            let same = exact.isNaN ? value.isNaN && value.sign == exact.sign : value.bitPattern == exact.bitPattern
            if !same { mismatches += 1; if mismatches <= 5 { XCTFail("0x\(String(pattern, radix: 16)): \(value) != \(exact)") } }
        }
        XCTAssertEqual(mismatches, 0)
    }
}

/// Max pooling with a k x k window and k/2 padding that never wins: against the window's maximum taken directly, and
/// the pools of 9 and 13 equal to one of 5 applied twice and three times (YOLOX's spatial pyramid pools so).
final class ChannelsLastTests: XCTestCase {
    /// Max pools of channels-last maps against each window's maximum, and pools of 9 and 13 as YOLOX's SPP takes them:
    /// the pool of 5 applied twice and three times.
    func testMaxPoolWindowsAndComposedPools() {
        var generator = SeededGenerator(seed: 5)
        let (h, w, c) = (11, 17, 19)
        // Values from a few levels, so that equal maxima are common.
        let x = Tensor(shape: [h, w, c], scalars: (0..<h * w * c).map { _ in Float(generator.next() % 7) - 3 })
        for k in [1, 3, 5, 9, 13] {
            let r = k / 2
            let pooled = maxPoolSameChannelsLast(x, kernel: k).scalars
            for y in 0..<h {
                for xo in 0..<w {
                    for channel in 0..<c {
                        var best = -Float.infinity
                        for yi in max(0, y - r)...min(h - 1, y + r) {
                            for xi in max(0, xo - r)...min(w - 1, xo + r) { best = max(best, x.scalars[(yi * w + xi) * c + channel]) }
                        }
                        XCTAssertEqual(pooled[(y * w + xo) * c + channel], best, "k \(k) at [\(y), \(xo), \(channel)]")
                    }
                }
            }
        }
        let pool5 = maxPoolSameChannelsLast(x, kernel: 5), pool9 = maxPoolSameChannelsLast(pool5, kernel: 5)
        XCTAssertEqual(pool9.scalars, maxPoolSameChannelsLast(x, kernel: 9).scalars)
        XCTAssertEqual(maxPoolSameChannelsLast(pool9, kernel: 5).scalars, maxPoolSameChannelsLast(x, kernel: 13).scalars)
    }

    func testLayoutAndUpsampling() {
        let (c, h, w) = (3, 4, 5)
        let x = Tensor(shape: [c, h, w], scalars: (0..<c * h * w).map(Float.init))
        let last = channelsLast(x)
        XCTAssertEqual(last.shape, [h, w, c])
        for channel in 0..<c { for y in 0..<h { for xo in 0..<w { XCTAssertEqual(last.scalars[(y * w + xo) * c + channel], x.scalars[(channel * h + y) * w + xo]) } } }
        let up = upsample2xChannelsLast(last)
        XCTAssertEqual(up.shape, [2 * h, 2 * w, c])
        for y in 0..<2 * h {
            for xo in 0..<2 * w {
                for channel in 0..<c { XCTAssertEqual(up.scalars[(y * 2 * w + xo) * c + channel], last.scalars[(y / 2 * w + xo / 2) * c + channel]) }
            }
        }
    }
}
