import ArgumentParser
import Foundation
import StitchGraph
import StitchModelIO
import StitchRemote
import StitchTensor

/// `stitch vqa` and `stitch caption --method magic|socratic` run their method's graph from Examples/ (or the user's
/// copy, --graph); the flags a user gives fill the graph's inputs, node settings and components, and everything left
/// unsaid is the graph's.
struct MethodGraphOptions: ParsableArguments {
    @Option(help: "Run this graph instead of the method's example graph (a copy with a step changed); the flags fill it the same way.")
    var graph: String?

    @Option(help: "Cache node results in this folder (as `stitch run`), so a rerun with one step changed recomputes only that step and what follows.")
    var cacheDir: String?

    @OptionGroup var trust: GraphTrustOptions
}

/// A method graph being filled by a command's flags, then run.
struct MethodGraph {
    private(set) var graph: Graph
    let registry: OperationRegistry
    let cacheFolder: URL?

    /// `example`: the graph's file name in Examples/, found in the current folder or in the checkout this binary was
    /// built from. Those Examples/ read the repository's Prompts/, so that folder is readable besides the user's choices.
    init(example: String, options: MethodGraphOptions, language: LanguageModelOptions? = nil) throws {
        let root = Self.repositoryRoot(holding: "Examples/" + example)
        let path = try options.graph ?? root.map { $0.appendingPathComponent("Examples/" + example).path } ?? {
            throw ValidationError("Examples/\(example) is in neither the current folder nor \(Self.buildCheckout.path); run from the repository or give --graph FILE")
        }()
        var environment = ProcessInfo.processInfo.environment
        var urls = options.trust.urls
        if let language {
            if let key = language.lmKey { environment["STITCH_LM_API_KEY"] = key }
            if let url = language.serverURL { urls.append(url) }
        }
        registry = .standard(trust: GraphTrust(readableFolders: options.trust.paths + [root.map { $0.appendingPathComponent("Prompts").path }].compactMap { $0 },
                                               keyedURLs: urls, environment: environment))
        graph = try Graph.load(path, registry: registry)
        cacheFolder = options.cacheDir.map { URL(fileURLWithPath: $0) }
    }

    /// The folder (the current one, else the build's checkout) that holds `file`.
    static func repositoryRoot(holding file: String) -> URL? {
        [URL(fileURLWithPath: FileManager.default.currentDirectoryPath), buildCheckout].first {
            FileManager.default.fileExists(atPath: $0.appendingPathComponent(file).path)
        }
    }

    /// The repository this binary was built from (Sources/stitch/ is two folders below it).
    static let buildCheckout = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

    /// Sets node `node`'s argument `argument` when the user gave a value.
    mutating func set(_ node: String, _ argument: String, _ value: Value?) throws {
        guard let value else { return }
        graph = try graph.setting(node, argument, to: value)
    }

    /// The literal the graph gives node `node`'s argument `argument`, if it gives one.
    func literal(_ node: String, _ argument: String) -> Value? {
        guard case .literal(let value)? = graph.nodes[node]?.arguments[argument] else { return nil }
        return value
    }

    /// Points component `name` at `model` (a folder or hub id) when the user named one.
    mutating func component(_ name: String, model: String?, revision: String? = nil) throws {
        guard model != nil || revision != nil else { return }
        guard graph.components[name] != nil else { throw ValidationError("\(graph.file) has no component '\(name)' to point at \(model ?? "revision \(revision!)")") }
        if let model { graph.components[name]!.model = model }
        if let revision { graph.components[name]!.options["revision"] = .string(revision) }
    }

    /// Loads the graph's local models at `precision` (option `precision` of each component that is not a server);
    /// FP32 leaves the graph as written.
    mutating func precision(_ precision: Precision) {
        guard precision != .fp32 else { return }
        for (name, spec) in graph.components where spec.options["url"] == nil {
            graph.components[name]!.options["precision"] = .string(precision.rawValue)
        }
    }

    /// The completion component `name` as the language-model flags set it: a local model, or a server.
    mutating func languageModel(_ name: String, local: String?, _ language: LanguageModelOptions, revision: String?) throws {
        try component(name, model: local, revision: revision)
        guard let url = language.serverURL else { return }
        graph.components[name]!.options["url"] = .string(url)
        graph.components[name]!.options["model"] = .string(language.lmModel)
        if language.lmApi != .completions { graph.components[name]!.options["api"] = .string(language.lmApi.rawValue) }
    }

    func runner() -> GraphRunner { GraphRunner(graph: graph, registry: registry, cacheFolder: cacheFolder) }

    /// The outputs (all, or those named) for one set of inputs.
    static func run(_ runner: GraphRunner, _ inputs: [String: Value], outputs: [String]? = nil) throws -> [String: Value] {
        try runBlocking { try await runner.run(inputs: inputs, outputs: outputs) }
    }
}
