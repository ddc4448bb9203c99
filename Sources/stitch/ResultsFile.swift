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
        abstract: "Join batch results files (from `stitch run --shard i/n`) into one, ordered by item.",
        discussion: "Every line must be a result line; an item in two files must have the same outputs in both. The output is written whole or not at all.")

    @Argument(help: "Results files to join.")
    var files: [String]

    @Option(name: .shortAndLong, help: "The joined results file.")
    var output: String

    func run() throws {
        var lines: [Int: String] = [:]
        for file in files {
            guard let data = FileManager.default.contents(atPath: file) else { throw ValidationError("cannot read \(file)") }
            for entry in try ResultsFile.parse(data, file: file) {
                if let earlier = lines[entry.item], earlier != entry.line {
                    throw ValidationError("\(file): item \(entry.item) has other outputs than in an earlier file")
                }
                lines[entry.item] = entry.line
            }
        }
        let text = lines.keys.sorted().map { lines[$0]! + "\n" }.joined()
        do {
            try text.write(toFile: output, atomically: true, encoding: .utf8)
        } catch {
            throw ValidationError("cannot write \(output): \(error.localizedDescription)")
        }
        FileHandle.standardError.write(Data("\(lines.count) items from \(files.count) files into \(output)\n".utf8))
    }
}
