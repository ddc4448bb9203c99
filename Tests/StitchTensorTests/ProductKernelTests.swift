import CStitchKernels
import StitchTestSupport
import XCTest
@testable import StitchTensor

private extension SeededGenerator {
    /// `count` values in [-2, 2), 22 bits each.
    mutating func values(_ count: Int) -> [Float] { (0..<count).map { _ in Float(next() >> 40) / Float(1 << 22) - 2 } }
}

/// Stitch's AVX-512 product kernels (CStitchKernels/gemm.c), which `splitGemm` uses for products of 16 rows or more
/// and for single rows times Wᵀ: every edge of the 12 x 32 tile, of its 256-deep, 96-row and 512-column blocks and of
/// the matrix-vector kernel's 4 rows and 16 columns, both layouts of B (Bᵀ with a scale), and leading dimensions wider
/// than the operands, against a float64 product.
final class ProductKernelTests: XCTestCase {
    func testProductsEqualAFloat64ReferenceAtEveryTileEdge() throws {
        try XCTSkipUnless(BLAS.hasOwnKernel, "this CPU lacks AVX-512; products go to OpenBLAS")
        var seed: UInt64 = 1
        func random() -> Float {
            seed = seed &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
            return Float(seed >> 40) / Float(1 << 23) - 1
        }
        var worst = 0.0, checked = 0
        for (m, n, k) in [(16, 32, 256), (17, 33, 257), (97, 31, 5), (12, 513, 300), (200, 70, 1), (16, 1, 700), (35, 600, 513),
                          (1, 37, 300), (1, 5, 15), (1, 103, 16)] {
            for transposeB in [true, false] {
                // Leading dimensions 3 wider than each operand, so rows do not start where the previous one ends.
                let (lda, ldb, ldc) = (k + 3, (transposeB ? k : n) + 3, n + 3)
                let a = (0..<m * lda).map { _ in random() }
                let b = (0..<(transposeB ? n : k) * ldb).map { _ in random() }
                var c = [Float](repeating: .nan, count: m * ldc)
                // Aᵀ-free products with a scale (attention's scores) go through `gemm` and multiply each sum after.
                let alpha: Float = transposeB ? 0.125 : 1
                a.withUnsafeBufferPointer { ap in
                    b.withUnsafeBufferPointer { bp in
                        c.withUnsafeMutableBufferPointer { cp in
                            if alpha == 1 {
                                BLAS.splitGemm(transposeB: transposeB, m: m, n: n, k: k, a: ap.baseAddress!, lda: lda,
                                               b: bp.baseAddress!, ldb: ldb, c: cp.baseAddress!, ldc: ldc)
                            } else {
                                BLAS.gemm(transposeA: false, transposeB: transposeB, m: m, n: n, k: k, alpha: alpha, a: ap.baseAddress!, lda: lda,
                                          b: bp.baseAddress!, ldb: ldb, c: cp.baseAddress!, ldc: ldc)
                            }
                        }
                    }
                }
                for i in 0..<m {
                    for j in 0..<n {
                        var exact = 0.0, magnitude = 0.0
                        for p in 0..<k {
                            let product = Double(alpha) * Double(a[i * lda + p]) * Double(transposeB ? b[j * ldb + p] : b[p * ldb + j])
                            exact += product
                            magnitude += abs(product)
                        }
                        // Float32 accumulation over k terms: within k·ε of the summed magnitudes.
                        let error = abs(Double(c[i * ldc + j]) - exact) / max(magnitude, 1e-30)
                        worst = max(worst, error)
                        XCTAssertLessThan(error, Double(k) * 1.2e-7, "m \(m) n \(n) k \(k) transposeB \(transposeB) at [\(i), \(j)]")
                        checked += 1
                    }
                    // The padding between rows of C stays untouched.
                    XCTAssert(c[i * ldc + n..<(i + 1) * ldc].allSatisfy(\.isNaN), "row \(i) written past n (m \(m) n \(n) k \(k))")
                }
            }
        }
        print("AVX-512 product kernel: \(checked) values, worst error \(worst) of the summed magnitudes")
    }
}

