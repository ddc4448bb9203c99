import Foundation

/// What is wrong with protobuf bytes.
public struct ProtobufError: Error, CustomStringConvertible {
    public let message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

/// Reads protobuf wire format: one (field number, value) at a time, every length checked against the data.
public struct ProtobufReader {
    public enum Value {
        case varint(UInt64)
        case fixed64(UInt64)
        case fixed32(UInt32)
        case bytes(Data)
    }

    private let data: Data
    private var offset: Int

    public init(_ data: Data) {
        self.data = data
        offset = data.startIndex
    }

    public mutating func next() throws(ProtobufError) -> (Int, Value)? {
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

    private mutating func varint() throws(ProtobufError) -> UInt64 {
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

    private mutating func fixed(_ size: Int) throws(ProtobufError) -> UInt64 {
        guard data.endIndex - offset >= size else { throw ProtobufError("the data ends inside a fixed-size value") }
        var result: UInt64 = 0
        for i in 0..<size { result |= UInt64(data[offset + i]) << (8 * UInt64(i)) }
        offset += size
        return result
    }

    static func packedVarints(_ data: Data) throws(ProtobufError) -> [UInt64] {
        var reader = ProtobufReader(data), values: [UInt64] = []
        while reader.offset < data.endIndex { values.append(try reader.varint()) }
        return values
    }

    static func packedFixed32(_ data: Data) throws(ProtobufError) -> [UInt32] {
        guard data.count % 4 == 0 else { throw ProtobufError("packed floats of \(data.count) bytes") }
        var reader = ProtobufReader(data), values: [UInt32] = []
        while reader.offset < data.endIndex { values.append(UInt32(try reader.fixed(4))) }
        return values
    }
}
