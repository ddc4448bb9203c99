import Foundation
import StitchImaging
import StitchModelIO
import StitchTensor

/// YOLOX-Nano (Megvii's YOLOX, depth 0.33, width 0.25, depthwise convolutions, SiLU),
/// read from its exported ONNX file: the convolutions (batch norms folded by the export)
/// are taken in graph order and checked one by one against the architecture below, which
/// names each after its PyTorch module. The ONNX file is the complete source: the
/// `.initializers.safetensors` export beside it lacks the objectness biases.
public final class YOLOX: ObjectDetector, @unchecked Sendable {
    public static let inputSize = 416
    public static let strides = [8, 16, 32]
    public let labels: [String]
    public var numClasses: Int { labels.count }
    let stem: Conv
    let stages: [[Unit]]   // dark2 ... dark5
    let neck: Neck
    let head: [HeadLevel]

    /// A convolution with bias, SiLU unless it is a prediction (YOLOX's BaseConv), "same" padding, on channels-last maps
    /// [h, w, c]: 1 x 1 ones are products with weights packed at load, depthwise ones run sixteen channels a vector, and
    /// the stem's dense 3 x 3 takes Focus's planes [12, h, w] and hands its output on channels-last.
    struct Conv {
        enum Layer {
            case pointwise(Linear, Activation?)
            case depthwise(ChannelsLastDepthwise)
            case dense(Convolution)
        }
        let layer: Layer
        let padding: Padding2D

        init(weight: Tensor, bias: Tensor, stride: Int, depthwise: Bool, activated: Bool) {
            let (outputs, inputs, kernel) = (weight.shape[0], weight.shape[1], weight.shape[2])
            padding = .symmetric((kernel - 1) / 2)
            if depthwise {
                layer = .depthwise(ChannelsLastDepthwise(weight: weight, bias: bias, stride: stride, activation: activated ? .silu : .none))
            } else if kernel == 1 && weight.shape[3] == 1 && stride == 1 {
                layer = .pointwise(Linear(weight: weight.reshaped([outputs, inputs]), bias: bias), activated ? .silu : nil)   // [cOut, cIn, 1, 1] -> [cOut, cIn]
            } else {
                layer = .dense(Convolution(weight: weight, bias: bias, stride: stride, activation: activated ? .silu : .none))
            }
        }

        func callAsFunction(_ x: Tensor) -> Tensor {
            switch layer {
            case let .pointwise(linear, activation): return linear(x, activation: activation)
            case let .depthwise(convolution): return convolution(x, padding: padding)
            case let .dense(convolution): return convolution.channelsLastOutput(x, padding: padding)
            }
        }
    }

    /// One step of a stage: a (depthwise) convolution, a CSP layer, or the SPP bottleneck.
    enum Unit {
        case conv([Conv])
        case csp(CSPLayer)
        case spp(Conv, Conv)
    }

    struct CSPLayer {
        let conv1, conv2, conv3: Conv
        let bottlenecks: [(conv1: Conv, conv2: [Conv])]
        let shortcut: Bool

        func callAsFunction(_ x: Tensor) -> Tensor {
            var main = conv1(x)
            for block in bottlenecks {
                var y = block.conv1(main)
                for conv in block.conv2 { y = conv(y) }
                if shortcut { addInPlace(&y, main) }
                main = y
            }
            return conv3(concatenate([main, conv2(x)], axis: 2))
        }
    }

    struct Neck {
        let lateralConv0: Conv, c3p4: CSPLayer, reduceConv1: Conv, c3p3: CSPLayer
        let buConv2: [Conv], c3n3: CSPLayer, buConv1: [Conv], c3n4: CSPLayer
    }

    struct HeadLevel {
        let stem: Conv
        let clsConvs: [Conv], regConvs: [Conv]
        let clsPred, regPred, objPred: Conv
    }

