import CStitchKernels
import Foundation

/// Parallel loops for the work OpenBLAS does not do for us (element-wise
/// maps, normalisation, attention heads), spread over every core.
public enum Parallel {
    /// The CPUs this process may use: its affinity mask (taskset, a scheduler's cpuset), at most its cgroup's CPU
    /// quota (a container's or a job's limit, rounded up); STITCH_NUM_THREADS (a whole number from 1) overrides both.
    public static let cores = threadCount(affinity: stitch_affinity_cpus(), quota: cgroupQuota(),
                                          setting: ProcessInfo.processInfo.environment["STITCH_NUM_THREADS"])

    static func threadCount(affinity: Int, quota: Double?, setting: String?) -> Int {
        if let setting, let count = Int(setting.trimmingCharacters(in: .whitespaces)), count >= 1 { return min(count, 255) }
        let allowed = quota.map { max(1, Int($0.rounded(.up))) } ?? Int.max
        return max(1, min(affinity, allowed))
    }

    /// CPUs' worth of time per period the process's cgroup allows: cgroup v2's cpu.max of its group (named in
    /// /proc/self/cgroup) and every group above it, the least; else v1's cfs quota and period. Nil without a limit.
    static func cgroupQuota(root: String = "/sys/fs/cgroup", membership: String? = try? String(contentsOfFile: "/proc/self/cgroup", encoding: .utf8)) -> Double? {
        func read(_ path: String) -> String? { try? String(contentsOfFile: root + "/" + path, encoding: .utf8) }
        if FileManager.default.fileExists(atPath: root + "/cgroup.controllers") {
            // v2: "0::/a/b" names the group; a container's namespace shows its own group as "/".
            var group = membership?.split(separator: "\n").first { $0.hasPrefix("0::") }.map { String($0.dropFirst(3)) } ?? "/"
            var least: Double?
            while true {
                if let limit = read(group + "/cpu.max").flatMap(quota(cpuMax:)) { least = min(least ?? limit, limit) }
                guard group != "/", !group.isEmpty else { return least }
                group = (group as NSString).deletingLastPathComponent
            }
        }
        guard let quota = read("cpu/cpu.cfs_quota_us").flatMap({ Double($0.trimmingCharacters(in: .whitespacesAndNewlines)) }),
              let period = read("cpu/cpu.cfs_period_us").flatMap({ Double($0.trimmingCharacters(in: .whitespacesAndNewlines)) }),
              quota > 0, period > 0 else { return nil }
        return quota / period
    }

    /// cpu.max's "QUOTA PERIOD" ("max 100000": no limit) as CPUs.
    static func quota(cpuMax line: String) -> Double? {
        let fields = line.split(whereSeparator: \.isWhitespace)
        guard fields.count == 2, let quota = Double(fields[0]), let period = Double(fields[1]), quota > 0, period > 0 else { return nil }
        return quota / period
    }

    /// How many of them parallel loops use (`BLAS.configureThreads` sets it).
    nonisolated(unsafe) public static var limit = cores

    /// How many threads a region of unknown or small work is split over now: `limit`, less the CPUs other processes
    /// are taking from this one's (`stitch_parallel_threads`): on a core shared with another busy process, a part's
    /// thread is paused for whole scheduler slices while the rest wait, so the work runs on the cores left free instead.
    public static var threads: Int { threads(work: 0) }

    /// Multiply-adds from which a region runs on every thread even while other processes take CPUs from this one
    /// (about a millisecond or more at one thread): long beside the pauses of a thread on a shared core, such a region
    /// gains more from that core's share than it loses waiting. Beside a busy loop pinned to one of two CPUs, regions
    /// this long on two threads took MiniLM, CLIP's image and text encoders and MAGiC 10-22% less time than on one, while
    /// smaller ones (a decoding step's products, a convnet's layers, element-wise passes) gained nothing there.
    static let sharedCoreWork = 50_000_000

    /// How many threads a region of `work` multiply-adds is split over now (see `threads` and `sharedCoreWork`).
    public static func threads(work: Int) -> Int {
        limit > 1 ? threadCount(limit: limit, left: Int(stitch_parallel_threads(limit)), work: work) : 1
    }

    /// `left` (the CPUs other processes leave, at most `limit`) for short regions, `limit` for long ones.
    static func threadCount(limit: Int, left: Int, work: Int) -> Int { work >= sharedCoreWork ? limit : left }

    /// Calls `body(i)` for each i in 0..<count, concurrently when worthwhile, on the calling
    /// thread and Stitch's worker pool (`stitch_parallel_for`), on `threads` threads (a caller that split its
    /// work by `threads` passes the count it split by). Iterations must touch disjoint
    /// memory; that is the caller's contract, which is why `body` need not be Sendable.
    public static func forEach(_ count: Int, threads: Int = Parallel.threads, _ body: (Int) -> Void) {
        if count <= 1 || threads <= 1 {
            for i in 0..<count { body(i) }
            return
        }
        withoutActuallyEscaping(body) { escapable in
            var task = escapable
            withUnsafeMutablePointer(to: &task) { pointer in
                stitch_parallel_for(count, threads, { context, index in
                    context!.assumingMemoryBound(to: ((Int) -> Void).self).pointee(index)
                }, pointer)
            }
        }
    }

    /// Splits 0..<count into at most `cores` contiguous chunks and runs them
    /// concurrently; small ranges (below `minimumChunk` per core) run inline. `work`: the region's multiply-adds where
    /// known (`threads(work:)`).
    public static func forChunks(_ count: Int, minimumChunk: Int = 16_384, work: Int = 0, _ body: (Range<Int>) -> Void) {
        forChunks(count, parts: count / max(minimumChunk, 1), work: work, body)
    }

    /// Splits 0..<count into `parts` contiguous chunks (at least 1, at most `threads(work:)` and `count`)
    /// and runs them concurrently; empty chunks are skipped.
    public static func forChunks(_ count: Int, parts: Int, work: Int = 0, _ body: (Range<Int>) -> Void) {
        let threads = Self.threads(work: work)
        let chunks = min(threads, count, max(1, parts))
        let size = (count + chunks - 1) / max(chunks, 1)
        forEach(chunks, threads: threads) { chunk in
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