/// Products through `PackedWeights` at `precision`, at every row count (tiles of 12, 4 and 1 rows), both layouts, and
/// the edges of the 32-column panels and 256-deep blocks: each value within k·ε of a float64 product of the operands as
/// the precision reads them (bfloat16 products are exact in float64; bf16-weights rounds the weights only; int8-weights
/// reads each weight as its integer times its output's scale), relative to the summed magnitudes. `check` sees each
/// (a, w, layout, product) too. Returns the worst error.
func checkPackedProducts(_ precision: Precision, seed: UInt64, file: StaticString = #filePath, line: UInt = #line,
                         check: (Tensor, Tensor, WeightLayout, Tensor) -> Void = { _, _, _, _ in }) -> Double {
    var seed = seed
    func random() -> Float {
        seed = seed &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
        return Float(seed >> 40) / Float(1 << 23) - 1
    }
    func operand(_ value: Float, weight: Bool) -> Double {
        precision == .bf16 || (precision == .bf16Weights && weight) ? Double(roundedToBF16(value)) : Double(value)
    }
    func weights(_ w: Tensor, _ layout: WeightLayout) -> [Double] {
        guard precision == .int8Weights else { return w.scalars.map { operand($0, weight: true) } }
        let (integers, _, scaleOfEach) = quantizedToInt8(w, layout: layout)
        return zip(integers.scalars, scaleOfEach).map { Double($0) * Double($1) }
    }
    var worst = 0.0
    for (m, n, k) in [(16, 32, 256), (17, 33, 257), (97, 31, 5), (1, 37, 300), (4, 64, 1), (5, 100, 513), (2, 7, 3), (200, 65, 600),
                      (24, 16, 40), (30, 48, 20), (1, 90, 520), (3, 70, 300), (13, 40, 1100)] {   // the last: k past the bfloat16 kernel's 1024-value blocks
        for layout in [WeightLayout.outputsByInputs, .inputsByOutputs] {
            let a = Tensor(shape: [m, k], scalars: (0..<m * k).map { _ in random() })
            let w = Tensor(shape: layout == .outputsByInputs ? [n, k] : [k, n], scalars: (0..<n * k).map { _ in random() })
            let c = linear(a, weight: PackedWeights.pack(w, layout: layout, precision: precision)!, bias: nil)
            XCTAssertEqual(c.shape, [m, n], file: file, line: line)
            check(a, w, layout, c)
            let (av, wv, cv) = (a.scalars, weights(w, layout), c.scalars)
            for i in 0..<m {
                for j in 0..<n {
                    var exact = 0.0, magnitude = 0.0
                    for p in 0..<k {
                        let product = operand(av[i * k + p], weight: false) * (layout == .outputsByInputs ? wv[j * k + p] : wv[p * n + j])
                        exact += product
                        magnitude += abs(product)
                    }
                    let error = abs(Double(cv[i * n + j]) - exact) / max(magnitude, 1e-30)
                    worst = max(worst, error)
                    XCTAssertLessThan(error, Double(k) * 1.2e-7, "\(precision) m \(m) n \(n) k \(k) \(layout) at [\(i), \(j)]", file: file, line: line)
                }
            }
        }
    }
    return worst
}

/// The float nearest `value` that bfloat16 holds (ties to even).
func roundedToBF16(_ value: Float) -> Float { Float(bitPattern: UInt32(stitch_bf16_from_float(value)) << 16) }

/// `w`'s weights as int8-weights stores them, written out independently of the kernel: each output's scale its largest
/// magnitude / 127, each weight the nearest integer (ties to even) to it / its scale (as floats, in w's layout); and each
/// weight's scale, in w's layout.
func quantizedToInt8(_ w: Tensor, layout: WeightLayout) -> (integers: Tensor, scales: [Float], scaleOfEach: [Float]) {
    let n = layout == .outputsByInputs ? w.shape[0] : w.shape[1]
    func output(_ index: Int) -> Int { layout == .outputsByInputs ? index / w.shape[1] : index % n }
    var scales = [Float](repeating: 0, count: n)
    for (index, value) in w.scalars.enumerated() { scales[output(index)] = max(scales[output(index)], abs(value)) }
    scales = scales.map { $0 / 127 }
    let scaleOfEach = w.scalars.indices.map { scales[output($0)] }
    let integers = zip(w.scalars, scaleOfEach).map { value, scale in
        scale > 0 ? min(127, max(-127, (value / scale).rounded(.toNearestOrEven))) : 0
    }
    return (Tensor(shape: w.shape, scalars: integers), scales, scaleOfEach)
}

