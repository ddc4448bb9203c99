import ArgumentParser
import Foundation
import StitchGraph

/// What the user lets graphs reach beyond their own folder and the configured server.
struct GraphTrustOptions: ParsableArguments {
    @Option(name: .customLong("allow-path"), help: "A folder whose files graphs may read as prompts, besides their own folder, and (serve) clients may name as images (repeatable).")
    var paths: [String] = []

    @Option(name: .customLong("allow-url"), help: "A server that may receive the API key when a graph names it, besides STITCH_LM_BASE_URL (repeatable).")
    var urls: [String] = []

    /// `extraURLs`: servers the user named on the command line in other ways (`--component lm.url=...`).
    func registry(allowing extraURLs: [String] = []) -> OperationRegistry {
        .standard(trust: GraphTrust(readableFolders: paths, keyedURLs: urls + extraURLs))
    }
}

struct Validate: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Check a graph file without loading any model; every problem is printed as file:line:column.",
        discussion: "Then lists what the graph reaches: the prompt files it reads and the servers it sends prompts to, with or without the API key.")

    @Argument(help: "The graph YAML file.")
    var graph: String

    @OptionGroup var trust: GraphTrustOptions

    func run() throws {
        let registry = trust.registry()
        let loaded = try Graph.load(graph, registry: registry)
        print("\(graph): ok (\(loaded.components.count) components, \(loaded.inputs.count) inputs, \(loaded.nodes.count) nodes, \(loaded.outputs.count) outputs)")
        for line in loaded.reach(registry.trust) { print("  \(line)") }
    }
}

