import Foundation
import StitchTensor
import StitchTestSupport
import XCTest
@testable import StitchImaging

final class DecodingTests: XCTestCase {
    static let decoded = try! Fixtures.tensors("images/decoded.safetensors")

    static let filteredPNGs = ["filtered-grey.png", "filtered-grey-alpha.png", "filtered-rgb.png", "filtered-rgba.png"]

    /// Decoded pixels equal Pillow's Image.open(...).convert("RGB"): PNGs exactly, colour chunks (gamma 1.0, sRGB)
    /// not applied and 16-bit samples cut to their high byte as Pillow (and OpenCV) do; 16-bit RGBA within a level.
    func testDecodersMatchPillow() throws {
        let exact = Set(["gradient.png", "rgb.png", "gamma1.png", "rgb16.png", "palette.png"] + Self.filteredPNGs)
        for name in ["gradient.png", "rgb.png", "gamma1.png", "rgb16.png", "rgba16.png", "palette.png", "rgb.jpg", "grey.jpg", "cmyk.jpg",
                     "exif_rotated.jpg"] + Self.filteredPNGs {
            let image = try RGBImage(contentsOf: Fixtures.url("images/\(name)").path)
            let expected = Self.decoded[name]!
            XCTAssertEqual([image.height, image.width, 3], expected.shape, name)
            let difference = maxAbsoluteDifference(image.pixels.map(Float.init), expected.scalars)
            print("\(name): max pixel difference vs Pillow \(difference)")
            XCTAssertLessThanOrEqual(difference, exact.contains(name) ? 0 : 1, name)
        }
    }

    func testJPEGEncodeRoundTrip() throws {
        let folder = try Fixtures.temporaryFolder()
        defer { try? FileManager.default.removeItem(at: folder) }
        // A smooth image: JPEG keeps it close to the source.
        let (width, height) = (64, 48)
        let image = RGBImage(width: width, height: height, pixels: (0..<width * height).flatMap { i in
            [UInt8(i % width * 4), UInt8(i / width * 5), 128]
        })
        let path = folder.appendingPathComponent("copy.jpg").path
        try image.writeJPEG(to: path, quality: 95)
        let back = try RGBImage(contentsOf: path)
        XCTAssertEqual([back.width, back.height], [image.width, image.height])
        let mean = zip(back.pixels, image.pixels).map { abs(Float($0) - Float($1)) }.reduce(0, +) / Float(image.pixels.count)
        XCTAssertLessThan(mean, 1.5, "JPEG at quality 95 should be close to a smooth source")
        XCTAssertThrowsError(try image.writeJPEG(to: folder.appendingPathComponent("no/such/dir/x.jpg").path)) { error in
            XCTAssert("\(error)".contains("x.jpg"), "\(error)")
        }
    }

    func assertCorrupt(_ data: Data, named name: String, format: String, line: UInt = #line) throws {
        let folder = try Fixtures.temporaryFolder()
        defer { try? FileManager.default.removeItem(at: folder) }
        let path = folder.appendingPathComponent(name).path
        try data.write(to: URL(fileURLWithPath: path))
        XCTAssertThrowsError(try RGBImage(contentsOf: path), line: line) { error in
            guard case let .corrupt(file, kind, detail)? = error as? ImageError else { return XCTFail("\(error)", line: line) }
            XCTAssertEqual(file, path, line: line)
            XCTAssertEqual(kind, format, line: line)
            XCTAssertFalse(detail.isEmpty, line: line)
            XCTAssert("\(error)".contains(name), line: line)
        }
    }

    /// Bytes after IEND (some tools append them) neither fail the file nor bring its gamma chunk back into play.
    func testPNGWithBytesAfterItsEndDecodesAsWithout() throws {
        let png = try Data(contentsOf: Fixtures.url("images/gamma1.png"))
        let image = try RGBImage(data: png + Data("trailing bytes".utf8), name: "gamma1-trailing.png")
        XCTAssertEqual(image.pixels.map(Float.init), Self.decoded["gamma1.png"]!.scalars)
    }