/// FP32 weights packed once (what every `Linear` multiplies by on AVX-512 and AVX2 CPUs):
/// within k·ε of a float64 product at every row count, and with AVX-512 the same bits as the unpacked kernel for 16
/// rows and more.
final class PackedProductTests: XCTestCase {
    func testPackedProductsEqualTheUnpackedKernel() throws {
        try XCTSkipUnless(BLAS.hasPackedKernel, "this CPU lacks AVX-512 and AVX2; products go to OpenBLAS")
        var identical = 0
        let worst = checkPackedProducts(.fp32, seed: 3) { a, w, layout, c in
            guard a.shape[0] >= BLAS.ownKernelRows && BLAS.hasOwnKernel else { return }
            XCTAssertEqual(c.scalars, linear(a, weight: w, bias: nil, layout: layout).scalars, "\(a.shape) x \(w.shape) \(layout)")
            identical += 1
        }
        print("packed FP32 products: worst error \(worst) of the summed magnitudes; \(identical) products bit-identical to the unpacked kernel")
    }

    /// The AVX2 kernels (what CPUs without AVX-512 run) against AVX-512's where the CPU has both: the same bits at every
    /// row count and tile edge, each within k·ε of a float64 product.
    func testAVX2KernelsGiveAVX512sBits() throws {
        try XCTSkipUnless(BLAS.hasOwnKernel, "this CPU lacks AVX-512: the tests above run the AVX2 kernels")
        stitch_sgemm_prefer_avx2(1)
        defer { stitch_sgemm_prefer_avx2(0) }
        var identical = 0
        let worst = checkPackedProducts(.fp32, seed: 5) { a, w, layout, c in
            // Packed in AVX-512's layout (each kernel reads its own) and multiplied there.
            stitch_sgemm_prefer_avx2(0)
            let packed = PackedWeights.pack(w, layout: layout, precision: .fp32)!
            XCTAssertEqual(c.scalars, linear(a, weight: packed, bias: nil).scalars, "\(a.shape) x \(w.shape) \(layout)")
            stitch_sgemm_prefer_avx2(1)
            identical += 1
        }
        print("AVX2 product kernels: worst error \(worst) of the summed magnitudes; \(identical) products bit-identical to AVX-512's")
    }

    /// Products with narrow weights at `precision` give the bits of `expected(a, w, layout)` (FP32 products on what the
    /// precision stores) at every row count, tile edge and depth, in each instruction set's layout where the CPU has both.
    func checkNarrowWeights(_ precision: Precision, seed: UInt64, _ stores: String, expected: (Tensor, Tensor, WeightLayout) -> Tensor) throws {
        try XCTSkipUnless(BLAS.hasPackedKernel, "this CPU lacks AVX-512 and AVX2; products go to OpenBLAS")
        defer { stitch_sgemm_prefer_avx2(0) }
        for avx2 in BLAS.hasOwnKernel ? [false, true] : [true] {
            stitch_sgemm_prefer_avx2(avx2 ? 1 : 0)
            var identical = 0
            let worst = checkPackedProducts(precision, seed: seed) { a, w, layout, c in
                XCTAssertEqual(c.scalars.map(\.bitPattern), expected(a, w, layout).scalars.map(\.bitPattern), "\(a.shape) x \(w.shape) \(layout)")
                identical += 1
            }
            print("\(precision.rawValue) products (\(avx2 ? "AVX2" : "AVX-512") layout): worst error \(worst) of the summed magnitudes; \(identical) products bit-identical to FP32's on \(stores)")
        }
    }

    /// Weights stored in bfloat16 (bf16-weights): the same bits as FP32 packed products of the rounded weights.
    func testBF16WeightsGiveFP32sBitsOnRoundedWeights() throws {
        try checkNarrowWeights(.bf16Weights, seed: 9, "the rounded weights") { a, w, layout in
            let rounded = Tensor(shape: w.shape, scalars: w.scalars.map(roundedToBF16))
            XCTAssertNotEqual(rounded.scalars, w.scalars)
            return linear(a, weight: PackedWeights.pack(rounded, layout: layout, precision: .fp32)!, bias: nil)
        }
    }

