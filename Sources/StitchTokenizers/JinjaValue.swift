import Foundation

public indirect enum JinjaValue: Sendable, Equatable {
    case undefined
    case none
    case bool(Bool)
    case int(Int)
    case double(Double)
    case string(String)
    case array([JinjaValue])
    case object([(key: String, value: JinjaValue)])
    case namespace(JinjaNamespace)
    /// A global function, or a method bound to its receiver.
    case function(String, receiver: JinjaValue?)

    public static func == (a: JinjaValue, b: JinjaValue) -> Bool {
        switch (a, b) {
        case (.undefined, .undefined), (.none, .none): return true
        case let (.string(x), .string(y)): return x == y
        case let (.array(x), .array(y)): return x == y
        case let (.object(x), .object(y)):
            return x.count == y.count && x.allSatisfy { entry in y.contains { $0.key == entry.key && $0.value == entry.value } }
        case let (.namespace(x), .namespace(y)): return x === y
        case let (.function(x, r), .function(y, s)): return x == y && r == s
        default:
            if let x = a.number, let y = b.number { return x == y }   // Python: True == 1 == 1.0
            return false
        }
    }

    /// A value from JSON text, keys in the order written (as Python's json module keeps them).
    public init(jsonText: Data) throws(JinjaError) {
        var reader = OrderedJSONReader(bytes: Array(jsonText))
        do { self = try reader.document() } catch { throw JinjaError("not JSON: \(error)") }
    }

    var number: Double? {
        switch self {
        case .bool(let b): return b ? 1 : 0
        case .int(let i): return Double(i)
        case .double(let d): return d
        default: return nil
        }
    }

    var isTrue: Bool {
        switch self {
        case .undefined, .none: return false
        case .bool(let b): return b
        case .int(let i): return i != 0
        case .double(let d): return d != 0
        case .string(let s): return !s.isEmpty
        case .array(let a): return !a.isEmpty
        case .object(let o): return !o.isEmpty
        case .namespace, .function: return true
        }
    }

    public subscript(key: String) -> JinjaValue? {
        guard case .object(let entries) = self else { return nil }
        return entries.first { $0.key == key }?.value
    }

    /// Python's str(): what `{{ }}` and `~` print.
    public var text: String {
        switch self {
        case .undefined: return ""
        case .string(let s): return s
        default: return repr
        }
    }

    /// Python's repr().
    public var repr: String {
        switch self {
        case .undefined: return ""
        case .none: return "None"
        case .bool(let b): return b ? "True" : "False"
        case .int(let i): return String(i)
        case .double(let d): return pythonFloat(d)
        case .string(let s): return pythonStringRepr(s)
        case .array(let a): return "[" + a.map(\.repr).joined(separator: ", ") + "]"
        case .object(let o): return "{" + o.map { pythonStringRepr($0.key) + ": " + $0.value.repr }.joined(separator: ", ") + "}"
        case .namespace: return "<Namespace>"
        case .function(let name, _): return "<function \(name)>"
        }
    }

    var typeName: String {
        switch self {
        case .undefined: return "Undefined"
        case .none: return "NoneType"
        case .bool: return "bool"
        case .int: return "int"
        case .double: return "float"
        case .string: return "str"
        case .array: return "list"
        case .object: return "dict"
        case .namespace: return "Namespace"
        case .function: return "function"
        }
    }
}

/// `namespace(...)`: the one mutable value, so that a loop body can set what the template reads after the loop.
public final class JinjaNamespace: @unchecked Sendable {
    var values: [(key: String, value: JinjaValue)]
    init(_ values: [(key: String, value: JinjaValue)]) { self.values = values }
}

/// Python's repr of a float: the shortest text that reads back, with ".0" on whole numbers.
func pythonFloat(_ d: Double) -> String {
    if d.isNaN { return "nan" }
    if d.isInfinite { return d < 0 ? "-inf" : "inf" }
    if d == d.rounded(), d.magnitude < 1e16 { return String(format: "%.1f", d) }
    var text = "\(d)"   // Swift's description is also the shortest round trip; exponents differ in form
    if let e = text.firstIndex(of: "e") {
        let exponent = Int(text[text.index(after: e)...])!
        text = String(text[..<e]) + "e" + (exponent < 0 ? "-" : "+") + (abs(exponent) < 10 ? "0" : "") + String(abs(exponent))
    }
    return text
}

