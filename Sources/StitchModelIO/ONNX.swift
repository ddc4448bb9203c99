import Foundation
import StitchTensor

/// The parts of an ONNX model file that a hand-written network needs: the graph's
/// nodes in order (op type, inputs, outputs, integer/float/string attributes) and its
/// float initializers. A small protobuf reader, so no ONNX runtime is needed; every
/// read is bounds-checked and a bad file is an error naming it.
public struct ONNXModel: Sendable {
    public struct Node: Sendable {
        public var name = "", opType = ""
        public var inputs: [String] = [], outputs: [String] = []
        public var ints: [String: [Int]] = [:]
        public var floats: [String: [Float]] = [:]
        public var strings: [String: String] = [:]
    }

    public let path: String
    public private(set) var nodes: [Node] = []
    /// Float initializers by name (FLOAT tensors; integer constants are not kept).
    public private(set) var initializers: [String: Tensor] = [:]

    public init(path: String) throws(ModelIOError) {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw .cannotOpen(file: path, reason: "missing or unreadable")
        }
        self.path = path
        do {
            var model = ProtobufReader(data)
            var sawGraph = false
            while let (field, value) = try model.next() {
                guard field == 7 else { continue }   // ModelProto.graph
                guard case let .bytes(graph) = value else { throw ProtobufError("graph is not a message") }
                try readGraph(graph)
                sawGraph = true
            }
            guard sawGraph else { throw ProtobufError("no graph in the model") }
        } catch {
            throw .invalidModel(file: path, detail: "not a readable ONNX model: \((error as? ProtobufError)?.message ?? "\(error)")")
        }
    }

    private mutating func readGraph(_ data: Data) throws {
        var graph = ProtobufReader(data)
        while let (field, value) = try graph.next() {
            guard case let .bytes(bytes) = value else { continue }
            switch field {
            case 1: nodes.append(try Self.readNode(bytes))                  // GraphProto.node
            case 5: if let (name, tensor) = try Self.readTensor(bytes) { initializers[name] = tensor }   // .initializer
            default: break
            }
        }
    }

    private static func readNode(_ data: Data) throws -> Node {
        var node = Node(), reader = ProtobufReader(data)
        while let (field, value) = try reader.next() {
            switch (field, value) {
            case let (1, .bytes(b)): node.inputs.append(String(decoding: b, as: UTF8.self))
            case let (2, .bytes(b)): node.outputs.append(String(decoding: b, as: UTF8.self))
            case let (3, .bytes(b)): node.name = String(decoding: b, as: UTF8.self)
            case let (4, .bytes(b)): node.opType = String(decoding: b, as: UTF8.self)
            case let (5, .bytes(b)): try readAttribute(b, into: &node)
            default: break
            }
        }
        return node
    }

    private static func readAttribute(_ data: Data, into node: inout Node) throws {
        var reader = ProtobufReader(data)
        var name = "", ints: [Int] = [], floats: [Float] = [], string: String?
        while let (field, value) = try reader.next() {
            switch (field, value) {
            case let (1, .bytes(b)): name = String(decoding: b, as: UTF8.self)
            case let (2, .fixed32(bits)): floats.append(Float(bitPattern: bits))
            case let (3, .varint(v)): ints.append(Int(Int64(bitPattern: v)))
            case let (4, .bytes(b)): string = String(decoding: b, as: UTF8.self)
            case let (7, .fixed32(bits)): floats.append(Float(bitPattern: bits))
            case let (7, .bytes(b)): floats += try ProtobufReader.packedFixed32(b).map { Float(bitPattern: $0) }
            case let (8, .varint(v)): ints.append(Int(Int64(bitPattern: v)))
            case let (8, .bytes(b)): ints += try ProtobufReader.packedVarints(b).map { Int(Int64(bitPattern: $0)) }
            default: break
            }
        }
        if !ints.isEmpty { node.ints[name] = ints }
        if !floats.isEmpty { node.floats[name] = floats }
        if let string { node.strings[name] = string }
    }

    /// A FLOAT TensorProto as (name, tensor); nil for other element types.
    private static func readTensor(_ data: Data) throws -> (String, Tensor)? {
        var reader = ProtobufReader(data)
        var dims: [Int] = [], dataType: UInt64 = 0, name = "", raw: Data?, floats: [Float] = []
        while let (field, value) = try reader.next() {
            switch (field, value) {
            case let (1, .varint(v)): dims.append(Int(Int64(bitPattern: v)))
            case let (1, .bytes(b)): dims += try ProtobufReader.packedVarints(b).map { Int(Int64(bitPattern: $0)) }
            case let (2, .varint(v)): dataType = v
            case let (4, .bytes(b)): floats += try ProtobufReader.packedFixed32(b).map { Float(bitPattern: $0) }
            case let (4, .fixed32(bits)): floats.append(Float(bitPattern: bits))
            case let (8, .bytes(b)): name = String(decoding: b, as: UTF8.self)
            case let (9, .bytes(b)): raw = b
            case (14, .varint(1)): throw ProtobufError("tensor '\(name)' keeps its data in an external file, which is not supported")
            default: break
            }
        }
        guard dataType == 1 else { return nil }   // TensorProto.FLOAT
        guard dims.allSatisfy({ $0 >= 0 }) else { throw ProtobufError("tensor '\(name)' has negative dimensions \(dims)") }
        let count = dims.reduce(1, *)
        if let raw {
            guard raw.count == count * 4 else {
                throw ProtobufError("tensor '\(name)' of shape \(dims) holds \(raw.count) bytes, expected \(count * 4)")
            }
            floats = raw.withUnsafeBytes { bytes in (0..<count).map { Float(bitPattern: UInt32(littleEndian: bytes.loadUnaligned(fromByteOffset: $0 * 4, as: UInt32.self))) } }
        }
        guard floats.count == count else {
            throw ProtobufError("tensor '\(name)' of shape \(dims) holds \(floats.count) values, expected \(count)")
        }
        return (name, Tensor(shape: dims, scalars: floats))
    }
}

