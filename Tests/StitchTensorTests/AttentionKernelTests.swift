import CStitchKernels
import XCTest
@testable import StitchTensor

/// Attention against sums in double precision, on heads that take the direct kernel (`stitch_attention_head`: head
/// sizes of 16 and 64, up to 128 keys) and heads past it (the blocked products): causal, offset by a cache, a sliding
/// window, grouped key/value heads, masked keys and a row masked throughout, keys shared by a batch, packed sequences
/// continuing a prefix; and at BF16, against the same sums of operands rounded as the kernel rounds them.
final class AttentionKernelTests: XCTestCase {
    private let tolerance: Float = 2e-5
    /// BF16 against its emulation: a probability the double softmax rounds to the other neighbouring bfloat16 moves a
    /// value by 2^-9 of it.
    private let bf16Tolerance: Float = 4e-3

    /// Deterministic values in [-2, 2): the same every run.
    private struct Values {
        var state: UInt64
        mutating func tensor(_ shape: [Int]) -> Tensor {
            Tensor(shape: shape, scalars: (0..<shape.reduce(1, *)).map { _ in
                state = state &* 6364136223846793005 &+ 1442695040888963407
                return Float(state >> 40) / Float(1 << 24) * 4 - 2
            })
        }
    }

    /// Queries [b, tq, heads * d] against keys and values [b or 1, tk, keyHeads * d], in double: query i (at position
    /// `offset + i`) sees key j if `visible(b, i, j)`; a masked score is -Float.greatestFiniteMagnitude. With `bf16`,
    /// queries, keys, values and probabilities rounded to bfloat16 first (`stitch_bf16_attention_head`).
    private func reference(_ q: Tensor, _ k: Tensor, _ v: Tensor, heads: Int, keyHeads: Int, bf16: Bool = false,
                           visible: (Int, Int, Int) -> Bool) -> [Float] {
        let (batch, tq, width, tk) = (q.shape[0], q.shape[1], q.shape[2], k.shape[1])
        let (d, keyWidth) = (width / heads, k.shape[2])
        let round = { (x: Float) in bf16 ? Double(Float(bitPattern: UInt32(stitch_bf16_from_float(x)) << 16)) : Double(x) }
        let (qs, ks, vs) = (q.scalars.map(round), k.scalars.map(round), v.scalars.map(round))
        var out = [Float](repeating: 0, count: batch * tq * width)
        for b in 0..<batch {
            let kb = k.shape[0] == 1 ? 0 : b
            for h in 0..<heads {
                let kh = h / (heads / keyHeads)
                for i in 0..<tq {
                    let scores = (0..<tk).map { j -> Double in
                        guard visible(b, i, j) else { return -Double(Float.greatestFiniteMagnitude) }
                        let dot = (0..<d).reduce(0.0) { $0 + qs[(b * tq + i) * width + h * d + $1] * ks[(kb * tk + j) * keyWidth + kh * d + $1] }
                        return dot / Double(d).squareRoot()
                    }
                    let top = scores.max()!
                    let weights = scores.map { exp($0 - top) }
                    let total = weights.reduce(0, +)
                    let probabilities = weights.map { round(Float($0 / total)) }
                    for e in 0..<d {
                        let sum = (0..<tk).reduce(0.0) { $0 + probabilities[$1] * vs[(kb * tk + $1) * keyWidth + kh * d + e] }
                        out[(b * tq + i) * width + h * d + e] = Float(sum)
                    }
                }
            }
        }
        return out
    }

    private func assertClose(_ actual: Tensor, _ expected: [Float], _ label: String, tolerance: Float? = nil) {
        let tolerance = tolerance ?? self.tolerance
        XCTAssertEqual(actual.count, expected.count, label)
        let difference = zip(actual.scalars, expected).map { abs($0 - $1) }.max() ?? 0
        print("\(label): max difference \(difference) (tolerance \(tolerance))")
        XCTAssertLessThanOrEqual(difference, tolerance, label)
    }

