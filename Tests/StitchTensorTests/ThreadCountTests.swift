import CStitchKernels
import Foundation
import StitchTestSupport
import XCTest
@testable import StitchTensor

/// How many threads Stitch uses: the CPUs its affinity mask allows, at most its cgroup's CPU quota, unless
/// STITCH_NUM_THREADS says otherwise.
final class ThreadCountTests: XCTestCase {
    func testAffinityQuotaAndSetting() {
        XCTAssertEqual(Parallel.threadCount(affinity: 8, quota: nil, setting: nil), 8)
        XCTAssertEqual(Parallel.threadCount(affinity: 8, quota: 2.5, setting: nil), 3, "a quota of 2.5 CPUs rounds up")
        XCTAssertEqual(Parallel.threadCount(affinity: 2, quota: 16, setting: nil), 2)
        XCTAssertEqual(Parallel.threadCount(affinity: 8, quota: 0.2, setting: nil), 1)
        XCTAssertEqual(Parallel.threadCount(affinity: 2, quota: 1, setting: "6"), 6, "the setting overrides")
        for bad in ["0", "-3", "two", ""] { XCTAssertEqual(Parallel.threadCount(affinity: 4, quota: nil, setting: bad), 4, bad) }
        XCTAssertNil(Parallel.quota(cpuMax: "max 100000\n"))
        XCTAssertEqual(Parallel.quota(cpuMax: "150000 100000\n"), 1.5)
    }

    /// cgroup v2: the least cpu.max of the process's group and those above it; v1: cfs quota over period.
    func testCgroupQuotaFromFiles() throws {
        let root = try Fixtures.temporaryFolder()
        defer { try? FileManager.default.removeItem(at: root) }
        func write(_ text: String, _ path: String) throws {
            let file = root.appendingPathComponent(path)
            try FileManager.default.createDirectory(at: file.deletingLastPathComponent(), withIntermediateDirectories: true)
            try text.write(to: file, atomically: true, encoding: .utf8)
        }
        try write("cpu memory\n", "cgroup.controllers")
        try write("max 100000\n", "cpu.max")
        try write("400000 100000\n", "jobs/cpu.max")
        try write("max 100000\n", "jobs/job_7/cpu.max")
        try write("250000 100000\n", "jobs/job_7/step_0/cpu.max")
        XCTAssertEqual(Parallel.cgroupQuota(root: root.path, membership: "0::/jobs/job_7/step_0\n"), 2.5)
        XCTAssertEqual(Parallel.cgroupQuota(root: root.path, membership: "0::/jobs/job_7\n"), 4)
        XCTAssertNil(Parallel.cgroupQuota(root: root.path, membership: "0::/\n"))

        let v1 = try Fixtures.temporaryFolder()
        defer { try? FileManager.default.removeItem(at: v1) }
        try FileManager.default.createDirectory(at: v1.appendingPathComponent("cpu"), withIntermediateDirectories: true)
        try "300000\n".write(to: v1.appendingPathComponent("cpu/cpu.cfs_quota_us"), atomically: true, encoding: .utf8)
        try "100000\n".write(to: v1.appendingPathComponent("cpu/cpu.cfs_period_us"), atomically: true, encoding: .utf8)
        XCTAssertEqual(Parallel.cgroupQuota(root: v1.path, membership: nil), 3)
        try "-1\n".write(to: v1.appendingPathComponent("cpu/cpu.cfs_quota_us"), atomically: true, encoding: .utf8)
        XCTAssertNil(Parallel.cgroupQuota(root: v1.path, membership: nil))
    }

