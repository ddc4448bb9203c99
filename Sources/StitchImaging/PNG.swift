import CDeflate
import CPNG

/// PNG decoded as Pillow's convert("RGB") and OpenCV's imread decode it: the stored values, with no gamma or colour
/// management (libpng's simplified API would apply a gAMA chunk and read 16-bit samples as linear light, up to 72 of
/// 255 levels apart from both), 16-bit samples cut to their high byte, alpha dropped rather than composited.
///
/// The common PNG (8-bit grey, grey and alpha, RGB or RGBA, not interlaced) is inflated whole by libdeflate and
/// unfiltered here: coffee.png's image data inflates in 1.3 ms against zlib's 2.7, a fifth of a YOLOX-Nano detection.
/// Anything else, and anything irregular in a common one, goes to libpng, which reads it or says what is wrong.
extension RGBImage {
    static func decodePNG(_ bytes: [UInt8], name: String) throws(ImageError) -> RGBImage {
        let chunks = PNGChunk.all(in: bytes)
        if let chunks, let image = bytes.withUnsafeBufferPointer({ decodeCommonPNG($0, chunks: chunks) }) { return image }
        return try decodePNGWithLibpng(bytes, chunks: chunks, name: name)
    }

    /// An 8-bit, non-interlaced grey, grey-alpha, RGB or RGBA PNG whose header and image data check out (CRCs, the
    /// inflated length, the filter types), else nil. Other chunks are skipped as Pillow and OpenCV skip them: colour
    /// chunks, a suggested palette, tRNS (alpha is dropped anyway).
    static func decodeCommonPNG(_ file: UnsafeBufferPointer<UInt8>, chunks: [PNGChunk]) -> RGBImage? {
        guard let header = chunks.first, header.kind == "IHDR", header.data.count == 13, header.hasValidCRC(in: file) else { return nil }
        let fields = header.data.lowerBound
        let width = Int(bigEndian32(file, at: fields)), height = Int(bigEndian32(file, at: fields + 4))
        let (bitDepth, colourType) = (file[fields + 8], file[fields + 9])
        let (compression, filtering, interlace) = (file[fields + 10], file[fields + 11], file[fields + 12])
        let channelsOfType: [UInt8: Int] = [0: 1, 2: 3, 4: 2, 6: 4]
        guard let channels = channelsOfType[colourType], bitDepth == 8, compression == 0, filtering == 0, interlace == 0,
              width > 0, height > 0, width <= Int(Int32.max), height <= Int(Int32.max), width * height <= maximumPixels else { return nil }
        // Image data in consecutive IDAT chunks; no critical chunk this does not know (libpng refuses those).
        let imageData = chunks.indices.filter { chunks[$0].kind == "IDAT" }
        guard let first = imageData.first, let last = imageData.last, last - first + 1 == imageData.count,
              chunks.allSatisfy({ ["IHDR", "PLTE", "IDAT", "IEND"].contains($0.kind) || $0.isAncillary }),
              !(chunks.contains { $0.kind == "PLTE" } && channels < 3),
              imageData.allSatisfy({ chunks[$0].hasValidCRC(in: file) }) else { return nil }
        let stride = width * channels
        guard let inflater = libdeflate_alloc_decompressor() else { return nil }
        defer { libdeflate_free_decompressor(inflater) }
        // Each row: its filter type, then its bytes; and the (zeroed) slack the unfiltering reads past the end.
        let size = height * (stride + 1)
        var inflated = LIBDEFLATE_BAD_DATA
        let filtered = [UInt8](unsafeUninitializedCapacity: size + unfilterSlack) { target, count in
            (target.baseAddress! + size).initialize(repeating: 0, count: unfilterSlack)
            // Without an out-length pointer libdeflate fails unless the stream inflates to exactly the rows' size.
            func inflate(_ source: UnsafeRawBufferPointer) {
                inflated = libdeflate_zlib_decompress(inflater, source.baseAddress, source.count, target.baseAddress, size, nil)
            }
            if imageData.count == 1 {
                inflate(UnsafeRawBufferPointer(rebasing: UnsafeRawBufferPointer(file)[chunks[first].data]))
            } else {
                imageData.flatMap { file[chunks[$0].data] }.withUnsafeBytes(inflate)
            }
            count = inflated == LIBDEFLATE_SUCCESS ? size + unfilterSlack : 0
        }
        guard inflated == LIBDEFLATE_SUCCESS else { return nil }
        // RGB rows unfilter straight into the pixels; the others into rows of their own, then to RGB.
        let decoded = channels == 3 ? nil : UnsafeMutablePointer<UInt8>.allocate(capacity: height * stride + unfilterSlack)
        defer { decoded?.deallocate() }
        var unfiltered = true
        let pixels = [UInt8](unsafeUninitializedCapacity: width * height * 3 + unfilterSlack) { out, count in
            count = 0
            let rows = decoded ?? out.baseAddress!
            unfiltered = filtered.withUnsafeBufferPointer { unfilterPNGRows($0.baseAddress!, into: rows, height: height, stride: stride, pixelBytes: channels) }
            guard unfiltered else { return }
            if channels != 3 {
                for i in 0..<width * height {
                    let pixel = rows + i * channels   // grey (and alpha) or R, G, B and alpha
                    (out[i * 3], out[i * 3 + 1], out[i * 3 + 2]) = channels < 3 ? (pixel[0], pixel[0], pixel[0]) : (pixel[0], pixel[1], pixel[2])
                }
            }
            count = width * height * 3
        }
        return unfiltered ? RGBImage(width: width, height: height, pixels: pixels) : nil
    }

