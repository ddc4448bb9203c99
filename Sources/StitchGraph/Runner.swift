import Foundation
import StitchModelIO

/// Runs a validated graph: nodes in dependency order with independent nodes in parallel, each
/// component loaded once and shared, node results cached on disk by a hash of the operation,
/// its resolved arguments (image files by their bytes) and its components' identities.
public final class GraphRunner: @unchecked Sendable {
    public let graph: Graph
    let registry: OperationRegistry
    let cacheFolder: URL?
    private let components: ComponentPool
    private let lock = NSLock()
    private var statistics = Statistics()
    private var timings: [NodeTiming] = []

    public struct Statistics: Sendable, Equatable {
        public var executed = 0
        public var cacheHits = 0
        public var componentsLoaded = 0
    }

    /// When a node ran, relative to the start of its run, and whether it came from the cache.
    public struct NodeTiming: Sendable {
        public let node: String
        public let start: Double
        public let end: Double
        public let cached: Bool
    }

    /// `cacheFolder` nil turns the result cache off.
    public init(graph: Graph, registry: OperationRegistry, cacheFolder: URL?) {
        self.graph = graph
        self.registry = registry
        self.cacheFolder = cacheFolder
        components = ComponentPool(graph: graph, registry: registry)
    }

    public var stats: Statistics { lock.withLock { statistics } }
    /// Per-node timings of the last run, in start order.
    public var trace: [NodeTiming] { lock.withLock { timings.sorted { $0.start < $1.start } } }

    /// The graph's outputs for one set of inputs; with `outputs`, only those, and only the nodes they need run.
    /// Cancelling the calling task stops scheduling new nodes; cache files are only ever renamed into place whole.
    public func run(inputs: [String: Value], outputs wanted: [String]? = nil) async throws -> [String: Value] {
        try checkInputs(inputs)
        let outputs = try wanted.map { names in
            try Dictionary(uniqueKeysWithValues: names.map { name in
                guard let reference = graph.outputs[name] else {
                    throw GraphError.badInput("unknown output '\(name)' (the graph has \(graph.outputs.keys.sorted().joined(separator: ", ")))")
                }
                return (name, reference)
            })
        } ?? graph.outputs
        let needed = graph.nodesNeeded(for: outputs.values.map(\.name))
        let faultsBefore = MappedFiles.faults
        lock.withLock { timings = [] }
        let started = Date()
        var results: [String: Value] = inputs
        var dependencies = NodeDependencies(graph.nodes.filter { needed.contains($0.key) })
        try await withThrowingTaskGroup(of: (String, Value).self) { group in
            func start(_ name: String) {
                let node = graph.nodes[name]!
                let arguments = node.arguments.mapValues { resolve($0, results) }
                group.addTask { (name, try await self.execute(node, arguments: arguments, since: started)) }
            }
            for name in graph.order where needed.contains(name) && dependencies.waitingOn[name] == 0 { start(name) }
            for try await (name, value) in group {
                try Task.checkCancellation()
                results[name] = value
                for ready in dependencies.finish(name) { start(ready) }
            }
        }
        // A model or index file that shrank under this run was read as zeros: its results cannot be trusted.
        if MappedFiles.faults != faultsBefore { throw MappedFiles.changedError() }
        return outputs.mapValues { reference in reference.pick(from: results[reference.name]!) }
    }

    private func checkInputs(_ inputs: [String: Value]) throws {
        for (name, type) in graph.inputs.sorted(by: { $0.key < $1.key }) {
            guard let value = inputs[name] else { throw GraphError.badInput("missing input '\(name)' (\(type))") }
            guard type.accepts(literal: value) else { throw GraphError.badInput("input '\(name)' must be \(type), got \(value.canonicalJSON)") }
            if type == .image, let path = value.string, !FileManager.default.fileExists(atPath: path) {
                throw GraphError.badInput("input '\(name)': image file \(path) does not exist")
            }
        }
        if let extra = inputs.keys.sorted().first(where: { graph.inputs[$0] == nil }) {
            throw GraphError.badInput("unknown input '\(extra)' (the graph takes \(graph.inputs.keys.sorted().joined(separator: ", ")))")
        }
    }

    private func resolve(_ argument: NodeArgument, _ results: [String: Value]) -> Value {
        switch argument {
        case .literal(let value): return value
        case .component(let name): return .string(name)
        case .reference(let reference): return reference.pick(from: results[reference.name]!)
        case .list(let items): return .array(items.map { resolve($0, results) })
        case .mapping(let items): return .object(items.mapValues { resolve($0, results) })
        }
    }

