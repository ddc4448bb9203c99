import Foundation

/// A model's chat template: tokenizer_config.json's `chat_template` (a string, or named templates of which
/// "default" is used), else a chat_template.jinja beside it; rendered with the variables transformers'
/// `apply_chat_template` passes (messages, tools, documents, add_generation_prompt and the special tokens).
public struct ChatTemplate: Sendable {
    public let template: JinjaTemplate
    /// bos_token, eos_token, ... as the tokenizer's special_tokens_map has them.
    public let specialTokens: [String: JinjaValue]
    public let file: String

    public init(source: String, specialTokens: [String: JinjaValue] = [:], file: String = "chat template") throws(TokenizerError) {
        do {
            template = try JinjaTemplate(source)
        } catch {
            throw .malformed(file: file, line: nil, detail: "its chat template: \(error.message)")
        }
        (self.specialTokens, self.file) = (specialTokens, file)
    }

    /// The folder's chat template, or nil when it has none.
    public init?(folder: URL) throws(TokenizerError) {
        let config = try TokenizerConfig(folder: folder)
        var source: String?
        var file = config.file
        switch config.values["chat_template"] {
        case let text as String: source = text
        case let named as [[String: Any]]:
            source = named.first { $0["name"] as? String == "default" }?["template"] as? String
            if source == nil { throw .malformed(file: file, line: nil, detail: "chat_template names no \"default\" template") }
        default:
            let jinja = folder.appendingPathComponent("chat_template.jinja").path
            if let data = FileManager.default.contents(atPath: jinja) {
                source = String(decoding: data, as: UTF8.self)
                file = jinja
            }
        }
        guard let source else { return nil }
        var tokens: [String: JinjaValue] = [:]
        for key in ["bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token"] {
            if let token = config.token(key) { tokens[key] = .string(token) }
        }
        let additional = config.additionalSpecialTokens
        if !additional.isEmpty { tokens["additional_special_tokens"] = .array(additional.map(JinjaValue.string)) }
        try self.init(source: source, specialTokens: tokens, file: file)
    }

    /// The prompt text of `messages` (an array of {"role", "content", ...} objects); `variables` add to and
    /// override the special tokens, as apply_chat_template's keyword arguments do.
    public func render(messages: JinjaValue, tools: JinjaValue = .none, addGenerationPrompt: Bool,
                       variables: [String: JinjaValue] = [:]) throws(JinjaError) -> String {
        var context = specialTokens.merging(variables) { $1 }
        context["messages"] = messages
        context["tools"] = tools
        context["documents"] = JinjaValue.none
        context["add_generation_prompt"] = .bool(addGenerationPrompt)
        return try template.render(context)
    }
}
