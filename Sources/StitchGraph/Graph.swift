import Foundation
import StitchTensor
import Yams

/// One problem in a graph file, located by line and column and, when it has one, by node.
public struct GraphDiagnostic: Sendable, CustomStringConvertible {
    public let file: String
    public let line: Int
    public let column: Int
    public let node: String?
    public let message: String

    public var description: String {
        "\(file):\(line):\(column): " + (node.map { "node '\($0)': " } ?? "") + message
    }
}

public enum GraphError: Error, CustomStringConvertible {
    /// Everything wrong with a graph file, found before anything runs.
    case invalid([GraphDiagnostic])
    case invalidValue(String)
    case badInput(String)
    case operationFailed(node: String, detail: String)

    public var description: String {
        switch self {
        case .invalid(let diagnostics): return diagnostics.map(\.description).joined(separator: "\n")
        case .invalidValue(let detail): return detail
        case .badInput(let detail): return detail
        case .operationFailed(let node, let detail): return "node '\(node)': \(detail)"
        }
    }
}

/// `$name`, `$name.field` or a longer path such as `$name.labels.0`: an input, a node's result, or a part of it
/// (a field of a record, an item of a list counted from 0).
public struct Reference: Sendable, Hashable {
    public let name: String
    public let path: [String]

    /// From the text after "$"; nil when the name is empty.
    init?(_ text: Substring) {
        let parts = text.split(separator: ".", omittingEmptySubsequences: false).map(String.init)
        guard let name = parts.first, !name.isEmpty else { return nil }
        (self.name, path) = (name, Array(parts.dropFirst()))
    }

    public var description: String { "$" + ([name] + path).joined(separator: ".") }

    /// The part of `base` (the named value) that the path picks; null where it picks nothing.
    func pick(from base: Value) -> Value {
        path.reduce(base) { value, step in
            switch value {
            case .object(let fields): return fields[step] ?? .null
            case .array(let items): return Int(step).flatMap { items.indices.contains($0) ? items[$0] : nil } ?? .null
            default: return .null
            }
        }
    }
}

/// A node argument as written: a literal, a reference, a component name, or lists and
/// mappings that may hold references.
public indirect enum NodeArgument: Sendable {
    case literal(Value)
    case reference(Reference)
    case component(String)
    case list([NodeArgument])
    case mapping([String: NodeArgument])

    var references: [Reference] {
        switch self {
        case .literal, .component: return []
        case .reference(let reference): return [reference]
        case .list(let items): return items.flatMap(\.references)
        case .mapping(let items): return items.values.flatMap(\.references)
        }
    }
}

public struct ComponentSpec: Sendable {
    public let kind: String
    public var model: String
    public var options: [String: Value]
}

public struct NodeSpec: Sendable {
    public let name: String
    public let operation: Operation
    public let arguments: [String: NodeArgument]
    /// Inputs and nodes this node reads.
    public let dependencies: Set<String>

    init(name: String, operation: Operation, arguments: [String: NodeArgument]) {
        (self.name, self.operation, self.arguments) = (name, operation, arguments)
        dependencies = Set(arguments.values.flatMap(\.references).map(\.name))
    }
}

/// Which nodes wait on which: built once, so ordering and running a graph stay linear in its size.
struct NodeDependencies {
    /// How many other nodes each node reads.
    var waitingOn: [String: Int]
    /// The nodes that read each node's result, by name.
    let dependents: [String: [String]]

    init(_ nodes: [String: NodeSpec]) {
        var dependents: [String: [String]] = [:]
        var waitingOn: [String: Int] = [:]
        for (name, node) in nodes {
            let upstream = node.dependencies.filter { nodes[$0] != nil }
            waitingOn[name] = upstream.count
            for dependency in upstream { dependents[dependency, default: []].append(name) }
        }
        self.waitingOn = waitingOn
        self.dependents = dependents.mapValues { $0.sorted() }
    }

    /// Marks `name` finished and returns the nodes that now have all they read.
    mutating func finish(_ name: String) -> [String] {
        (dependents[name] ?? []).filter { dependent in
            waitingOn[dependent]! -= 1
            return waitingOn[dependent] == 0
        }
    }
}

