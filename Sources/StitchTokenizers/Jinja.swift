import Foundation

/// The Jinja that models' chat templates are written in, rendered as transformers' `apply_chat_template` renders it
/// (jinja2's sandbox with trim_blocks, lstrip_blocks and loop controls, its `tojson`, `raise_exception` and
/// `strftime_now`): text, `{{ }}`, `{% %}` (if/elif/else, for with `loop`, unpacking, an `if` filter and `else`,
/// set (names, namespace attributes, blocks), macro, break, continue, generation), `{# #}`, whitespace control, Python's
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
