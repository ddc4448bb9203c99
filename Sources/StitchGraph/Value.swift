import Foundation
import StitchTensor

/// A value flowing through a graph: JSON-shaped, so that node results can be hashed, cached
/// and printed. Images travel as file paths and are read by the operations that take them.
public indirect enum Value: Sendable, Hashable {
    case null
    case bool(Bool)
    case number(Double)
    case string(String)
    case array([Value])
    case object([String: Value])

    /// Foundation's JSON form (for JSONSerialization).
    public var json: Any {
        switch self {
        case .null: return NSNull()
        case .bool(let b): return b
        case .number(let n): return n == n.rounded() && abs(n) < 1e15 ? Int(n) as Any : n
        case .string(let s): return s
        case .array(let a): return a.map(\.json)
        case .object(let o): return o.mapValues(\.json)
        }
    }

    /// Canonical JSON text: sorted keys, so equal values give equal bytes (the cache key's input).
    public var canonicalJSON: String {
        let data = try! JSONSerialization.data(withJSONObject: json, options: [.sortedKeys, .fragmentsAllowed, .withoutEscapingSlashes])
        return String(decoding: data, as: UTF8.self)
    }

    /// JSON text as a value. Read with JSONDecoder, whose numbers are the nearest doubles to their text, so that what
    /// `canonicalJSON` wrote (a cached result, an embedding) reads back bit for bit (JSONSerialization on Linux can miss by an ulp).
    public static func parse(json text: String) throws -> Value {
        try JSONDecoder().decode(Value.self, from: Data(text.utf8))
    }

    /// The values of JSON Lines text with their 1-based line numbers, blank lines skipped; a line that is not JSON
    /// throws `GraphError.invalidValue` naming its number.
    public static func jsonLines(_ text: String) throws -> [(line: Int, value: Value)] {
        try text.split(separator: "\n", omittingEmptySubsequences: false).enumerated().compactMap { index, line in
            guard !line.trimmingCharacters(in: .whitespacesAndNewlines).isEmpty else { return nil }
            guard let value = try? parse(json: String(line)) else { throw GraphError.invalidValue("line \(index + 1) is not JSON") }
            return (index + 1, value)
        }
    }

    /// A list file's entries: one per non-empty line, trimmed (category lists).
    public static func textLines(_ text: String) -> [String] {
        text.split(whereSeparator: \.isNewline).map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
    }

    public var string: String? { if case .string(let s) = self { return s } else { return nil } }
    public var number: Double? { if case .number(let n) = self { return n } else { return nil } }
    public var strings: [String]? {
        guard case .array(let items) = self else { return nil }
        let strings = items.compactMap(\.string)
        return strings.count == items.count ? strings : nil
    }
    public subscript(field: String) -> Value? { if case .object(let o) = self { return o[field] } else { return nil } }
}

extension Value {
    /// A tensor as lists of numbers: an embedding [d] as one list, a matrix [n, d] as a list of its rows.
    public init(_ tensor: Tensor) {
        precondition(tensor.rank <= 2, "a value holds vectors and matrices, not \(tensor.shape)")
        let numbers = tensor.scalars.map { Value.number(Double($0)) }
        guard tensor.rank == 2 else { self = .array(numbers); return }
        let width = tensor.shape[1]
        self = .array((0..<tensor.shape[0]).map { .array(Array(numbers[$0 * width..<($0 + 1) * width])) })
    }
}

extension Value: Decodable {
    public init(from decoder: Decoder) throws {
        let container = try decoder.singleValueContainer()
        if container.decodeNil() { self = .null }
        else if let bool = try? container.decode(Bool.self) { self = .bool(bool) }
        else if let number = try? container.decode(Double.self) { self = .number(number) }
        else if let string = try? container.decode(String.self) { self = .string(string) }
        else if let array = try? container.decode([Value].self) { self = .array(array) }
        else { self = .object(try container.decode([String: Value].self)) }
    }
}

/// The types of graph inputs, operation arguments and results.
public indirect enum ValueType: Sendable, Equatable, CustomStringConvertible {
    case image, text, texts, number, bool, json
    /// A result with named fields, each reachable as `node.field`.
    case record([String: ValueType])

    /// The input types a graph may declare, by name.
    public static let inputTypes: [String: ValueType] = ["image": .image, "text": .text, "texts": .texts, "number": .number, "bool": .bool, "json": .json]

    public var description: String {
        switch self {
        case .image: return "image"
        case .text: return "text"
        case .texts: return "texts"
        case .number: return "number"
        case .bool: return "bool"
        case .json: return "json"
        case .record(let fields): return "{" + fields.keys.sorted().map { "\($0): \(fields[$0]!)" }.joined(separator: ", ") + "}"
        }
    }

    /// Whether a value of type `other` may be passed where `self` is expected.
    func accepts(_ other: ValueType) -> Bool {
        if self == other || self == .json { return true }
        if self == .image && other == .text { return true }   // an image is its path
        if self == .text && other == .image { return true }
        return false
    }

    /// Whether a literal fits this type.
    func accepts(literal: Value) -> Bool {
        switch (self, literal) {
        case (.json, _): return true
        case (.text, .string), (.image, .string), (.number, .number), (.bool, .bool): return true
        case (.texts, .array): return literal.strings != nil
        default: return false
        }
    }
}