struct ProtobufError: Error {
    let message: String
    init(_ message: String) { self.message = message }
}

/// Reads protobuf wire format: one (field number, value) at a time.
struct ProtobufReader {
    enum Value {
        case varint(UInt64)
        case fixed64(UInt64)
        case fixed32(UInt32)
        case bytes(Data)
    }

    private let data: Data
    private var offset: Int

    init(_ data: Data) {
        self.data = data
        offset = data.startIndex
    }

    mutating func next() throws -> (Int, Value)? {
        guard offset < data.endIndex else { return nil }
        let key = try varint()
        let field = Int(key >> 3)
        guard field > 0 else { throw ProtobufError("field number 0 at byte \(offset - data.startIndex)") }
        switch key & 7 {
        case 0: return (field, .varint(try varint()))
        case 1: return (field, .fixed64(try fixed(8)))
        case 5: return (field, .fixed32(UInt32(try fixed(4))))
        case 2:
            let length = try varint()
            guard length <= UInt64(data.endIndex - offset) else {
                throw ProtobufError("field \(field) claims \(length) bytes but only \(data.endIndex - offset) remain")
            }
            let bytes = data[offset..<offset + Int(length)]
            offset += Int(length)
            return (field, .bytes(Data(bytes)))
        default: throw ProtobufError("unknown wire type \(key & 7) for field \(field)")
        }
    }

    private mutating func varint() throws -> UInt64 {
        var result: UInt64 = 0, shift: UInt64 = 0
        while true {
            guard offset < data.endIndex else { throw ProtobufError("the data ends inside a number") }
            guard shift < 64 else { throw ProtobufError("a number is longer than 10 bytes") }
            let byte = data[offset]
            offset += 1
            result |= UInt64(byte & 0x7f) << shift
            if byte & 0x80 == 0 { return result }
            shift += 7
        }
    }

    private mutating func fixed(_ size: Int) throws -> UInt64 {
        guard data.endIndex - offset >= size else { throw ProtobufError("the data ends inside a fixed-size value") }
        var result: UInt64 = 0
        for i in 0..<size { result |= UInt64(data[offset + i]) << (8 * UInt64(i)) }
        offset += size
        return result
    }

    static func packedVarints(_ data: Data) throws -> [UInt64] {
        var reader = ProtobufReader(data), values: [UInt64] = []
        while reader.offset < data.endIndex { values.append(try reader.varint()) }
        return values
    }

    static func packedFixed32(_ data: Data) throws -> [UInt32] {
        guard data.count % 4 == 0 else { throw ProtobufError("packed floats of \(data.count) bytes") }
        var reader = ProtobufReader(data), values: [UInt32] = []
        while reader.offset < data.endIndex { values.append(UInt32(try reader.fixed(4))) }
        return values
    }
}
