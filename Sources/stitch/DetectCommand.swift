import ArgumentParser
import Foundation
import StitchImaging
import StitchModels

struct Detect: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Detect objects (80 COCO classes) with YOLOX-Nano.",
        discussion: """
        Prints one line per detection, "image<TAB>label<TAB>score<TAB>x1,y1,x2,y2" (pixels of the original image), \
        best first; --json prints one object per image instead. --draw writes a JPEG copy of the (single) image \
        with each box and its label ("dog 0.87") drawn in a colour per class.
        """)

    @Argument(help: "JPEG or PNG images; standard input lines when none.")
    var images: [String] = []

    @Option(help: "YOLOX-Nano folder (its .onnx file and coco_labels.txt) or .onnx file.")
    var model = "Tests/Fixtures/yolox-nano-coco"

    @Option(help: "Keep detections scoring above this (objectness x class probability).")
    var threshold: Float = 0.3

    @Option(help: "Suppress boxes of the same class overlapping a better one by more than this IoU.")
    var nms: Float = 0.45

    @Option(help: "Write the image with its boxes drawn to this JPEG file (one image only).")
    var draw: String?

    @Flag(help: "Print one JSON object per image.")
    var json = false

    func validate() throws {
        guard (0...1).contains(threshold), (0...1).contains(nms) else { throw ValidationError("--threshold and --nms must lie in [0, 1]") }
    }

    func run() throws {
        let paths = images.isEmpty ? standardInputLines() : images
        guard !paths.isEmpty else { throw ValidationError("no images given") }
        if draw != nil && paths.count != 1 { throw ValidationError("--draw needs exactly one image, got \(paths.count)") }
        let detector = try YOLOX(path: model)
        for path in paths {
            var image = try RGBImage(contentsOf: path)
            let detections = try detector.detect(image, threshold: threshold, nmsThreshold: nms)
            if json {
                try printJSONLine(["image": path, "detections": detections.map { d in
                    ["label": d.label, "class": d.classIndex, "score": Double(d.score), "box": d.box.map { Double($0) }] as [String: Any]
                }])
            } else {
                for d in detections {
                    print("\(path)\t\(d.label)\t\(String(format: "%.3f", d.score))\t\(d.box.map { String(format: "%.1f", $0) }.joined(separator: ","))")
                }
            }
            fflush(nil)
            if let draw {
                Self.annotate(&image, with: detections)
                try image.writeJPEG(to: draw)
            }
        }
    }

    /// Draws each detection's box and then its label ("dog 0.87") in its class's colour, sized to the image.
    static func annotate(_ image: inout RGBImage, with detections: [Detection]) {
        let side = min(image.width, image.height)
        for d in detections { image.drawBox(d.box, color: color(of: d.classIndex), thickness: max(2, side / 200)) }
        for d in detections {
            image.drawLabel(labelText(d), box: d.box, color: color(of: d.classIndex), scale: max(1, side / 400))
        }
    }

    /// How a detection is named on images and in summaries: "dog 0.87".
    static func labelText(_ detection: Detection) -> String {
        "\(detection.label) \(String(format: "%.2f", detection.score))"
    }

    /// A distinct, saturated colour per class (hues spread by the golden angle).
    static func color(of classIndex: Int) -> (UInt8, UInt8, UInt8) {
        let hue = (Double(classIndex) * 137.508).truncatingRemainder(dividingBy: 360) / 60
        let x = 1 - abs(hue.truncatingRemainder(dividingBy: 2) - 1)
        let (r, g, b): (Double, Double, Double) = [(1, x, 0), (x, 1, 0), (0, 1, x), (0, x, 1), (x, 0, 1), (1, 0, x)][Int(hue) % 6]
        return (UInt8(r * 255), UInt8(g * 255), UInt8(b * 255))
    }
}