    /// The 8-bit grey, grey-alpha, RGB and RGBA PNGs (every row filter, split image data) skip libpng and decode as
    /// libpng does, as do the real photos; palette and 16-bit files go to libpng.
    func testCommonPNGsDecodeWithoutLibpngAsLibpngDoes() throws {
        let files = ["gradient.png", "rgb.png", "gamma1.png"] + Self.filteredPNGs
        let photos = ["chelsea.png", "coffee.png", "astronaut.png"]
        for url in files.map({ Fixtures.url("images/\($0)") }) + photos.map(Fixtures.photo) {
            let bytes = [UInt8](try Data(contentsOf: url))
            let chunks = try XCTUnwrap(PNGChunk.all(in: bytes), url.lastPathComponent)
            let common = try XCTUnwrap(bytes.withUnsafeBufferPointer { RGBImage.decodeCommonPNG($0, chunks: chunks) }, url.lastPathComponent)
            let libpng = try RGBImage.decodePNGWithLibpng(bytes, chunks: PNGChunk.all(in: bytes), name: url.lastPathComponent)
            XCTAssertEqual([common.width, common.height], [libpng.width, libpng.height], url.lastPathComponent)
            let differing = zip(common.pixels, libpng.pixels).filter { $0 != $1 }.count
            XCTAssertEqual(differing, 0, "\(url.lastPathComponent): \(differing) of \(libpng.pixels.count) bytes differ from libpng's")
        }
        for name in ["palette.png", "rgb16.png", "rgba16.png"] {
            let bytes = [UInt8](try Data(contentsOf: Fixtures.url("images/\(name)")))
            XCTAssertNil(bytes.withUnsafeBufferPointer { RGBImage.decodeCommonPNG($0, chunks: PNGChunk.all(in: bytes)!) }, name)
        }
    }

    /// What the libpng-free path refuses (a CRC, an unknown row filter, too little image data) still fails with
    /// libpng's reason; the same file made regular decodes.
    func testIrregularCommonPNGsFailAsLibpngSays() throws {
        // 2x2 RGB, rows filtered "none" then "up".
        let rows: [UInt8] = [0, 10, 20, 30, 40, 50, 60, 2, 1, 1, 1, 2, 2, 2]
        let regular = try RGBImage(data: Self.png(width: 2, height: 2, rows: rows), name: "regular.png")
        XCTAssertEqual(regular.pixels, [10, 20, 30, 40, 50, 60, 11, 21, 31, 42, 52, 62])
        var unknownFilter = rows
        unknownFilter[7] = 7
        try assertCorrupt(Self.png(width: 2, height: 2, rows: unknownFilter), named: "unknown-filter.png", format: "PNG")
        try assertCorrupt(Self.png(width: 2, height: 2, rows: Array(rows.dropLast(3))), named: "short-data.png", format: "PNG")
        var badCRC = Self.png(width: 2, height: 2, rows: rows)
        badCRC[badCRC.count - 13] ^= 1   // the IDAT chunk's CRC, before IEND's 12 bytes
        try assertCorrupt(badCRC, named: "bad-crc.png", format: "PNG")
    }

    /// Random small images (one pixel wide and up, every colour type the libpng-free path takes) with a random filter
    /// type on each row decode as libpng decodes them.
    func testRandomlyFilteredPNGsDecodeAsLibpngDoes() throws {
        var random = SplitMix64(seed: 7)
        for case_ in 0..<300 {
            let (colourType, channels) = [(UInt8(0), 1), (4, 2), (2, 3), (6, 4)][case_ % 4]
            let width = 1 + Int(random.next() % 9), height = 1 + Int(random.next() % 7)
            let rows = (0..<height).flatMap { _ in [UInt8(random.next() % 5)] + (0..<width * channels).map { _ in UInt8(truncatingIfNeeded: random.next()) } }
            let bytes = [UInt8](Self.png(width: width, height: height, colourType: colourType, rows: rows))
            let common = try XCTUnwrap(bytes.withUnsafeBufferPointer { RGBImage.decodeCommonPNG($0, chunks: PNGChunk.all(in: bytes)!) })
            XCTAssertEqual(common, try RGBImage.decodePNGWithLibpng(bytes, chunks: PNGChunk.all(in: bytes), name: "random.png"), "case \(case_): \(width)x\(height), colour type \(colourType)")
        }
    }

    /// An 8-bit PNG (RGB unless another colour type is given) of image data `rows` (each a filter type and its
    /// bytes), stored uncompressed.
    static func png(width: Int, height: Int, colourType: UInt8 = 2, rows: [UInt8]) -> Data {
        func bigEndian(_ value: UInt32) -> [UInt8] { (0..<4).map { UInt8(truncatingIfNeeded: value >> (24 - 8 * $0)) } }
        func chunk(_ kind: String, _ data: [UInt8]) -> [UInt8] {
            let body = Array(kind.utf8) + data
            var crc: UInt32 = 0xFFFF_FFFF
            for byte in body {
                crc ^= UInt32(byte)
                for _ in 0..<8 { crc = crc & 1 == 1 ? crc >> 1 ^ 0xEDB8_8320 : crc >> 1 }
            }
            return bigEndian(UInt32(data.count)) + body + bigEndian(~crc)
        }
        let (a, b) = rows.reduce((UInt32(1), UInt32(0))) { sums, byte in ((sums.0 + UInt32(byte)) % 65521, (sums.1 + (sums.0 + UInt32(byte)) % 65521) % 65521) }
        let length = UInt16(rows.count)
        let stored = [0x78, 0x01, 0x01, UInt8(length & 0xFF), UInt8(length >> 8), UInt8(~length & 0xFF), UInt8(~length >> 8)] + rows + bigEndian(b << 16 | a)
        let header = bigEndian(UInt32(width)) + bigEndian(UInt32(height)) + [8, colourType, 0, 0, 0]
        return Data([0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A] + chunk("IHDR", header) + chunk("IDAT", stored) + chunk("IEND", []))
    }