func pythonStringRepr(_ s: String) -> String {
    let quote: Character = s.contains("'") && !s.contains("\"") ? "\"" : "'"
    var out = String(quote)
    for scalar in s.unicodeScalars {
        switch scalar {
        case "\\": out += "\\\\"
        case "\n": out += "\\n"
        case "\r": out += "\\r"
        case "\t": out += "\\t"
        case _ where Character(scalar) == quote: out += "\\" + String(quote)
        case _ where scalar.value < 0x20 || scalar.value == 0x7F: out += String(format: "\\x%02x", scalar.value)
        default: out.unicodeScalars.append(scalar)
        }
    }
    return out + String(quote)
}

/// Python's json.dumps as transformers' tojson calls it (ensure_ascii off unless asked).
func pythonJSON(_ value: JinjaValue, indent: Int?, level: Int, separators: (item: String, key: String), sortKeys: Bool, asciiOnly: Bool,
                into out: inout String) throws(JinjaError) {
    guard level < 64 else { throw JinjaError("tojson: a value nested too deeply") }
    let newline = indent.map { "\n" + String(repeating: " ", count: $0 * (level + 1)) }
    let closing = indent.map { "\n" + String(repeating: " ", count: $0 * level) } ?? ""
    let itemSeparator = newline.map { separators.item + $0 } ?? separators.item
    switch value {
    case .undefined, .none: out += "null"
    case .bool(let b): out += b ? "true" : "false"
    case .int(let i): out += String(i)
    case .double(let d): out += d.isNaN ? "NaN" : d.isInfinite ? (d < 0 ? "-Infinity" : "Infinity") : pythonFloat(d)
    case .string(let s): out += jsonString(s, asciiOnly: asciiOnly)
    case .array(let items):
        guard !items.isEmpty else { out += "[]"; return }
        out += "[" + (newline ?? "")
        for (i, item) in items.enumerated() {
            if i > 0 { out += itemSeparator }
            try pythonJSON(item, indent: indent, level: level + 1, separators: separators, sortKeys: sortKeys, asciiOnly: asciiOnly, into: &out)
        }
        out += closing + "]"
    case .object(var entries):
        guard !entries.isEmpty else { out += "{}"; return }
        if sortKeys { entries.sort { $0.key.unicodeScalars.map(\.value).lexicographicallyPrecedes($1.key.unicodeScalars.map(\.value)) } }
        out += "{" + (newline ?? "")
        for (i, entry) in entries.enumerated() {
            if i > 0 { out += itemSeparator }
            out += jsonString(entry.key, asciiOnly: asciiOnly) + separators.key
            try pythonJSON(entry.value, indent: indent, level: level + 1, separators: separators, sortKeys: sortKeys, asciiOnly: asciiOnly, into: &out)
        }
        out += closing + "}"
    case .namespace, .function: throw JinjaError("tojson: a \(value.typeName) is not JSON serializable")
    }
}

func jsonString(_ s: String, asciiOnly: Bool) -> String {
    var out = "\""
    for scalar in s.unicodeScalars {
        switch scalar {
        case "\"": out += "\\\""
        case "\\": out += "\\\\"
        case "\n": out += "\\n"
        case "\r": out += "\\r"
        case "\t": out += "\\t"
        case "\u{08}": out += "\\b"
        case "\u{0C}": out += "\\f"
        case _ where scalar.value < 0x20: out += String(format: "\\u%04x", scalar.value)
        case _ where asciiOnly && scalar.value > 0x7E:
            if scalar.value > 0xFFFF {
                let v = scalar.value - 0x10000
                out += String(format: "\\u%04x\\u%04x", 0xD800 + (v >> 10), 0xDC00 + (v & 0x3FF))
            } else {
                out += String(format: "\\u%04x", scalar.value)
            }
        default: out.unicodeScalars.append(scalar)
        }
    }
    return out + "\""
}

/// JSON read with objects' keys in the order written (JSONSerialization's dictionaries lose it), nested at most 64 deep.

