import StitchTensor

/// Turns an image into a model's pixel tensor [3, size, size]: resize the
/// shortest side and center-crop (or, for ViT, resize both sides to the square),
/// scale to [0, 1], normalise per channel.
/// Two presets reproduce the references models were trained with.
public struct ImagePreprocessor: Sendable, Equatable {
    /// How the crop's top-left corner is rounded when the margin is odd.
    public enum CropRounding: Sendable, Equatable {
        case floor             // transformers' center_crop: (h - size) // 2
        case roundHalfEven     // torchvision's CenterCrop: round((h - size) / 2)
    }

    public var shortestEdge: Int
    public var cropSize: Int
    public var filter: ResampleFilter
    public var mean: [Float]
    public var std: [Float]
    public var cropRounding: CropRounding
    /// Resize straight to cropSize × cropSize, aspect not kept (ViTImageProcessor), instead of resize-and-crop.
    public var squares: Bool = false

    public init(shortestEdge: Int, cropSize: Int, filter: ResampleFilter, mean: [Float], std: [Float], cropRounding: CropRounding) {
        self.shortestEdge = shortestEdge
        self.cropSize = cropSize
        self.filter = filter
        self.mean = mean
        self.std = std
        self.cropRounding = cropRounding
    }

    /// ViTImageProcessor: both sides resized to `squareSize`.
    public init(squareSize: Int, filter: ResampleFilter, mean: [Float], std: [Float]) {
        self.init(shortestEdge: squareSize, cropSize: squareSize, filter: filter, mean: mean, std: std, cropRounding: .floor)
        squares = true
    }

    /// transformers' CLIPImageProcessor defaults (openai/clip-vit-base-patch32).
    public static let clip = ImagePreprocessor(
        shortestEdge: 224, cropSize: 224, filter: .bicubic,
        mean: [0.48145466, 0.4578275, 0.40821073], std: [0.26862954, 0.26130258, 0.27577711],
        cropRounding: .floor)

    /// torchvision's ImageNet evaluation transform: Resize(256, bicubic), CenterCrop(224), ImageNet mean/std.
    public static let imageNet = ImagePreprocessor(
        shortestEdge: 256, cropSize: 224, filter: .bicubic,
        mean: [0.485, 0.456, 0.406], std: [0.229, 0.224, 0.225],
        cropRounding: .roundHalfEven)

    /// The resized and cropped 8-bit image, before normalisation.
    public func resizedAndCropped(_ image: RGBImage) -> RGBImage {
        if squares { return image.resized(width: cropSize, height: cropSize, filter: filter) }
        let (short, long) = image.width <= image.height ? (image.width, image.height) : (image.height, image.width)
        // Both references truncate the long side: int(size * long / short).
        let newLong = Int(Double(shortestEdge) * Double(long) / Double(short))
        let (newWidth, newHeight) = image.width <= image.height ? (shortestEdge, newLong) : (newLong, shortestEdge)
        func offset(_ size: Int) -> Int {
            switch cropRounding {
            case .floor: return (size - cropSize) >= 0 ? (size - cropSize) / 2 : -((cropSize - size + 1) / 2)
            case .roundHalfEven: return Int((Double(size - cropSize) / 2).rounded(.toNearestOrEven))
            }
        }
        // Only the part of the resized image the crop keeps is computed.
        let (left, top) = (offset(newWidth), offset(newHeight))
        let columns = max(0, left)..<min(newWidth, left + cropSize), rows = max(0, top)..<min(newHeight, top + cropSize)
        let kept = image.resized(width: newWidth, height: newHeight, columns: columns, rows: rows, filter: filter)
        return kept.cropped(left: left - columns.lowerBound, top: top - rows.lowerBound, width: cropSize, height: cropSize)
    }

    /// Pixel values [3, cropSize, cropSize], channel-major, as the model expects.
    public func callAsFunction(_ image: RGBImage) -> Tensor {
        let cropped = resizedAndCropped(image)
        let plane = cropSize * cropSize
        var out = Tensor(uninitialized: [3, cropSize, cropSize])
        out.withUnsafeMutableBufferPointer { dst in
            for i in 0..<plane {
                for c in 0..<3 {
                    // float64 scaling then float32 normalisation, the order transformers uses.
                    let scaled = Float(Double(cropped.pixels[i * 3 + c]) * (1.0 / 255.0))
                    dst[c * plane + i] = (scaled - mean[c]) / std[c]
                }
            }
        }
        return out
    }

    /// A batch [n, 3, cropSize, cropSize] from several images.
    public func batch(_ images: [RGBImage]) -> Tensor {
        concatenate(images.map { self($0).reshaped([1, 3, cropSize, cropSize]) }, axis: 0)
    }
}
