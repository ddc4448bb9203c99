import Foundation

/// The matrix products a piece of work runs, counted by shape while recording, and what each shape alone takes on this
/// machine: `stitch bench`'s GEMM floor (a row's time if everything but its products were free).
public enum ProductShapes {
    public struct Shape: Hashable, Sendable {
        public let m, n, k: Int
        /// The precision of packed weights (`PackedWeights`), or nil for a product `BLAS` runs (activations, unpacked weights).
        public let packed: Precision?

        public var flops: Double { 2 * Double(m) * Double(n) * Double(k) }
    }

    private static let lock = NSLock()
    nonisolated(unsafe) private static var counts: [Shape: Int] = [:]
    /// Read without the lock on every product: off but while `recording` runs, which the bench's worker does alone.
    nonisolated(unsafe) private static var isRecording = false

    /// `body`'s value and the products it ran, by shape.
    public static func recording<T>(_ body: () throws -> T) rethrows -> (value: T, shapes: [Shape: Int]) {
        lock.withLock { counts = [:]; isRecording = true }
        defer { lock.withLock { isRecording = false } }
        let value = try body()
        return (value, lock.withLock { counts })
    }

    static func note(m: Int, n: Int, k: Int, packed: Precision?) {
        guard isRecording else { return }
        lock.withLock { counts[Shape(m: m, n: n, k: k, packed: packed), default: 0] += 1 }
    }

    /// The best time, in seconds, of one product of `shape` on random operands through the path the work took (packed
    /// weights of its precision, else `matmul`), over at least `seconds` and 3 runs.
    public static func bestTime(_ shape: Shape, seconds: Double) -> Double {
        var generator = SeededGenerator(seed: UInt64(shape.m * 31 + shape.n * 7 + shape.k))
        func random(_ rows: Int, _ columns: Int) -> Tensor {
            Tensor(shape: [rows, columns], scalars: (0..<rows * columns).map { _ in Float(generator.next() >> 40) / Float(1 << 24) - 0.5 })
        }
        let (x, w) = (random(shape.m, shape.k), random(shape.n, shape.k))
        let packed = shape.packed.flatMap { PackedWeights.pack(w, layout: .outputsByInputs, precision: $0) }
        let product = { _ = packed.map { linear(x, weight: $0, bias: nil) } ?? matmul(x, w, transposeB: true) }
        product()
        var best = Double.infinity, runs = 0
        let start = DispatchTime.now().uptimeNanoseconds
        repeat {
            let t0 = DispatchTime.now().uptimeNanoseconds
            product()
            best = min(best, Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9)
            runs += 1
        } while runs < 3 || Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9 < seconds
        return best
    }
}