    /// Through libpng's simplified API, with the colour chunks taken out first (`chunks`: the file's, nil where they do
    /// not parse).
    static func decodePNGWithLibpng(_ bytes: [UInt8], chunks: [PNGChunk]?, name: String) throws(ImageError) -> RGBImage {
        let file = chunks.map { withoutColourChunks(bytes, chunks: $0) } ?? bytes
        // libpng reads the file's memory until png_image_finish_read returns: the whole read runs inside its scope.
        return try file.withUnsafeBufferPointer { (file) throws(ImageError) -> RGBImage in try decodePNGWithLibpng(file, name: name) }
    }

    private static func decodePNGWithLibpng(_ file: UnsafeBufferPointer<UInt8>, name: String) throws(ImageError) -> RGBImage {
        var image = png_image()
        image.version = UInt32(PNG_IMAGE_VERSION)
        defer { png_image_free(&image) }
        let began = png_image_begin_read_from_memory(&image, file.baseAddress, file.count)
        guard began != 0 else { throw .corrupt(file: name, format: "PNG", detail: Self.pngMessage(&image)) }
        let width = Int(image.width), height = Int(image.height)
        guard width > 0, height > 0 else { throw .corrupt(file: name, format: "PNG", detail: "\(width)x\(height) pixels") }
        guard width * height <= Self.maximumPixels else { throw tooLarge(width, height, file: name, format: "PNG") }
        let hasAlpha = image.format & stitch_png_format_flag_alpha != 0, wide = image.format & stitch_png_format_flag_linear != 0
        func read<Sample>(_: Sample.Type, format: png_uint_32, channels: Int) throws(ImageError) -> [Sample] {
            image.format = format
            var finished: Int32 = 0
            let samples = [Sample](unsafeUninitializedCapacity: width * height * channels) { out, count in
                finished = png_image_finish_read(&image, nil, out.baseAddress, Int32(width * channels), nil)
                count = finished != 0 ? width * height * channels : 0
            }
            guard finished != 0 else { throw .corrupt(file: name, format: "PNG", detail: Self.pngMessage(&image)) }
            return samples
        }
        if wide && !hasAlpha {
            // 16-bit, read as stored (linear in, linear out: no conversion), then the high byte as Pillow and OpenCV keep.
            let samples = try read(UInt16.self, format: stitch_png_format_rgb | stitch_png_format_flag_linear, channels: 3)
            return RGBImage(width: width, height: height, pixels: samples.map { UInt8($0 >> 8) })
        }
        guard hasAlpha else { return RGBImage(width: width, height: height, pixels: try read(UInt8.self, format: stitch_png_format_rgb, channels: 3)) }
        // With alpha, read as 8-bit RGBA (16-bit samples taken as sRGB so they are only rescaled, to within one level of
        // the high byte: a 16-bit linear read would premultiply) and drop the alpha.
        if wide { image.flags |= UInt32(PNG_IMAGE_FLAG_16BIT_sRGB) }
        let rgba = try read(UInt8.self, format: stitch_png_format_rgba, channels: 4)
        let pixels = [UInt8](unsafeUninitializedCapacity: width * height * 3) { out, count in
            rgba.withUnsafeBufferPointer { rgba in
                for i in 0..<width * height {
                    (out[i * 3], out[i * 3 + 1], out[i * 3 + 2]) = (rgba[i * 4], rgba[i * 4 + 1], rgba[i * 4 + 2])
                }
            }
            count = width * height * 3
        }
        return RGBImage(width: width, height: height, pixels: pixels)
    }

