import Foundation

/// The Jinja that models' chat templates are written in, rendered as transformers' `apply_chat_template` renders it
/// (jinja2's sandbox with trim_blocks, lstrip_blocks and loop controls, its `tojson`, `raise_exception` and
/// `strftime_now`): text, `{{ }}`, `{% %}` (if/elif/else, for with `loop`, unpacking, an `if` filter and `else`,
/// set (names, namespace attributes, blocks), break, continue, generation), `{# #}`, whitespace control, Python's
/// values and operators, the filters and tests templates use, and string and dict methods. Rendering has a work
/// budget, so a hostile template or conversation is an error, not a hang or an unbounded allocation.
public struct JinjaTemplate: Sendable {
    let nodes: [JinjaNode]

    public init(_ source: String) throws(JinjaError) {
        // jinja2 drops one newline at the template's end (keep_trailing_newline off).
        var source = source
        if source.hasSuffix("\n") { source.removeLast() }
        var parser = JinjaParser(tokens: try JinjaLexer.tokens(of: source))
        nodes = try parser.parseAll()
    }

    /// The template rendered with `context` as its variables.
    public func render(_ context: [String: JinjaValue], budget: Int = 10_000_000) throws(JinjaError) -> String {
        var renderer = JinjaRenderer(scopes: [context], budget: budget)
        try renderer.render(nodes)
        return renderer.output
    }
}

public struct JinjaError: Error, CustomStringConvertible, Equatable {
    public let message: String
    /// Raised by the template itself (`raise_exception`): the input is what it refuses, not the template.
    public let raisedByTemplate: Bool
    init(_ message: String, raisedByTemplate: Bool = false) { (self.message, self.raisedByTemplate) = (message, raisedByTemplate) }
    public var description: String { message }
}

