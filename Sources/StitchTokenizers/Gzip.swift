import CZlib
import Foundation
import StitchTensor

/// Inflates a gzip file (CLIP ships its merges as bpe_simple_vocab_16e6.txt.gz).
/// Decompression stops at `Limit.decompressedBytes`: a small gzip bomb cannot take gigabytes.
func gunzip(_ data: Data, file: String) throws(TokenizerError) -> Data {
    var stream = z_stream()
    // 16 + MAX_WBITS: expect a gzip header rather than a raw zlib stream.
    guard inflateInit2_(&stream, 16 + MAX_WBITS, ZLIB_VERSION, Int32(MemoryLayout<z_stream>.size)) == Z_OK else {
        throw .malformed(file: file, line: nil, detail: "zlib could not start")
    }
    defer { inflateEnd(&stream) }
    let maximumGunzipped = Limit.decompressedBytes.value
    var output = Data()
    var chunk = [UInt8](repeating: 0, count: 1 << 16)
    var status = Z_OK
    var input = [UInt8](data)
    input.withUnsafeMutableBufferPointer { source in
        stream.next_in = source.baseAddress
        stream.avail_in = uInt(source.count)
        repeat {
            chunk.withUnsafeMutableBufferPointer { buffer in
                stream.next_out = buffer.baseAddress
                stream.avail_out = uInt(buffer.count)
                status = inflate(&stream, Z_NO_FLUSH)
                output.append(buffer.baseAddress!, count: buffer.count - Int(stream.avail_out))
            }
        } while status == Z_OK && output.count <= maximumGunzipped
    }
    guard output.count <= maximumGunzipped else {
        throw .malformed(file: file, line: nil, detail: "decompresses to more than \(maximumGunzipped) bytes; tokenizer files are far smaller \(Limit.decompressedBytes.hint)")
    }
    guard status == Z_STREAM_END else {
        throw .malformed(file: file, line: nil, detail: "gzip data is corrupt or truncated (zlib status \(status))")
    }
    return output
}
