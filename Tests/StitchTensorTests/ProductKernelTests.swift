import StitchTestSupport
import XCTest
@testable import StitchTensor

/// Stitch's AVX-512 product kernels (CStitchKernels/gemm.c), which `splitGemm` uses for products of 16 rows or more
/// and for single rows times Wᵀ: every edge of the 12 x 32 tile, of its 256-deep, 96-row and 512-column blocks and of
/// the matrix-vector kernel's 4 rows and 16 columns, both layouts of B, and leading dimensions wider than the operands,
/// against a float64 product.
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
                a.withUnsafeBufferPointer { ap in
                    b.withUnsafeBufferPointer { bp in
                        c.withUnsafeMutableBufferPointer { cp in
                            BLAS.splitGemm(transposeB: transposeB, m: m, n: n, k: k, a: ap.baseAddress!, lda: lda,
                                           b: bp.baseAddress!, ldb: ldb, c: cp.baseAddress!, ldc: ldc)
                        }
                    }
                }
                for i in 0..<m {
                    for j in 0..<n {
                        var exact = 0.0, magnitude = 0.0
                        for p in 0..<k {
                            let product = Double(a[i * lda + p]) * Double(transposeB ? b[j * ldb + p] : b[p * ldb + j])
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
