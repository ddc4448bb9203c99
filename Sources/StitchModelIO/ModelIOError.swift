/// Everything that can be wrong with a model file or folder. Every case names
/// the file so that the message alone tells the user where to look.
public enum ModelIOError: Error, CustomStringConvertible, Equatable {
    case cannotOpen(file: String, reason: String)
    case truncated(file: String, detail: String)
    case invalidHeader(file: String, detail: String)
    case invalidModel(file: String, detail: String)
    case unsupportedDtype(file: String, tensor: String, dtype: String)
    case badTensorEntry(file: String, tensor: String, detail: String)
    case missingTensor(file: String, tensor: String)
    case invalidConfig(file: String, field: String, detail: String)
    case unsupportedArchitecture(file: String, found: String, expected: [String])
    case weightMismatch(source: String, problems: [String])
    case modelNotFound(spec: String, detail: String)
    case offline(repo: String, missing: [String])
    case download(url: String, detail: String)

    public var description: String {
        switch self {
        case let .cannotOpen(file, reason): return "\(file): cannot open: \(reason)"
        case let .truncated(file, detail): return "\(file): file is truncated: \(detail)"
        case let .invalidHeader(file, detail): return "\(file): invalid safetensors header: \(detail)"
        case let .invalidModel(file, detail): return "\(file): \(detail)"
        case let .unsupportedDtype(file, tensor, dtype):
            return "\(file): tensor '\(tensor)' has dtype \(dtype); supported are F32, F16 and BF16"
        case let .badTensorEntry(file, tensor, detail): return "\(file): tensor '\(tensor)': \(detail)"
        case let .missingTensor(file, tensor): return "\(file): no tensor named '\(tensor)'"
        case let .invalidConfig(file, field, detail): return "\(file): field '\(field)': \(detail)"
        case let .unsupportedArchitecture(file, found, expected):
            return "\(file): architecture '\(found)' is not supported here (expected one of \(expected.joined(separator: ", ")))"
        case let .weightMismatch(source, problems):
            return "\(source): checkpoint does not fit the model:\n  " + problems.joined(separator: "\n  ")
        case let .modelNotFound(spec, detail): return "model '\(spec)': \(detail)"
        case let .offline(repo, missing):
            return "model '\(repo)' is not in the Hugging Face cache (missing \(missing.joined(separator: ", "))) and HF_HUB_OFFLINE forbids downloading it"
        case let .download(url, detail): return "download of \(url) failed: \(detail)"
        }
    }
}
