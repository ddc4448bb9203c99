import ArgumentParser
import Foundation
import StitchGraph

/// A batch run's JSONL results: one `{"item": N, "outputs": {...}}` line per finished input line. The file is
/// held under an exclusive lock while a run appends to it, so two runs can never share one (shards write their own
/// files and `stitch merge` joins them), and an existing file is resumed only when every whole line in it is a
/// result line: anything else means the path names some other file, which is left untouched.
struct ResultsFile {
    let path: String
    /// Items already in the file.
    private(set) var done: Set<Int> = []
    private let handle: FileHandle

    /// Opens (creating) and locks `path` for a run over `itemCount` input lines read from `inputs`; a line cut short
    /// by an interrupted run at the end is removed so its item runs again.
    init(path: String, inputs: String, itemCount: Int) throws {
        if Self.sameFile(path, inputs) {
            throw ValidationError("--output \(path) is the --inputs file; results go to a file of their own")
        }
        let descriptor = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0o644)
        guard descriptor >= 0 else { throw ValidationError("cannot open \(path): \(String(cString: strerror(errno)))") }
        handle = FileHandle(fileDescriptor: descriptor, closeOnDealloc: true)
        guard flock(descriptor, LOCK_EX | LOCK_NB) == 0 else {
            throw ValidationError("\(path) is being written by another run; give each run (or shard) its own --output and join them with `stitch merge`")
        }
        self.path = path
        let existing = try handle.readToEnd() ?? Data()
        let complete = existing.lastIndex(of: UInt8(ascii: "\n")).map { $0 + 1 } ?? 0
        for entry in try Self.parse(existing.prefix(complete), file: path) {
            guard entry.item < itemCount else {
                throw ValidationError("\(path): item \(entry.item) is past the \(itemCount) lines of \(inputs); were these results made from another inputs file?")
            }
            done.insert(entry.item)
        }
        if complete < existing.count {
            try handle.truncate(atOffset: UInt64(complete))
        }
        try handle.seekToEnd()
    }

    func append(item: Int, outputs: [String: Value]) throws {
        try handle.write(contentsOf: Data((Value.object(["item": .number(Double(item)), "outputs": .object(outputs)]).canonicalJSON + "\n").utf8))
    }

    /// The result lines of `data` (in canonical JSON, so equal results compare equal), every one checked: a JSON
    /// object whose `item` is a whole number and whose `outputs` is an object.
    static func parse(_ data: Data, file: String) throws -> [(item: Int, line: String)] {
        var entries: [(item: Int, line: String)] = []
        for (number, line) in String(decoding: data, as: UTF8.self).split(separator: "\n", omittingEmptySubsequences: false).enumerated()
        where !line.isEmpty {
            guard let value = try? Value.parse(json: String(line)), let item = value["item"]?.number, item == item.rounded(),
                  (0..<Double(Int32.max)).contains(item), case .object = value["outputs"] else {
                throw ValidationError("\(file):\(number + 1): not a result line ({\"item\": N, \"outputs\": {...}}); is this the right file?")
            }
            entries.append((Int(item), value.canonicalJSON))
        }
        return entries
    }

    private static func sameFile(_ a: String, _ b: String) -> Bool {
        var first = stat(), second = stat()
        return stat(a, &first) == 0 && stat(b, &second) == 0 && first.st_dev == second.st_dev && first.st_ino == second.st_ino
    }
}