    /// Weights stored as 8-bit integers (int8-weights): the same bits as FP32 packed products of the integers, each output
    /// then times its scale; an output of zeros (scale 0) gives zeros and one with a NaN weight NaN, as FP32 does, the
    /// others unharmed.
    func testINT8WeightsGiveFP32sBitsOnTheIntegersTimesTheScales() throws {
        try checkNarrowWeights(.int8Weights, seed: 13, "the integers, then the scales") { a, w, layout in
            let (integers, scales, _) = quantizedToInt8(w, layout: layout)
            var exact = linear(a, weight: PackedWeights.pack(integers, layout: layout, precision: .fp32)!, bias: nil)
            exact.withUnsafeMutableBufferPointer { values in
                for index in values.indices { values[index] *= scales[index % scales.count] }
            }
            return exact
        }
        // Output 1 all zeros, output 2 with a NaN.
        var values = (0..<4 * 40).map { Float($0 % 7) - 3 }
        for p in 0..<40 { values[40 + p] = 0 }
        values[2 * 40 + 5] = .nan
        let w = Tensor(shape: [4, 40], scalars: values)
        let x = Tensor(shape: [1, 40], scalars: (0..<40).map { Float($0) / 40 })
        let c = linear(x, weight: PackedWeights.pack(w, layout: .outputsByInputs, precision: .int8Weights)!, bias: nil).scalars
        XCTAssertEqual(c[1], 0)
        XCTAssert(c[0].isFinite && c[2].isNaN && c[3].isFinite, "\(c)")
    }

    /// A product of one row (a decoding step, which streams each panel once and reads the row in place) gives the same
    /// bits as that row inside a product of many: the same sums in the same order, at every panel edge and depth, with
    /// FP32 weights and with narrow ones (which one row reads directly and more rows widen a block at a time).
    func testOneRowEqualsItsRowInManyRows() throws {
        try XCTSkipUnless(BLAS.hasPackedKernel, "this CPU lacks AVX-512 and AVX2; products go to OpenBLAS")
        var generator = SeededGenerator(seed: 17)
        var checked = 0
        let shapes = [(7, 3), (16, 40), (37, 300), (90, 520), (128, 768)]
        for precision in [Precision.fp32, .bf16Weights, .int8Weights] {
            for (n, k) in shapes {
                for layout in [WeightLayout.outputsByInputs, .inputsByOutputs] {
                    let weight = PackedWeights.pack(Tensor(shape: layout == .outputsByInputs ? [n, k] : [k, n], scalars: generator.values(n * k)),
                                                    layout: layout, precision: precision)!
                    // 13 rows: one part; 420: parts of rows over the threads, claimed as they finish (BLAS.rowParts).
                    for (count, picked) in [(13, [0, 5, 12]), (420, [0, 200, 391, 419])] {
                        let rows = Tensor(shape: [count, k], scalars: generator.values(count * k))
                        let many = linear(rows, weight: weight, bias: nil)
                        for row in picked {
                            let one = linear(rows.rows(row..<row + 1), weight: weight, bias: nil)
                            XCTAssertEqual(one.scalars, many.rows(row..<row + 1).scalars, "\(precision) row \(row) of \(count), n \(n) k \(k) \(layout)")
                            checked += 1
                        }
                    }
                }
            }
        }
        print("one-row packed products: \(checked) rows bit-identical to their rows in 13- and 420-row products")
    }

    /// The row parts of a product split by rows: from 0 to m without gaps or empty parts; with two 96-row blocks a thread
    /// or more, first one part of whole blocks a thread (two fifths to four fifths of its share), then parts of whole
    /// 12-row tiles, two or more, the last ending at m; below that one part a thread at most, of whole 4-row tiles.
    func testRowPartsCoverTheRowsInWholeBlocksAndTiles() {
        for threads in [2, 3, 4, 8] {
            for m in stride(from: threads * BLAS.rowsPerPart, through: 6000, by: 7) {
                let parts = BLAS.rowParts(m, threads: threads)
                let context = "\(m) rows over \(threads) threads: \(parts.map(\.count))"
                XCTAssertEqual(parts.first?.lowerBound, 0, context)
                XCTAssertEqual(parts.last?.upperBound, m, context)
                XCTAssert(zip(parts, parts.dropFirst()).allSatisfy { $0.upperBound == $1.lowerBound }, context)
                XCTAssert(parts.allSatisfy { !$0.isEmpty }, context)
                if m / threads >= 2 * BLAS.rowsPerPart {
                    let big = parts[0].count
                    XCTAssert(big % BLAS.rowsPerPart == 0 && parts.prefix(threads).allSatisfy { $0.count == big }, context)
                    XCTAssert(big * 5 >= m / threads * 2 && big * 5 <= m / threads * 4, context)
                    XCTAssert(parts.dropFirst(threads).dropLast().allSatisfy { $0.count % 12 == 0 && $0.count >= 24 }, context)
                } else {
                    XCTAssertLessThanOrEqual(parts.count, threads, context)
                    XCTAssert(parts.dropLast().allSatisfy { $0.count % 4 == 0 }, context)
                }
            }
        }
    }