    /// Opens `yolox_nano.onnx` (or the one .onnx file) and `coco_labels.txt` in a folder, or an .onnx path.
    public convenience init(path: String) throws {
        var isFolder: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isFolder) else {
            throw ModelIOError.modelNotFound(spec: path, detail: "no such file or folder")
        }
        let folder = isFolder.boolValue ? URL(fileURLWithPath: path) : URL(fileURLWithPath: path).deletingLastPathComponent()
        guard let model = Self.modelFile(path) else {
            throw ModelIOError.modelNotFound(spec: path, detail: "no single .onnx file (or yolox_nano.onnx) in the folder")
        }
        let labelsFile = folder.appendingPathComponent("coco_labels.txt")
        guard let text = try? String(contentsOf: labelsFile, encoding: .utf8) else {
            throw ModelIOError.cannotOpen(file: labelsFile.path, reason: "the class names (one per line) are missing or unreadable")
        }
        let labels = text.split(whereSeparator: \.isNewline).map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
        try self.init(onnx: try ONNXModel(path: model), labels: labels)
    }

    /// The ONNX file `path` names: the file itself, or a folder's only .onnx file (else its yolox_nano.onnx).
    /// Whether `path` is a YOLOX ONNX file or a folder holding one (and no config.json: that would be another model).
    @Sendable public static func isModel(_ path: String) -> Bool {
        var isFolder: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isFolder) else { return false }
        if !isFolder.boolValue { return path.hasSuffix(".onnx") }
        return !FileManager.default.fileExists(atPath: URL(fileURLWithPath: path).appendingPathComponent("config.json").path) && modelFile(path) != nil
    }

    public static func modelFile(_ path: String) -> String? {
        var isFolder: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isFolder) else { return nil }
        guard isFolder.boolValue else { return path }
        let onnx = (try? FileManager.default.contentsOfDirectory(atPath: path))?.filter { $0.hasSuffix(".onnx") }.sorted() ?? []
        return (onnx.count == 1 ? onnx.first : onnx.first { $0 == "yolox_nano.onnx" }).map { URL(fileURLWithPath: path).appendingPathComponent($0).path }
    }

    public init(onnx: ONNXModel, labels: [String]) throws {
        var convs = ConvSequence(onnx)
        let (width, depth) = (0.25, 0.33)
        func channels(_ c: Int) -> Int { Int(Double(c) * width) }
        let bottlenecksPerCSP = max(Int((3 * depth).rounded()), 1)

        func baseConv(_ name: String, _ inputs: Int, _ outputs: Int, kernel: Int = 1, stride: Int = 1) -> Conv {
            convs.next(name, shape: [outputs, inputs, kernel, kernel], stride: stride, depthwise: false)
        }
        // DWConv: depthwise k×k then pointwise 1×1, each with SiLU.
        func dwConv(_ name: String, _ inputs: Int, _ outputs: Int, stride: Int) -> [Conv] {
            [convs.next("\(name).dconv", shape: [inputs, 1, 3, 3], stride: stride, depthwise: true), baseConv("\(name).pconv", inputs, outputs)]
        }
        func csp(_ name: String, _ inputs: Int, _ outputs: Int, blocks: Int, shortcut: Bool) -> CSPLayer {
            let hidden = outputs / 2
            let conv1 = baseConv("\(name).conv1", inputs, hidden), conv2 = baseConv("\(name).conv2", inputs, hidden)
            let bottlenecks = (0..<blocks).map { i in
                (conv1: baseConv("\(name).m.\(i).conv1", hidden, hidden), conv2: dwConv("\(name).m.\(i).conv2", hidden, hidden, stride: 1))
            }
            return CSPLayer(conv1: conv1, conv2: conv2, conv3: baseConv("\(name).conv3", 2 * hidden, outputs), bottlenecks: bottlenecks, shortcut: shortcut)
        }

        // Backbone (CSPDarknet): the Focus stem's conv, then dark2 ... dark5.
        let base = channels(64)
        stem = baseConv("backbone.backbone.stem.conv", 12, base, kernel: 3)
        var stages: [[Unit]] = []
        for (i, multiple) in [1, 2, 4, 8].enumerated() {
            let name = "backbone.backbone.dark\(i + 2)"
            let (inputs, outputs) = (base * multiple, base * multiple * 2)
            var units: [Unit] = [.conv(dwConv("\(name).0", inputs, outputs, stride: 2))]
            if i == 3 {
                let hidden = outputs / 2
                units.append(.spp(baseConv("\(name).1.conv1", outputs, hidden), baseConv("\(name).1.conv2", hidden * 4, outputs)))
                units.append(.csp(csp("\(name).2", outputs, outputs, blocks: bottlenecksPerCSP, shortcut: false)))
            } else {
                units.append(.csp(csp("\(name).1", outputs, outputs, blocks: bottlenecksPerCSP * (i == 0 ? 1 : 3), shortcut: true)))
            }
            stages.append(units)
        }
        self.stages = stages

        // PAFPN neck over dark3, dark4, dark5 (64, 128, 256 channels).
        let (c3, c4, c5) = (channels(256), channels(512), channels(1024))
        neck = Neck(
            lateralConv0: baseConv("backbone.lateral_conv0", c5, c4),
            c3p4: csp("backbone.C3_p4", 2 * c4, c4, blocks: bottlenecksPerCSP, shortcut: false),
            reduceConv1: baseConv("backbone.reduce_conv1", c4, c3),
            c3p3: csp("backbone.C3_p3", 2 * c3, c3, blocks: bottlenecksPerCSP, shortcut: false),
            buConv2: dwConv("backbone.bu_conv2", c3, c3, stride: 2),
            c3n3: csp("backbone.C3_n3", 2 * c3, c4, blocks: bottlenecksPerCSP, shortcut: false),
            buConv1: dwConv("backbone.bu_conv1", c4, c4, stride: 2),
            c3n4: csp("backbone.C3_n4", 2 * c4, c5, blocks: bottlenecksPerCSP, shortcut: false))

        // Decoupled head, one per stride; its 1×1 predictions have no activation.
        let hidden = channels(256)
        head = [c3, c4, c5].enumerated().map { level, inputs in
            let stem = baseConv("head.stems.\(level).conv", inputs, hidden)
            let clsConvs = dwConv("head.cls_convs.\(level).0", hidden, hidden, stride: 1) + dwConv("head.cls_convs.\(level).1", hidden, hidden, stride: 1)
            let clsPred = convs.next("head.cls_preds.\(level)", shape: [labels.count, hidden, 1, 1], stride: 1, depthwise: false, activated: false)
            let regConvs = dwConv("head.reg_convs.\(level).0", hidden, hidden, stride: 1) + dwConv("head.reg_convs.\(level).1", hidden, hidden, stride: 1)
            let regPred = convs.next("head.reg_preds.\(level)", shape: [4, hidden, 1, 1], stride: 1, depthwise: false, activated: false)
            let objPred = convs.next("head.obj_preds.\(level)", shape: [1, hidden, 1, 1], stride: 1, depthwise: false, activated: false)
            return HeadLevel(stem: stem, clsConvs: clsConvs, regConvs: regConvs, clsPred: clsPred, regPred: regPred, objPred: objPred)
        }
        try convs.finish()
        self.labels = labels
    }

    /// The network's raw output for one letterboxed image [3, 416, 416] (BGR, 0...255):
    /// [3549, 5 + classes] rows (52², 26², 13² cells of strides 8, 16, 32, row-major),
    /// each (dx, dy, log w, log h, objectness, class scores), the last two after sigmoid,
    /// exactly as the ONNX graph's `output`.
    public func rawOutputs(_ pixels: Tensor) throws -> Tensor {
        let size = Self.inputSize
        guard pixels.shape == [3, size, size] else {
            throw ModelError.invalidInput(model: "YOLOX", detail: "pixels must be [3, \(size), \(size)], got \(pixels.shape)")
        }
        var x = stem(focus(pixels))
        var features: [Tensor] = []   // dark3, dark4, dark5
        for (i, stage) in stages.enumerated() {
            for unit in stage {
                switch unit {
                case let .conv(sequence): for conv in sequence { x = conv(x) }
                case let .csp(layer): x = layer(x)
                case let .spp(conv1, conv2):
                    // Pools of 5, 9 and 13 as one of 5 applied once, twice and three times (max windows compose, the
                    // -inf padding included): the same values for 15 comparisons an output instead of 27.
                    let y = conv1(x)
                    let pool5 = maxPoolSameChannelsLast(y, kernel: 5), pool9 = maxPoolSameChannelsLast(pool5, kernel: 5)
                    x = conv2(concatenate([y, pool5, pool9, maxPoolSameChannelsLast(pool9, kernel: 5)], axis: 2))
                }
            }
            if i >= 1 { features.append(x) }
        }
        // PAFPN: top-down, then bottom-up.
        let fpnOut0 = neck.lateralConv0(features[2])                                            // [13, 13, 128]
        let f0 = neck.c3p4(concatenate([upsample2xChannelsLast(fpnOut0), features[1]], axis: 2))   // [26, 26, 128]
        let fpnOut1 = neck.reduceConv1(f0)                                                       // [26, 26, 64]
        let pan2 = neck.c3p3(concatenate([upsample2xChannelsLast(fpnOut1), features[0]], axis: 2)) // [52, 52, 64]
        var p1 = pan2
        for conv in neck.buConv2 { p1 = conv(p1) }
        let pan1 = neck.c3n3(concatenate([p1, fpnOut1], axis: 2))                                // [26, 26, 128]
        var p0 = pan1
        for conv in neck.buConv1 { p0 = conv(p0) }
        let pan0 = neck.c3n4(concatenate([p0, fpnOut0], axis: 2))                                // [13, 13, 256]

        // Each level's [h, w, 4 + 1 + classes] maps written into rows of the output, one row per cell:
        // (dx, dy, log w, log h, σ(objectness), σ(classes)).
        let columns = 5 + numClasses
        var output = Tensor(uninitialized: [Self.strides.reduce(0) { $0 + (size / $1) * (size / $1) }, columns])
        var firstRow = 0
        for (level, feature) in zip(head, [pan2, pan1, pan0]) {
            let stemmed = level.stem(feature)
            var cls = stemmed, reg = stemmed
            for conv in level.clsConvs { cls = conv(cls) }
            for conv in level.regConvs { reg = conv(reg) }
            var objectness = level.objPred(reg), classes = level.clsPred(cls)
            sigmoid(&objectness)
            sigmoid(&classes)
            let boxes = level.regPred(reg)
            let cells = feature.shape[0] * feature.shape[1]
            output.withUnsafeMutableBufferPointer { out in
                for (part, offset) in [(boxes, 0), (objectness, 4), (classes, 5)] {
                    part.withUnsafeBufferPointer { maps in   // [cells, channels] into columns offset..< of the rows
                        let channels = part.shape[2]
                        Parallel.forChunks(cells, minimumChunk: 256) { range in
                            for cell in range {
                                (out.baseAddress! + (firstRow + cell) * columns + offset).update(from: maps.baseAddress! + cell * channels, count: channels)
                            }
                        }
                    }
                }
            }
            firstRow += cells
        }
        return output
    }

    /// Labelled boxes in `image`: letterbox, network, grid decoding, then class-aware NMS
    /// as YOLOX's ONNX demo does it (every class scored obj·cls per cell, boxes above
    /// `threshold` suppressed per class at IoU > `nmsThreshold`). Boxes are in the image's
    /// pixels, clipped to it, best first.
    public func detect(_ image: RGBImage, threshold: Float = 0.3, nmsThreshold: Float = 0.45) throws -> [Detection] {
        let letterbox = Letterbox(image, size: Self.inputSize)
        let candidates = decode(try rawOutputs(letterbox.pixels), scale: letterbox.scale)
        let kept = nonMaximumSuppression(candidates, classes: numClasses, threshold: threshold, iouThreshold: nmsThreshold)
        let (width, height) = (Float(image.width), Float(image.height))
        return kept.map { d in
            Detection(label: labels[d.classIndex], classIndex: d.classIndex, score: d.score,
                      box: [min(max(d.box[0], 0), width), min(max(d.box[1], 0), height), min(max(d.box[2], 0), width), min(max(d.box[3], 0), height)])
        }
    }

    /// Boxes (x1, y1, x2, y2 in original pixels) and per-class scores obj·cls of every cell.
    func decode(_ raw: Tensor, scale: Float) -> (boxes: [SIMD4<Float>], scores: Tensor) {
        let columns = raw.shape[1], classes = columns - 5
        var boxes: [SIMD4<Float>] = []
        boxes.reserveCapacity(raw.shape[0])
        var scores = Tensor(uninitialized: [raw.shape[0], classes])
        raw.withUnsafeBufferPointer { r in
            scores.withUnsafeMutableBufferPointer { s in
                var row = 0
                for stride in Self.strides {
                    let cells = Self.inputSize / stride
                    for gy in 0..<cells {
                        for gx in 0..<cells {
                            let p = r.baseAddress! + row * columns
                            let cx = (p[0] + Float(gx)) * Float(stride), cy = (p[1] + Float(gy)) * Float(stride)
                            let w = expf(p[2]) * Float(stride), h = expf(p[3]) * Float(stride)
                            boxes.append(SIMD4((cx - w / 2) / scale, (cy - h / 2) / scale, (cx + w / 2) / scale, (cy + h / 2) / scale))
                            for c in 0..<classes { s[row * classes + c] = p[4] * p[5 + c] }
                            row += 1
                        }
                    }
                }
            }
        }
        return (boxes, scores)
    }

    /// Focus: space-to-depth, [3, h, w] -> [12, h/2, w/2] as (top-left, bottom-left, top-right, bottom-right).
    private func focus(_ x: Tensor) -> Tensor {
        let (h, w) = (x.shape[1], x.shape[2])
        let (oh, ow) = (h / 2, w / 2)
        var out = Tensor(uninitialized: [12, oh, ow])
        let offsets = [(0, 0), (1, 0), (0, 1), (1, 1)]
        x.withUnsafeBufferPointer { src in
            out.withUnsafeMutableBufferPointer { dst in
                Parallel.forChunks(12 * oh, minimumChunk: 64) { rows in   // output rows of all 12 planes, [12·oh]
                    for row in rows {
                        let (index, y) = row.quotientAndRemainder(dividingBy: oh)
                        let (part, c) = index.quotientAndRemainder(dividingBy: 3)
                        let (dy, dx) = offsets[part]
                        let (source, target) = (src.baseAddress! + (c * h + 2 * y + dy) * w + dx, dst.baseAddress! + row * ow)
                        for xo in 0..<ow { target[xo] = source[2 * xo] }
                    }
                }
            }
        }
        return out
    }
}

