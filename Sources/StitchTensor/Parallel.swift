import CStitchKernels
import Foundation

/// Parallel loops for the work OpenBLAS does not do for us (element-wise
/// maps, normalisation, attention heads), spread over every core.
public enum Parallel {
    /// Cores on this machine.
    public static let cores = max(1, ProcessInfo.processInfo.activeProcessorCount)

    /// How many of them parallel loops use (`BLAS.configureThreads` sets it).
    nonisolated(unsafe) public static var limit = cores

    /// Calls `body(i)` for each i in 0..<count, concurrently when worthwhile, on the calling
    /// thread and Stitch's worker pool (`stitch_parallel_for`). Iterations must touch disjoint
    /// memory; that is the caller's contract, which is why `body` need not be Sendable.
    public static func forEach(_ count: Int, _ body: (Int) -> Void) {
        if count <= 1 || limit == 1 {
            for i in 0..<count { body(i) }
            return
        }
        withoutActuallyEscaping(body) { escapable in
            var task = escapable
            withUnsafeMutablePointer(to: &task) { pointer in
                stitch_parallel_for(count, limit, { context, index in
                    context!.assumingMemoryBound(to: ((Int) -> Void).self).pointee(index)
                }, pointer)
            }
        }
    }

    /// Splits 0..<count into at most `cores` contiguous chunks and runs them
    /// concurrently; small ranges (below `minimumChunk` per core) run inline.
    public static func forChunks(_ count: Int, minimumChunk: Int = 16_384, _ body: (Range<Int>) -> Void) {
        forChunks(count, parts: count / max(minimumChunk, 1), body)
    }

    /// Splits 0..<count into `parts` contiguous chunks (at least 1, at most `limit` and `count`)
    /// and runs them concurrently; empty chunks are skipped.
    public static func forChunks(_ count: Int, parts: Int, _ body: (Range<Int>) -> Void) {
        let chunks = min(limit, count, max(1, parts))
        let size = (count + chunks - 1) / max(chunks, 1)
        forEach(chunks) { chunk in
            let start = chunk * size
            let end = min(count, start + size)
            if start < end { body(start..<end) }
        }
    }
}

/// Process-wide allocator settings for tensor workloads.
public enum Memory {
    /// Keeps freed heap memory for reuse instead of returning it to the system: every layer
    /// allocates outputs of megabytes, and fresh pages from the system cost a page fault each
    /// (several milliseconds per YOLOX image). Peak memory is unchanged; it is just held longer.
    public static func keepFreedMemory() { stitch_keep_freed_memory() }
}