/// A value as Jinja (Python) sees it. Objects keep their keys' order, as Python's dicts do (tojson writes them so).
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

    /// A value from JSON (JSONSerialization's objects; a request's messages, a model's config).
    public init(json: Any) {
        switch json {
        case let string as String: self = .string(string)
        case let number as NSNumber:
            switch String(cString: number.objCType) {
            case "c", "B": self = .bool(number.boolValue)
            case "d", "f": self = .double(number.doubleValue)
            default: self = number.doubleValue.magnitude < 9.2e18 ? .int(number.intValue) : .double(number.doubleValue)
            }
        case let array as [Any]: self = .array(array.map(JinjaValue.init(json:)))
        case let object as [String: Any]: self = .object(object.keys.sorted().map { ($0, JinjaValue(json: object[$0]!)) })
        default: self = .none
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

// MARK: - Lexing

enum JinjaToken: Equatable {
    case text(String)
    case outputStart, outputEnd, statementStart, statementEnd
    case name(String)
    case string(String)
    case int(Int)
    case double(Double)
    case symbol(String)
}

enum JinjaLexer {
    /// The template's tokens, with jinja2's whitespace rules as transformers configures them: `-` inside a delimiter
    /// strips the whitespace on that side; a block or comment tag drops the newline after it (trim_blocks) and the
    /// spaces and tabs before it on its line (lstrip_blocks, unless written `{%+`).
    static func tokens(of source: String) throws(JinjaError) -> [JinjaToken] {
        let s = Array(source.unicodeScalars)
        var tokens: [JinjaToken] = []
        var text: [Unicode.Scalar] = []
        var i = 0
        var line = 1
        /// Whether the text being collected starts a line (jinja2's `line_starting`).
        var lineStarting = true
        func flushText() {
            if !text.isEmpty { tokens.append(.text(String(String.UnicodeScalarView(text)))) }
            text = []
        }
        func isSpace(_ c: Unicode.Scalar) -> Bool { c == " " || c == "\t" || c == "\n" || c == "\r" || c == "\u{0B}" || c == "\u{0C}" }
        while i < s.count {
            guard s[i] == "{", i + 1 < s.count, ["{", "%", "#"].contains(s[i + 1]) else {
                if s[i] == "\n" { line += 1 }
                text.append(s[i])
                i += 1
                continue
            }
            let kind = s[i + 1]
            var j = i + 2
            let stripBefore = j < s.count && s[j] == "-"
            let keepBefore = j < s.count && s[j] == "+"
            if stripBefore || keepBefore { j += 1 }
            if stripBefore {
                while let last = text.last, isSpace(last) { text.removeLast() }
            } else if kind != "{" && !keepBefore {
                // lstrip_blocks: the spaces and tabs between a line's start and a block or comment tag.
                let lineStart = text.lastIndex(of: "\n").map { $0 + 1 } ?? (lineStarting ? 0 : nil)
                if let lineStart, text[lineStart...].allSatisfy({ isSpace($0) }) { text.removeSubrange(lineStart...) }
            }
            flushText()
            let startLine = line
            if kind == "#" {
                // A comment: up to "#}", with "-#}" stripping after it.
                var k = j
                while k + 1 < s.count, !(s[k] == "#" && s[k + 1] == "}") { if s[k] == "\n" { line += 1 }; k += 1 }
                guard k + 1 < s.count else { throw JinjaError("line \(startLine): a comment is never closed") }
                let stripAfter = k > j && s[k - 1] == "-"
                i = skipAfterTag(s, k + 2, strip: stripAfter, trimNewline: true)
                lineStarting = s[i - 1] == "\n"
                continue
            }
            tokens.append(kind == "{" ? .outputStart : .statementStart)
            let close: Unicode.Scalar = kind == "{" ? "}" : "%"
            // Expression tokens up to the closing delimiter outside brackets (`{{ {'a': {}} }}`), as jinja2 balances them.
            var brackets = 0
            while true {
                while j < s.count, isSpace(s[j]) { if s[j] == "\n" { line += 1 }; j += 1 }
                guard j < s.count else { throw JinjaError("line \(startLine): a tag is never closed") }
                if brackets == 0, s[j] == "-", j + 2 < s.count, s[j + 1] == close, s[j + 2] == "}" {
                    tokens.append(kind == "{" ? .outputEnd : .statementEnd)
                    i = skipAfterTag(s, j + 3, strip: true, trimNewline: false)
                    lineStarting = s[i - 1] == "\n"
                    break
                }
                if brackets == 0, s[j] == close, j + 1 < s.count, s[j + 1] == "}" {
                    tokens.append(kind == "{" ? .outputEnd : .statementEnd)
                    i = skipAfterTag(s, j + 2, strip: false, trimNewline: kind == "%")
                    lineStarting = s[i - 1] == "\n"
                    break
                }
                let c = s[j]
                if c == "'" || c == "\"" {
                    var k = j + 1
                    var value = String.UnicodeScalarView()
                    while k < s.count, s[k] != c {
                        if s[k] == "\\", k + 1 < s.count {
                            k += 1
                            switch s[k] {
                            case "n": value.append("\n")
                            case "t": value.append("\t")
                            case "r": value.append("\r")
                            case "\\": value.append("\\")
                            case "'": value.append("'")
                            case "\"": value.append("\"")
                            case "\n": break
                            default: value.append("\\"); value.append(s[k])
                            }
                        } else {
                            if s[k] == "\n" { line += 1 }
                            value.append(s[k])
                        }
                        k += 1
                    }
                    guard k < s.count else { throw JinjaError("line \(line): a string is never closed") }
                    tokens.append(.string(String(value)))
                    j = k + 1
                } else if c.properties.isAlphabetic || c == "_" {
                    var k = j
                    while k < s.count, s[k].properties.isAlphabetic || s[k] == "_" || ("0"..."9").contains(s[k]) { k += 1 }
                    tokens.append(.name(String(String.UnicodeScalarView(s[j..<k]))))
                    j = k
                } else if ("0"..."9").contains(c) {
                    var k = j
                    while k < s.count, ("0"..."9").contains(s[k]) || s[k] == "_" { k += 1 }
                    var isFloat = false
                    if k + 1 < s.count, s[k] == ".", ("0"..."9").contains(s[k + 1]) {
                        isFloat = true
                        k += 1
                        while k < s.count, ("0"..."9").contains(s[k]) { k += 1 }
                    }
                    if k < s.count, s[k] == "e" || s[k] == "E" {
                        var e = k + 1
                        if e < s.count, s[e] == "+" || s[e] == "-" { e += 1 }
                        if e < s.count, ("0"..."9").contains(s[e]) {
                            isFloat = true
                            k = e
                            while k < s.count, ("0"..."9").contains(s[k]) { k += 1 }
                        }
                    }
                    let literal = String(String.UnicodeScalarView(s[j..<k])).replacingOccurrences(of: "_", with: "")
                    if isFloat { tokens.append(.double(Double(literal)!)) } else {
                        guard let value = Int(literal) else { throw JinjaError("line \(line): the number \(literal) is too large") }
                        tokens.append(.int(value))
                    }
                    j = k
                } else {
                    let two = j + 1 < s.count ? String(String.UnicodeScalarView([c, s[j + 1]])) : ""
                    if ["==", "!=", "<=", ">=", "//", "**"].contains(two) {
                        tokens.append(.symbol(two))
                        j += 2
                    } else if "+-*/%~<>()[]{},.:|=".unicodeScalars.contains(c) {
                        if "([{".unicodeScalars.contains(c) { brackets += 1 }
                        if ")]}".unicodeScalars.contains(c) { brackets = max(0, brackets - 1) }
                        tokens.append(.symbol(String(c)))
                        j += 1
                    } else {
                        throw JinjaError("line \(line): unexpected character '\(c)' in a tag")
                    }
                }
            }
        }
        flushText()
        return tokens
    }

    private static func skipAfterTag(_ s: [Unicode.Scalar], _ start: Int, strip: Bool, trimNewline: Bool) -> Int {
        var i = start
        if strip {
            while i < s.count, [" ", "\t", "\n", "\r", "\u{0B}", "\u{0C}"].contains(s[i]) { i += 1 }
        } else if trimNewline, i < s.count, s[i] == "\n" {
            i += 1
        }
        return i
    }
}

// MARK: - Parsing

indirect enum JinjaExpr: Sendable {
    case literal(JinjaValue)
    case name(String)
    case attribute(JinjaExpr, String)
    case item(JinjaExpr, JinjaExpr)
    case slice(JinjaExpr, JinjaExpr?, JinjaExpr?, JinjaExpr?)
    case call(JinjaExpr, [JinjaExpr], [(String, JinjaExpr)])
    case filter(JinjaExpr, String, [JinjaExpr], [(String, JinjaExpr)])
    case test(JinjaExpr, String, [JinjaExpr], negated: Bool)
    case not(JinjaExpr)
    case negate(JinjaExpr)
    case binary(String, JinjaExpr, JinjaExpr)
    case and(JinjaExpr, JinjaExpr)
    case or(JinjaExpr, JinjaExpr)
    case compare(JinjaExpr, [(String, JinjaExpr)])
    case conditional(JinjaExpr, condition: JinjaExpr, otherwise: JinjaExpr?)
    case list([JinjaExpr])
    case dict([(JinjaExpr, JinjaExpr)])
}

indirect enum JinjaNode: Sendable {
    case text(String)
    case output(JinjaExpr)
    case conditional([(JinjaExpr, [JinjaNode])], otherwise: [JinjaNode])
    case loop(names: [String], over: JinjaExpr, filter: JinjaExpr?, body: [JinjaNode], otherwise: [JinjaNode])
    case set(name: String, attribute: String?, JinjaExpr)
    case setBlock(name: String, [JinjaNode])
    case macro(JinjaMacro)
    case breakLoop, continueLoop
}

/// `{% macro name(a, b=default) %}...{% endmacro %}`: called, it renders its body with its arguments.
struct JinjaMacro: Sendable {
    let name: String
    let parameters: [(name: String, fallback: JinjaExpr?)]
    let body: [JinjaNode]
}

struct JinjaParser {
    let tokens: [JinjaToken]
    var position = 0

    init(tokens: [JinjaToken]) { self.tokens = tokens }

    mutating func parseAll() throws(JinjaError) -> [JinjaNode] {
        let (nodes, end) = try parseBody(until: [])
        if let end { throw JinjaError("unexpected '{% \(end) %}'") }
        return nodes
    }

    /// Nodes up to a statement whose keyword is in `ends` (consumed up to its keyword), or the end of the template.
    mutating func parseBody(until ends: Set<String>) throws(JinjaError) -> ([JinjaNode], String?) {
        var nodes: [JinjaNode] = []
        while position < tokens.count {
            switch tokens[position] {
            case .text(let text):
                position += 1
                nodes.append(.text(text))
            case .outputStart:
                position += 1
                let expression = try parseExpression()
                try expect(.outputEnd, "'}}'")
                nodes.append(.output(expression))
            case .statementStart:
                position += 1
                guard case .name(let keyword) = peek else { throw JinjaError("a tag needs a keyword") }
                if ends.contains(keyword) {
                    position += 1
                    return (nodes, keyword)
                }
                position += 1
                nodes.append(try parseStatement(keyword))
            default:
                throw JinjaError("unexpected token in the template")
            }
        }
        guard ends.isEmpty else { throw JinjaError("a block is never closed (expected one of \(ends.sorted().joined(separator: ", ")))") }
        return (nodes, nil)
    }

    mutating func parseStatement(_ keyword: String) throws(JinjaError) -> JinjaNode {
        switch keyword {
        case "if":
            var branches: [(JinjaExpr, [JinjaNode])] = []
            var condition = try parseExpression()
            while true {
                try expect(.statementEnd, "'%}'")
                let (body, end) = try parseBody(until: ["elif", "else", "endif"])
                branches.append((condition, body))
                switch end {
                case "elif": condition = try parseExpression()
                case "else":
                    try expect(.statementEnd, "'%}'")
                    let (otherwise, _) = try parseBody(until: ["endif"])
                    try expect(.statementEnd, "'%}'")
                    return .conditional(branches, otherwise: otherwise)
                default:
                    try expect(.statementEnd, "'%}'")
                    return .conditional(branches, otherwise: [])
                }
            }
        case "for":
            var names: [String] = []
            repeat {
                guard case .name(let name) = next() else { throw JinjaError("'for' needs loop variable names") }
                names.append(name)
            } while accept(.symbol(","))
            guard accept(.name("in")) else { throw JinjaError("'for' needs 'in'") }
            let iterable = try parseOr(allowConditional: false)
            let filter = accept(.name("if")) ? try parseExpression() : nil
            try expect(.statementEnd, "'%}'")
            let (body, end) = try parseBody(until: ["else", "endfor"])
            var otherwise: [JinjaNode] = []
            try expect(.statementEnd, "'%}'")
            if end == "else" {
                (otherwise, _) = try parseBody(until: ["endfor"])
                try expect(.statementEnd, "'%}'")
            }
            return .loop(names: names, over: iterable, filter: filter, body: body, otherwise: otherwise)
        case "set":
            guard case .name(let name) = next() else { throw JinjaError("'set' needs a name") }
            var attribute: String?
            if accept(.symbol(".")) {
                guard case .name(let field) = next() else { throw JinjaError("'set' needs an attribute name after '.'") }
                attribute = field
            }
            if attribute == nil, accept(.statementEnd) {
                let (body, _) = try parseBody(until: ["endset"])
                try expect(.statementEnd, "'%}'")
                return .setBlock(name: name, body)
            }
            try expect(.symbol("="), "'='")
            let value = try parseExpression()
            try expect(.statementEnd, "'%}'")
            return .set(name: name, attribute: attribute, value)
        case "macro":
            guard case .name(let name) = next() else { throw JinjaError("'macro' needs a name") }
            try expect(.symbol("("), "'(' after the macro's name")
            var parameters: [(name: String, fallback: JinjaExpr?)] = []
            while !accept(.symbol(")")) {
                guard case .name(let parameter) = next() else { throw JinjaError("a macro's parameters are names") }
                parameters.append((parameter, accept(.symbol("=")) ? try parseExpression() : nil))
                if !accept(.symbol(",")) { try expect(.symbol(")"), "')'"); break }
            }
            try expect(.statementEnd, "'%}'")
            let (body, _) = try parseBody(until: ["endmacro"])
            try expect(.statementEnd, "'%}'")
            return .macro(JinjaMacro(name: name, parameters: parameters, body: body))
        case "break", "continue":
            try expect(.statementEnd, "'%}'")
            return keyword == "break" ? .breakLoop : .continueLoop
        case "generation":
            // transformers' marker of assistant text; it renders its body.
            try expect(.statementEnd, "'%}'")
            let (body, _) = try parseBody(until: ["endgeneration"])
            try expect(.statementEnd, "'%}'")
            return .conditional([(.literal(.bool(true)), body)], otherwise: [])
        default:
            throw JinjaError("unsupported tag '{% \(keyword) %}'")
        }
    }

    var peek: JinjaToken? { position < tokens.count ? tokens[position] : nil }

    mutating func next() -> JinjaToken? {
        defer { position += 1 }
        return peek
    }

    mutating func accept(_ token: JinjaToken) -> Bool {
        guard peek == token else { return false }
        position += 1
        return true
    }

    mutating func expect(_ token: JinjaToken, _ what: String) throws(JinjaError) {
        guard accept(token) else { throw JinjaError("expected \(what)") }
    }

    mutating func parseExpression() throws(JinjaError) -> JinjaExpr { try parseOr(allowConditional: true) }

    mutating func parseOr(allowConditional: Bool) throws(JinjaError) -> JinjaExpr {
        var left = try parseAnd()
        while accept(.name("or")) { left = .or(left, try parseAnd()) }
        if allowConditional, accept(.name("if")) {
            let condition = try parseOr(allowConditional: false)
            let otherwise = accept(.name("else")) ? try parseOr(allowConditional: true) : nil
            return .conditional(left, condition: condition, otherwise: otherwise)
        }
        return left
    }

    mutating func parseAnd() throws(JinjaError) -> JinjaExpr {
        var left = try parseNot()
        while accept(.name("and")) { left = .and(left, try parseNot()) }
        return left
    }

    mutating func parseNot() throws(JinjaError) -> JinjaExpr {
        if accept(.name("not")) { return .not(try parseNot()) }
        return try parseCompare()
    }

    mutating func parseCompare() throws(JinjaError) -> JinjaExpr {
        let left = try parseBinary()
        var operations: [(String, JinjaExpr)] = []
        while true {
            if case .symbol(let op) = peek, ["==", "!=", "<", ">", "<=", ">="].contains(op) {
                position += 1
                operations.append((op, try parseBinary()))
            } else if accept(.name("in")) {
                operations.append(("in", try parseBinary()))
            } else if peek == .name("not"), position + 1 < tokens.count, tokens[position + 1] == .name("in") {
                position += 2
                operations.append(("not in", try parseBinary()))
            } else {
                break
            }
        }
        return operations.isEmpty ? left : .compare(left, operations)
    }

    /// Left-associative operator levels, loosest first, as jinja2's parser orders them.
    static let binaryLevels: [Set<String>] = [["+", "-"], ["~"], ["*", "/", "//", "%"], ["**"]]

    mutating func parseBinary(level: Int = 0) throws(JinjaError) -> JinjaExpr {
        guard level < Self.binaryLevels.count else { return try parseUnary() }
        var left = try parseBinary(level: level + 1)
        while case .symbol(let op) = peek, Self.binaryLevels[level].contains(op) {
            position += 1
            left = .binary(op, left, try parseBinary(level: level + 1))
        }
        return left
    }

    /// As jinja2's parse_unary: `-3 | abs` filters -3.
    mutating func parseUnary(withFilters: Bool = true) throws(JinjaError) -> JinjaExpr {
        let node: JinjaExpr
        if accept(.symbol("-")) { node = .negate(try parseUnary(withFilters: false)) }
        else if accept(.symbol("+")) { node = try parseUnary(withFilters: false) }
        else { node = try parsePrimary() }
        let postfixed = try parsePostfix(node)
        return withFilters ? try parseFilters(postfixed) : postfixed
    }

    mutating func parsePrimary() throws(JinjaError) -> JinjaExpr {
        switch next() {
        case .name(let name):
            switch name {
            case "true", "True": return .literal(.bool(true))
            case "false", "False": return .literal(.bool(false))
            case "none", "None": return .literal(.none)
            default: return .name(name)
            }
        case .string(var text):
            while case .string(let more) = peek { text += more; position += 1 }   // adjacent literals join
            return .literal(.string(text))
        case .int(let value): return .literal(.int(value))
        case .double(let value): return .literal(.double(value))
        case .symbol("("):
            let inner = try parseExpression()
            if accept(.symbol(",")) {   // a tuple: a list here
                var items = [inner]
                while !accept(.symbol(")")) {
                    items.append(try parseExpression())
                    if !accept(.symbol(",")) { try expect(.symbol(")"), "')'"); break }
                }
                return .list(items)
            }
            try expect(.symbol(")"), "')'")
            return inner
        case .symbol("["):
            var items: [JinjaExpr] = []
            while !accept(.symbol("]")) {
                items.append(try parseExpression())
                if !accept(.symbol(",")) { try expect(.symbol("]"), "']'"); break }
            }
            return .list(items)
        case .symbol("{"):
            var entries: [(JinjaExpr, JinjaExpr)] = []
            while !accept(.symbol("}")) {
                let key = try parseExpression()
                try expect(.symbol(":"), "':' in a dict")
                entries.append((key, try parseExpression()))
                if !accept(.symbol(",")) { try expect(.symbol("}"), "'}'"); break }
            }
            return .dict(entries)
        default:
            throw JinjaError("expected a value in an expression")
        }
    }

    mutating func parsePostfix(_ base: JinjaExpr) throws(JinjaError) -> JinjaExpr {
        var node = base
        while true {
            if accept(.symbol(".")) {
                switch next() {
                case .name(let name): node = .attribute(node, name)
                case .int(let index): node = .item(node, .literal(.int(index)))
                default: throw JinjaError("expected a name after '.'")
                }
            } else if accept(.symbol("[")) {
                var parts: [JinjaExpr?] = [nil]
                var isSlice = false
                while !accept(.symbol("]")) {
                    if accept(.symbol(":")) { isSlice = true; parts.append(nil); continue }
                    guard parts[parts.count - 1] == nil else { throw JinjaError("expected ']'") }
                    parts[parts.count - 1] = try parseExpression()
                }
                if isSlice {
                    guard parts.count <= 3 else { throw JinjaError("a slice has at most three parts") }
                    node = .slice(node, parts[0], parts.count > 1 ? parts[1] : nil, parts.count > 2 ? parts[2] : nil)
                } else {
                    guard let index = parts[0] else { throw JinjaError("an empty subscript") }
                    node = .item(node, index)
                }
            } else if peek == .symbol("(") {
                position += 1
                let (arguments, keywords) = try parseArguments()
                node = .call(node, arguments, keywords)
            } else {
                return node
            }
        }
    }

    /// Call arguments after '(' up to and including ')'.
    mutating func parseArguments() throws(JinjaError) -> ([JinjaExpr], [(String, JinjaExpr)]) {
        var arguments: [JinjaExpr] = [], keywords: [(String, JinjaExpr)] = []
        while !accept(.symbol(")")) {
            if case .name(let name) = peek, position + 1 < tokens.count, tokens[position + 1] == .symbol("=") {
                position += 2
                keywords.append((name, try parseExpression()))
            } else {
                arguments.append(try parseExpression())
            }
            if !accept(.symbol(",")) { try expect(.symbol(")"), "')'"); break }
        }
        return (arguments, keywords)
    }

    mutating func parseFilters(_ base: JinjaExpr) throws(JinjaError) -> JinjaExpr {
        var node = base
        while true {
            if accept(.symbol("|")) {
                guard case .name(let name) = next() else { throw JinjaError("expected a filter name after '|'") }
                var arguments: [JinjaExpr] = [], keywords: [(String, JinjaExpr)] = []
                if accept(.symbol("(")) { (arguments, keywords) = try parseArguments() }
                node = .filter(node, name, arguments, keywords)
            } else if accept(.name("is")) {
                let negated = accept(.name("not"))
                guard case .name(let name) = next() else { throw JinjaError("expected a test name after 'is'") }
                var arguments: [JinjaExpr] = []
                if accept(.symbol("(")) {
                    arguments = try parseArguments().0
                } else if let token = peek, Self.startsTestArgument(token) {
                    arguments = [try parsePrimary()]   // `is divisibleby 3`, `is equalto 'x'`
                }
                node = .test(node, name, arguments, negated: negated)
            } else {
                return node
            }
        }
    }

    static func startsTestArgument(_ token: JinjaToken) -> Bool {
        switch token {
        case .string, .int, .double, .symbol("["), .symbol("{"): return true
        case .name(let name): return !["and", "or", "else", "if", "in", "not", "is"].contains(name)
        default: return false
        }
    }
}

// MARK: - Rendering

struct JinjaRenderer {
    var scopes: [[String: JinjaValue]]
    var budget: Int
    var output = ""
    /// Macros defined so far, by name (a name bound to `.function(name)`).
    var macros: [String: JinjaMacro] = [:]
    /// Macro calls in progress (recursion is bounded).
    var depth = 0
    static let maximumOutput = 16 << 20
    static let globals: Set<String> = ["raise_exception", "namespace", "strftime_now", "range", "dict"]

    enum Flow { case normal, breakLoop, continueLoop }

    init(scopes: [[String: JinjaValue]], budget: Int) { (self.scopes, self.budget) = (scopes, budget) }

    mutating func spend(_ amount: Int = 1) throws(JinjaError) {
        budget -= amount
        if budget < 0 { throw JinjaError("the template needs more work than allowed (a loop or a value too large)") }
    }

    mutating func write(_ text: String) throws(JinjaError) {
        output += text
        if output.utf8.count > Self.maximumOutput { throw JinjaError("the rendered text is larger than \(Self.maximumOutput >> 20) MB") }
    }

    @discardableResult
    mutating func render(_ nodes: [JinjaNode]) throws(JinjaError) -> Flow {
        for node in nodes {
            try spend()
            switch node {
            case .text(let text): try write(text)
            case .output(let expression): try write(try evaluate(expression).text)
            case let .conditional(branches, otherwise):
                var taken = false
                for (condition, body) in branches where try evaluate(condition).isTrue {
                    taken = true
                    let flow = try render(body)
                    if flow != .normal { return flow }
                    break
                }
                if !taken {
                    let flow = try render(otherwise)
                    if flow != .normal { return flow }
                }
            case let .loop(names, over, filter, body, otherwise):
                try loop(names: names, over: over, filter: filter, body: body, otherwise: otherwise)
            case let .set(name, attribute, expression):
                let value = try evaluate(expression)
                if let attribute {
                    guard case .namespace(let namespace) = lookup(name) else { throw JinjaError("cannot set '\(attribute)' on '\(name)', which is not a namespace") }
                    if let index = namespace.values.firstIndex(where: { $0.key == attribute }) { namespace.values[index].value = value } else { namespace.values.append((attribute, value)) }
                } else {
                    scopes[scopes.count - 1][name] = value
                }
            case let .setBlock(name, body):
                let saved = output
                output = ""
                try render(body)
                let captured = output
                output = saved
                scopes[scopes.count - 1][name] = .string(captured)
            case .macro(let macro):
                macros[macro.name] = macro
                scopes[scopes.count - 1][macro.name] = .function(macro.name, receiver: nil)
            case .breakLoop: return .breakLoop
            case .continueLoop: return .continueLoop
            }
        }
        return .normal
    }

    mutating func loop(names: [String], over: JinjaExpr, filter: JinjaExpr?, body: [JinjaNode], otherwise: [JinjaNode]) throws(JinjaError) {
        let items = try iterate(try evaluate(over))
        func bind(_ item: JinjaValue, into scope: inout [String: JinjaValue]) throws(JinjaError) {
            if names.count == 1 { scope[names[0]] = item; return }
            guard case .array(let parts) = item, parts.count == names.count else { throw JinjaError("cannot unpack \(item.repr) into \(names.count) names") }
            for (name, part) in zip(names, parts) { scope[name] = part }
        }
        var kept = items
        if let filter {
            kept = []
            for item in items {
                var scope: [String: JinjaValue] = [:]
                try bind(item, into: &scope)
                scopes.append(scope)
                defer { scopes.removeLast() }
                if try evaluate(filter).isTrue { kept.append(item) }
            }
        }
        if kept.isEmpty {
            try render(otherwise)
            return
        }
        for (index, item) in kept.enumerated() {
            var scope: [String: JinjaValue] = [:]
            try bind(item, into: &scope)
            let n = kept.count
            scope["loop"] = .object([("index", .int(index + 1)), ("index0", .int(index)), ("revindex", .int(n - index)), ("revindex0", .int(n - index - 1)),
                                     ("first", .bool(index == 0)), ("last", .bool(index == n - 1)), ("length", .int(n)),
                                     ("previtem", index > 0 ? kept[index - 1] : .undefined), ("nextitem", index + 1 < n ? kept[index + 1] : .undefined)])
            scopes.append(scope)
            let flow = try render(body)
            scopes.removeLast()
            if flow == .breakLoop { break }
        }
    }

    func lookup(_ name: String) -> JinjaValue {
        for scope in scopes.reversed() { if let value = scope[name] { return value } }
        return Self.globals.contains(name) ? .function(name, receiver: nil) : .undefined
    }

    func iterate(_ value: JinjaValue) throws(JinjaError) -> [JinjaValue] {
        switch value {
        case .array(let items): return items
        case .object(let entries): return entries.map { .string($0.key) }
        case .string(let s): return s.map { .string(String($0)) }
        case .undefined: return []
        default: throw JinjaError("'\(value.typeName)' object is not iterable")
        }
    }

    mutating func evaluate(_ expression: JinjaExpr) throws(JinjaError) -> JinjaValue {
        try spend()
        switch expression {
        case .literal(let value): return value
        case .name(let name): return lookup(name)
        case let .attribute(base, name): return try attribute(try evaluate(base), name)
        case let .item(base, index):
            let container = try evaluate(base), key = try evaluate(index)
            if case .string(let name) = key, case .object = container { return container[name] ?? .undefined }
            if case .undefined = container { throw JinjaError("cannot read an item of an undefined value") }
            if let value = try item(container, key) { return value }
            if case .string(let name) = key { return try attribute(container, name) }
            return .undefined
        case let .slice(base, start, stop, step):
            return try slice(try evaluate(base), start: try start.map { e throws(JinjaError) in try evaluate(e) }, stop: try stop.map { e throws(JinjaError) in try evaluate(e) },
                             step: try step.map { e throws(JinjaError) in try evaluate(e) })
        case let .call(callee, arguments, keywords):
            let function = try evaluate(callee)
            var values: [JinjaValue] = []
            for argument in arguments { values.append(try evaluate(argument)) }
            var named: [(String, JinjaValue)] = []
            for (name, argument) in keywords { named.append((name, try evaluate(argument))) }
            return try call(function, values, named)
        case let .filter(base, name, arguments, keywords):
            let value = try evaluate(base)
            var values: [JinjaValue] = []
            for argument in arguments { values.append(try evaluate(argument)) }
            var named: [String: JinjaValue] = [:]
            for (key, argument) in keywords { named[key] = try evaluate(argument) }
            return try applyFilter(name, value, values, named)
        case let .test(base, name, arguments, negated):
            let value = try evaluate(base)
            var values: [JinjaValue] = []
            for argument in arguments { values.append(try evaluate(argument)) }
            return .bool(try applyTest(name, value, values) != negated)
        case .not(let inner): return .bool(!(try evaluate(inner).isTrue))
        case .negate(let inner):
            switch try evaluate(inner) {
            case .int(let i): return .int(-i)
            case .double(let d): return .double(-d)
            case .bool(let b): return .int(b ? -1 : 0)
            case let other: throw JinjaError("bad operand type for unary -: '\(other.typeName)'")
            }
        case let .and(a, b):
            let left = try evaluate(a)
            return left.isTrue ? try evaluate(b) : left
        case let .or(a, b):
            let left = try evaluate(a)
            return left.isTrue ? left : try evaluate(b)
        case let .binary(op, a, b): return try binary(op, try evaluate(a), try evaluate(b))
        case let .compare(first, operations):
            var left = try evaluate(first)
            for (op, expression) in operations {
                let right = try evaluate(expression)
                guard try compare(op, left, right) else { return .bool(false) }
                left = right
            }
            return .bool(true)
        case let .conditional(value, condition, otherwise):
            if try evaluate(condition).isTrue { return try evaluate(value) }
            return try otherwise.map { e throws(JinjaError) in try evaluate(e) } ?? .undefined
        case .list(let items):
            var values: [JinjaValue] = []
            for item in items { values.append(try evaluate(item)) }
            return .array(values)
        case .dict(let entries):
            var values: [(key: String, value: JinjaValue)] = []
            for (key, value) in entries {
                guard case .string(let name) = try evaluate(key) else { throw JinjaError("dict keys must be strings here") }
                let evaluated = try evaluate(value)
                if let index = values.firstIndex(where: { $0.key == name }) { values[index].value = evaluated } else { values.append((name, evaluated)) }
            }
            return .object(values)
        }
    }

    /// `value.name`: a method of strings and dicts, a dict's item, a namespace's attribute (jinja2 tries the
    /// attribute first, then the item).
    func attribute(_ value: JinjaValue, _ name: String) throws(JinjaError) -> JinjaValue {
        switch value {
        case .undefined: throw JinjaError("cannot read '\(name)' of an undefined value")
        case .object:
            if ["items", "keys", "values", "get"].contains(name) { return .function(name, receiver: value) }
            return value[name] ?? .undefined
        case .namespace(let namespace): return namespace.values.first { $0.key == name }?.value ?? .undefined
        case .string:
            let methods: Set<String> = ["strip", "lstrip", "rstrip", "split", "startswith", "endswith", "upper", "lower", "title",
                                        "capitalize", "replace", "join", "count", "find", "splitlines"]
            return methods.contains(name) ? .function(name, receiver: value) : .undefined
        default: return .undefined
        }
    }

    func item(_ container: JinjaValue, _ key: JinjaValue) throws(JinjaError) -> JinjaValue? {
        switch (container, key) {
        case let (.array(items), .int(i)):
            let index = i < 0 ? items.count + i : i
            return items.indices.contains(index) ? items[index] : .undefined
        case let (.string(s), .int(i)):
            let characters = Array(s)
            let index = i < 0 ? characters.count + i : i
            return characters.indices.contains(index) ? .string(String(characters[index])) : .undefined
        case let (.object, .string(name)): return container[name] ?? .undefined
        case let (.namespace(namespace), .string(name)): return namespace.values.first { $0.key == name }?.value ?? .undefined
        default: return nil
        }
    }

    func slice(_ value: JinjaValue, start: JinjaValue?, stop: JinjaValue?, step: JinjaValue?) throws(JinjaError) -> JinjaValue {
        func integer(_ v: JinjaValue?) throws(JinjaError) -> Int? {
            switch v {
            case nil, .none?: return nil
            case .int(let i)?: return i
            case let other?: throw JinjaError("slice indices must be integers, not \(other.typeName)")
            }
        }
        let step = try integer(step) ?? 1
        guard step != 0 else { throw JinjaError("slice step cannot be zero") }
        func indices(_ count: Int) throws(JinjaError) -> [Int] {
            func clamp(_ i: Int?, _ fallback: Int, low: Int, high: Int) -> Int {
                guard let i else { return fallback }
                return min(max(i < 0 ? i + count : i, low), high)
            }
            if step > 0 {
                let (a, b) = (clamp(try integer(start), 0, low: 0, high: count), clamp(try integer(stop), count, low: 0, high: count))
                return a < b ? Array(stride(from: a, to: b, by: step)) : []
            }
            let (a, b) = (clamp(try integer(start), count - 1, low: -1, high: count - 1), clamp(try integer(stop), -1, low: -1, high: count - 1))
            return a > b ? Array(stride(from: a, to: b, by: step)) : []
        }
        switch value {
        case .array(let items): return .array(try indices(items.count).map { items[$0] })
        case .string(let s):
            let characters = Array(s)
            return .string(String(try indices(characters.count).map { characters[$0] }))
        default: throw JinjaError("'\(value.typeName)' object cannot be sliced")
        }
    }

    mutating func binary(_ op: String, _ a: JinjaValue, _ b: JinjaValue) throws(JinjaError) -> JinjaValue {
        if op == "~" {
            let text = a.text + b.text
            try spend(text.utf8.count / 64)
            return .string(text)
        }
        switch (op, a, b) {
        case let ("+", .string(x), .string(y)):
            try spend((x.utf8.count + y.utf8.count) / 64)
            return .string(x + y)
        case let ("+", .array(x), .array(y)):
            try spend(x.count + y.count)
            return .array(x + y)
        case let ("*", .string(x), .int(n)), let ("*", .int(n), .string(x)):
            try spend(max(0, n) * x.utf8.count / 64 + 1)
            return .string(String(repeating: x, count: max(0, n)))
        default: break
        }
        guard let x = a.number, let y = b.number, a.typeName != "str", b.typeName != "str" else {
            throw JinjaError("unsupported operand types for \(op): '\(a.typeName)' and '\(b.typeName)'")
        }
        let integers: (Int, Int)? = { if case .double = a { return nil }; if case .double = b { return nil }; return (Int(x), Int(y)) }()
        switch op {
        case "+": if let (i, j) = integers { let (r, o) = i.addingReportingOverflow(j); if !o { return .int(r) } }; return .double(x + y)
        case "-": if let (i, j) = integers { let (r, o) = i.subtractingReportingOverflow(j); if !o { return .int(r) } }; return .double(x - y)
        case "*": if let (i, j) = integers { let (r, o) = i.multipliedReportingOverflow(by: j); if !o { return .int(r) } }; return .double(x * y)
        case "/":
            guard y != 0 else { throw JinjaError("division by zero") }
            return .double(x / y)
        case "//", "%":
            guard y != 0 else { throw JinjaError("integer division or modulo by zero") }
            if let (i, j) = integers {
                var q = i / j
                if (i % j != 0) && ((i < 0) != (j < 0)) { q -= 1 }   // Python floors
                return op == "//" ? .int(q) : .int(i - q * j)
            }
            let q = (x / y).rounded(.down)
            return op == "//" ? .double(q) : .double(x - q * y)
        case "**":
            if let (i, j) = integers, j >= 0 {
                var result = 1
                for _ in 0..<min(j, 64) { let (r, o) = result.multipliedReportingOverflow(by: i); if o { return .double(pow(x, y)) }; result = r }
                return j <= 64 || i == 0 || i == 1 ? .int(result) : .double(pow(x, y))
            }
            return .double(pow(x, y))
        default: throw JinjaError("unknown operator \(op)")
        }
    }

    func compare(_ op: String, _ a: JinjaValue, _ b: JinjaValue) throws(JinjaError) -> Bool {
        switch op {
        case "==": return a == b
        case "!=": return a != b
        case "in", "not in":
            let found: Bool
            switch b {
            case .string(let s):
                guard case .string(let needle) = a else { throw JinjaError("'in <string>' requires a string on the left, not \(a.typeName)") }
                found = needle.isEmpty || s.contains(needle)
            case .array(let items): found = items.contains(a)
            case .object(let entries):
                guard case .string(let key) = a else { found = false; break }
                found = entries.contains { $0.key == key }
            case .undefined: found = false
            default: throw JinjaError("argument of type '\(b.typeName)' is not iterable")
            }
            return op == "in" ? found : !found
        default:
            let ordered: Bool
            if case .string(let x) = a, case .string(let y) = b {
                let (u, v) = (Array(x.unicodeScalars.map(\.value)), Array(y.unicodeScalars.map(\.value)))
                switch op {
                case "<": return u.lexicographicallyPrecedes(v)
                case ">": return v.lexicographicallyPrecedes(u)
                case "<=": return !v.lexicographicallyPrecedes(u)
                default: return !u.lexicographicallyPrecedes(v)
                }
            }
            guard let x = a.number, let y = b.number, a.typeName != "str", b.typeName != "str" else {
                throw JinjaError("'\(op)' not supported between '\(a.typeName)' and '\(b.typeName)'")
            }
            switch op {
            case "<": ordered = x < y
            case ">": ordered = x > y
            case "<=": ordered = x <= y
            default: ordered = x >= y
            }
            return ordered
        }
    }

    mutating func call(_ function: JinjaValue, _ arguments: [JinjaValue], _ keywords: [(String, JinjaValue)]) throws(JinjaError) -> JinjaValue {
        guard case let .function(name, receiver) = function else { throw JinjaError("'\(function.typeName)' object is not callable") }
        if receiver == nil, let macro = macros[name] { return try call(macro, arguments, keywords) }
        func argument(_ index: Int) -> JinjaValue? { arguments.count > index ? arguments[index] : nil }
        func string(_ index: Int) throws(JinjaError) -> String? {
            guard let value = argument(index), value != .none else { return nil }
            guard case .string(let s) = value else { throw JinjaError("\(name)() needs a string argument, got \(value.typeName)") }
            return s
        }
        if let receiver {
            if case .object(let entries) = receiver {
                switch name {
                case "items": return .array(entries.map { .array([.string($0.key), $0.value]) })
                case "keys": return .array(entries.map { .string($0.key) })
                case "values": return .array(entries.map(\.value))
                default:
                    guard case .string(let key)? = argument(0) else { return argument(1) ?? .none }
                    return receiver[key] ?? argument(1) ?? .none
                }
            }
            guard case .string(let s) = receiver else { throw JinjaError("no method \(name)") }
            switch name {
            case "strip", "lstrip", "rstrip":
                let characters = try string(0).map { Set($0.unicodeScalars) }
                return .string(pythonStrip(s, characters: characters, leading: name != "rstrip", trailing: name != "lstrip"))
            case "split":
                let separator = try string(0)
                var limit = -1
                if case .int(let n)? = argument(1) { limit = n }
                return .array(pythonSplit(s, separator: separator, limit: limit).map(JinjaValue.string))
            case "splitlines": return .array(s.split(omittingEmptySubsequences: false) { $0.isNewline }.map { .string(String($0)) }.dropLast(s.last?.isNewline == true ? 1 : 0))
            case "startswith", "endswith":
                var candidates: [String] = []
                switch argument(0) {
                case .string(let p)?: candidates = [p]
                case .array(let items)?: candidates = items.compactMap { if case .string(let p) = $0 { return p } else { return nil } }
                default: throw JinjaError("\(name)() needs a string")
                }
                return .bool(candidates.contains { name == "startswith" ? s.unicodeScalars.starts(with: $0.unicodeScalars) : s.unicodeScalars.reversed().starts(with: $0.unicodeScalars.reversed()) })
            case "upper": return .string(s.uppercased())
            case "lower": return .string(s.lowercased())
            case "title": return .string(pythonTitle(s))
            case "capitalize": return .string(s.prefix(1).uppercased() + s.dropFirst().lowercased())
            case "replace":
                guard let old = try string(0), let new = try string(1) else { throw JinjaError("replace() needs two strings") }
                try spend(s.utf8.count / 64)
                return .string(old.isEmpty ? s : s.replacingOccurrences(of: old, with: new))
            case "join":
                guard let items = argument(0) else { throw JinjaError("join() needs a list") }
                return .string(try iterate(items).map(\.text).joined(separator: s))
            case "count":
                guard let needle = try string(0), !needle.isEmpty else { return .int(s.count + 1) }
                return .int(s.components(separatedBy: needle).count - 1)
            default:
                guard let needle = try string(0), let range = s.range(of: needle) else { return .int(-1) }
                return .int(s.distance(from: s.startIndex, to: range.lowerBound))
            }
        }
        switch name {
        case "raise_exception":
            throw JinjaError(argument(0)?.text ?? "the template raised an exception", raisedByTemplate: true)
        case "namespace":
            var values: [(key: String, value: JinjaValue)] = []
            if case .object(let entries)? = argument(0) { values = entries }
            for (key, value) in keywords { values.append((key, value)) }
            return .namespace(JinjaNamespace(values))
        case "dict":
            var values: [(key: String, value: JinjaValue)] = []
            for (key, value) in keywords { values.append((key, value)) }
            return .object(values)
        case "strftime_now":
            guard let format = try string(0) else { throw JinjaError("strftime_now() needs a format") }
            var now = time(nil)
            var parts = tm()
            localtime_r(&now, &parts)
            var buffer = [Int8](repeating: 0, count: 256)
            let length = strftime(&buffer, buffer.count, format, &parts)
            return .string(String(decoding: buffer[..<length].map { UInt8(bitPattern: $0) }, as: UTF8.self))
        default:   // range
            var bounds: [Int] = []
            for value in arguments {
                guard case .int(let i) = value else { throw JinjaError("range() needs integers") }
                bounds.append(i)
            }
            let (start, stop, step) = bounds.count == 1 ? (0, bounds[0], 1) : bounds.count == 2 ? (bounds[0], bounds[1], 1)
                : bounds.count == 3 ? (bounds[0], bounds[1], bounds[2]) : (0, 0, 0)
            guard step != 0 else { throw JinjaError("range() needs 1 to 3 integers, the step not 0") }
            let count = max(0, (stop - start + step - (step > 0 ? 1 : -1)) / step)
            try spend(count)
            return .array(stride(from: start, to: stop, by: step).map(JinjaValue.int))
        }
    }

    /// A macro's body rendered with its arguments, over the template's variables (not the caller's loop variables).
    mutating func call(_ macro: JinjaMacro, _ arguments: [JinjaValue], _ keywords: [(String, JinjaValue)]) throws(JinjaError) -> JinjaValue {
        guard depth < 64 else { throw JinjaError("macro '\(macro.name)' calls itself too deeply") }
        guard arguments.count <= macro.parameters.count else { throw JinjaError("macro '\(macro.name)' takes \(macro.parameters.count) arguments, got \(arguments.count)") }
        var scope: [String: JinjaValue] = [:]
        for (index, parameter) in macro.parameters.enumerated() {
            if index < arguments.count { scope[parameter.name] = arguments[index] }
            else if let given = keywords.first(where: { $0.0 == parameter.name }) { scope[parameter.name] = given.1 }
            else if let fallback = parameter.fallback { scope[parameter.name] = try evaluate(fallback) }
            else { scope[parameter.name] = .undefined }
        }
        let (savedScopes, savedOutput) = (scopes, output)
        scopes = [scopes[0], scope]
        output = ""
        depth += 1
        defer { depth -= 1 }
        try render(macro.body)
        let rendered = output
        (scopes, output) = (savedScopes, savedOutput)
        return .string(rendered)
    }

    mutating func applyFilter(_ name: String, _ value: JinjaValue, _ arguments: [JinjaValue], _ keywords: [String: JinjaValue]) throws(JinjaError) -> JinjaValue {
        func argument(_ index: Int, _ key: String) -> JinjaValue? { keywords[key] ?? (arguments.count > index ? arguments[index] : nil) }
        switch name {
        case "trim":
            let characters: Set<Unicode.Scalar>? = { if case .string(let c)? = argument(0, "chars") { return Set(c.unicodeScalars) } else { return nil } }()
            return .string(pythonStrip(value.text, characters: characters, leading: true, trailing: true))
        case "tojson":
            var indent: Int?
            if case .int(let i)? = argument(0, "indent") { indent = i }
            let sortKeys = argument(3, "sort_keys")?.isTrue ?? false
            var separators: (String, String) = indent == nil ? (", ", ": ") : (",", ": ")
            if case .array(let pair)? = argument(2, "separators"), pair.count == 2, case .string(let item) = pair[0], case .string(let key) = pair[1] { separators = (item, key) }
            let asciiOnly = argument(1, "ensure_ascii")?.isTrue ?? false
            var text = ""
            try pythonJSON(value, indent: indent, level: 0, separators: separators, sortKeys: sortKeys, asciiOnly: asciiOnly, into: &text)
            return .string(text)
        case "length", "count":
            switch value {
            case .string(let s): return .int(s.count)
            case .array(let a): return .int(a.count)
            case .object(let o): return .int(o.count)
            case .undefined: return .int(0)
            default: throw JinjaError("object of type '\(value.typeName)' has no len()")
            }
        case "upper": return .string(value.text.uppercased())
        case "lower": return .string(value.text.lowercased())
        case "title": return .string(jinjaTitle(value.text))
        case "capitalize": return .string(value.text.prefix(1).uppercased() + value.text.dropFirst().lowercased())
        case "string": return .string(value.text)
        case "safe", "e", "escape" where name == "safe": return value
        case "first", "last":
            let items = try iterate(value)
            return (name == "first" ? items.first : items.last) ?? .undefined
        case "list": return .array(try iterate(value))
        case "reverse":
            if case .string(let s) = value { return .string(String(s.reversed())) }
            return .array(try iterate(value).reversed())
        case "join":
            var items = try iterate(value)
            if case .string(let attribute)? = argument(1, "attribute") { items = try items.map { item throws(JinjaError) in try self.attribute(item, attribute) } }
            let separator = argument(0, "d")?.text ?? ""
            return .string(items.map(\.text).joined(separator: separator))
        case "default", "d":
            let fallback = argument(0, "default_value") ?? .string("")
            let useOnFalse = argument(1, "boolean")?.isTrue ?? false
            if case .undefined = value { return fallback }
            return useOnFalse && !value.isTrue ? fallback : value
        case "int":
            switch value {
            case .int: return value
            case .double(let d): return .int(Int(d))
            case .bool(let b): return .int(b ? 1 : 0)
            case .string(let s): return .int(Int(s.trimmingCharacters(in: .whitespaces)) ?? Double(s.trimmingCharacters(in: .whitespaces)).map { Int($0) } ?? 0)
            default: return .int(0)
            }
        case "float":
            return .double(value.number ?? Double(value.text.trimmingCharacters(in: .whitespaces)) ?? 0)
        case "abs":
            switch value {
            case .int(let i): return .int(abs(i))
            case .double(let d): return .double(abs(d))
            default: throw JinjaError("bad operand type for abs(): '\(value.typeName)'")
            }
        case "replace":
            guard case .string(let old)? = argument(0, "old"), case .string(let new)? = argument(1, "new") else { throw JinjaError("replace needs two strings") }
            try spend(value.text.utf8.count / 64)
            return .string(old.isEmpty ? value.text : value.text.replacingOccurrences(of: old, with: new))
        case "items":
            guard case .object(let entries) = value else { return .array([]) }
            return .array(entries.map { .array([.string($0.key), $0.value]) })
        case "map":
            let items = try iterate(value)
            if case .string(let attribute)? = keywords["attribute"] {
                return .array(try items.map { item throws(JinjaError) in
                    let found = try self.attribute(item, attribute)
                    return found == .undefined ? keywords["default"] ?? found : found
                })
            }
            guard case .string(let filter)? = arguments.first else { throw JinjaError("map needs a filter name or attribute=") }
            var mapped: [JinjaValue] = []
            for item in items { mapped.append(try applyFilter(filter, item, Array(arguments.dropFirst()), [:])) }
            return .array(mapped)
        case "select", "reject", "selectattr", "rejectattr":
            let byAttribute = name.hasSuffix("attr")
            var rest = arguments
            var attribute: String?
            if byAttribute {
                guard case .string(let field)? = rest.first else { throw JinjaError("\(name) needs an attribute name") }
                attribute = field
                rest.removeFirst()
            }
            var kept: [JinjaValue] = []
            for item in try iterate(value) {
                let subject = try attribute.map { field throws(JinjaError) in try self.attribute(item, field) } ?? item
                let passes: Bool
                if case .string(let test)? = rest.first { passes = try applyTest(test, subject, Array(rest.dropFirst())) } else { passes = subject.isTrue }
                if passes == name.hasPrefix("select") { kept.append(item) }
            }
            return .array(kept)
        case "sort", "min", "max":
            var items = try iterate(value)
            let attribute: String? = { if case .string(let a)? = argument(name == "sort" ? 2 : 1, "attribute") { return a } else { return nil } }()
            let caseSensitive = argument(name == "sort" ? 1 : 0, "case_sensitive")?.isTrue ?? false
            func key(_ item: JinjaValue) throws(JinjaError) -> JinjaValue {
                let subject = try attribute.map { field throws(JinjaError) in try self.attribute(item, field) } ?? item
                if !caseSensitive, case .string(let s) = subject { return .string(s.lowercased()) }
                return subject
            }
            var keyed: [(key: JinjaValue, item: JinjaValue)] = []
            for item in items { keyed.append((try key(item), item)) }
            var failure: JinjaError?
            keyed.sort { a, b in   // stable: Swift's sort is, as Python's
                do throws(JinjaError) { return try compare("<", a.key, b.key) } catch { failure = error; return false }
            }
            if let failure { throw failure }
            items = keyed.map(\.item)
            if name == "min" { return items.first ?? .undefined }
            if name == "max" { return keyed.last.map { last in keyed.first { $0.key == last.key }!.item } ?? .undefined }
            return .array(argument(0, "reverse")?.isTrue == true ? items.reversed() : items)
        case "dictsort":
            guard case .object(let entries) = value else { throw JinjaError("dictsort needs a dict") }
            let byValue = argument(1, "by") == .string("value")
            let sorted = try entries.sorted { a, b in
                let (x, y): (JinjaValue, JinjaValue) = byValue ? (a.value, b.value) : (.string(a.key.lowercased()), .string(b.key.lowercased()))
                return (try? compare("<", x, y)) ?? false
            }
            return .array((argument(2, "reverse")?.isTrue == true ? sorted.reversed() : sorted).map { .array([.string($0.key), $0.value]) })
        case "sum":
            var total: JinjaValue = argument(1, "start") ?? .int(0)
            for item in try iterate(value) {
                let term = try { () throws(JinjaError) -> JinjaValue in
                    if case .string(let field)? = argument(0, "attribute") { return try self.attribute(item, field) } else { return item }
                }()
                total = try binary("+", total, term)
            }
            return total
        case "unique":
            var seen: [JinjaValue] = []
            for item in try iterate(value) where !seen.contains(item) { seen.append(item) }
            return .array(seen)
        case "indent":
            var width = 4
            if case .int(let w)? = argument(0, "width") { width = w }
            let first = argument(1, "first")?.isTrue ?? false
            let blank = argument(2, "blank")?.isTrue ?? false
            let pad = String(repeating: " ", count: max(0, width))
            let lines = value.text.components(separatedBy: "\n")
            return .string(lines.enumerated().map { i, line in
                (i == 0 && !first) || (line.isEmpty && !blank) ? line : pad + line
            }.joined(separator: "\n"))
        case "round":
            var digits = 0
            if case .int(let p)? = argument(0, "precision") { digits = p }
            let scale = pow(10, Double(digits))
            return .double(((value.number ?? 0) * scale).rounded(.toNearestOrEven) / scale)
        default:
            throw JinjaError("unsupported filter '\(name)'")
        }
    }

    func applyTest(_ name: String, _ value: JinjaValue, _ arguments: [JinjaValue]) throws(JinjaError) -> Bool {
        switch name {
        case "defined": return value != .undefined
        case "undefined": return value == .undefined
        case "none": return value == .none
        case "string": if case .string = value { return true } else { return false }
        case "number": switch value { case .int, .double, .bool: return true; default: return false }   // Python's bool is a number
        case "integer": if case .int = value { return true } else { return false }
        case "float": if case .double = value { return true } else { return false }
        case "boolean": if case .bool = value { return true } else { return false }
        case "true": return value == .bool(true) && value.typeName == "bool"
        case "false": return value == .bool(false) && value.typeName == "bool"
        case "mapping": switch value { case .object: return true; default: return false }
        case "iterable": switch value { case .array, .object, .string: return true; default: return false }
        case "sequence": switch value { case .array, .object, .string: return true; default: return false }
        case "callable": if case .function = value { return true } else { return false }
        case "equalto", "eq", "==", "sameas": return value == (arguments.first ?? .undefined)
        case "ne", "!=": return value != (arguments.first ?? .undefined)
        case "in": return try compare("in", value, arguments.first ?? .array([]))
        case "lower": return value.text == value.text.lowercased()
        case "upper": return value.text == value.text.uppercased()
        case "odd", "even":
            guard case .int(let i) = value else { throw JinjaError("'\(name)' needs an integer") }
            return (i % 2 != 0) == (name == "odd")
        case "divisibleby":
            guard case .int(let i) = value, case .int(let n)? = arguments.first, n != 0 else { throw JinjaError("'divisibleby' needs integers") }
            return i % n == 0
        default: throw JinjaError("unsupported test '\(name)'")
        }
    }
}

/// Python's str.strip family: whitespace, or the given characters.
func pythonStrip(_ s: String, characters: Set<Unicode.Scalar>?, leading: Bool, trailing: Bool) -> String {
    let scalars = Array(s.unicodeScalars)
    func strips(_ c: Unicode.Scalar) -> Bool { characters.map { $0.contains(c) } ?? c.properties.isWhitespace }
    var start = 0, end = scalars.count
    if leading { while start < end, strips(scalars[start]) { start += 1 } }
    if trailing { while end > start, strips(scalars[end - 1]) { end -= 1 } }
    return String(String.UnicodeScalarView(scalars[start..<end]))
}

/// Python's str.split: on runs of whitespace without a separator, else on each separator; at most `limit` splits.
func pythonSplit(_ s: String, separator: String?, limit: Int) -> [String] {
    var parts: [String] = []
    if let separator, !separator.isEmpty {
        var rest = Substring(s)
        while limit < 0 || parts.count < limit, let range = rest.range(of: separator) {
            parts.append(String(rest[..<range.lowerBound]))
            rest = rest[range.upperBound...]
        }
        return parts + [String(rest)]
    }
    let scalars = Array(s.unicodeScalars)
    var i = 0
    while i < scalars.count {
        while i < scalars.count, scalars[i].properties.isWhitespace { i += 1 }
        guard i < scalars.count else { break }
        if limit >= 0, parts.count == limit {
            var end = scalars.count
            while end > i, scalars[end - 1].properties.isWhitespace { end -= 1 }
            parts.append(String(String.UnicodeScalarView(scalars[i..<end])))
            break
        }
        let start = i
        while i < scalars.count, !scalars[i].properties.isWhitespace { i += 1 }
        parts.append(String(String.UnicodeScalarView(scalars[start..<i])))
    }
    return parts
}

/// Python's str.title: each run of letters starts upper case, the rest lower case.
func pythonTitle(_ s: String) -> String {
    var out = "", previousIsLetter = false
    for character in s {
        out += previousIsLetter ? character.lowercased() : character.uppercased()
        previousIsLetter = character.isLetter
    }
    return out
}

/// jinja2's title filter: words begin after whitespace, '-', '(', '{', '[' or '<'.
func jinjaTitle(_ s: String) -> String {
    var out = "", atWordStart = true
    for character in s {
        let isBoundary = character.isWhitespace || "-({[<".contains(character)
        out += isBoundary ? String(character) : atWordStart ? character.uppercased() : character.lowercased()
        atWordStart = isBoundary
    }
    return out
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