/// Hands out the ONNX graph's convolutions in order, checking each against what the
/// architecture expects; problems are collected and thrown together by `finish()`.
private struct ConvSequence {
    let source: String
    let nodes: [ONNXModel.Node]
    let initializers: [String: Tensor]
    var index = 0
    var problems: [String] = []

    init(_ model: ONNXModel) {
        source = model.path
        nodes = model.nodes.filter { $0.opType == "Conv" }
        initializers = model.initializers
    }

    mutating func next(_ name: String, shape: [Int], stride: Int, depthwise: Bool, activated: Bool = true) -> YOLOX.Conv {
        let fallback = YOLOX.Conv(weight: Tensor(zeros: shape), bias: Tensor(zeros: [shape[0]]), stride: stride, depthwise: depthwise, activated: activated)
        defer { index += 1 }
        guard index < nodes.count else {
            problems.append("\(name): the graph has only \(nodes.count) convolutions")
            return fallback
        }
        let node = nodes[index]
        let label = "\(name) (ONNX node \(node.name))"
        guard node.inputs.count == 3, let weight = initializers[node.inputs[1]], let bias = initializers[node.inputs[2]] else {
            problems.append("\(label): weight and bias must be float initializers")
            return fallback
        }
        let kernel = shape[2], groups = depthwise ? shape[0] : 1
        var found: [String] = []
        if weight.shape != shape { found.append("weight \(weight.shape), expected \(shape)") }
        if bias.shape != [shape[0]] { found.append("bias \(bias.shape), expected [\(shape[0])]") }
        if (node.ints["group"] ?? [1]) != [groups] { found.append("group \(node.ints["group"] ?? [1]), expected \(groups)") }
        if (node.ints["strides"] ?? [1, 1]) != [stride, stride] { found.append("strides \(node.ints["strides"] ?? [1, 1]), expected \([stride, stride])") }
        let pad = (kernel - 1) / 2
        if (node.ints["pads"] ?? [0, 0, 0, 0]) != [pad, pad, pad, pad] { found.append("pads \(node.ints["pads"] ?? []), expected \([pad, pad, pad, pad])") }
        if (node.ints["dilations"] ?? [1, 1]) != [1, 1] { found.append("dilations \(node.ints["dilations"]!), expected [1, 1]") }
        guard found.isEmpty else {
            problems.append("\(label): " + found.joined(separator: "; "))
            return fallback
        }
        return YOLOX.Conv(weight: weight, bias: bias, stride: stride, depthwise: depthwise, activated: activated)
    }