struct Run: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run a graph on one set of inputs, or on every line of a JSONL file.",
        discussion: """
        Inputs are given as --input name=value (an image is its path; texts are a JSON array or comma-separated; \
        json is JSON, or @FILE: a JSON file, or a .jsonl file as the list of its lines). --set node.argument=value changes \
        one setting of a node (the value parsed as the argument's type); what only that argument read no longer runs. With --inputs items.jsonl each line is an object of inputs and each result is appended \
        to --output as {"item": N, "outputs": {...}}; a rerun skips items already there, and --shard i/n runs \
        the items whose number is i modulo n, so n machines can share a dataset, each writing its own file \
        (results.jsonl -> results.shard-000i-of-000n.jsonl; `stitch merge --output results.jsonl` joins them). \
        --shard auto takes i and n from a Slurm job array or a Kubernetes Indexed Job. One results file has one \
        writer at a time. Node results are cached under --cache-dir unless --no-cache; Ctrl-C stops cleanly.
        """)

    @Argument(help: "The graph YAML file.")
    var graph: String

    @Option(name: .customLong("input"), help: "name=value for a graph input (repeatable).")
    var inputs: [String] = []

    @Option(name: .customLong("component"), help: "name=model to point a component at another folder or hub id, or name.option=value (repeatable).")
    var components: [String] = []

    @Option(name: .customLong("set"), help: "node.argument=value: change one argument of a node, e.g. prompts.shots=8 (repeatable).")
    var settings: [String] = []

    @Option(name: .customLong("inputs"), help: "A JSONL file with one object of inputs per line (batch mode).")
    var items: String?

    @Option(help: "Where batch results are appended (JSONL); a run resumes its own results file and refuses any other file.")
    var output: String?

    @Option(help: "i/n: run only the items whose line number is i modulo n; auto: i and n from SLURM_ARRAY_TASK_* or JOB_COMPLETION_INDEX.")
    var shard: String?

    @Option(help: "The shard count of a Kubernetes Indexed Job (its completions), for --shard auto; else STITCH_SHARD_COUNT.")
    var shardCount: Int?

    @Option(help: "Folder of cached node results ($XDG_CACHE_HOME/stitch/graph, else $HOME/.cache/stitch/graph).")
    var cacheDir = Self.defaultCacheFolder()

    @Flag(help: "Compute every node afresh and store nothing.")
    var noCache = false

    @Flag(help: "Print per-node timings to standard error.")
    var trace = false

    @Flag(help: "Print the outputs as one JSON object.")
    var json = false

    /// $XDG_CACHE_HOME/stitch/graph, else $HOME/.cache/stitch/graph: the user's cache, also when HOME is redirected.
    static func defaultCacheFolder(_ environment: [String: String] = ProcessInfo.processInfo.environment) -> String {
        let cache = environment["XDG_CACHE_HOME"].flatMap { $0.isEmpty ? nil : $0 }
            ?? (environment["HOME"].flatMap { $0.isEmpty ? nil : $0 } ?? NSHomeDirectory()) + "/.cache"
        return cache + "/stitch/graph"
    }

    @OptionGroup var trust: GraphTrustOptions

    func run() throws {
        let userURLs = try components.map { try split($0, "--component") }.filter { $0.0.hasSuffix(".url") }.map(\.1)
        let registry = trust.registry(allowing: userURLs)
        var loaded = try Graph.load(graph, registry: registry)
        for assignment in components {
            let (target, value) = try split(assignment, "--component")
            let parts = target.split(separator: ".", maxSplits: 1).map(String.init)
            guard let name = parts.first, loaded.components[name] != nil else { throw ValidationError("the graph has no component '\(target)'") }
            if parts.count == 2 { loaded.components[name]!.options[parts[1]] = .string(value) } else { loaded.components[name]!.model = value }
        }
        for assignment in settings {
            let (target, text) = try split(assignment, "--set")
            let parts = target.split(separator: ".", maxSplits: 1).map(String.init)
            guard parts.count == 2, let type = loaded.argumentType(parts[0], parts[1]) else {
                throw ValidationError("--set \(target): the graph has no node argument '\(target)' taking a value (node.argument)")
            }
            loaded = try loaded.setting(parts[0], parts[1], to: parseInput(text, as: type, name: target))
        }
        let runner = GraphRunner(graph: loaded, registry: registry, cacheFolder: noCache ? nil : URL(fileURLWithPath: cacheDir))
        if let items {
            guard let output else { throw ValidationError("--inputs needs --output") }
            let part = try shard.map { try Shard.parse($0, count: shardCount) } ?? .whole
            if part.count > 1 { FileHandle.standardError.write(Data("shard \(part.index) of \(part.count): results in \(part.file(for: output))\n".utf8)) }
            try runBatch(runner, items: items, output: part.file(for: output), shard: part)
            return
        }
        var values: [String: Value] = [:]
        for assignment in inputs {
            let (name, text) = try split(assignment, "--input")
            guard let type = loaded.inputs[name] else { throw ValidationError("the graph has no input '\(name)' (it takes \(loaded.inputs.keys.sorted().joined(separator: ", ")))") }
            values[name] = try parseInput(text, as: type, name: name)
        }
        let given = values
        let outputs = try runBlocking { try await runner.run(inputs: given) }
        if trace { printTrace(runner) }
        if json {
            print(Value.object(outputs).canonicalJSON)
        } else {
            for name in outputs.keys.sorted() {
                let value = outputs[name]!
                print("\(name)\t\(value.string ?? value.canonicalJSON)")
            }
        }
    }

    private func split(_ assignment: String, _ option: String) throws -> (String, String) {
        guard let equals = assignment.firstIndex(of: "=") else { throw ValidationError("\(option) takes name=value, got '\(assignment)'") }
        return (String(assignment[..<equals]), String(assignment[assignment.index(after: equals)...]))
    }

    private func parseInput(_ text: String, as type: ValueType, name: String) throws -> Value {
        switch type {
        case .image, .text: return .string(text)
        case .number:
            guard let number = Double(text) else { throw ValidationError("input '\(name)' must be a number, got '\(text)'") }
            return .number(number)
        case .bool:
            guard let bool = Bool(text) else { throw ValidationError("input '\(name)' must be true or false, got '\(text)'") }
            return .bool(bool)
        case .texts:
            if text.hasPrefix("["), let value = try? Value.parse(json: text), value.strings != nil { return value }
            return .array(text.split(separator: ",").map { .string($0.trimmingCharacters(in: .whitespaces)) })
        case .json, .record:
            if text.hasPrefix("@") { return try Self.readJSONFile(String(text.dropFirst()), input: name) }
            do { return try Value.parse(json: text) } catch { throw ValidationError("input '\(name)' is not JSON: \(text)") }
        }
    }

    /// A JSON input read from a file: a .jsonl file is the list of its lines' values, any other file one JSON value.
    static func readJSONFile(_ path: String, input name: String) throws -> Value {
        guard let data = FileManager.default.contents(atPath: path) else { throw ValidationError("input '\(name)': cannot read \(path)") }
        let text = String(decoding: data, as: UTF8.self)
        guard path.hasSuffix(".jsonl") else {
            do { return try Value.parse(json: text) } catch { throw ValidationError("\(path): not JSON (input '\(name)')") }
        }
        do {
            return .array(try Value.jsonLines(text).map(\.value))
        } catch {
            throw ValidationError("\(path): \(error) (input '\(name)')")
        }
    }

    /// Runs every item of this shard not yet in `output`, appending one line per item as it finishes.
    private func runBatch(_ runner: GraphRunner, items: String, output: String, shard: Shard) throws {
        guard let data = FileManager.default.contents(atPath: items) else { throw ValidationError("cannot read \(items)") }
        let lines = String(decoding: data, as: UTF8.self).split(separator: "\n", omittingEmptySubsequences: false)
        let results = try ResultsFile(path: output, inputs: items, itemCount: lines.last == "" ? lines.count - 1 : lines.count)
        let todo = lines.indices.filter { $0 % shard.count == shard.index && !results.done.contains($0) && !lines[$0].trimmingCharacters(in: .whitespaces).isEmpty }
        let progress = ProgressBar(total: todo.count, label: "items")
        for index in todo {
            guard let item = try? Value.parse(json: String(lines[index])), case .object(let inputs) = item else {
                throw ValidationError("\(items):\(index + 1): not a JSON object of inputs")
            }
            let outputs: [String: Value]
            do {
                outputs = try runBlocking { try await runner.run(inputs: inputs) }
            } catch let error as GraphError {
                throw ValidationError("\(items):\(index + 1): \(error)")
            }
            try results.append(item: index, outputs: outputs)
            progress.advance()
        }
        if trace { printTrace(runner) }
    }

    private func printTrace(_ runner: GraphRunner) {
        for timing in runner.trace {
            FileHandle.standardError.write(Data(String(format: "%@\t%8.1f ms\t%8.1f ms%@\n", timing.node, timing.start * 1000, (timing.end - timing.start) * 1000,
                                                       timing.cached ? "\tcached" : "").utf8))
        }
    }
}

