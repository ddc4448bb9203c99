import Foundation

/// Prompt templates: `{name}` placeholders filled with texts, `{{` and `}}` literal braces. Values are inserted as they
/// are, never read as templates themselves.
public enum PromptTemplate {
    public static func fill(_ template: String, values: [String: String]) throws -> String {
        try fill(template) { values[$0] }
    }

    /// `template` with each placeholder's text from `value` (nil: the placeholder has no value, an error).
    public static func fill(_ template: String, value: (String) -> String?) throws -> String {
        var out = ""
        var rest = Substring(template)
        while let open = rest.firstIndex(where: { $0 == "{" || $0 == "}" }) {
            out += rest[..<open]
            let after = rest.index(after: open)
            if after < rest.endIndex, rest[after] == rest[open] {   // {{ or }}
                out.append(rest[open])
                rest = rest[rest.index(after: after)...]
                continue
            }
            guard rest[open] == "{", let close = rest[after...].firstIndex(of: "}") else {
                throw MethodError.invalidInput("unbalanced brace in template near '\(rest[open...].prefix(20))'")
            }
            let name = String(rest[after..<close])
            guard let text = value(name) else { throw MethodError.invalidInput("template placeholder {\(name)} has no value") }
            out += text
            rest = rest[rest.index(after: close)...]
        }
        return out + rest
    }
}

/// A few-shot prompt: the header, the separator, one block per in-context example, then the query's block; each block
/// is a `PromptTemplate` filled from the example's fields.
public struct FewShotPrompt: Sendable, Equatable {
    public var header, separator, exampleTemplate, queryTemplate: String

    public init(header: String, separator: String, exampleTemplate: String, queryTemplate: String) {
        (self.header, self.separator, self.exampleTemplate, self.queryTemplate) = (header, separator, exampleTemplate, queryTemplate)
    }

    /// PICa's published format (microsoft/PICa, gpt3_api_okvqa.py): "HEADER\n===\n", per example "Context: C\n===\n" and
    /// "Q: Q\nA: A\n\n===\n", then "Context: C\n===\nQ: Q\nA:".
    public static let pica = FewShotPrompt(header: PICa.defaultHeader, separator: "\n===\n",
                                           exampleTemplate: "Context: {context}\n===\nQ: {question}\nA: {answer}\n\n===\n",
                                           queryTemplate: "Context: {context}\n===\nQ: {question}\nA:")

    public func prompt(examples: [[String: String]], query: [String: String]) throws -> String {
        var prompt = header + separator
        for example in examples { prompt += try PromptTemplate.fill(exampleTemplate, values: example) }
        return prompt + (try PromptTemplate.fill(queryTemplate, values: query))
    }

    /// One prompt per consecutive group of `shots` examples (the last may hold fewer), as PICa's ensemble splits its
    /// selection; `shots` 0 or no examples give one prompt with all of them.
    public func prompts(examples: [[String: String]], query: [String: String], shots: Int) throws -> [String] {
        guard shots > 0, !examples.isEmpty else { return [try prompt(examples: examples, query: query)] }
        return try stride(from: 0, to: examples.count, by: shots).map { try prompt(examples: Array(examples[$0..<min($0 + shots, examples.count)]), query: query) }
    }
}

/// How a generated answer is cleaned before it is compared or reported.
public enum AnswerNormalization: String, Sendable, CaseIterable {
    /// PICa's published clean-up (`PICa.cleanAnswer`).
    case pica
    /// The official VQA evaluator's normalisation of a prediction (`VQAAccuracy.normalize`).
    case vqa
    /// The answer as generated.
    case none

    public func apply(_ answer: String) -> String {
        switch self {
        case .pica: return PICa.cleanAnswer(answer)
        case .vqa: return VQAAccuracy.normalize(answer)
        case .none: return answer
        }
    }
}