    func testCorruptImagesGiveTypedErrors() throws {
        let jpeg = try Data(contentsOf: Fixtures.url("images/rgb.jpg"))
        let png = try Data(contentsOf: Fixtures.url("images/rgb.png"))
        try assertCorrupt(jpeg.prefix(jpeg.count / 2), named: "half.jpg", format: "JPEG")
        try assertCorrupt(Data([0xFF, 0xD8, 0xFF, 0xE0]) + Data(repeating: 0x42, count: 500), named: "garbage.jpg", format: "JPEG")
        try assertCorrupt(png.prefix(png.count - 40), named: "half.png", format: "PNG")
        try assertCorrupt(png.prefix(8) + Data(repeating: 7, count: 64), named: "garbage.png", format: "PNG")
        let real = try Data(contentsOf: Fixtures.photo("rocket.jpg"))
        try assertCorrupt(real.prefix(real.count * 2 / 3), named: "rocket-cut.jpg", format: "JPEG")
        XCTAssertThrowsError(try RGBImage(data: Data("GIF89a....".utf8), name: "x.gif")) { error in
            XCTAssertEqual(error as? ImageError, .unsupportedFormat(file: "x.gif"))
        }
        XCTAssertThrowsError(try RGBImage(contentsOf: "/nonexistent/photo.jpg")) { error in
            XCTAssertEqual(error as? ImageError, .unreadable(file: "/nonexistent/photo.jpg", reason: "no such file"))
        }
    }
}

/// SplitMix64: a small seeded generator, so that random cases are the same on every run.
struct SplitMix64: RandomNumberGenerator {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ z >> 30) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ z >> 27) &* 0x94D0_49BB_1331_11EB
        return z ^ z >> 31
    }
}

final class PreprocessingTests: XCTestCase {
    static let clip = try! Fixtures.tensors("images/clip_pixels.safetensors")
    static let imageNet = try! Fixtures.tensors("images/imagenet_pixels.safetensors")

    /// Largest difference in 0...1 pixel units (normalised difference times std).
    func pixelDifference(_ got: Tensor, _ expected: Tensor, std: [Float]) -> Float {
        XCTAssertEqual(got.shape, expected.shape)
        let plane = got.count / 3
        let (a, b) = (got.scalars, expected.scalars)
        var worst: Float = 0
        for i in 0..<a.count { worst = max(worst, abs(a[i] - b[i]) * std[i / plane]) }
        return worst
    }

    func check(_ preprocessor: ImagePreprocessor, _ golden: [String: Tensor], image: RGBImage, name: String) {
        let difference = pixelDifference(preprocessor(image), golden[name]!, std: preprocessor.std)
        print("\(name): max difference vs reference \(difference * 255)/255")
        XCTAssertLessThanOrEqual(difference, 1 / 255, name)
    }

    /// transformers' CLIPImageProcessor on real photos (downscaling) and on tiny images (upscaling).
    func testCLIPPreprocessingMatchesTransformers() throws {
        for name in ["gradient.png", "cmyk.jpg"] {
            check(.clip, Self.clip, image: try RGBImage(contentsOf: Fixtures.url("images/\(name)").path), name: name)
        }
        for name in ["chelsea.png", "coffee.png", "astronaut.png", "rocket.jpg"] {
            check(.clip, Self.clip, image: try RGBImage(contentsOf: Fixtures.photo(name).path), name: name)
        }
    }

    /// torchvision's ImageNet evaluation transform (Resize 256 bicubic, CenterCrop 224) for EfficientNet.
    func testImageNetPreprocessingMatchesTorchvisionTransform() throws {
        for name in ["chelsea.png", "coffee.png", "astronaut.png", "rocket.jpg"] {
            check(.imageNet, Self.imageNet, image: try RGBImage(contentsOf: Fixtures.photo(name).path), name: name)
        }
    }

