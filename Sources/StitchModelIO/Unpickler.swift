import Foundation

/// A value built by `Unpickler`. Containers live in the unpickler's arena and are referred to
/// by index, so neither a deeply nested nor a self-referencing pickle can recurse or leak.
enum PickleValue {
    case none
    case bool(Bool)
    case int(Int)
    /// An integer wider than 64 bits (little-endian two's complement), e.g. torch's legacy magic number.
    case bigInt([UInt8])
    case float(Double)
    case string(String)
    case bytes(Data)
    /// An allowed global, "module.name".
    case global(String)
    case tuple(Int), list(Int), dict(Int)
    /// A persistent id (BINPERSID's argument, a tuple: by index), which the checkpoint format resolves to a storage.
    case persistent(Int)
    /// A tensor view of a persistent storage.
    case tensor(Int)

    var kind: String {
        switch self {
        case .none: return "None"
        case .bool: return "bool"
        case .int, .bigInt: return "int"
        case .float: return "float"
        case .string: return "str"
        case .bytes: return "bytes"
        case .global(let name): return name
        case .tuple: return "tuple"
        case .list: return "list"
        case .dict: return "dict"
        case .persistent: return "storage"
        case .tensor: return "tensor"
        }
    }
}

/// A tensor as `torch._utils._rebuild_tensor_v2` describes it: a strided view of a storage.
struct TensorView {
    /// The storage's persistent id (an index into the unpickler's tuples).
    let storage: Int
    let offset: Int
    let shape: [Int]
    let stride: [Int]
}

/// A pickle reader for PyTorch state dicts that never executes anything. Only the globals a
/// state dict needs are accepted (`allowedGlobals`); any other global is an error naming its module
/// and name, raised when the pickle names it, before anything could call it. Calls (REDUCE) are
/// interpreted here for those globals alone: OrderedDict, the tensor and parameter rebuilders.
struct Unpickler {
    /// The globals a `torch.save`d state dict refers to. The storage classes are only ever
    /// arguments of persistent ids; the rebuilders are interpreted, not called.
    static let storageClasses: [String: TensorDType] = [
        "torch.FloatStorage": .f32, "torch.HalfStorage": .f16, "torch.BFloat16Storage": .bf16, "torch.DoubleStorage": .f64,
        "torch.LongStorage": .i64, "torch.IntStorage": .i32, "torch.ShortStorage": .i16, "torch.CharStorage": .i8,
        "torch.ByteStorage": .u8, "torch.BoolStorage": .bool,
    ]
    static let allowedGlobals: Set<String> = Set(storageClasses.keys).union([
        "collections.OrderedDict",
        "torch._utils._rebuild_tensor", "torch._utils._rebuild_tensor_v2",
        "torch._utils._rebuild_parameter", "torch._utils._rebuild_parameter_with_state",
        "torch._tensor._rebuild_from_type_v2", "torch.Tensor", "torch.nn.parameter.Parameter",
    ])

    let file: String
    private let bytes: UnsafeRawBufferPointer
    private(set) var position: Int
    private var stack: [PickleValue] = []
    private var marks: [Int] = []
    private var memo: [Int: PickleValue] = [:]
    private(set) var tuples: [[PickleValue]] = []
    private(set) var lists: [[PickleValue]] = []
    private(set) var dicts: [[(key: PickleValue, value: PickleValue)]] = []
    private(set) var views: [TensorView] = []

    init(file: String, bytes: UnsafeRawBufferPointer, start: Int = 0) {
        self.file = file
        self.bytes = bytes
        position = start
    }

    func fail(_ detail: String) -> ModelIOError { .invalidModel(file: file, detail: "pickle: \(detail)") }

    func tuple(_ value: PickleValue) -> [PickleValue]? { if case .tuple(let i) = value { return tuples[i] }; return nil }

