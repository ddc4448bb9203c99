import CJPEG
import Foundation
import StitchTensor

/// An 8-bit RGB image, rows top to bottom, pixels interleaved R, G, B.
public struct RGBImage: Sendable, Equatable {
    public let width: Int
    public let height: Int
    public var pixels: [UInt8]

    public init(width: Int, height: Int, pixels: [UInt8]) {
        precondition(width >= 0 && height >= 0 && pixels.count == width * height * 3,
                     "\(width)x\(height) RGB image needs \(width * height * 3) bytes, got \(pixels.count)")
        self.width = width
        self.height = height
        self.pixels = pixels
    }

    public subscript(x: Int, y: Int) -> (r: UInt8, g: UInt8, b: UInt8) {
        let i = (y * width + x) * 3
        return (pixels[i], pixels[i + 1], pixels[i + 2])
    }
}

public enum ImageError: Error, CustomStringConvertible, Equatable {
    case unreadable(file: String, reason: String)
    case unsupportedFormat(file: String)
    case corrupt(file: String, format: String, detail: String)
    case encodeFailed(file: String, detail: String)

    public var description: String {
        switch self {
        case let .unreadable(file, reason): return "\(file): cannot read image: \(reason)"
        case let .unsupportedFormat(file): return "\(file): not a JPEG or PNG image"
        case let .corrupt(file, format, detail): return "\(file): corrupt \(format): \(detail)"
        case let .encodeFailed(file, detail): return "\(file): cannot write JPEG: \(detail)"
        }
    }
}

