import Foundation
import StitchTensor

/// A NumPy `.npy` array file (format versions 1-3) of little-endian float32, float64 or float16 in C order, as float32,
/// e.g. the CLIP feature files published code ships. The header is checked against the file's size before anything is
/// allocated; anything else is an error naming the file.
public func readNumpy(_ path: String) throws -> Tensor {
    func invalid(_ detail: String) -> ModelIOError { .invalidModel(file: path, detail: "not a NumPy array file this reader takes: \(detail)") }
    guard let data = FileManager.default.contents(atPath: path) else {
        throw ModelIOError.cannotOpen(file: path, reason: FileManager.default.fileExists(atPath: path) ? "unreadable" : "no such file")
    }
    let bytes = [UInt8](data.prefix(12))
    guard bytes.count >= 10, bytes[0] == 0x93, Array(bytes[1..<6]) == Array("NUMPY".utf8), (1...3).contains(bytes[6]) else {
        throw invalid("no \\x93NUMPY magic of format 1, 2 or 3")
    }
    let wideLength = bytes[6] >= 2
    guard !wideLength || bytes.count >= 12 else { throw ModelIOError.truncated(file: path, detail: "the header length is cut off") }
    let headerLength = wideLength ? Int(bytes[8]) | Int(bytes[9]) << 8 | Int(bytes[10]) << 16 | Int(bytes[11]) << 24 : Int(bytes[8]) | Int(bytes[9]) << 8
    let headerStart = wideLength ? 12 : 10
    guard headerLength <= 65_536, headerStart + headerLength <= data.count else { throw ModelIOError.truncated(file: path, detail: "the header is cut off") }
    let header = String(decoding: data[headerStart..<headerStart + headerLength], as: UTF8.self)

    /// The text after `'key':` up to the next top-level comma or closing brace.
    func field(_ key: String) throws -> String {
        guard let range = header.range(of: "'\(key)':") else { throw invalid("the header has no '\(key)'") }
        var value = "", depth = 0
        for character in header[range.upperBound...] {
            if character == "(" { depth += 1 }
            if character == ")" { depth -= 1 }
            if depth == 0 && (character == "," || character == "}") { break }
            value.append(character)
        }
        return value.trimmingCharacters(in: .whitespaces)
    }
    let descr = try field("descr")
    let width: Int
    switch descr {
    case "'<f4'": width = 4
    case "'<f8'": width = 8
    case "'<f2'": width = 2
    default: throw invalid("dtype \(descr); float16, float32 or float64, little-endian, are read")
    }
    guard try field("fortran_order") == "False" else { throw invalid("Fortran order; save it in C order") }
    let shapeText = try field("shape")
    guard shapeText.hasPrefix("("), shapeText.hasSuffix(")") else { throw invalid("shape \(shapeText)") }
    var shape: [Int] = []
    for piece in shapeText.dropFirst().dropLast().split(separator: ",") {
        guard let dimension = Int(piece.trimmingCharacters(in: .whitespaces)), dimension >= 0 else { throw invalid("shape \(shapeText)") }
        shape.append(dimension)
    }
    var count = 1
    for dimension in shape {
        let (product, overflow) = count.multipliedReportingOverflow(by: dimension)
        guard !overflow else { throw invalid("shape \(shapeText) is too large") }
        count = product
    }
    let start = headerStart + headerLength
    guard count <= (data.count - start) / width else {
        throw ModelIOError.truncated(file: path, detail: "shape \(shapeText) needs more than the file's \(data.count - start) bytes of data")
    }
    let scalars: [Float] = data.withUnsafeBytes { raw in
        (0..<count).map { i in
            let offset = start + i * width
            switch width {
            case 4: return Float(bitPattern: raw.loadUnaligned(fromByteOffset: offset, as: UInt32.self).littleEndian)
            case 8: return Float(Double(bitPattern: raw.loadUnaligned(fromByteOffset: offset, as: UInt64.self).littleEndian))
            default: return Float(Float16(bitPattern: raw.loadUnaligned(fromByteOffset: offset, as: UInt16.self).littleEndian))
            }
        }
    }
    return Tensor(shape: shape, scalars: scalars)
}
