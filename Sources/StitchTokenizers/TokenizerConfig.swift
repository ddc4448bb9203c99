import Foundation

/// A model folder's tokenizer_config.json and special_tokens_map.json (either may be absent), as transformers'
/// tokenizer classes read them: the class name, flags, and special tokens given as text or as {"content": ...}.
struct TokenizerConfig {
    let values: [String: Any]
    let specialTokens: [String: Any]
    let file: String

    init(folder: URL) throws(TokenizerError) {
        file = folder.appendingPathComponent("tokenizer_config.json").path
        values = try Self.object(file)
        specialTokens = try Self.object(folder.appendingPathComponent("special_tokens_map.json").path)
    }

    private static func object(_ path: String) throws(TokenizerError) -> [String: Any] {
        guard let data = FileManager.default.contents(atPath: path) else { return [:] }
        guard let object = try? JSONSerialization.jsonObject(with: data) as? [String: Any] else {
            throw .malformed(file: path, line: nil, detail: "not a JSON object")
        }
        return object
    }

    /// tokenizer_class without the "Fast" suffix: "LlamaTokenizer" for both of transformers' Llama classes.
    var className: String {
        let name = values["tokenizer_class"] as? String ?? ""
        return name.hasSuffix("Fast") ? String(name.dropLast(4)) : name
    }

    func flag(_ key: String) -> Bool? { values[key] as? Bool }

    /// A special token by its key ("bos_token"), special_tokens_map.json first.
    func token(_ key: String) -> String? {
        let value = specialTokens[key] ?? values[key]
        return value as? String ?? (value as? [String: Any])?["content"] as? String
    }

    var additionalSpecialTokens: [String] {
        ((specialTokens["additional_special_tokens"] ?? values["additional_special_tokens"]) as? [Any] ?? [])
            .compactMap { $0 as? String ?? ($0 as? [String: Any])?["content"] as? String }
    }
}