    /// The bias and activation a packed product applies to each block of rows as it finishes it: the same bits as the
    /// product, then the bias, then the activation in passes of their own, whether the product splits by rows (many) or
    /// columns (few), over all outputs or a range of them, at each precision this CPU runs.
    func testFusedBiasAndActivationEqualSeparatePasses() throws {
        try XCTSkipUnless(BLAS.hasPackedKernel, "this CPU lacks AVX-512 and AVX2; products go to OpenBLAS")
        var generator = SeededGenerator(seed: 11)
        let activations: [Activation?] = [nil, .gelu, .geluNew, .quickGelu, .relu]
        var checked = 0
        for precision in Precision.allCases where precision.unavailableReason == nil {
            for (m, n, k) in [(3, 45, 70), (16, 100, 33), (250, 77, 300), (20, 70, 1100)] {   // the last: k in two blocks at each precision
                let x = Tensor(shape: [m, k], scalars: generator.values(m * k))
                let weight = PackedWeights.pack(Tensor(shape: [n, k], scalars: generator.values(n * k)), layout: .outputsByInputs, precision: precision)!
                let bias = Tensor(shape: [n], scalars: generator.values(n))
                for activation in activations {
                    for columns in [0..<n, 32..<n] {
                        let fused = linear(x, weight: weight, bias: bias, activation: activation, columns: columns)
                        var separate = linear(x, weight: weight, bias: nil, columns: columns)
                        addRowVector(&separate, bias.rows(columns))
                        activation?.apply(&separate)
                        XCTAssertEqual(fused.scalars, separate.scalars, "\(precision) m \(m) n \(n) k \(k) \(activation.map { "\($0)" } ?? "no activation") columns \(columns)")
                        checked += 1
                    }
                }
            }
        }
        print("fused bias and activation: \(checked) products bit-identical to separate passes")
    }
}

/// `linear` on weights as loaded (OpenBLAS's sgemm, or Stitch's AVX-512 kernel): the bias and activation each thread adds
/// to its block of columns as its product finishes are the same bits as the product, then the bias, then the activation
/// in passes of their own, for one row (a matrix-vector product), a few and many (blocks over the threads), both layouts.
final class UnpackedLinearTests: XCTestCase {
    func testFusedBiasAndActivationEqualSeparatePasses() {
        var generator = SeededGenerator(seed: 12)
        var checked = 0
        for (m, n, k) in [(1, 45, 70), (3, 100, 33), (300, 777, 130)] {
            let x = Tensor(shape: [m, k], scalars: generator.values(m * k))
            let bias = Tensor(shape: [n], scalars: generator.values(n))
            for layout in [WeightLayout.outputsByInputs, .inputsByOutputs] {
                let weight = Tensor(shape: layout == .outputsByInputs ? [n, k] : [k, n], scalars: generator.values(n * k))
                for activation in [nil, .gelu, .geluNew, .quickGelu, .relu, .silu] as [Activation?] {
                    let fused = linear(x, weight: weight, bias: bias, layout: layout, activation: activation)
                    var separate = matmul(x, weight, transposeB: layout == .outputsByInputs)
                    addRowVector(&separate, bias)
                    activation?.apply(&separate)
                    XCTAssertEqual(fused.shape, [m, n])
                    let differing = zip(fused.scalars, separate.scalars).filter { $0.bitPattern != $1.bitPattern }.count
                    XCTAssertEqual(differing, 0, "values differing: m \(m) n \(n) k \(k) \(layout) \(activation.map { "\($0)" } ?? "no activation")")
                    checked += 1
                }
            }
        }
        print("unpacked linear: \(checked) products with bias and activation bit-identical to separate passes")
    }
}