/// A validated graph: components, typed inputs, nodes in a runnable order, and outputs.
public struct Graph: Sendable {
    public let file: String
    public var components: [String: ComponentSpec]
    public let inputs: [String: ValueType]
    public private(set) var nodes: [String: NodeSpec]
    public let outputs: [String: Reference]
    /// Node names in dependency order.
    public let order: [String]
    /// The prompt files the graph read (each inside its folder or an allowed one).
    public internal(set) var promptFiles: [String] = []

    /// Reads and validates a graph file; all problems are reported at once.
    public static func load(_ path: String, registry: OperationRegistry) throws -> Graph {
        func failure(_ message: String) -> GraphError { .invalid([GraphDiagnostic(file: path, line: 1, column: 1, node: nil, message: message)]) }
        // Read with a bound, so /dev/zero or a huge file cannot fill memory.
        guard let handle = FileHandle(forReadingAtPath: path), let data = try? handle.read(upToCount: Limit.graphFileBytes.value + 1) ?? Data() else {
            throw failure("cannot read the file")
        }
        try? handle.close()
        guard data.count <= Limit.graphFileBytes.value else {
            throw failure("a graph file may be at most \(Limit.graphFileBytes.value) bytes \(Limit.graphFileBytes.hint)")
        }
        return try parse(String(decoding: data, as: UTF8.self), file: path, registry: registry)
    }

    public static func parse(_ text: String, file: String, registry: OperationRegistry) throws -> Graph {
        var parser = GraphParser(file: file, registry: registry)
        guard let graph = parser.parse(text), parser.diagnostics.isEmpty else { throw GraphError.invalid(parser.diagnostics) }
        return graph
    }

    /// What running the graph reaches outside it, one line each: the prompt files it read and the servers its
    /// components send prompts to, with or without the API key.
    public func reach(_ trust: GraphTrust) -> [String] {
        let servers = components.sorted { $0.key < $1.key }.compactMap { name, spec -> String? in
            guard let url = spec.options["url"]?.string else { return nil }
            return trust.mayReceiveKey(url) ? "component '\(name)' sends prompts to \(url) with the API key"
                : "component '\(name)' sends prompts to \(url) without the API key (not the configured server; --allow-url \(url) sends it)"
        }
        return promptFiles.map { "reads file \($0)" } + servers
    }

    /// The graph with node `node`'s argument `argument` set to `value`, checked against the operation's type; nodes that
    /// only this argument read are no longer run. (Removing what a node reads keeps `order` a dependency order.)
    public func setting(_ node: String, _ argument: String, to value: Value) throws -> Graph {
        guard let spec = nodes[node] else { throw GraphError.badInput("\(file): no node '\(node)' (nodes: \(nodes.keys.sorted().joined(separator: ", ")))") }
        guard let declared = spec.operation.argument(argument) else {
            throw GraphError.badInput("\(file): node '\(node)': \(spec.operation.name) has no argument '\(argument)' (it takes \(spec.operation.arguments.map(\.name).joined(separator: ", ")))")
        }
        guard case .value(let type) = declared.type else {
            throw GraphError.badInput("\(file): node '\(node)': '\(argument)' names a component; point the component elsewhere instead")
        }
        guard type.accepts(literal: value) else { throw GraphError.badInput("\(file): node '\(node)': '\(argument)' must be \(type), got \(value.canonicalJSON)") }
        var arguments = spec.arguments
        arguments[argument] = .literal(value)
        var graph = self
        graph.nodes[node] = NodeSpec(name: node, operation: spec.operation, arguments: arguments)
        return graph
    }

    /// The type of node `node`'s value argument `argument`, if it has one.
    public func argumentType(_ node: String, _ argument: String) -> ValueType? {
        guard case .value(let type)? = nodes[node]?.operation.argument(argument)?.type else { return nil }
        return type
    }

