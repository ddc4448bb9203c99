import CZlib
import Foundation
import StitchImaging
import StitchModelIO
import StitchTensor
import StitchTestSupport
import XCTest
@testable import StitchModels

/// The real YOLOX-Nano (Tests/Fixtures/yolox-nano-coco) against onnxruntime and
/// YOLOX's ONNX demo post-processing (Tests/Fixtures/yolox, from make_fixtures.py).
final class YOLOXTests: XCTestCase {
    func imagePath(_ name: String) -> String {
        FileManager.default.fileExists(atPath: Fixtures.photo(name).path) ? Fixtures.photo(name).path : Fixtures.url("images/\(name)").path
    }

    func testMatchesONNXRuntime() throws {
        let folder = Fixtures.yolox
        let model = try YOLOX(path: folder.path)
        XCTAssertEqual(model.numClasses, 80)
        let golden = try Fixtures.json("yolox/golden.json") as! [String: [String: Any]]
        let rows = try Fixtures.tensors("yolox/raw_rows.safetensors")
        for (name, expected) in golden.sorted(by: { $0.key < $1.key }) {
            let image = try RGBImage(contentsOf: imagePath(name))
            let letterbox = Letterbox(image, size: YOLOX.inputSize)
            let bytes = letterbox.pixels.scalars.map { UInt8($0) }
            let crc = bytes.withUnsafeBufferPointer { UInt32(crc32(0, $0.baseAddress, UInt32($0.count))) }
            XCTAssertEqual(Int(crc), expected["letterbox_crc32"] as? Int, "\(name): letterbox pixels differ from cv2's")
            XCTAssertEqual(Double(letterbox.scale), expected["ratio"] as! Double, accuracy: 1e-6)

            let raw = try model.rawOutputs(letterbox.pixels)
            XCTAssertEqual(raw.shape, [3549, 85])
            let indices = rows["\(name).rows"]!.scalars.map { Int($0) }
            let got = indices.flatMap { raw.row($0).scalars }
            let difference = maxAbsoluteDifference(got, rows["\(name).raw"]!.scalars)
            print("YOLOX-Nano \(name): raw head outputs max abs difference to onnxruntime \(difference) over \(indices.count) cells")
            XCTAssertLessThanOrEqual(difference, 1e-3)

            let detections = try model.detect(image)
            let reference = expected["detections"] as! [[String: Any]]
            print("  detections: \(detections.map { "\($0.label) \(String(format: "%.3f", $0.score))" }.joined(separator: ", "))")
            XCTAssertEqual(detections.map(\.classIndex), reference.map { $0["class"] as! Int }, name)
            for (d, r) in zip(detections, reference) {
                let box = (r["box"] as! [Double]).map { Float($0) }
                XCTAssertGreaterThanOrEqual(iou(d.box, box), 0.99, "\(name) \(d.label): \(d.box) vs \(box)")
                XCTAssertEqual(d.score, Float(r["score"] as! Double), accuracy: 1e-3)
            }
            if name == "coffee.png" { XCTAssertEqual(detections.map(\.label), ["cup", "dining table"]) }
            if name == "chelsea.png" { XCTAssertEqual(detections.map(\.label), ["cat"]) }
        }
    }

    func iou(_ a: [Float], _ b: [Float]) -> Float {
        let w = max(0, min(a[2], b[2]) - max(a[0], b[0])), h = max(0, min(a[3], b[3]) - max(a[1], b[1]))
        let union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - w * h
        return union > 0 ? w * h / union : 1
    }
}

/// Bad detector files are errors that name the file and the problem.
final class YOLOXErrorTests: XCTestCase {
    func testBadFilesAreNamedErrors() throws {
        let folder = Fixtures.yolox
        let temporary = try Fixtures.temporaryFolder()
        defer { try? FileManager.default.removeItem(at: temporary) }
        let original = try Data(contentsOf: folder.appendingPathComponent("yolox_nano.onnx"))

        let truncated = temporary.appendingPathComponent("truncated.onnx").path
        try original.prefix(original.count / 2).write(to: URL(fileURLWithPath: truncated))
        XCTAssertThrowsError(try ONNXModel(path: truncated)) { error in
            XCTAssert("\(error)".hasPrefix("\(truncated): not a readable ONNX model"), "\(error)")
        }
        let garbage = temporary.appendingPathComponent("garbage.onnx").path
        try Data((0..<4096).map { UInt8(truncatingIfNeeded: $0 &* 7919) }).write(to: URL(fileURLWithPath: garbage))
        XCTAssertThrowsError(try ONNXModel(path: garbage)) { XCTAssert("\($0)".hasPrefix(garbage), "\($0)") }

        // A 60-byte file whose one initializer claims dimensions that multiply past Int once trapped.
        func field(_ number: UInt8, _ bytes: [UInt8]) -> [UInt8] { [number << 3 | 2, UInt8(bytes.count)] + bytes }
        func varint(_ value: UInt64) -> [UInt8] {
            var value = value, out: [UInt8] = []
            repeat { out.append(UInt8(value & 0x7f) | (value > 0x7f ? 0x80 : 0)); value >>= 7 } while value > 0
            return out
        }
        let huge = [0x08] + varint(1 << 40) + [0x08] + varint(1 << 40) + [0x10, 0x01] + field(9, [0, 0, 0, 0])   // dims, FLOAT, raw_data
        let bomb = temporary.appendingPathComponent("huge-dims.onnx").path
        try Data(field(7, field(5, huge))).write(to: URL(fileURLWithPath: bomb))
        XCTAssertThrowsError(try ONNXModel(path: bomb)) { XCTAssert("\($0)".contains("more values than its"), "\($0)") }

        // A folder without class names, then class names that do not fit the head.
        let copy = temporary.appendingPathComponent("yolox")
        try FileManager.default.createDirectory(at: copy, withIntermediateDirectories: true)
        try FileManager.default.createSymbolicLink(at: copy.appendingPathComponent("yolox_nano.onnx"), withDestinationURL: folder.appendingPathComponent("yolox_nano.onnx"))
        XCTAssertThrowsError(try YOLOX(path: copy.path)) { XCTAssert("\($0)".contains("coco_labels.txt"), "\($0)") }
        try (0..<79).map { "class \($0)" }.joined(separator: "\n").write(to: copy.appendingPathComponent("coco_labels.txt"), atomically: true, encoding: .utf8)
        XCTAssertThrowsError(try YOLOX(path: copy.path)) { error in
            XCTAssert("\(error)".contains("head.cls_preds.0"), "\(error)")
            XCTAssert("\(error)".contains("expected [79, 64, 1, 1]"), "\(error)")
        }
        XCTAssertThrowsError(try YOLOX(path: temporary.appendingPathComponent("absent").path)) { XCTAssert("\($0)".contains("absent"), "\($0)") }
    }
}
