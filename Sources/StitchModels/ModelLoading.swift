import Foundation
import StitchModelIO

/// The model families Stitch runs, told apart by their config.json.
public enum ModelKind: String, Sendable, CaseIterable {
    case clip, gpt2, sentenceEncoder = "sentence-encoder", efficientNet = "efficientnet-lite"

    /// The kind a config.json describes: its `model_type`, or EfficientNet's `architecture` field.
    public static func detect(configFile: URL) throws -> ModelKind {
        struct Header: Decodable {
            let modelType: String?
            let architecture: String?
            enum CodingKeys: String, CodingKey { case modelType = "model_type", architecture }
        }
        let header = try loadConfig(Header.self, from: configFile)
        switch header.modelType {
        case "clip": return .clip
        case "gpt2": return .gpt2
        case "bert": return .sentenceEncoder
        default:
            if header.architecture?.hasPrefix("efficientnet-lite") == true { return .efficientNet }
            throw ModelIOError.unsupportedArchitecture(file: configFile.path, found: header.modelType ?? header.architecture ?? "(none declared)",
                                                       expected: ["clip", "gpt2", "bert", "efficientnet-lite0"])
        }
    }

    /// The files a folder of this kind needs (fetched for hub ids).
    public var files: ModelFiles {
        switch self {
        case .clip: return CLIP.files
        case .gpt2: return GPT2.files
        case .sentenceEncoder: return SentenceEncoder.files
        case .efficientNet: return EfficientNetLite.files
        }
    }
}

extension ModelLocator {
    /// The folder of `spec` with every file its kind needs, and that kind.
    public func resolveModel(_ spec: String) throws -> (folder: URL, kind: ModelKind) {
        let configOnly = try resolveModel(spec, files: .configOnly)
        let kind = try ModelKind.detect(configFile: configOnly.appendingPathComponent("config.json"))
        return (try resolveModel(spec, files: kind.files), kind)
    }
}