    /// The nodes that the named inputs or nodes read, directly or through others, and those named nodes.
    func nodesNeeded(for names: [String]) -> Set<String> {
        var needed = Set<String>()
        var pending = names.filter { nodes[$0] != nil }
        while let name = pending.popLast() {
            guard needed.insert(name).inserted else { continue }
            pending += nodes[name]!.dependencies.filter { nodes[$0] != nil && !needed.contains($0) }
        }
        return needed
    }

    /// The type of what a reference names; nil when its path leads nowhere.
    func type(of reference: Reference) -> ValueType? {
        reference.path.reduce(inputs[reference.name] ?? nodes[reference.name]?.operation.output) { type, step in
            switch type {
            case .record(let fields)?: return fields[step]
            case .texts?: return Int(step) != nil ? .text : nil
            case .json?: return .json
            default: return nil
            }
        }
    }
}

/// Turns YAML into a Graph, collecting every problem with its position.
struct GraphParser {
    let file: String
    let registry: OperationRegistry
    var diagnostics: [GraphDiagnostic] = []
    /// The prompt files read, for `stitch validate` to list.
    var promptFiles: [String] = []

    init(file: String, registry: OperationRegistry) {
        self.file = file
        self.registry = registry
    }

    mutating func report(_ node: Node?, _ message: String, in graphNode: String? = nil) {
        let mark = node?.mark
        diagnostics.append(GraphDiagnostic(file: file, line: mark?.line ?? 1, column: mark?.column ?? 1, node: graphNode, message: message))
    }

    mutating func parse(_ text: String) -> Graph? {
        let root: Node?
        do {
            root = try Yams.compose(yaml: text)
        } catch let error as YamlError {
            diagnostics.append(Self.diagnostic(for: error, file: file))
            return nil
        } catch {
            report(nil, "not YAML: \(error)")
            return nil
        }
        guard let root, let top = root.mapping else {
            report(root, "a graph is a mapping with components, inputs, nodes and outputs")
            return nil
        }
        // Aliases repeat what they name, so a few hundred bytes can stand for billions of values; count before walking.
        var budget = Limit.graphValues.value
        guard Self.fits(root, within: &budget) else {
            report(nil, "the document stands for more than \(Limit.graphValues.value) YAML values once its aliases are expanded \(Limit.graphValues.hint)")
            return nil
        }
        for (key, _) in top where !["components", "inputs", "nodes", "outputs"].contains(key.string ?? "") {
            report(key, "unknown section '\(key.string ?? "?")' (expected components, inputs, nodes, outputs)")
        }
        let components = parseComponents(top["components"])
        let inputs = parseInputs(top["inputs"])
        guard let nodesNode = top["nodes"], let nodeMapping = nodesNode.mapping, !nodeMapping.isEmpty else {
            report(top["nodes"] ?? root, "the graph needs a 'nodes' mapping with at least one node")
            return nil
        }
        var nodes: [String: NodeSpec] = [:]
        var marks: [String: Node] = [:]
        for (key, value) in nodeMapping {
            guard let name = key.string, !name.isEmpty else { report(key, "a node name must be a string"); continue }
            if inputs[name] != nil { report(key, "a node and an input are both named '\(name)'", in: name) }
            marks[name] = key
            if let node = parseNode(name, value, components: components) { nodes[name] = node }
        }
        let outputs = parseOutputs(top["outputs"], root: root)
        // References must name an input or a node, and fields a field of a record result.
        let known = Graph(file: file, components: components, inputs: inputs, nodes: nodes, outputs: [:], order: [])
        for (name, node) in nodes.sorted(by: { $0.key < $1.key }) {
            for (argumentName, argument) in node.arguments.sorted(by: { $0.key < $1.key }) {
                checkTypes(argument, expected: node.operation.argument(argumentName)!.type, graph: known, node: name, argument: argumentName, at: marks[name])
            }
        }
        for (output, reference) in outputs.sorted(by: { $0.key < $1.key }) {
            checkReference(reference, graph: known, at: top["outputs"]?.mapping?[output], context: "output '\(output)'", node: nil)
        }
        let order = topologicalOrder(nodes, marks: marks)
        var graph = Graph(file: file, components: components, inputs: inputs, nodes: nodes, outputs: outputs, order: order)
        graph.promptFiles = promptFiles
        return graph
    }

