import Foundation

/// Limits on what untrusted input (an image, a tokenizer file, a graph) may make Stitch allocate or compute: far
/// above what real files need, each raised by an environment variable for a user who needs more. Read once.
public struct Limit: Sendable {
    /// The environment variable that sets it.
    public let variable: String
    public let value: Int

    init(_ variable: String, default value: Int) {
        self.variable = variable
        self.value = ProcessInfo.processInfo.environment[variable].flatMap { Int($0) }.map { max(1, $0) } ?? value
    }

    /// How an error names it: "(STITCH_MAX_... raises it)".
    public var hint: String { "(\(variable) raises it)" }

    /// Pixels of a decoded image (2^28, 768 MB as RGB), checked from the header before decoding.
    public static let imagePixels = Limit("STITCH_MAX_IMAGE_PIXELS", default: 1 << 28)
    /// Bytes a compressed tokenizer file may inflate to (CLIP's BPE file is 3.2 MB).
    public static let decompressedBytes = Limit("STITCH_MAX_DECOMPRESSED_BYTES", default: 64 << 20)
    /// Bytes of a graph file or of a prompt file it reads.
    public static let graphFileBytes = Limit("STITCH_MAX_GRAPH_BYTES", default: 8 << 20)
    /// YAML values a graph stands for once aliases are expanded (validated in well under a second).
    public static let graphValues = Limit("STITCH_MAX_GRAPH_VALUES", default: 2_000_000)
}
