import ArgumentParser
import Foundation
import StitchImaging
import StitchModels
import StitchTensor

struct Detect: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Detect objects: YOLOX-Nano's 80 COCO classes, or whatever --queries name with OWL-ViT.",
        discussion: """
        Prints one line per detection, "image<TAB>label<TAB>score<TAB>x1,y1,x2,y2" (pixels of the original image), \
        best first; --json prints one object per image instead. --draw writes a JPEG copy of the (single) image \
        with each box and its label ("dog 0.87") drawn in a colour per class. With --queries the model is an \
        open-vocabulary detector (e.g. --model google/owlvit-base-patch32): each box is labelled with the query it \
        matches best, scores are sigmoids of its logits as transformers' post_process_object_detection gives them, \
        and the queries are embedded once for all images.
        """)

    @Argument(help: "JPEG or PNG images; standard input lines when none.")
    var images: [String] = []

    @Option(help: "Detector folder or hub id: YOLOX-Nano (its .onnx file and coco_labels.txt, or the .onnx file), or OWL-ViT with --queries.")
    var model = "Tests/Fixtures/yolox-nano-coco"

    @Option(help: "What to look for, comma-separated (\"stroller,dog,traffic light\"): needs an open-vocabulary detector.")
    var queries: String?

    @Option(help: "Keep detections scoring above this (default 0.3 for YOLOX: objectness x class probability; 0.1 with --queries).")
    var threshold: Float?

    @Option(help: "Suppress boxes of the same class overlapping a better one by more than this IoU (default 0.45 for YOLOX; none with --queries).")
    var nms: Float?

    @Option(help: "Write the image with its boxes drawn to this JPEG file (one image only).")
    var draw: String?

    @Flag(help: "Print one JSON object per image.")
    var json = false

    @OptionGroup var hub: HubOptions

    @OptionGroup var precision: PrecisionOptions

    func validate() throws {
        guard (0...1).contains(threshold ?? 0), (0...1).contains(nms ?? 0) else { throw ValidationError("--threshold and --nms must lie in [0, 1]") }
        if let queries, Self.split(queries).isEmpty { throw ValidationError("--queries names nothing to look for") }
    }

    /// The comma-separated queries, trimmed, empty ones dropped.
    static func split(_ queries: String) -> [String] {
        queries.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
    }

    func run() throws {
        let paths = images.isEmpty ? standardInputLines() : images
        guard !paths.isEmpty else { throw ValidationError("no images given") }
        if draw != nil && paths.count != 1 { throw ValidationError("--draw needs exactly one image, got \(paths.count)") }
        let loaded = try precision.loading { try ModelRegistry.standard.load(model, locator: hub.locator) }
        let detect: (RGBImage) throws -> [Detection]
        if let queries {
            let detector = try ModelRegistry.require(loaded, spec: model, as: (any TextQueriedDetector).self)
            let (asked, threshold, nms) = (Self.split(queries), threshold ?? 0.1, nms)
            detect = { image in
                let found = try detector.detect(image, queries: asked, threshold: threshold, nmsThreshold: nms)
                // Without NMS the detections come in patch order; printed best first (NMS already ranks them).
                return nms == nil ? indicesByDescendingValue(found.map(\.score)).map { found[$0] } : found
            }
        } else {
            if !(loaded.object is any ObjectDetector) && loaded.object is any TextQueriedDetector {
                throw ValidationError("\(model) finds what text queries name: give --queries")
            }
            let detector = try ModelRegistry.require(loaded, spec: model, as: (any ObjectDetector).self)
            let (threshold, nms) = (threshold ?? 0.3, nms ?? 0.45)
            detect = { try detector.detect($0, threshold: threshold, nmsThreshold: nms) }
        }
        for path in paths {
            var image = try RGBImage(contentsOf: path)
            let detections = try detect(image)
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