    /// Whether `node`, aliases expanded, has at most `budget` values; stops as soon as it has more.
    static func fits(_ node: Node, within budget: inout Int) -> Bool {
        budget -= 1
        guard budget >= 0 else { return false }
        switch node {
        case .sequence(let sequence): return sequence.allSatisfy { fits($0, within: &budget) }
        case .mapping(let mapping): return mapping.allSatisfy { fits($0.key, within: &budget) && fits($0.value, within: &budget) }
        default: return true
        }
    }

    static func diagnostic(for error: YamlError, file: String) -> GraphDiagnostic {
        switch error {
        case .scanner(_, let problem, let mark, _), .parser(_, let problem, let mark, _), .composer(_, let problem, let mark, _):
            return GraphDiagnostic(file: file, line: mark.line, column: mark.column, node: nil, message: "YAML: \(problem)")
        default:
            return GraphDiagnostic(file: file, line: 1, column: 1, node: nil, message: "YAML: \(error)")
        }
    }

    mutating func parseComponents(_ node: Node?) -> [String: ComponentSpec] {
        guard let node else { return [:] }
        guard let mapping = node.mapping else { report(node, "'components' must map names to {kind, model}"); return [:] }
        var components: [String: ComponentSpec] = [:]
        for (key, value) in mapping {
            let name = key.string ?? "?"
            guard let fields = value.mapping else { report(value, "component '\(name)' must be a mapping with kind and model"); continue }
            guard let kind = fields["kind"]?.string else { report(value, "component '\(name)' has no kind"); continue }
            guard registry.componentKinds[kind] != nil else {
                report(fields["kind"], "component '\(name)': unknown kind '\(kind)' (known: \(registry.componentKinds.keys.sorted().joined(separator: ", ")))")
                continue
            }
            guard let model = fields["model"]?.string else { report(value, "component '\(name)' has no model"); continue }
            var options: [String: Value] = [:]
            for (optionKey, optionValue) in fields where !["kind", "model"].contains(optionKey.string ?? "") {
                options[optionKey.string ?? "?"] = literal(optionValue)
            }
            if let precision = options["precision"], Precision(rawValue: precision.string ?? "") == nil {
                report(fields["precision"], "component '\(name)': precision is \(Precision.allCases.map(\.rawValue).joined(separator: " or "))")
            }
            components[name] = ComponentSpec(kind: kind, model: model, options: options)
        }
        return components
    }

    mutating func parseInputs(_ node: Node?) -> [String: ValueType] {
        guard let node else { return [:] }
        guard let mapping = node.mapping else { report(node, "'inputs' must map names to types"); return [:] }
        var inputs: [String: ValueType] = [:]
        for (key, value) in mapping {
            let name = key.string ?? "?"
            guard let typeName = value.string, let type = ValueType.inputTypes[typeName] else {
                report(value, "input '\(name)': unknown type '\(value.string ?? "?")' (known: \(ValueType.inputTypes.keys.sorted().joined(separator: ", ")))")
                continue
            }
            inputs[name] = type
        }
        return inputs
    }

    mutating func parseNode(_ name: String, _ node: Node, components: [String: ComponentSpec]) -> NodeSpec? {
        guard let fields = node.mapping else { report(node, "a node is a mapping with 'op' and its arguments", in: name); return nil }
        guard let opName = fields["op"]?.string else { report(node, "no 'op'", in: name); return nil }
        guard let operation = registry.operations[opName] else {
            report(fields["op"], "unknown op '\(opName)' (known: \(registry.operations.keys.sorted().joined(separator: ", ")))", in: name)
            return nil
        }
        var arguments: [String: NodeArgument] = [:]
        for (key, value) in fields where key.string != "op" {
            let argumentName = key.string ?? "?"
            guard let spec = operation.argument(argumentName) else {
                report(key, "\(opName) has no argument '\(argumentName)' (it takes \(operation.arguments.map(\.name).joined(separator: ", ")))", in: name)
                continue
            }
            if case .component(let kind) = spec.type {
                guard let componentName = value.string, let component = components[componentName] else {
                    report(value, "'\(argumentName)' must name a component of kind \(kind)", in: name)
                    continue
                }
                guard registry.componentKinds[component.kind]?.provides == kind else {
                    report(value, "'\(argumentName)' needs a \(kind) component; '\(componentName)' is a \(component.kind)", in: name)
                    continue
                }
                arguments[argumentName] = .component(componentName)
            } else if let argument = parseArgument(value, node: name) {
                arguments[argumentName] = argument
            }
        }
        for spec in operation.arguments where spec.required && fields[spec.name] == nil {
            report(node, "missing argument '\(spec.name)' of \(opName)", in: name)
        }
        return NodeSpec(name: name, operation: operation, arguments: arguments)
    }

