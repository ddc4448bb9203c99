import Foundation

/// Reads a JSON configuration file (config.json, preprocessor_config.json, …)
/// into `T`, turning decoding failures into errors that name the file and field.
public func loadConfig<T: Decodable>(_ type: T.Type, from file: URL) throws(ModelIOError) -> T {
    guard let data = FileManager.default.contents(atPath: file.path) else {
        throw .cannotOpen(file: file.path, reason: "file is missing or unreadable")
    }
    do {
        return try JSONDecoder().decode(T.self, from: data)
    } catch let DecodingError.keyNotFound(key, context) {
        throw .invalidConfig(file: file.path, field: fieldPath(context.codingPath + [key]), detail: "required field is missing")
    } catch let DecodingError.typeMismatch(expected, context) {
        throw .invalidConfig(file: file.path, field: fieldPath(context.codingPath), detail: "expected \(expected)")
    } catch let DecodingError.valueNotFound(expected, context) {
        throw .invalidConfig(file: file.path, field: fieldPath(context.codingPath), detail: "expected \(expected), found null")
    } catch let DecodingError.dataCorrupted(context) {
        let field = context.codingPath.isEmpty ? "(file)" : fieldPath(context.codingPath)
        throw .invalidConfig(file: file.path, field: field, detail: context.underlyingError == nil ? context.debugDescription : "not valid JSON")
    } catch {
        throw .invalidConfig(file: file.path, field: "(file)", detail: "\(error)")
    }
}

private func fieldPath(_ path: [CodingKey]) -> String {
    path.map { $0.intValue.map { "[\($0)]" } ?? $0.stringValue }.joined(separator: ".")
}

/// The `architectures` / `model_type` pair every Hugging Face config.json carries.
public struct ArchitectureHeader: Decodable, Sendable {
    public let architectures: [String]?
    public let modelType: String?

    enum CodingKeys: String, CodingKey {
        case architectures
        case modelType = "model_type"
    }

    /// Throws unless the config names one of `accepted` model types (or architectures).
    public static func require(_ accepted: [String], in file: URL) throws(ModelIOError) {
        let header = try loadConfig(ArchitectureHeader.self, from: file)
        let found = (header.architectures ?? []) + (header.modelType.map { [$0] } ?? [])
        guard found.contains(where: accepted.contains) else {
            throw .unsupportedArchitecture(file: file.path, found: found.first ?? "(none declared)", expected: accepted)
        }
    }
}
