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
        // The element count must fit the data the file holds; dimensions that multiply past that (or past Int) are a lie.
        var count = 1
        for dim in dims {
            let (product, overflow) = count.multipliedReportingOverflow(by: dim)
            guard !overflow, product <= max(data.count, 1) else { throw ProtobufError("tensor '\(name)' claims shape \(dims), more values than its \(data.count) bytes hold") }
            count = product
        }
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