struct OrderedJSONReader {
    let bytes: [UInt8]
    var i = 0

    init(bytes: [UInt8]) { self.bytes = bytes }

    struct Failure: Error, CustomStringConvertible { let description: String }

    mutating func document() throws -> JinjaValue {
        let value = try read(depth: 0)
        skipSpace()
        guard i == bytes.count else { throw Failure(description: "text after the value at byte \(i)") }
        return value
    }

    mutating func skipSpace() { while i < bytes.count, [0x20, 0x09, 0x0A, 0x0D].contains(bytes[i]) { i += 1 } }

    mutating func read(depth: Int) throws -> JinjaValue {
        guard depth < 64 else { throw Failure(description: "nested more than 64 deep") }
        skipSpace()
        guard i < bytes.count else { throw Failure(description: "unexpected end") }
        switch bytes[i] {
        case UInt8(ascii: "{"):
            i += 1
            var entries: [(key: String, value: JinjaValue)] = []
            skipSpace()
            if i < bytes.count, bytes[i] == UInt8(ascii: "}") { i += 1; return .object(entries) }
            while true {
                skipSpace()
                guard case .string(let key) = try read(depth: depth + 1) else { throw Failure(description: "an object key must be a string at byte \(i)") }
                skipSpace()
                guard i < bytes.count, bytes[i] == UInt8(ascii: ":") else { throw Failure(description: "expected ':' at byte \(i)") }
                i += 1
                let value = try read(depth: depth + 1)
                if let index = entries.firstIndex(where: { $0.key == key }) { entries[index].value = value } else { entries.append((key, value)) }
                skipSpace()
                guard i < bytes.count else { throw Failure(description: "unexpected end") }
                if bytes[i] == UInt8(ascii: ",") { i += 1; continue }
                guard bytes[i] == UInt8(ascii: "}") else { throw Failure(description: "expected ',' or '}' at byte \(i)") }
                i += 1
                return .object(entries)
            }
        case UInt8(ascii: "["):
            i += 1
            var items: [JinjaValue] = []
            skipSpace()
            if i < bytes.count, bytes[i] == UInt8(ascii: "]") { i += 1; return .array(items) }
            while true {
                items.append(try read(depth: depth + 1))
                skipSpace()
                guard i < bytes.count else { throw Failure(description: "unexpected end") }
                if bytes[i] == UInt8(ascii: ",") { i += 1; continue }
                guard bytes[i] == UInt8(ascii: "]") else { throw Failure(description: "expected ',' or ']' at byte \(i)") }
                i += 1
                return .array(items)
            }
        case UInt8(ascii: "\""):
            let start = i
            i += 1
            var escaped = false
            while i < bytes.count {
                if escaped { escaped = false } else if bytes[i] == UInt8(ascii: "\\") { escaped = true } else if bytes[i] == UInt8(ascii: "\"") { break }
                i += 1
            }
            guard i < bytes.count else { throw Failure(description: "a string is never closed") }
            i += 1
            // One string through JSONSerialization: its escapes and surrogate pairs as the standard says.
            guard let decoded = try? JSONSerialization.jsonObject(with: Data(bytes[start..<i]), options: .fragmentsAllowed) as? String else {
                throw Failure(description: "a malformed string at byte \(start)")
            }
            return .string(decoded)
        default:
            let start = i
            while i < bytes.count, !([0x20, 0x09, 0x0A, 0x0D, UInt8(ascii: ","), UInt8(ascii: "]"), UInt8(ascii: "}")].contains(bytes[i])) { i += 1 }
            let word = String(decoding: bytes[start..<i], as: UTF8.self)
            switch word {
            case "true": return .bool(true)
            case "false": return .bool(false)
            case "null": return .none
            default:
                guard word.first.map({ $0 == "-" || $0.isNumber }) == true else { throw Failure(description: "unexpected '\(word.prefix(20))' at byte \(start)") }
                if !word.contains(where: { $0 == "." || $0 == "e" || $0 == "E" }), let integer = Int(word) { return .int(integer) }
                guard let number = Double(word), number.isFinite else { throw Failure(description: "a malformed number '\(word.prefix(20))'") }
                return .double(number)
            }
        }
    }
}