    /// The affinity count follows the mask this thread runs under (taskset, a scheduler's cpuset).
    func testAffinityMask() throws {
        // glibc's sched_getaffinity / sched_setaffinity (GNU extensions Swift's Glibc module leaves out).
        typealias Affinity = @convention(c) (pid_t, Int, UnsafeMutableRawPointer) -> Int32
        guard let get = dlsym(UnsafeMutableRawPointer(bitPattern: 0), "sched_getaffinity"),
              let set = dlsym(UnsafeMutableRawPointer(bitPattern: 0), "sched_setaffinity") else { throw XCTSkip("no sched_setaffinity here") }
        let (getAffinity, setAffinity) = (unsafeBitCast(get, to: Affinity.self), unsafeBitCast(set, to: Affinity.self))
        var original = [UInt8](repeating: 0, count: 128)   // cpu_set_t: 1024 bits
        XCTAssertEqual(original.withUnsafeMutableBytes { getAffinity(0, 128, $0.baseAddress!) }, 0)
        let allowed = original.reduce(0) { $0 + $1.nonzeroBitCount }
        XCTAssertEqual(stitch_affinity_cpus(), allowed)
        guard allowed > 1 else { return }
        // Keep only the first allowed CPU.
        var one = [UInt8](repeating: 0, count: 128)
        let first = original.firstIndex { $0 != 0 }!
        one[first] = original[first] & (~original[first] &+ 1)
        XCTAssertEqual(one.withUnsafeMutableBytes { setAffinity(0, 128, $0.baseAddress!) }, 0)
        defer { _ = original.withUnsafeMutableBytes { setAffinity(0, 128, $0.baseAddress!) } }
        XCTAssertEqual(stitch_affinity_cpus(), 1)
        print("affinity: \(allowed) CPUs allowed, 1 after narrowing the mask")
    }
    /// Dynamic adjustment: the busy ticks of this process's CPUs read from /proc/stat's text, and the CPUs left when
    /// other processes took some of them (rounded to whole CPUs, at least one left, never more than there are; a CPU
    /// taken is given back only below a quarter of it).
    func testThreadsLeftByOthersLoad() {
        let stat = """
        cpu  900 10 200 5000 40 0 30 20 0 0
        cpu0 100 1 20 900 10 0 3 2 0 0
        cpu1 200 2 40 800 20 0 6 4 0 0
        cpu12 400 4 80 700 30 0 9 6 0 0
        intr 1 2 3
        ctxt 123
        """
        // user + nice + system + irq + softirq + steal; idle and iowait are not busy.
        XCTAssertEqual(stat.withCString { stitch_stat_busy_ticks($0, [0], 1) }, 126)
        XCTAssertEqual(stat.withCString { stitch_stat_busy_ticks($0, [1, 12], 2) }, 252 + 499)
        XCTAssertEqual(stat.withCString { stitch_stat_busy_ticks($0, [2], 1) }, 0, "CPU 2 is not listed; cpu12 is not cpu1")
        // 2 CPUs over 1 s: busy 2 s of which 1 s ours -> another process took a CPU -> 1 left.
        XCTAssertEqual(stitch_cpus_left(2, 0, 2.0, 1.0, 1.0), 1)
        XCTAssertEqual(stitch_cpus_left(2, 0, 1.9, 1.9, 1.0), 2, "quiet: all busy time is ours")
        XCTAssertEqual(stitch_cpus_left(2, 0, 1.4, 1.0, 1.0), 2, "others took 0.4 CPU: rounds to none")
        XCTAssertEqual(stitch_cpus_left(2, 0, 2.0, 0.0, 1.0), 1, "never fewer than one")
        XCTAssertEqual(stitch_cpus_left(8, 0, 5.0, 2.0, 1.0), 5)
        XCTAssertEqual(stitch_cpus_left(4, 0, 1.0, 1.2, 1.0), 4, "tick rounding below our own time")
        XCTAssertEqual(stitch_cpus_left(4, 0, 1.0, 0.0, 0.0), 4, "no window yet")
        // A CPU taken stays taken while others use a quarter of it or more (our threads on their core lower their share).
        XCTAssertEqual(stitch_cpus_left(2, 1, 1.45, 1.0, 1.0), 1, "0.45 CPU after a window that left 1: still taken")
        XCTAssertEqual(stitch_cpus_left(2, 1, 1.3, 1.0, 1.0), 1)
        XCTAssertEqual(stitch_cpus_left(2, 1, 1.2, 1.0, 1.0), 2, "below a quarter: given back")
        XCTAssertEqual(stitch_cpus_left(2, 2, 1.45, 1.0, 1.0), 2, "nothing taken before: rounds as usual")
        XCTAssertEqual(stitch_cpus_left(8, 5, 3.3, 1.0, 1.0), 5, "2.3 CPUs after 3 taken: still 3")
        XCTAssertEqual(stitch_cpus_left(8, 5, 3.2, 1.0, 1.0), 6, "2.2: one given back")
        XCTAssertEqual(stitch_cpus_left(8, 5, 5.0, 1.0, 1.0), 4, "4 taken now: more taken at once")
        // The query never asks for more than it was given.
        XCTAssertEqual(stitch_parallel_threads(1), 1)
        XCTAssertLessThanOrEqual(stitch_parallel_threads(2), 2)
    }

    /// A region long beside the pauses of a thread on a shared core runs on every thread; a shorter one (or one of
    /// unknown work) on the CPUs other processes leave.
    func testLongRegionsUseEveryThread() {
        let long = Parallel.sharedCoreWork
        XCTAssertEqual(Parallel.threadCount(limit: 2, left: 1, work: long), 2)
        XCTAssertEqual(Parallel.threadCount(limit: 2, left: 1, work: long - 1), 1)
        XCTAssertEqual(Parallel.threadCount(limit: 8, left: 5, work: 0), 5)
        XCTAssertEqual(Parallel.threadCount(limit: 8, left: 5, work: 4 * long), 8)
        XCTAssertEqual(Parallel.threadCount(limit: 8, left: 8, work: 0), 8)
        // Whatever the machine's load now: every thread for a long region, never more than the limit for any.
        XCTAssertEqual(Parallel.threads(work: long), Parallel.limit)
        XCTAssertLessThanOrEqual(Parallel.threads, Parallel.limit)
    }
}
