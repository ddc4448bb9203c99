import Foundation
import StitchImaging
import StitchMethods

/// One argument of an operation: a typed value or a component of some kind.
public struct OperationArgument: Sendable {
    public enum Kind: Sendable {
        case value(ValueType)
        case component(String)
    }

    public let name: String
    public let type: Kind
    /// Used when the node leaves the argument out; nil makes it required.
    public let defaultValue: Value?
    public let optional: Bool

    public var required: Bool { defaultValue == nil && !optional }

    public static func value(_ name: String, _ type: ValueType, default defaultValue: Value? = nil, optional: Bool = false) -> OperationArgument {
        OperationArgument(name: name, type: .value(type), defaultValue: defaultValue, optional: optional)
    }

    public static func component(_ name: String, kind: String) -> OperationArgument {
        OperationArgument(name: name, type: .component(kind), defaultValue: nil, optional: false)
    }
}

/// What an operation receives: its resolved arguments (defaults filled in) and its components.
public struct OperationInput: @unchecked Sendable {
    public let node: String
    public let arguments: [String: Value]
    let components: [String: LoadedComponent]

    public func component<T>(_ name: String, as type: T.Type) throws -> T {
        guard let component = components[name]?.object as? T else { throw GraphError.operationFailed(node: node, detail: "component argument '\(name)' is not a \(T.self)") }
        return component
    }

    /// What operations remember about the component argument `name` for the rest of the run.
    public func memo(_ name: String) throws -> Memo {
        guard let component = components[name] else { throw GraphError.operationFailed(node: node, detail: "no component argument '\(name)'") }
        return component.memo
    }

    /// The image at the path argument `name` holds, decoded.
    public func image(_ name: String) throws -> RGBImage { try RGBImage(contentsOf: text(name)) }

    public func text(_ name: String) throws -> String {
        guard let text = arguments[name]?.string else { throw GraphError.operationFailed(node: node, detail: "'\(name)' is not text") }
        return text
    }

    public func texts(_ name: String) throws -> [String] {
        guard let texts = arguments[name]?.strings else { throw GraphError.operationFailed(node: node, detail: "'\(name)' is not a list of texts") }
        return texts
    }

    public func number(_ name: String) throws -> Double {
        guard let number = arguments[name]?.number else { throw GraphError.operationFailed(node: node, detail: "'\(name)' is not a number") }
        return number
    }

    public func integer(_ name: String) throws -> Int {
        let value = try number(name)
        guard value == value.rounded(), abs(value) < 1e12 else { throw GraphError.operationFailed(node: node, detail: "'\(name)' must be a whole number, got \(value)") }
        return Int(value)
    }
}

/// A graph operation: its signature, which validation checks, and how it runs.
public struct Operation: Sendable {
    public let name: String
    public let summary: String
    public let arguments: [OperationArgument]
    public let output: ValueType
    public let run: @Sendable (OperationInput) async throws -> Value

    public init(_ name: String, _ summary: String, arguments: [OperationArgument], output: ValueType,
                run: @escaping @Sendable (OperationInput) async throws -> Value) {
        self.name = name
        self.summary = summary
        self.arguments = arguments
        self.output = output
        self.run = run
    }

    public func argument(_ name: String) -> OperationArgument? { arguments.first { $0.name == name } }
}

/// How a component kind loads (once per run) and what identifies its weights in cache keys.
public struct ComponentKind: Sendable {
    public let name: String
    /// The kind operations ask for that this one provides: itself, or for an old name (`clip`) the capability (`scorer`).
    public let provides: String
    public let load: @Sendable (ComponentSpec) throws -> AnyObject
    /// Changes whenever the loaded model would: e.g. the resolved checkpoint's identity and the options.
    public let identity: @Sendable (ComponentSpec) -> String

    public init(_ name: String, provides: String? = nil, load: @escaping @Sendable (ComponentSpec) throws -> AnyObject,
                identity: @escaping @Sendable (ComponentSpec) -> String) {
        self.name = name
        self.provides = provides ?? name
        self.load = load
        self.identity = identity
    }
}

/// The operations and component kinds graphs may use. Each component or method registers
/// its own in one place (see `StitchOperations`); tests may add their own.
public final class OperationRegistry: @unchecked Sendable {
    public private(set) var operations: [String: Operation] = [:]
    public private(set) var componentKinds: [String: ComponentKind] = [:]
    /// What graphs checked and run with this registry may reach beyond themselves.
    public let trust: GraphTrust

    public init(trust: GraphTrust = GraphTrust()) {
        self.trust = trust
        for operation in Self.textOperations { register(operation) }
    }

    public func register(_ operation: Operation) { operations[operation.name] = operation }
    public func register(_ kind: ComponentKind) { componentKinds[kind.name] = kind }

    /// Operations on text that need no model.
    static let textOperations: [Operation] = [
        Operation("template", "Fill {name} placeholders of a template from `values`.",
                  arguments: [.value("template", .text), .value("values", .json, default: .object([:]))], output: .text) { input in
            try fillTemplate(try input.text("template"), values: input.arguments["values"] ?? .object([:]), node: input.node)
        },
        Operation("join", "Join texts with a separator.",
                  arguments: [.value("texts", .texts), .value("separator", .text, default: .string(", "))], output: .text) { input in
            .string(try input.texts("texts").joined(separator: try input.text("separator")))
        },
        Operation("split", "Split text at a separator, trimming pieces and dropping empty ones.",
                  arguments: [.value("text", .text), .value("separator", .text, default: .string(","))], output: .texts) { input in
            let separator = try input.text("separator")
            guard !separator.isEmpty else { throw GraphError.operationFailed(node: input.node, detail: "the separator is empty") }
            return .array(try input.text("text").components(separatedBy: separator)
                .map { $0.trimmingCharacters(in: .whitespacesAndNewlines) }.filter { !$0.isEmpty }.map(Value.string))
        },
        Operation("top_k", "The k names with the highest scores of a {name: score} mapping, best first.",
                  arguments: [.value("scores", .json), .value("k", .number, default: .number(1))], output: .texts) { input in
            guard case .object(let scores) = input.arguments["scores"] ?? .null else {
                throw GraphError.operationFailed(node: input.node, detail: "'scores' must map names to numbers")
            }
            var ranked: [(name: String, score: Double)] = []
            for (name, value) in scores {
                guard let score = value.number else { throw GraphError.operationFailed(node: input.node, detail: "score of '\(name)' is not a number") }
                ranked.append((name, score))
            }
            ranked.sort { $0.score > $1.score || ($0.score == $1.score && $0.name < $1.name) }
            return .array(ranked.prefix(max(0, try input.integer("k"))).map { Value.string($0.name) })
        },
    ]
}

/// Replaces each {name} in `template` with the text of values[name] (a list of texts joined by ", ", other values as
/// JSON); {{ and }} are literal braces.
func fillTemplate(_ template: String, values: Value, node: String) throws -> Value {
    do {
        return .string(try PromptTemplate.fill(template) { name in
            switch values[name] {
            case .string(let text)?: return text
            case let value? where value.strings != nil: return value.strings!.joined(separator: ", ")
            case let value?: return value.canonicalJSON
            case nil: return nil
            }
        })
    } catch {
        throw GraphError.operationFailed(node: node, detail: "\(error)")
    }
}