    /// Reads one pickle (up to its STOP opcode) and returns its value; `position` is then just past it.
    mutating func load() throws(ModelIOError) -> PickleValue {
        stack.removeAll()
        marks.removeAll()
        memo.removeAll()
        while true {
            let opcodeAt = position
            let opcode = try byte()
            switch opcode {
            case 0x80: _ = try byte()                                   // PROTO
            case 0x95: _ = try take(8)                                  // FRAME: a length hint
            case 0x2e:                                                  // STOP
                guard let result = stack.popLast(), stack.isEmpty else { throw fail("STOP at byte \(opcodeAt) with \(stack.count) values on the stack") }
                return result
            case 0x28: marks.append(stack.count)                        // MARK
            case 0x4e: stack.append(.none)
            case 0x88: stack.append(.bool(true))
            case 0x89: stack.append(.bool(false))
            case 0x4b: stack.append(.int(Int(try byte())))             // BININT1
            case 0x4d: stack.append(.int(Int(try unsigned(2))))        // BININT2
            case 0x4a: stack.append(.int(Int(Int32(truncatingIfNeeded: try unsigned(4)))))   // BININT
            case 0x8a: stack.append(try long(Int(try byte())))         // LONG1
            case 0x8b: stack.append(try long(try length(4)))           // LONG4
            case 0x47: stack.append(.float(Double(bitPattern: UInt64(bigEndian: try take(8).loadUnaligned(as: UInt64.self)))))   // BINFLOAT
            case 0x58: stack.append(.string(try text(try length(4))))     // BINUNICODE
            case 0x8c: stack.append(.string(try text(Int(try byte()))))   // SHORT_BINUNICODE
            case 0x8d: stack.append(.string(try text(try length(8))))     // BINUNICODE8
            case 0x54: stack.append(.string(try text(try length(4))))     // BINSTRING (protocol 2 str)
            case 0x55: stack.append(.string(try text(Int(try byte()))))   // SHORT_BINSTRING
            case 0x42: stack.append(.bytes(Data(try take(try length(4)))))   // BINBYTES
            case 0x43: stack.append(.bytes(Data(try take(Int(try byte())))))   // SHORT_BINBYTES
            case 0x8e: stack.append(.bytes(Data(try take(try length(8)))))   // BINBYTES8
            case 0x49, 0x4c:                                            // INT, LONG (protocol 0 text)
                let line = try textLine().trimmingCharacters(in: CharacterSet(charactersIn: "L"))
                if line == "01" { stack.append(.bool(true)) } else if line == "00" { stack.append(.bool(false)) }
                else if let value = Int(line) { stack.append(.int(value)) } else { throw fail("bad integer '\(line)' at byte \(opcodeAt)") }
            case 0x46:                                                  // FLOAT (text)
                guard let value = Double(try textLine()) else { throw fail("bad float at byte \(opcodeAt)") }
                stack.append(.float(value))
            case 0x29: tuples.append([]); stack.append(.tuple(tuples.count - 1))   // EMPTY_TUPLE
            case 0x85, 0x86, 0x87:                                      // TUPLE1..3
                let items = try pop(Int(opcode) - 0x84)
                tuples.append(items); stack.append(.tuple(tuples.count - 1))
            case 0x74: tuples.append(try popToMark()); stack.append(.tuple(tuples.count - 1))   // TUPLE
            case 0x5d, 0x8f: lists.append([]); stack.append(.list(lists.count - 1))   // EMPTY_LIST, EMPTY_SET (a set is kept as a list)
            case 0x6c, 0x91: lists.append(try popToMark()); stack.append(.list(lists.count - 1))   // LIST, FROZENSET
            case 0x7d: dicts.append([]); stack.append(.dict(dicts.count - 1))   // EMPTY_DICT
            case 0x64:                                                  // DICT
                let items = try popToMark()
                guard items.count % 2 == 0 else { throw fail("DICT with an odd number of items at byte \(opcodeAt)") }
                dicts.append(stride(from: 0, to: items.count, by: 2).map { (items[$0], items[$0 + 1]) })
                stack.append(.dict(dicts.count - 1))
            case 0x61:                                                  // APPEND
                let item = try pop(1)[0]
                try append([item], to: try top())
            case 0x65, 0x90:                                            // APPENDS, ADDITEMS
                let items = try popToMark()
                try append(items, to: try top())
            case 0x73:                                                  // SETITEM
                let pair = try pop(2)
                try setItems([(pair[0], pair[1])], in: try top())
            case 0x75:                                                  // SETITEMS
                let items = try popToMark()
                guard items.count % 2 == 0 else { throw fail("SETITEMS with an odd number of items at byte \(opcodeAt)") }
                try setItems(stride(from: 0, to: items.count, by: 2).map { (items[$0], items[$0 + 1]) }, in: try top())
            case 0x71: memo[Int(try byte())] = try top()               // BINPUT
            case 0x72: memo[Int(try unsigned(4))] = try top()          // LONG_BINPUT
            case 0x94: memo[memo.count] = try top()                     // MEMOIZE
            case 0x70:                                                  // PUT (text)
                guard let index = Int(try textLine()) else { throw fail("bad PUT index at byte \(opcodeAt)") }
                memo[index] = try top()
            case 0x68: stack.append(try memoized(Int(try byte())))     // BINGET
            case 0x6a: stack.append(try memoized(Int(try unsigned(4))))   // LONG_BINGET
            case 0x67:                                                  // GET (text)
                guard let index = Int(try textLine()) else { throw fail("bad GET index at byte \(opcodeAt)") }
                stack.append(try memoized(index))
            case 0x30: _ = try pop(1)                                   // POP
            case 0x31: _ = try popToMark()                              // POP_MARK
            case 0x32: stack.append(try top())                          // DUP
            case 0x63:                                                  // GLOBAL
                let module = try textLine(), name = try textLine()
                stack.append(try global(module, name))
            case 0x93:                                                  // STACK_GLOBAL
                let pair = try pop(2)
                guard case .string(let module) = pair[0], case .string(let name) = pair[1] else { throw fail("STACK_GLOBAL without two strings at byte \(opcodeAt)") }
                stack.append(try global(module, name))
            case 0x51:                                                  // BINPERSID
                guard case .tuple(let id) = try pop(1)[0] else { throw fail("a persistent id that is not a tuple at byte \(opcodeAt)") }
                stack.append(.persistent(id))
            case 0x52:                                                  // REDUCE
                let pair = try pop(2)
                stack.append(try call(pair[0], arguments: pair[1]))
            case 0x62:                                                  // BUILD
                let state = try pop(1)[0]
                try build(try top(), state: state)
            default:
                throw fail("opcode 0x\(String(opcode, radix: 16)) at byte \(opcodeAt) is not allowed in a state dict (only data and tensor rebuilders are)")
            }
        }
    }