/// Joins the results files of shards (or of runs over parts of one inputs file) into one, ordered by item.
struct Merge: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Join batch results files (from `stitch run --shard`) into one, ordered by item.",
        discussion: """
        Without files, joins the shards of --output: for results.jsonl, every results.shard-IIII-of-NNNN.jsonl \
        beside it. Every line must be a result line, and no item may be in two files. Shard files must all be of one \
        count, none missing, each holding only its own items; every item below the last must have its result, and with --inputs \
        every non-empty input line. \
        The output is written whole or not at all.
        """)

    @Argument(help: "Results files to join (default: the shard files of --output).")
    var files: [String] = []

    @Option(name: .shortAndLong, help: "The joined results file.")
    var output: String

    @Option(help: "The batch's inputs file: every line of it must have a result.")
    var inputs: String?

    func run() throws {
        let files = self.files.isEmpty ? try Self.shardFiles(of: output) : self.files
        try Self.checkShards(files)
        var lines: [Int: (line: String, file: String)] = [:]
        for file in files {
            guard let data = FileManager.default.contents(atPath: file) else { throw ValidationError("cannot read \(file)") }
            let shard = Shard.of(file: file)
            for entry in try ResultsFile.parse(data, file: file) {
                if let earlier = lines[entry.item] {
                    throw ValidationError("item \(entry.item) is in both \(earlier.file) and \(file)\(earlier.line == entry.line ? "" : ", with other outputs")")
                }
                if let shard, entry.item % shard.count != shard.index {
                    throw ValidationError("\(file): item \(entry.item) belongs to shard \(entry.item % shard.count) of \(shard.count), not \(shard.index); were the shards run with another count?")
                }
                lines[entry.item] = (entry.line, file)
            }
        }
        if let inputs {
            guard let data = FileManager.default.contents(atPath: inputs) else { throw ValidationError("cannot read \(inputs)") }
            let items = String(decoding: data, as: UTF8.self).split(separator: "\n", omittingEmptySubsequences: false).enumerated()
                .filter { !$0.element.trimmingCharacters(in: .whitespaces).isEmpty }.map(\.offset)
            let missing = items.filter { lines[$0] == nil }
            if !missing.isEmpty {
                throw ValidationError("\(missing.count) of the \(items.count) items of \(inputs) have no result, e.g. items \(missing.prefix(10).map(String.init).joined(separator: ", ")); rerun their shards (a rerun resumes)")
            }
            if let past = lines.keys.first(where: { $0 >= items.last.map { $0 + 1 } ?? 0 }) {
                throw ValidationError("item \(past) (in \(lines[past]!.file)) is past the lines of \(inputs)")
            }
        } else if let last = lines.keys.max(), lines.count < last + 1 {
            // Without the inputs, gaps below the last item still show missing results (empty input lines aside).
            let missing = (0..<last).filter { lines[$0] == nil }
            throw ValidationError("\(missing.count) items below item \(last) have no result, e.g. items \(missing.prefix(10).map(String.init).joined(separator: ", ")); rerun their shards, or give --inputs if those input lines are empty")
        }
        let text = lines.keys.sorted().map { lines[$0]!.line + "\n" }.joined()
        do {
            try text.write(toFile: output, atomically: true, encoding: .utf8)
        } catch {
            throw ValidationError("cannot write \(output): \(error.localizedDescription)")
        }
        FileHandle.standardError.write(Data("\(lines.count) items from \(files.count) files into \(output)\n".utf8))
    }

    /// The shard files of `output` in its folder, in shard order.
    static func shardFiles(of output: String) throws -> [String] {
        let folder = (output as NSString).deletingLastPathComponent
        let names = (try? FileManager.default.contentsOfDirectory(atPath: folder.isEmpty ? "." : folder)) ?? []
        let files = names.map { folder.isEmpty ? $0 : folder + "/" + $0 }.filter { file in
            Shard.of(file: file).map { $0.file(for: output) == file } ?? false
        }.sorted()
        guard !files.isEmpty else { throw ValidationError("no shard files of \(output) (such as \(Shard(index: 0, count: 2).file(for: output))) to merge") }
        return files
    }

    /// Shard files must be of one count with none missing.
    static func checkShards(_ files: [String]) throws {
        let shards = files.compactMap { file in Shard.of(file: file).map { (file, $0) } }
        guard let first = shards.first else { return }
        if let other = shards.first(where: { $0.1.count != first.1.count }) {
            throw ValidationError("\(first.0) is a shard of \(first.1.count) but \(other.0) of \(other.1.count); merge the shards of one run")
        }
        let present = Set(shards.map(\.1.index))
        let absent = (0..<first.1.count).filter { !present.contains($0) }
        if !absent.isEmpty {
            let example = Shard(index: absent[0], count: first.1.count).file(for: first.0.replacingOccurrences(of: String(format: ".shard-%04d-of-%04d", first.1.index, first.1.count), with: ""))
            throw ValidationError("\(absent.count) of \(first.1.count) shards are missing (shards \(absent.prefix(10).map(String.init).joined(separator: ", ")); e.g. \(example))")
        }
    }
}