    func testSelfAttentionCausalMaskedAndLong() {
        var values = Values(state: 1)
        // (128, 64): the most keys the direct kernel takes at that size; (200, 64) past it.
        for (t, d, heads) in [(16, 64, 2), (50, 16, 3), (128, 64, 1), (200, 64, 2)] {
            let (q, k, v) = (values.tensor([2, t, heads * d]), values.tensor([2, t, heads * d]), values.tensor([2, t, heads * d]))
            assertClose(multiHeadAttention(query: q, key: k, value: v, heads: heads, causal: true),
                        reference(q, k, v, heads: heads, keyHeads: heads) { _, i, j in j <= i }, "causal t \(t) d \(d)")
            // Row 0 masked throughout (uniform over every key, as Hugging Face's), row 1's last three keys masked.
            let mask = Tensor(shape: [2, t], scalars: (0..<2 * t).map { $0 < t || $0 >= 2 * t - 3 ? 0 : 1 })
            assertClose(multiHeadAttention(query: q, key: k, value: v, heads: heads, causal: false, keyMask: mask),
                        reference(q, k, v, heads: heads, keyHeads: heads) { b, _, j in b == 1 && j < t - 3 }, "masked t \(t) d \(d)")
            assertClose(multiHeadAttention(query: q, key: k, value: v, heads: heads, causal: true, keyMask: mask),
                        reference(q, k, v, heads: heads, keyHeads: heads) { b, i, j in b == 1 && j <= i && j < t - 3 }, "causal masked t \(t) d \(d)")
        }
    }

    func testCrossAttentionToSharedKeys() {
        var values = Values(state: 2)
        // Two sequences of 3 queries attend to one encoder's 50 states (key batch 1).
        let (q, k, v) = (values.tensor([2, 3, 128]), values.tensor([1, 50, 128]), values.tensor([1, 50, 128]))
        assertClose(multiHeadAttention(query: q, key: k, value: v, heads: 2, causal: false),
                    reference(q, k, v, heads: 2, keyHeads: 2) { _, _, _ in true }, "shared keys")
    }

    func testCachedStepsWithGroupedHeadsAndWindow() {
        var values = Values(state: 3)
        let (heads, keyHeads, d, window) = (4, 2, 16, 5)
        let (q, k, v) = (values.tensor([1, 13, heads * d]), values.tensor([1, 13, keyHeads * d]), values.tensor([1, 13, keyHeads * d]))
        func rows(_ x: Tensor, _ range: Range<Int>) -> Tensor {
            Tensor(shape: [1, range.count, x.shape[2]], scalars: Array(x.scalars[range.lowerBound * x.shape[2]..<range.upperBound * x.shape[2]]))
        }
        var cache = KVCache(batch: 1, width: keyHeads * d, capacity: 4)
        var steps: [Float] = []
        for range in [0..<9, 9..<10, 10..<13] {
            steps += cachedSelfAttention(query: rows(q, range), key: rows(k, range), value: rows(v, range), heads: heads, keyValueHeads: keyHeads,
                                         window: window, cache: &cache).scalars
        }
        assertClose(Tensor(shape: [1, 13, heads * d], scalars: steps),
                    reference(q, k, v, heads: heads, keyHeads: keyHeads) { _, i, j in j <= i && j > i - window }, "cached, grouped, window \(window)")
    }