    // MARK: reading

    private mutating func byte() throws(ModelIOError) -> UInt8 {
        guard position < bytes.count else { throw .truncated(file: file, detail: "the pickle ends at byte \(position) before its STOP opcode") }
        defer { position += 1 }
        return bytes[position]
    }

    private mutating func take(_ count: Int) throws(ModelIOError) -> UnsafeRawBufferPointer {
        guard count >= 0, count <= bytes.count - position else {
            throw .truncated(file: file, detail: "the pickle needs \(count) bytes at byte \(position) but the data ends at \(bytes.count)")
        }
        defer { position += count }
        return UnsafeRawBufferPointer(rebasing: bytes[position..<(position + count)])
    }

    private mutating func unsigned(_ width: Int) throws(ModelIOError) -> UInt64 {
        let raw = try take(width)
        var value: UInt64 = 0
        for i in (0..<width).reversed() { value = value << 8 | UInt64(raw[i]) }
        return value
    }

    /// A length field: must fit in what remains, so no claim can make us allocate more than the file holds.
    private mutating func length(_ width: Int) throws(ModelIOError) -> Int {
        let value = try unsigned(width)
        guard value <= UInt64(bytes.count - position) else {
            throw .truncated(file: file, detail: "the pickle claims \(value) bytes at byte \(position) but only \(bytes.count - position) remain")
        }
        return Int(value)
    }

    private mutating func text(_ count: Int) throws(ModelIOError) -> String {
        String(decoding: try take(count), as: UTF8.self)
    }

    private mutating func textLine() throws(ModelIOError) -> String {
        let start = position
        while try byte() != 0x0a {}
        return String(decoding: UnsafeRawBufferPointer(rebasing: bytes[start..<(position - 1)]), as: UTF8.self)
    }

    private mutating func long(_ count: Int) throws(ModelIOError) -> PickleValue {
        let raw = Array(try take(count))
        guard count <= 8 else { return .bigInt(raw) }
        guard count > 0 else { return .int(0) }
        var value: UInt64 = raw.last! & 0x80 != 0 ? ~0 : 0   // sign-extend
        for byte in raw.reversed() { value = value << 8 | UInt64(byte) }
        return .int(Int(Int64(bitPattern: value)))
    }

    // MARK: the stack