    private func execute(_ node: NodeSpec, arguments given: [String: Value], since started: Date) async throws -> Value {
        var arguments = given
        for spec in node.operation.arguments where arguments[spec.name] == nil {
            if let value = spec.defaultValue { arguments[spec.name] = value }
        }
        let begin = Date().timeIntervalSince(started)
        let key = try cacheKey(node, arguments)
        if let key, let cached = readCache(key) {
            record(NodeTiming(node: node.name, start: begin, end: Date().timeIntervalSince(started), cached: true)) { $0.cacheHits += 1 }
            return cached
        }
        var loaded: [String: LoadedComponent] = [:]
        for spec in node.operation.arguments {
            if case .component = spec.type, let name = arguments[spec.name]?.string {
                loaded[spec.name] = try await components.get(name) { self.record(nil) { $0.componentsLoaded += 1 } }
            }
        }
        let value: Value
        do {
            value = try await node.operation.run(OperationInput(node: node.name, arguments: arguments, components: loaded))
        } catch let error as GraphError {
            throw error
        } catch is CancellationError {
            throw CancellationError()
        } catch {
            throw GraphError.operationFailed(node: node.name, detail: "\(error)")
        }
        if let key { try writeCache(key, value) }
        record(NodeTiming(node: node.name, start: begin, end: Date().timeIntervalSince(started), cached: false)) { $0.executed += 1 }
        return value
    }

    private func record(_ timing: NodeTiming?, _ update: (inout Statistics) -> Void) {
        lock.withLock {
            update(&statistics)
            if let timing { timings.append(timing) }
        }
    }

    // MARK: cache

    private func cacheKey(_ node: NodeSpec, _ arguments: [String: Value]) throws -> String? {
        guard cacheFolder != nil else { return nil }
        var keyed = arguments
        for argument in node.operation.arguments {
            guard let value = arguments[argument.name] else { continue }
            switch argument.type {
            case .value(.image):
                // An image is its bytes: the same path with new contents is a new input.
                guard let path = value.string, let data = FileManager.default.contents(atPath: path) else {
                    throw GraphError.operationFailed(node: node.name, detail: "cannot read image \(value.string ?? value.canonicalJSON)")
                }
                keyed[argument.name] = .object(["image-sha256": .string(SHA256.hex(data))])
            case .component:
                let component = graph.components[value.string ?? ""]!
                keyed[argument.name] = .string(registry.componentKinds[component.kind]!.identity(component))
            default: break
            }
        }
        let material = Value.object(["version": .number(1), "op": .string(node.operation.name), "arguments": .object(keyed)])
        return SHA256.hex(Array(material.canonicalJSON.utf8))
    }

    private func readCache(_ key: String) -> Value? {
        guard let cacheFolder, let data = FileManager.default.contents(atPath: cacheFolder.appendingPathComponent(key + ".json").path) else { return nil }
        return try? Value.parse(json: String(decoding: data, as: UTF8.self))   // an unreadable entry is recomputed
    }

    private func writeCache(_ key: String, _ value: Value) throws {
        guard let cacheFolder else { return }
        try FileManager.default.createDirectory(at: cacheFolder, withIntermediateDirectories: true)
        let target = cacheFolder.appendingPathComponent(key + ".json")
        let partial = cacheFolder.appendingPathComponent(key + ".json.\(UUID().uuidString).partial")
        try Data(value.canonicalJSON.utf8).write(to: partial)
        // rename(2) replaces atomically, so readers see the old entry or the new one, never half.
        guard rename(partial.path, target.path) == 0 else {
            try? FileManager.default.removeItem(at: partial)
            throw GraphError.operationFailed(node: key, detail: "cannot write cache entry \(target.path)")
        }
    }
}

/// Components by name, each loaded at most once, on first use, and shared by every node.
actor ComponentPool {
    let graph: Graph
    let registry: OperationRegistry
    private var loading: [String: Task<LoadedComponent, Error>] = [:]

    init(graph: Graph, registry: OperationRegistry) {
        self.graph = graph
        self.registry = registry
    }

    func get(_ name: String, onLoad: @escaping @Sendable () -> Void) async throws -> LoadedComponent {
        if let task = loading[name] { return try await task.value }
        let spec = graph.components[name]!
        let kind = registry.componentKinds[spec.kind]!
        let task = Task.detached {
            onLoad()
            return LoadedComponent(object: try kind.load(spec))
        }
        loading[name] = task
        return try await task.value
    }
}

/// A loaded component, and what operations remember about it for the rest of the run (`Memo`).
struct LoadedComponent: @unchecked Sendable {
    let object: AnyObject
    let memo = Memo()
}

/// Values derived from one component that several nodes or items reuse, such as a scorer's embeddings of a
/// category list: computed once per run, kept in memory, never written to the cache.
public final class Memo: @unchecked Sendable {
    private let lock = NSLock()
    private var values: [String: Any] = [:]

    /// The value stored under `key`, made by `make` the first time.
    public func value<T>(_ key: String, make: () throws -> T) rethrows -> T {
        if let value = lock.withLock({ values[key] }) as? T { return value }
        let value = try make()
        lock.withLock { values[key] = value }
        return value
    }
}