    /// `$name[.field]` references, files beside the graph ({file: path} a prompt, {lines: path} a list of texts,
    /// {jsonl: path} a list of JSON values), lists and mappings of them, or literals.
    mutating func parseArgument(_ node: Node, node graphNode: String) -> NodeArgument? {
        switch node {
        case .scalar(let scalar) where scalar.style == .plain || scalar.style == .singleQuoted || scalar.style == .doubleQuoted:
            let text = scalar.string
            if text.hasPrefix("$$") { return .literal(.string(String(text.dropFirst()))) }
            if text.hasPrefix("$") {
                guard let reference = Reference(text.dropFirst()) else { report(node, "empty reference '\(text)'", in: graphNode); return nil }
                return .reference(reference)
            }
            return .literal(literal(node))
        case .mapping(let mapping):
            if mapping.count == 1, let (key, value) = mapping.first.map({ ($0.key.string ?? "", $0.value.string) }),
               let path = value, let form = GraphFileForm(rawValue: key) {
                return loadFile(path, as: form, at: node, in: graphNode)
            }
            var items: [String: NodeArgument] = [:]
            for (key, value) in mapping {
                if let argument = parseArgument(value, node: graphNode) { items[key.string ?? "?"] = argument }
            }
            return .mapping(items)
        case .sequence(let sequence):
            return .list(sequence.compactMap { parseArgument($0, node: graphNode) })
        default:
            return .literal(literal(node))
        }
    }

    /// How a file named in a graph becomes a value.
    enum GraphFileForm: String {
        /// The text, without the newline that ends its last line.
        case file
        /// One text per non-empty line, trimmed (category lists).
        case lines
        /// One JSON value per non-empty line (pools of examples).
        case jsonl
    }

    /// A file relative to the graph file's folder, and inside it unless the user allowed another folder (`registry.trust`).
    mutating func loadFile(_ path: String, as form: GraphFileForm, at node: Node, in graphNode: String) -> NodeArgument? {
        let folder = URL(fileURLWithPath: file).deletingLastPathComponent()
        let candidate = path.hasPrefix("/") ? path : folder.appendingPathComponent(path).path
        guard registry.trust.mayRead(candidate, besides: folder.path) else {
            report(node, "file '\(path)' is outside the graph's folder; --allow-path FOLDER lets graphs read there", in: graphNode)
            return nil
        }
        var isFolder: ObjCBool = false
        guard FileManager.default.fileExists(atPath: candidate, isDirectory: &isFolder), !isFolder.boolValue,
              let handle = FileHandle(forReadingAtPath: candidate), let data = try? handle.read(upToCount: Limit.graphFileBytes.value + 1) else {
            report(node, "file '\(path)' not found beside the graph", in: graphNode)
            return nil
        }
        guard data.count <= Limit.graphFileBytes.value else {
            report(node, "file '\(path)' is over \(Limit.graphFileBytes.value) bytes \(Limit.graphFileBytes.hint)", in: graphNode)
            return nil
        }
        promptFiles.append(candidate)
        let text = String(decoding: data, as: UTF8.self)
        switch form {
        case .file:
            return .literal(.string(text.hasSuffix("\n") ? String(text.dropLast()) : text))
        case .lines:
            return .literal(.array(Value.textLines(text).map(Value.string)))
        case .jsonl:
            do {
                return .literal(.array(try Value.jsonLines(text).map(\.value)))
            } catch {
                report(node, "file '\(path)': \(error)", in: graphNode)
                return nil
            }
        }
    }