    /// A small JPEG whose header claims 60000x60000 pixels is refused before anything is decoded (it once took 10 GB).
    func testImageSizeBombsAreRefusedFromTheHeader() throws {
        var jpeg = [UInt8](try Data(contentsOf: Fixtures.url("images/rgb.jpg")))
        let frame = try XCTUnwrap((0..<jpeg.count - 1).first { jpeg[$0] == 0xFF && (jpeg[$0 + 1] == 0xC0 || jpeg[$0 + 1] == 0xC2) })
        for offset in [5, 7] { (jpeg[frame + offset], jpeg[frame + offset + 1]) = (0xEA, 0x60) }   // height and width 60000
        XCTAssertThrowsError(try RGBImage(data: Data(jpeg), name: "bomb.jpg")) { error in
            XCTAssert("\(error)".contains("bomb.jpg") && "\(error)".contains("60000x60000 pixels is more than"), "\(error)")
        }
    }

    /// An extreme aspect ratio (1x30000 resized to 224 wide is 6.7 million rows) costs only the crop, and the crop is
    /// exactly the full resize's.
    func testExtremeAspectRatiosCostOnlyTheCrop() {
        let tall = RGBImage(width: 1, height: 30000, pixels: (0..<90000).map { UInt8(truncatingIfNeeded: $0 &* 31) })
        for preprocessor in [ImagePreprocessor.clip, .imageNet] {
            XCTAssertEqual(preprocessor(tall).shape, [3, preprocessor.cropSize, preprocessor.cropSize])
        }
        let narrow = RGBImage(width: 3, height: 700, pixels: (0..<6300).map { UInt8(truncatingIfNeeded: $0 &* 7) })
        let wide = RGBImage(width: 500, height: 40, pixels: (0..<60000).map { UInt8(truncatingIfNeeded: $0 &* 13) })
        for image in [narrow, wide] {
            let preprocessor = ImagePreprocessor.clip
            let short = min(image.width, image.height), long = max(image.width, image.height)
            let newLong = Int(Double(preprocessor.shortestEdge) * Double(long) / Double(short))
            let (w, h) = image.width <= image.height ? (preprocessor.shortestEdge, newLong) : (newLong, preprocessor.shortestEdge)
            let full = image.resized(width: w, height: h, filter: preprocessor.filter).cropped(left: (w - 224) / 2, top: (h - 224) / 2, width: 224, height: 224)
            XCTAssertEqual(preprocessor.resizedAndCropped(image).pixels, full.pixels)
        }
    }

    func testBatchAndCropGeometry() throws {
        let image = RGBImage(width: 300, height: 200, pixels: [UInt8](repeating: 128, count: 300 * 200 * 3))
        let cropped = ImagePreprocessor.clip.resizedAndCropped(image)
        XCTAssertEqual([cropped.width, cropped.height], [224, 224])
        XCTAssertEqual(ImagePreprocessor.clip.batch([image, image]).shape, [2, 3, 224, 224])
        // A flat image stays flat through resampling.
        XCTAssert(cropped.pixels.allSatisfy { $0 == 128 })
    }
}

/// Detection drawings: boxes and their labels, pixel for pixel as Pillow draws them with the same public-domain
/// 6x13 font (labels above or inside the box, moved left to fit, scaled, black or white text, '?' for non-ASCII).
final class LabelDrawingTests: XCTestCase {
    func testLabelledBoxesEqualPillowsDrawing() throws {
        let spec = try Fixtures.json("labels/spec.json") as! [String: Any]
        let (width, height) = (spec["width"] as! Int, spec["height"] as! Int)
        let background = (spec["background"] as! [Int]).map(UInt8.init)
        var image = RGBImage(width: width, height: height, pixels: Array((0..<width * height).map { _ in background }.joined()))
        let draws = spec["draws"] as! [[String: Any]]
        func color(_ draw: [String: Any]) -> (UInt8, UInt8, UInt8) {
            let c = (draw["color"] as! [Int]).map(UInt8.init)
            return (c[0], c[1], c[2])
        }
        for draw in draws { image.drawBox((draw["box"] as! [Int]).map(Float.init), color: color(draw), thickness: draw["thickness"] as! Int) }
        let boxesOnly = image
        for draw in draws {
            image.drawLabel(draw["text"] as! String, box: (draw["box"] as! [Int]).map(Float.init), color: color(draw), scale: draw["scale"] as! Int)
        }
        let golden = try RGBImage(contentsOf: Fixtures.url("labels/golden.png").path)
        XCTAssertEqual(golden.width, width)
        let differing = zip(image.pixels, golden.pixels).filter { $0 != $1 }.count
        print("labelled boxes: \(differing) of \(image.pixels.count) channel values differ from Pillow's drawing")
        XCTAssertEqual(differing, 0)
        XCTAssertNotEqual(image, boxesOnly, "labels were drawn")
    }
}
