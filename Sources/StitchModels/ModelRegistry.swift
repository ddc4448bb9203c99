import Foundation
import StitchModelIO

/// One kind of model Stitch loads: which configs it reads, the files it needs, how it loads.
/// What it can do is not declared here but by the protocols the loaded object conforms to (`Capability`).
public struct ModelType: Sendable {
    public let name: String
    /// config.json `model_type` values it loads.
    public let modelTypes: [String]
    /// config.json `architectures` (or EfficientNet's `architecture`) prefixes it loads when `model_type` names none.
    public let architectures: [String]
    public let files: ModelFiles
    /// For models published without a config.json: whether a local path holds one (e.g. an ONNX detector).
    public let recognizes: (@Sendable (String) -> Bool)?
    public let load: @Sendable (URL) throws -> AnyObject

    public init(_ name: String, modelTypes: [String], architectures: [String] = [], files: ModelFiles,
                recognizes: (@Sendable (String) -> Bool)? = nil, load: @escaping @Sendable (URL) throws -> AnyObject) {
        self.name = name
        self.modelTypes = modelTypes
        self.architectures = architectures
        self.files = files
        self.recognizes = recognizes
        self.load = load
    }
}

/// A loaded model with the registry entry and folder it came from.
public struct LoadedModel: @unchecked Sendable {
    public let object: AnyObject
    public let type: ModelType
    public let folder: URL
}

/// Every model type Stitch can load, and the one place that decides which type a folder holds: the CLI,
/// graphs and methods ask it for a model with a capability (`load(_:as:)`), never for a class, so a type
/// registered here (tests register their own) plugs into every method.
public final class ModelRegistry: @unchecked Sendable {
    private let lock = NSLock()
    private var entries: [ModelType] = []

    /// The types Stitch ships.
    public static let standard: ModelRegistry = {
        let registry = ModelRegistry()
        registry.register(ModelType("clip", modelTypes: ["clip"], architectures: ["CLIPModel"], files: CLIP.files) { try CLIP(folder: $0) })
        registry.register(ModelType("siglip", modelTypes: ["siglip"], architectures: ["SiglipModel"], files: SigLIP.files) { try SigLIP(folder: $0) })
        registry.register(ModelType("blip", modelTypes: ["blip"], architectures: ["BlipForConditionalGeneration", "BlipForImageTextRetrieval"],
                                    files: BLIP.files) { try BLIP.load(folder: $0) })
        registry.register(ModelType("gpt2", modelTypes: ["gpt2"], architectures: ["GPT2LMHeadModel", "GPT2Model"], files: GPT2.files) { try GPT2(folder: $0) })
        registry.register(ModelType("llama", modelTypes: ["llama", "qwen2", "mistral"], architectures: Llama.architectures, files: Llama.files) { try Llama(folder: $0) })
        registry.register(ModelType("vision-encoder-decoder", modelTypes: ["vision-encoder-decoder"], architectures: ["VisionEncoderDecoderModel"],
                                    files: VisionEncoderDecoder.files) { try VisionEncoderDecoder(folder: $0) })
        registry.register(ModelType("sentence-encoder", modelTypes: ["bert"], architectures: ["BertModel"], files: SentenceEncoder.files) { try SentenceEncoder(folder: $0) })
        registry.register(ModelType("efficientnet-lite", modelTypes: [], architectures: ["efficientnet-lite"], files: EfficientNetLite.files) { try EfficientNetLite(folder: $0) })
        registry.register(ModelType("owlvit", modelTypes: ["owlvit"], architectures: ["OwlViTForObjectDetection"], files: OWLViT.files) { try OWLViT(folder: $0) })
        registry.register(ModelType("yolox", modelTypes: [], files: ModelFiles(required: []), recognizes: YOLOX.isModel) { try YOLOX(path: $0.path) })
        return registry
    }()

    public init() {}

    /// Adds a type; a later registration for the same config wins.
    public func register(_ type: ModelType) {
        lock.lock(); defer { lock.unlock() }
        entries.insert(type, at: 0)
    }