/// The opt-in bfloat16 products (CStitchKernels/bf16.c): rounding as torch rounds, and the kernel's ways (dot products
/// for a few rows; for more on Intel, AMX tiles where granted, else widened operands on FMA; without AVX512-BF16,
/// bf16-weights' kernels on rounded activations) against a float64 product of the same bfloat16-rounded operands.
/// Scripts/cross-check runs the AMX kernel on a software tile file too.
final class BF16ProductTests: XCTestCase {
    func testRoundingToNearestEven() {
        func bits(_ value: Float) -> UInt32 { value.bitPattern }
        func bf16(_ pattern: UInt32) -> UInt16 { stitch_bf16_from_float(Float(bitPattern: pattern)) }
        XCTAssertEqual(bf16(0x3F80_8000), 0x3F80)   // a tie rounds to the even 0x3F80
        XCTAssertEqual(bf16(0x3F81_8000), 0x3F82)   // a tie rounds to the even 0x3F82
        XCTAssertEqual(bf16(0x3F80_8001), 0x3F81)   // above the tie rounds up
        XCTAssertEqual(bf16(0x3F80_7FFF), 0x3F80)
        XCTAssertEqual(bf16(0xBF80_C000), 0xBF81)   // sign kept
        XCTAssertEqual(bf16(bits(.infinity)), 0x7F80)
        XCTAssertEqual(bf16(bits(-.infinity)), 0xFF80)
        XCTAssertEqual(bf16(bits(.greatestFiniteMagnitude)), 0x7F80)   // rounds past the largest bfloat16 to infinity
        let nan = bf16(bits(.nan))
        XCTAssert(Float(bitPattern: UInt32(nan) << 16).isNaN)
        XCTAssert(Float(bitPattern: UInt32(bf16(0x7F80_0001)) << 16).isNaN)   // a NaN whose payload is all in the low half
        for value: Float in [0, -0, 1, 0.1, -3.14159, 65504, 1e-30, 3e38] {
            let rounded = Float(bitPattern: UInt32(stitch_bf16_from_float(value)) << 16)
            XCTAssertLessThanOrEqual(abs(rounded - value), abs(value) / 256, "\(value)")
        }
    }

    func testProductsEqualAFloat64ProductOfTheRoundedOperands() throws {
        if let reason = Precision.bf16.unavailableReason { throw XCTSkip(reason) }
        print("bfloat16 products (\(Precision.bf16Instructions ? "BF16 instructions" : "FP32 kernels")): worst error \(checkPackedProducts(.bf16, seed: 7)) of the summed magnitudes")
    }

    /// bf16 on the FP32 kernels (how it runs without BF16 instructions) is bf16-weights' product on activations rounded
    /// to bfloat16: the same bits. Built directly where the CPU has BF16 instructions, so the path is tested there too.
    func testBF16OnTheFP32KernelsIsBF16WeightsOnRoundedActivations() throws {
        try XCTSkipUnless(BLAS.hasPackedKernel, "this CPU lacks AVX-512 and AVX2; products go to OpenBLAS")
        var generator = SeededGenerator(seed: 13)
        let chosen = PackedWeights.pack(Tensor(shape: [32, 8], scalars: generator.values(256)), layout: .outputsByInputs, precision: .bf16)!
        XCTAssertEqual(chosen.kernel, Precision.bf16Instructions ? .bf16 : .bf16Weights, "the way bf16 runs on this CPU")
        for (m, n, k) in [(1, 45, 70), (5, 100, 300), (130, 64, 520)] {
            let x = Tensor(shape: [m, k], scalars: generator.values(m * k))
            let w = Tensor(shape: [n, k], scalars: generator.values(n * k))
            let rounded = Tensor(shape: [m, k], scalars: x.scalars.map(roundedToBF16))
            let onFP32Kernels = PackedWeights(w, layout: .outputsByInputs, precision: .bf16, kernel: .bf16Weights)!
            let bf16 = linear(x, weight: onFP32Kernels, bias: nil)
            let narrow = linear(rounded, weight: PackedWeights.pack(w, layout: .outputsByInputs, precision: .bf16Weights)!, bias: nil)
            XCTAssertEqual(bf16.scalars.map(\.bitPattern), narrow.scalars.map(\.bitPattern), "m \(m) n \(n) k \(k)")
        }
    }
}
