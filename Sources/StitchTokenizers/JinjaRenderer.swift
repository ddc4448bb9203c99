import Foundation

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
        case "safe": return value
        case "e", "escape": return .string(markupEscaped(value.text))
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

/// markupsafe's escape, which jinja2's `e` and `escape` filters apply: & < > " ' as HTML entities. (jinja2 marks the
/// result safe, so escaping it again changes nothing; here a second escape escapes again.)
func markupEscaped(_ s: String) -> String {
    var out = ""
    for scalar in s.unicodeScalars {
        switch scalar {
        case "&": out += "&amp;"
        case "<": out += "&lt;"
        case ">": out += "&gt;"
        case "\"": out += "&#34;"
        case "'": out += "&#39;"
        default: out.unicodeScalars.append(scalar)
        }
    }
    return out
}