    /// The PNG file without its gAMA, sRGB, iCCP and cHRM chunks, whose colour management Pillow and OpenCV do not apply
    /// (IEND and what follows it kept as they are).
    private static func withoutColourChunks(_ bytes: [UInt8], chunks: [PNGChunk]) -> [UInt8] {
        let dropped: Set<String> = ["gAMA", "sRGB", "iCCP", "cHRM"]
        guard chunks.contains(where: { dropped.contains($0.kind) }) else { return bytes }
        var kept = Array(bytes.prefix(8))   // the signature
        for chunk in chunks.dropLast() where !dropped.contains(chunk.kind) { kept += bytes[chunk.whole] }
        return kept + bytes[chunks.last!.whole.lowerBound...]
    }

    private static func pngMessage(_ image: inout png_image) -> String {
        withUnsafeBytes(of: &image.message) { raw in
            String(decoding: raw.prefix(while: { $0 != 0 }), as: UTF8.self)
        }
    }
}

/// One chunk of a PNG file: its four-letter kind and where its data lies (a 4-byte length before the kind, a 4-byte
/// CRC of kind and data after).
struct PNGChunk {
    let kind: String
    let data: Range<Int>

    /// The whole chunk: length, kind, data, CRC.
    var whole: Range<Int> { data.lowerBound - 8..<data.upperBound + 4 }

    /// Ancillary chunks (a lowercase first letter) may be skipped by a decoder that does not know them.
    var isAncillary: Bool { kind.utf8.first.map { $0 & 0x20 != 0 } ?? false }

    func hasValidCRC(in file: UnsafeBufferPointer<UInt8>) -> Bool {
        let kindAndData = UnsafeRawBufferPointer(rebasing: UnsafeRawBufferPointer(file)[data.lowerBound - 4..<data.upperBound])
        return UInt32(libdeflate_crc32(0, kindAndData.baseAddress, kindAndData.count)) == bigEndian32(file, at: data.upperBound)
    }

    /// The chunks after the signature up to and including IEND, or nil where they do not parse (a length past the
    /// file's end, no IEND): libpng then reports what is wrong. Bytes after IEND are not read.
    static func all(in bytes: [UInt8]) -> [PNGChunk]? {
        var chunks: [PNGChunk] = []
        var offset = 8
        while offset + 12 <= bytes.count {
            let length = Int(bigEndian32(bytes, at: offset))
            guard length <= bytes.count - offset - 12 else { return nil }
            let chunk = PNGChunk(kind: String(decoding: bytes[offset + 4..<offset + 8], as: UTF8.self), data: offset + 8..<offset + 8 + length)
            chunks.append(chunk)
            if chunk.kind == "IEND" { return chunks }
            offset = chunk.whole.upperBound
        }
        return nil
    }
}

private func bigEndian32<Bytes: RandomAccessCollection<UInt8>>(_ bytes: Bytes, at offset: Int) -> UInt32 where Bytes.Index == Int {
    bytes[offset..<offset + 4].reduce(0) { $0 << 8 | UInt32($1) }
}

/// Bytes past the end of its buffers that `unfilterPNGRows` reads and writes: it moves whole 4-byte words.
let unfilterSlack = 4