/// Runs async work from a synchronous command. Ctrl-C cancels it instead of killing the process
/// mid-write, and the command then exits with status 130.
func runBlocking<T: Sendable>(_ body: @escaping @Sendable () async throws -> T) throws -> T {
    let interrupt = Interrupt.shared
    interrupt.install()
    let result = waitForTask(body) { interrupt.track($0) }
    interrupt.track(nil)
    if interrupt.requested {
        FileHandle.standardError.write(Data("cancelled\n".utf8))
        throw ExitCode(130)
    }
    return try result.get()
}

/// Runs `body` in a task and waits for its result on the calling thread; `started` sees the task first.
func waitForTask<T>(_ body: @escaping @Sendable () async throws -> T, started: (Task<Void, Never>) -> Void = { _ in }) -> Result<T, Error> {
    let outcome = BlockingOutcome<T>()
    let finished = DispatchSemaphore(value: 0)
    let task = Task {
        do { outcome.result = .success(try await body()) } catch { outcome.result = .failure(error) }
        finished.signal()
    }
    started(task)
    finished.wait()
    return outcome.result!
}

/// Where `waitForTask`'s task leaves its result; read only after the task signals.
private final class BlockingOutcome<T>: @unchecked Sendable {
    var result: Result<T, Error>?
}

/// Ctrl-C for the whole command: once installed, SIGINT cancels the task in flight and every
/// later `runBlocking` stops at once, so a batch ends between items, never inside a write.
final class Interrupt: @unchecked Sendable {
    static let shared = Interrupt()
    private let lock = NSLock()
    private var source: DispatchSourceSignal?
    private var current: Task<Void, Never>?
    private var wasRequested = false

    var requested: Bool { lock.withLock { wasRequested } }

    func install() {
        lock.withLock {
            guard source == nil else { return }
            signal(SIGINT, SIG_IGN)
            let source = DispatchSource.makeSignalSource(signal: SIGINT, queue: .global())
            source.setEventHandler { [self] in
                lock.withLock {
                    wasRequested = true
                    current?.cancel()
                }
            }
            source.resume()
            self.source = source
        }
    }

    func track(_ task: Task<Void, Never>?) {
        lock.withLock {
            current = task
            if wasRequested { task?.cancel() }
        }
    }
}