    func finish() throws(ModelIOError) {
        var all = problems
        if index < nodes.count { all.append("the graph has \(nodes.count - index) more convolutions than YOLOX-Nano") }
        if !all.isEmpty { throw .weightMismatch(source: source, problems: all) }
    }
}

/// One detected object: its class, score (objectness × class probability) and box
/// [x1, y1, x2, y2] in image pixels.
public struct Detection: Sendable, Equatable, Codable {
    public let label: String
    public let classIndex: Int
    public let score: Float
    public let box: [Float]
}

/// Class-aware greedy NMS, YOLOX's numpy `nms` per class: candidates above `threshold`
/// in descending score suppress later ones whose IoU exceeds `iouThreshold`, with areas
/// counted in inclusive pixels ((x2 - x1 + 1)(y2 - y1 + 1)) as that code does.
/// Returns (class, score, box), best first.
func nonMaximumSuppression(_ candidates: (boxes: [SIMD4<Float>], scores: Tensor), classes: Int, threshold: Float, iouThreshold: Float)
    -> [(classIndex: Int, score: Float, box: [Float])] {
    let boxes = candidates.boxes
    func area(_ b: SIMD4<Float>) -> Float { (b[2] - b[0] + 1) * (b[3] - b[1] + 1) }
    return candidates.scores.withUnsafeBufferPointer { scores in
        // Each class's cells above the threshold, in cell order, from one pass over the scores [cells, classes].
        var above = [[Int]](repeating: [], count: classes)
        for cell in boxes.indices {
            let row = scores.baseAddress! + cell * classes
            for c in 0..<classes where row[c] > threshold { above[c].append(cell) }
        }
        var kept: [(classIndex: Int, score: Float, box: [Float])] = []
        for (c, cells) in above.enumerated() where !cells.isEmpty {
            let order = cells.sorted { scores[$0 * classes + c] > scores[$1 * classes + c] }
            var survivors: [Int] = []
            for i in order {
                let a = boxes[i]
                let suppressed = survivors.contains { j in
                    let b = boxes[j]
                    let w = max(0, min(a[2], b[2]) - max(a[0], b[0]) + 1), h = max(0, min(a[3], b[3]) - max(a[1], b[1]) + 1)
                    let intersection = w * h
                    return intersection / (area(a) + area(b) - intersection) > iouThreshold
                }
                if !suppressed { survivors.append(i) }
            }
            kept += survivors.map { (c, scores[$0 * classes + c], [boxes[$0][0], boxes[$0][1], boxes[$0][2], boxes[$0][3]]) }
        }
        return kept.sorted { $0.score > $1.score }
    }
}