    private func top() throws(ModelIOError) -> PickleValue {
        guard let value = stack.last else { throw fail("stack underflow at byte \(position)") }
        return value
    }

    private mutating func pop(_ count: Int) throws(ModelIOError) -> [PickleValue] {
        guard stack.count - (marks.last ?? 0) >= count else { throw fail("stack underflow at byte \(position)") }
        defer { stack.removeLast(count) }
        return Array(stack.suffix(count))
    }

    private mutating func popToMark() throws(ModelIOError) -> [PickleValue] {
        guard let mark = marks.popLast() else { throw fail("no MARK before byte \(position)") }
        defer { stack.removeSubrange(mark...) }
        return Array(stack[mark...])
    }

    private func memoized(_ index: Int) throws(ModelIOError) -> PickleValue {
        guard let value = memo[index] else { throw fail("memo entry \(index) read before it was written (byte \(position))") }
        return value
    }

    private mutating func append(_ items: [PickleValue], to target: PickleValue) throws(ModelIOError) {
        guard case .list(let index) = target else { throw fail("APPEND to a \(target.kind) at byte \(position)") }
        lists[index].append(contentsOf: items)
    }

    private mutating func setItems(_ items: [(PickleValue, PickleValue)], in target: PickleValue) throws(ModelIOError) {
        guard case .dict(let index) = target else { throw fail("SETITEM on a \(target.kind) at byte \(position)") }
        dicts[index].append(contentsOf: items.map { (key: $0.0, value: $0.1) })
    }

    // MARK: the allow-list

    private func global(_ module: String, _ name: String) throws(ModelIOError) -> PickleValue {
        let qualified = "\(module).\(name)"
        guard Self.allowedGlobals.contains(qualified) else {
            throw .invalidModel(file: file, detail: "pickle refers to \(module).\(name), which a state dict never needs; refused without running anything (only tensors, storages and OrderedDict are allowed)")
        }
        return .global(qualified)
    }

    private mutating func call(_ callable: PickleValue, arguments: PickleValue) throws(ModelIOError) -> PickleValue {
        guard case .global(let name) = callable, let args = tuple(arguments) else {
            throw fail("REDUCE of a \(callable.kind) with \(arguments.kind) arguments at byte \(position)")
        }
        switch name {
        case "collections.OrderedDict":
            guard args.isEmpty else { throw fail("OrderedDict with arguments at byte \(position)") }
            dicts.append([])
            return .dict(dicts.count - 1)
        case "torch._utils._rebuild_tensor", "torch._utils._rebuild_tensor_v2":
            guard args.count >= 4, case .persistent(let storage) = args[0], case .int(let offset) = args[1],
                  let shape = integers(args[2]), let stride = integers(args[3]), shape.count == stride.count else {
                throw fail("\(name) with arguments that are not (storage, offset, size, stride) at byte \(position)")
            }
            views.append(TensorView(storage: storage, offset: offset, shape: shape, stride: stride))
            return .tensor(views.count - 1)
        case "torch._utils._rebuild_parameter", "torch._utils._rebuild_parameter_with_state":
            guard let data = args.first, case .tensor = data else { throw fail("\(name) without a tensor at byte \(position)") }
            return data
        case "torch._tensor._rebuild_from_type_v2":
            // (function, type, arguments, state): a plain tensor or parameter rebuilt by an allowed function.
            guard args.count == 4, case .global(let type) = args[1], ["torch.Tensor", "torch.nn.parameter.Parameter"].contains(type) else {
                throw fail("\(name) of something other than a tensor at byte \(position)")
            }
            return try call(args[0], arguments: args[2])
        default:
            throw fail("\(name) cannot be called at byte \(position)")
        }
    }

    private func build(_ target: PickleValue, state: PickleValue) throws(ModelIOError) {
        switch target {
        case .dict, .tensor: return   // an OrderedDict's _metadata, a parameter's attributes: not weights
        default: throw fail("BUILD on a \(target.kind) at byte \(position)")
        }
    }

    /// A tuple (or list) of integers.
    func integers(_ value: PickleValue) -> [Int]? {
        let items: [PickleValue]
        switch value {
        case .tuple(let i): items = tuples[i]
        case .list(let i): items = lists[i]
        default: return nil
        }
        var result: [Int] = []
        for item in items {
            guard case .int(let n) = item else { return nil }
            result.append(n)
        }
        return result
    }
}