/// Reverses PNG's row filters: `filtered` holds `height` rows, each a filter type (0 none, 1 sub, 2 up, 3 average,
/// 4 Paeth) then `stride` bytes of `pixelBytes`-byte pixels, and `rows` receives the rows decoded, `stride` bytes
/// each; each row is predicted from the one above, as decoded, and from its own pixel to the left. Both buffers
/// have `unfilterSlack` bytes to spare at their end. False for an unknown filter type.
func unfilterPNGRows(_ filtered: UnsafePointer<UInt8>, into rows: UnsafeMutablePointer<UInt8>, height: Int, stride: Int, pixelBytes: Int) -> Bool {
    let zeros = [UInt8](repeating: 0, count: stride + unfilterSlack)   // the row above the first
    return zeros.withUnsafeBufferPointer { zeros in
        var above = UnsafePointer(zeros.baseAddress!)
        for y in 0..<height {
            let (source, row) = (filtered + y * (stride + 1) + 1, rows + y * stride)
            switch source[-1] {
            case 0: row.update(from: source, count: stride)
            case 1: unfilterPixels(source, into: row, above: above, stride: stride, pixelBytes: pixelBytes) { filtered, left, _, _ in filtered &+ left }
            case 2: for i in 0..<stride { row[i] = source[i] &+ above[i] }
            case 3:
                unfilterPixels(source, into: row, above: above, stride: stride, pixelBytes: pixelBytes) { filtered, left, above, _ in
                    filtered &+ (left &+ above) &>> 1
                }
            case 4:
                unfilterPixels(source, into: row, above: above, stride: stride, pixelBytes: pixelBytes) { filtered, left, above, upperLeft in
                    filtered &+ paeth(left, above, upperLeft)
                }
            default: return false
            }
            above = UnsafePointer(row)
        }
        return true
    }
}

/// Decodes a row pixel by pixel, each pixel's bytes the lanes of a vector (a 4-byte word read and written whole,
/// lanes past the pixel ignored and overwritten by the next), the pixel to the left and the one above it (zero
/// before the first) carried in registers: byte by byte through memory, each byte waits on a store a pixel back.
@inline(__always)
private func unfilterPixels(_ source: UnsafePointer<UInt8>, into row: UnsafeMutablePointer<UInt8>, above: UnsafePointer<UInt8>, stride: Int,
                            pixelBytes: Int,
                            _ decode: (_ filtered: SIMD4<Int16>, _ left: SIMD4<Int16>, _ above: SIMD4<Int16>, _ upperLeft: SIMD4<Int16>) -> SIMD4<Int16>) {
    @inline(__always) func load(_ p: UnsafePointer<UInt8>) -> SIMD4<Int16> {
        SIMD4<Int16>(truncatingIfNeeded: unsafeBitCast(UnsafeRawPointer(p).loadUnaligned(as: UInt32.self), to: SIMD4<UInt8>.self))
    }
    var left = SIMD4<Int16>(), upperLeft = SIMD4<Int16>()
    for start in Swift.stride(from: 0, to: stride, by: pixelBytes) {
        let up = load(above + start)
        left = decode(load(source + start), left, up, upperLeft) & 0xFF
        UnsafeMutableRawPointer(row + start).storeBytes(of: unsafeBitCast(SIMD4<UInt8>(truncatingIfNeeded: left), to: UInt32.self), as: UInt32.self)
        upperLeft = up
    }
}

/// Of left, above and upper-left, lane by lane the one nearest left + above - upper-left (ties to left, then above).
@inline(__always)
private func paeth(_ left: SIMD4<Int16>, _ above: SIMD4<Int16>, _ upperLeft: SIMD4<Int16>) -> SIMD4<Int16> {
    func magnitude(_ v: SIMD4<Int16>) -> SIMD4<Int16> { pointwiseMax(v, 0 &- v) }
    let (pa, pb, pc) = (magnitude(above &- upperLeft), magnitude(left &- upperLeft), magnitude(left &+ above &- 2 &* upperLeft))
    var nearest = upperLeft
    nearest.replace(with: above, where: pb .<= pc)
    nearest.replace(with: left, where: (pa .<= pb) .& (pa .<= pc))
    return nearest
}