    func literal(_ node: Node) -> Value {
        switch node {
        case .scalar(let scalar):
            if scalar.style == .plain {
                if node.null != nil { return .null }
                if let bool = node.bool { return .bool(bool) }
                if let number = node.float { return .number(number) }
            }
            return .string(scalar.string)
        case .sequence(let sequence): return .array(sequence.map(literal))
        case .mapping(let mapping): return .object(Dictionary(mapping.map { ($0.key.string ?? "?", literal($0.value)) }, uniquingKeysWith: { a, _ in a }))
        default: return .null
        }
    }

    mutating func parseOutputs(_ node: Node?, root: Node) -> [String: Reference] {
        guard let node, let mapping = node.mapping, !mapping.isEmpty else {
            report(node ?? root, "the graph needs an 'outputs' mapping: name -> $node or $node.field")
            return [:]
        }
        var outputs: [String: Reference] = [:]
        for (key, value) in mapping {
            let name = key.string ?? "?"
            guard let text = value.string, text.hasPrefix("$"), let reference = Reference(text.dropFirst()) else {
                report(value, "output '\(name)' must be a reference such as $node or $node.field")
                continue
            }
            outputs[name] = reference
        }
        return outputs
    }

    mutating func checkReference(_ reference: Reference, graph: Graph, at node: Node?, context: String, node graphNode: String?) {
        if graph.inputs[reference.name] == nil && graph.nodes[reference.name] == nil {
            report(node, "\(context): '$\(reference.name)' is neither an input nor a node", in: graphNode)
        } else if !reference.path.isEmpty && graph.type(of: reference) == nil {
            let base = graph.inputs[reference.name] ?? graph.nodes[reference.name]!.operation.output
            report(node, "\(context): '$\(reference.name)' (\(base)) has no field '\(reference.path.joined(separator: "."))'", in: graphNode)
        }
    }

    mutating func checkTypes(_ argument: NodeArgument, expected: OperationArgument.Kind, graph: Graph, node: String, argument name: String, at mark: Node?) {
        guard case .value(let type) = expected else { return }
        switch argument {
        case .component: break
        case .literal(let value):
            if !type.accepts(literal: value) { report(mark, "'\(name)' must be \(type), got \(value.canonicalJSON)", in: node) }
        case .reference(let reference):
            checkReference(reference, graph: graph, at: mark, context: "'\(name)'", node: node)
            if let found = graph.type(of: reference), !type.accepts(found) {
                report(mark, "'\(name)' must be \(type), but '\(reference.description)' is \(found)", in: node)
            }
        case .list(let items):
            guard type == .texts || type == .json else { report(mark, "'\(name)' must be \(type), not a list", in: node); return }
            for item in items { checkTypes(item, expected: .value(type == .texts ? .text : .json), graph: graph, node: node, argument: name, at: mark) }
        case .mapping(let items):
            guard type == .json else { report(mark, "'\(name)' must be \(type), not a mapping", in: node); return }
            for item in items.values { checkTypes(item, expected: .value(.json), graph: graph, node: node, argument: name, at: mark) }
        }
    }

    /// Kahn's algorithm, the smallest ready name first; nodes left over sit on a cycle, which is reported with its members.
    mutating func topologicalOrder(_ nodes: [String: NodeSpec], marks: [String: Node]) -> [String] {
        var dependencies = NodeDependencies(nodes)
        var ready = BinaryHeap<String>(before: <)
        for (name, count) in dependencies.waitingOn where count == 0 { ready.push(name) }
        var order: [String] = []
        while let next = ready.pop() {
            order.append(next)
            for name in dependencies.finish(next) { ready.push(name) }
        }
        if order.count < nodes.count {
            let placed = Set(order)
            let cycle = nodes.keys.filter { !placed.contains($0) }.sorted()
            report(marks[cycle[0]], "cycle through nodes \(cycle.joined(separator: " -> "))", in: cycle[0])
        }
        return order
    }
}