    func testPackedSequencesContinuingAPrefix() {
        var values = Values(state: 4)
        let (heads, d) = (2, 64)
        let width = heads * d
        let (prefixKeys, prefixValues) = (values.tensor([1, 6, width]), values.tensor([1, 6, width]))
        var prefix = KVCache(batch: 1, width: width)
        prefix.append(keys: prefixKeys, values: prefixValues)
        // Three sequences: 2 tokens after 3 of the prefix, 4 after all 6, 1 after none; packed one after another.
        let segments = [PackedSegment(rows: 0..<2, sharedLength: 3), PackedSegment(rows: 2..<6, sharedLength: 6), PackedSegment(rows: 6..<7, sharedLength: 0)]
        let qkv = values.tensor([7, 3 * width])
        let out = packedPrefixAttention(qkv, segments: segments, prefix: prefix, heads: heads)
        for (index, segment) in segments.enumerated() {
            let own = segment.rows.map { qkv.scalars[$0 * 3 * width..<($0 + 1) * 3 * width] }
            let part = { (third: Int) in own.flatMap { $0.dropFirst(third * width).prefix(width) } }
            let shared = { (x: Tensor) in Array(x.scalars.prefix(segment.sharedLength * width)) }
            let n = segment.sharedLength + segment.rows.count
            let (q, k, v) = (Tensor(shape: [1, segment.rows.count, width], scalars: part(0)),
                             Tensor(shape: [1, n, width], scalars: shared(prefixKeys) + part(1)),
                             Tensor(shape: [1, n, width], scalars: shared(prefixValues) + part(2)))
            let rows = Tensor(shape: [1, segment.rows.count, width], scalars: Array(out.scalars[segment.rows.lowerBound * width..<segment.rows.upperBound * width]))
            assertClose(rows, reference(q, k, v, heads: heads, keyHeads: heads) { _, i, j in j <= segment.sharedLength + i }, "packed segment \(index)")
        }
    }

    /// BF16 heads: bfloat16 operands where this CPU's dot products are fast, else the FP32 kernel (then FP32's
    /// tolerance); 13 keys leave an odd last pair of values, the prefix case a second block of keys.
    func testBFloat16HeadsRoundTheirOperands() {
        let rounded = stitch_bf16_available() != 0 && stitch_bf16_dot_products_fast() != 0
        print(rounded ? "bfloat16 dot products" : "no fast bfloat16 dot products here: the FP32 kernel")
        var values = Values(state: 6)
        for (t, d, heads) in [(16, 64, 2), (13, 16, 3), (50, 64, 1)] {
            let (q, k, v) = (values.tensor([2, t, heads * d]), values.tensor([2, t, heads * d]), values.tensor([2, t, heads * d]))
            let mask = Tensor(shape: [2, t], scalars: (0..<2 * t).map { $0 == 2 * t - 1 ? 0 : 1 })
            assertClose(multiHeadAttention(query: q, key: k, value: v, heads: heads, causal: true, keyMask: mask, precision: .bf16),
                        reference(q, k, v, heads: heads, keyHeads: heads, bf16: rounded) { b, i, j in j <= i && (b == 0 || j < t - 1) },
                        "bf16 causal masked t \(t) d \(d)", tolerance: rounded ? bf16Tolerance : tolerance)
        }
        let width = 128
        var prefix = KVCache(batch: 1, width: width)
        let (prefixKeys, prefixValues, qkv) = (values.tensor([1, 5, width]), values.tensor([1, 5, width]), values.tensor([4, 3 * width]))
        prefix.append(keys: prefixKeys, values: prefixValues)
        let out = packedPrefixAttention(qkv, segments: [PackedSegment(rows: 0..<4, sharedLength: 5)], prefix: prefix, heads: 2, precision: .bf16)
        func part(_ third: Int) -> [Float] {
            (0..<4).flatMap { (row: Int) -> ArraySlice<Float> in
                let start = (3 * row + third) * width
                return qkv.scalars[start..<start + width]
            }
        }
        let (q, k, v) = (Tensor(shape: [1, 4, width], scalars: part(0)), Tensor(shape: [1, 9, width], scalars: prefixKeys.scalars + part(1)),
                         Tensor(shape: [1, 9, width], scalars: prefixValues.scalars + part(2)))
        assertClose(out.reshaped([1, 4, width]), reference(q, k, v, heads: 2, keyHeads: 2, bf16: rounded) { _, i, j in j <= 5 + i },
                    "bf16 packed after a prefix of 5", tolerance: rounded ? bf16Tolerance : tolerance)
    }
}
