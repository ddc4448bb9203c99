import ArgumentParser
import Foundation

/// Which part of a dataset a run does: the items whose number is `index` modulo `count`. Given as `i/n`, or as
/// `auto`, read from the scheduler: a Slurm job array or a Kubernetes Indexed Job.
struct Shard: Equatable {
    let index: Int
    let count: Int

    static let whole = Shard(index: 0, count: 1)

    /// `i/n`, or `auto`: Slurm's SLURM_ARRAY_TASK_ID, counted from SLURM_ARRAY_TASK_MIN in steps of
    /// SLURM_ARRAY_TASK_STEP, out of SLURM_ARRAY_TASK_COUNT (else MIN to MAX); else Kubernetes'
    /// JOB_COMPLETION_INDEX out of `count` (--shard-count) or STITCH_SHARD_COUNT.
    static func parse(_ text: String, count given: Int? = nil, environment: [String: String] = ProcessInfo.processInfo.environment) throws -> Shard {
        func number(_ name: String) throws -> Int? {
            guard let value = environment[name], !value.isEmpty else { return nil }
            guard let number = Int(value) else { throw ValidationError("--shard auto: \(name)=\(value) is not a whole number") }
            return number
        }
        guard text == "auto" else {
            let parts = text.split(separator: "/", omittingEmptySubsequences: false).map { Int($0) }
            guard parts.count == 2, let index = parts[0], let count = parts[1], count > 0, (0..<count).contains(index) else {
                throw ValidationError("--shard takes i/n with 0 <= i < n, or auto; got '\(text)'")
            }
            return Shard(index: index, count: count)
        }
        let shard: Shard
        if let task = try number("SLURM_ARRAY_TASK_ID") {
            let first = try number("SLURM_ARRAY_TASK_MIN") ?? 0, step = try number("SLURM_ARRAY_TASK_STEP") ?? 1
            guard step > 0, (task - first) % step == 0 else { throw ValidationError("--shard auto: SLURM_ARRAY_TASK_ID \(task) is not MIN \(first) plus a multiple of STEP \(step)") }
            guard let count = try number("SLURM_ARRAY_TASK_COUNT") ?? number("SLURM_ARRAY_TASK_MAX").map({ ($0 - first) / step + 1 }) else {
                throw ValidationError("--shard auto: SLURM_ARRAY_TASK_ID is set but neither SLURM_ARRAY_TASK_COUNT nor SLURM_ARRAY_TASK_MAX")
            }
            shard = Shard(index: (task - first) / step, count: count)
        } else if let index = try number("JOB_COMPLETION_INDEX") {
            guard let count = try given ?? number("STITCH_SHARD_COUNT") else {
                throw ValidationError("--shard auto: JOB_COMPLETION_INDEX is set (a Kubernetes Indexed Job); give the job's completions as --shard-count or STITCH_SHARD_COUNT")
            }
            shard = Shard(index: index, count: count)
        } else {
            throw ValidationError("--shard auto needs a scheduler's variables: SLURM_ARRAY_TASK_ID with SLURM_ARRAY_TASK_COUNT (a Slurm job array) or JOB_COMPLETION_INDEX with --shard-count (a Kubernetes Indexed Job); none is set")
        }
        guard shard.count > 0, (0..<shard.count).contains(shard.index) else {
            throw ValidationError("--shard auto: shard \(shard.index) of \(shard.count) is out of range")
        }
        return shard
    }

    /// Where this shard writes `output`: results.jsonl -> results.shard-0003-of-0016.jsonl (the whole: `output` itself).
    func file(for output: String) -> String {
        guard count > 1 else { return output }
        let name = output.lastIndex(of: "/").map { output.index(after: $0) } ?? output.startIndex
        let dot = output[name...].lastIndex(of: ".").flatMap { $0 > name ? $0 : nil } ?? output.endIndex
        return String(output[..<dot]) + String(format: ".shard-%04d-of-%04d", index, count) + String(output[dot...])
    }

    /// The shard a results file's name says it holds, if it has such a name.
    static func of(file: String) -> Shard? {
        let name = URL(fileURLWithPath: file).deletingPathExtension().lastPathComponent
        guard let range = name.range(of: #"\.shard-\d{4,}-of-\d{4,}$"#, options: .regularExpression) else { return nil }
        let numbers = name[range].split(whereSeparator: { !$0.isNumber }).compactMap { Int($0) }
        guard numbers.count == 2, numbers[1] > 0, numbers[0] < numbers[1] else { return nil }
        return Shard(index: numbers[0], count: numbers[1])
    }
}