extension RGBImage {
    /// Decodes a JPEG or PNG file (chosen by its first bytes, not its name).
    /// EXIF orientation is ignored, as PIL and transformers' processors ignore it.
    public init(contentsOf path: String) throws(ImageError) {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw .unreadable(file: path, reason: FileManager.default.fileExists(atPath: path) ? "permission denied or not a file" : "no such file")
        }
        try self.init(data: data, name: path)
    }

    /// Decodes JPEG or PNG bytes; `name` labels errors.
    public init(data: Data, name: String) throws(ImageError) {
        let bytes = [UInt8](data)
        if bytes.starts(with: [0xFF, 0xD8, 0xFF]) {
            self = try Self.decodeJPEG(bytes, name: name)
        } else if bytes.starts(with: [0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A]) {
            self = try Self.decodePNG(bytes, name: name)
        } else {
            throw .unsupportedFormat(file: name)
        }
    }

    /// The largest image decoded: the size is read from the header and checked before anything is decoded, so a
    /// small file cannot claim gigabytes.
    public static var maximumPixels: Int { Limit.imagePixels.value }

    static func tooLarge(_ width: Int, _ height: Int, file: String, format: String) -> ImageError {
        .corrupt(file: file, format: format, detail: "\(width)x\(height) pixels is more than the \(maximumPixels) this reads \(Limit.imagePixels.hint)")
    }

    private static func decodeJPEG(_ bytes: [UInt8], name: String) throws(ImageError) -> RGBImage {
        var output: UnsafeMutablePointer<UInt8>?
        var width: Int32 = 0, height: Int32 = 0, components: Int32 = 0
        var message = [CChar](repeating: 0, count: 256)
        let status = bytes.withUnsafeBufferPointer { buffer in
            stitch_jpeg_decode(buffer.baseAddress, UInt(buffer.count), UInt(Self.maximumPixels), &output, &width, &height, &components, &message, Int32(message.count))
        }
        if status == -2 { throw tooLarge(Int(width), Int(height), file: name, format: "JPEG") }
        guard status == 0, let output else {
            throw .corrupt(file: name, format: "JPEG", detail: cString(message))
        }
        defer { free(output) }
        let count = Int(width) * Int(height)
        if components == 3 {
            return RGBImage(width: Int(width), height: Int(height), pixels: Array(UnsafeBufferPointer(start: output, count: count * 3)))
        }
        // Adobe CMYK/YCCK JPEGs store inverted ink values: RGB = C·K/255 with C already inverted (as PIL converts).
        var rgb = [UInt8](repeating: 0, count: count * 3)
        for i in 0..<count {
            let k = Int(output[i * 4 + 3])
            for c in 0..<3 { rgb[i * 3 + c] = UInt8((Int(output[i * 4 + c]) * k + 127) / 255) }
        }
        return RGBImage(width: Int(width), height: Int(height), pixels: rgb)
    }

    /// Draws the outline of the box [x1, y1, x2, y2] (pixel coordinates, clipped to the image), `thickness` pixels wide, inside the box.
    public mutating func drawBox(_ box: [Float], color: (UInt8, UInt8, UInt8), thickness: Int = 2) {
        guard box.count == 4, width > 0, height > 0 else { return }
        let x1 = min(max(Int(box[0].rounded()), 0), width - 1), y1 = min(max(Int(box[1].rounded()), 0), height - 1)
        let x2 = min(max(Int(box[2].rounded()), 0), width - 1), y2 = min(max(Int(box[3].rounded()), 0), height - 1)
        guard x1 <= x2, y1 <= y2 else { return }
        for y in y1...y2 {
            for x in x1...x2 where x - x1 < thickness || x2 - x < thickness || y - y1 < thickness || y2 - y < thickness {
                let i = (y * width + x) * 3
                (pixels[i], pixels[i + 1], pixels[i + 2]) = color
            }
        }
    }

    /// Draws `text` in `BitmapFont`, `scale` times its 6x13 size, on a filled rectangle of `color` at the box's
    /// top-left corner: above the box where there is room, else just inside it, moved left to fit the image (and
    /// clipped if wider). The text is black or white, whichever reads better on `color`.
    public mutating func drawLabel(_ text: String, box: [Float], color: (UInt8, UInt8, UInt8), scale: Int = 1) {
        guard box.count == 4, width > 0, height > 0, scale > 0, !text.isEmpty else { return }
        let glyphs = text.map(BitmapFont.glyph)
        let labelWidth = glyphs.count * BitmapFont.width * scale + 2 * scale, labelHeight = BitmapFont.height * scale
        let top = Int(box[1].rounded()), left = Int(box[0].rounded())
        let x0 = max(0, min(left, width - labelWidth))
        let y0 = max(0, top - labelHeight >= 0 ? top - labelHeight : min(top, height - labelHeight))
        let luminance = 0.299 * Double(color.0) + 0.587 * Double(color.1) + 0.114 * Double(color.2)
        let ink: (UInt8, UInt8, UInt8) = luminance > 140 ? (0, 0, 0) : (255, 255, 255)
        for y in y0..<min(height, y0 + labelHeight) {
            let row = (y - y0) / scale
            for x in x0..<min(width, x0 + labelWidth) {
                let column = (x - x0) / scale - 1   // one scaled pixel of padding on the left
                let character = column >= 0 ? column / BitmapFont.width : -1
                let lit = character >= 0 && character < glyphs.count
                    && glyphs[character][glyphs[character].startIndex + row] & (0x20 >> (column % BitmapFont.width)) != 0
                let i = (y * width + x) * 3
                (pixels[i], pixels[i + 1], pixels[i + 2]) = lit ? ink : color
            }
        }
    }

    /// Writes the image as a JPEG file atomically (temporary file, then rename).
    public func writeJPEG(to path: String, quality: Int = 90) throws(ImageError) {
        var output: UnsafeMutablePointer<UInt8>?
        var size: UInt = 0
        var message = [CChar](repeating: 0, count: 256)
        let status = pixels.withUnsafeBufferPointer { buffer in
            stitch_jpeg_encode(buffer.baseAddress, Int32(width), Int32(height), Int32(quality), &output, &size, &message, Int32(message.count))
        }
        defer { free(output) }
        guard status == 0, let output else { throw .encodeFailed(file: path, detail: cString(message)) }
        do {
            try Data(bytes: output, count: Int(size)).write(to: URL(fileURLWithPath: path), options: .atomic)
        } catch {
            throw .encodeFailed(file: path, detail: error.localizedDescription)
        }
    }
}

/// The text of a NUL-terminated C message buffer.
private func cString(_ buffer: [CChar]) -> String {
    String(decoding: buffer.prefix(while: { $0 != 0 }).map { UInt8(bitPattern: $0) }, as: UTF8.self)
}