    public var types: [ModelType] {
        lock.lock(); defer { lock.unlock() }
        return entries
    }

    /// The type that loads the model whose config.json is `configFile`: by its `model_type`, else its
    /// `architectures` (or EfficientNet's `architecture` field).
    public func type(configFile: URL) throws -> ModelType {
        struct Header: Decodable {
            let modelType: String?
            let architectures: [String]?
            let architecture: String?
            enum CodingKeys: String, CodingKey { case modelType = "model_type", architectures, architecture }
        }
        let header = try loadConfig(Header.self, from: configFile)
        let known = types
        if let modelType = header.modelType, let type = known.first(where: { $0.modelTypes.contains(modelType) }) { return type }
        let declared = (header.architectures ?? []) + [header.architecture].compactMap { $0 }
        if let type = known.first(where: { type in declared.contains { name in type.architectures.contains { name.hasPrefix($0) } } }) { return type }
        throw ModelIOError.unsupportedArchitecture(file: configFile.path, found: header.modelType ?? declared.first ?? "(none declared)",
                                                   expected: known.flatMap { $0.modelTypes.isEmpty ? $0.architectures : $0.modelTypes })
    }

    /// The model `spec` (a folder, or a hub id resolved through `locator`) loaded by the type its config names.
    public func load(_ spec: String, locator: ModelLocator) throws -> LoadedModel {
        let (folder, type) = try resolve(spec, locator: locator)
        return LoadedModel(object: try type.load(folder), type: type, folder: folder)
    }

    /// The folder of `spec` with every file its type needs (downloaded for hub ids), and that type.
    public func resolve(_ spec: String, locator: ModelLocator) throws -> (folder: URL, type: ModelType) {
        if let type = types.first(where: { $0.recognizes?(spec) == true }) { return (URL(fileURLWithPath: spec), type) }
        let configOnly = try locator.resolveModel(spec, files: .configOnly)
        let type = try type(configFile: configOnly.appendingPathComponent("config.json"))
        return (try locator.resolveModel(spec, files: type.files), type)
    }

    /// The folder `resolve` finds.
    public func folder(_ spec: String, locator: ModelLocator) throws -> URL { try resolve(spec, locator: locator).folder }

    /// The model `spec` as a `capability` (a protocol such as `any ImageTextScorer`); an error names the model,
    /// its type and what it can do instead when it lacks the capability.
    public func load<Capable>(_ spec: String, as capability: Capable.Type, locator: ModelLocator) throws -> Capable {
        try Self.require(try load(spec, locator: locator), spec: spec, as: capability)
    }

    public static func require<Capable>(_ loaded: LoadedModel, spec: String, as capability: Capable.Type) throws -> Capable {
        guard let capable = loaded.object as? Capable else {
            let can = Capability.of(loaded.object).map(\.rawValue)
            throw ModelError.invalidInput(model: spec, detail: "its model type \(loaded.type.name) is not \(Self.name(of: capability))"
                                              + (can.isEmpty ? "" : " (it is: \(can.joined(separator: ", ")))"))
        }
        return capable
    }

    /// "an image-text scorer" for `any ImageTextScorer`.
    static func name<Capable>(of capability: Capable.Type) -> String {
        let names: [(Any.Type, Capability)] = [((any ImageTextScorer).self, .imageTextScorer), ((any CausalLanguageModel).self, .languageModel),
                                               ((any ImageCaptioner).self, .captioner), ((any ObjectDetector).self, .detector),
                                               ((any TextQueriedDetector).self, .textQueriedDetector),
                                               ((any TextEmbedder).self, .textEmbedder), ((any ImageEmbedder).self, .imageEmbedder)]
        guard let found = names.first(where: { $0.0 == capability })?.1 else { return "a \(capability)" }
        return (["a", "e", "i", "o", "u"].contains(found.rawValue.prefix(1)) ? "an " : "a ") + found.rawValue
    }
}
