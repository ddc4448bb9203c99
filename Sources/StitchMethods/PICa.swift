import Foundation
import StitchTensor

/// PICa (Yang et al. 2021): knowledge VQA by prompting a language model with the image as text.
/// The prompt is a header line, n in-context examples "Context / Question / Answer" separated by
/// lines "===", then the test example with an empty answer; examples are the training-pool
/// entries most similar to the test (question text-text plus image image-image cosine); several
/// prompts with disjoint example sets form an ensemble whose answer is the one generated with
/// the highest summed log-probability.
public struct PICa: Sendable {
    /// One training-pool or test entry: its context ("caption. tags"), question and (for the pool) answer.
    public struct Example: Sendable, Equatable {
        public var context: String
        public var question: String
        public var answer: String

        public init(context: String, question: String, answer: String = "") {
            (self.context, self.question, self.answer) = (context, question, answer)
        }
    }

    public var header: String
    /// With {context}, {question} and {answer}.
    public var exampleTemplate: String

    public static let defaultHeader = "Please answer the question according to the above context."
    public static let defaultExampleTemplate = "Context: {context}\nQuestion: {question}\nAnswer: {answer}"

    public init(header: String = PICa.defaultHeader, exampleTemplate: String = PICa.defaultExampleTemplate) {
        self.header = header.trimmingCharacters(in: .newlines)
        self.exampleTemplate = exampleTemplate.trimmingCharacters(in: .newlines)
    }

    /// The context of an image: its caption, then its object tags when there are any ("a dog on grass. dog, frisbee").
    public static func context(caption: String, tags: String) -> String {
        let sentence = caption.trimmingCharacters(in: .whitespaces)
        let trimmedTags = tags.trimmingCharacters(in: .whitespaces)
        return trimmedTags.isEmpty ? sentence : "\(sentence). \(trimmedTags)"
    }

    /// The prompt: header, the examples, the test example (its answer left empty), separated by "===" lines.
    public func prompt(examples: [Example], test: Example) -> String {
        let blocks = (examples + [Example(context: test.context, question: test.question)]).map { example in
            exampleTemplate.replacingOccurrences(of: "{context}", with: example.context)
                .replacingOccurrences(of: "{question}", with: example.question)
                .replacingOccurrences(of: "{answer}", with: example.answer)
        }
        // The test's "Answer:" ends the prompt, without the space the filled template would leave.
        var prompt = ([header] + blocks).joined(separator: "\n===\n")
        while prompt.hasSuffix(" ") { prompt.removeLast() }
        return prompt
    }

    /// Pool indices best first by cos(question, pool question) + cos(image, pool image), ties by index;
    /// all embeddings unit length ([d], and [N, d] for the pool).
    public static func rankExamples(question: Tensor, image: Tensor, poolQuestions: Tensor, poolImages: Tensor) -> [Int] {
        let textScores = matmul(poolQuestions, question.reshaped([question.count, 1])).scalars
        let imageScores = matmul(poolImages, image.reshaped([image.count, 1])).scalars
        let scores = zip(textScores, imageScores).map { $0 + $1 }
        return scores.indices.sorted { scores[$0] > scores[$1] || (scores[$0] == scores[$1] && $0 < $1) }
    }

    /// The answer of an ensemble of `prompts`: each completed greedily up to the end of the line,
    /// the answer kept whose tokens' summed log-probability is highest (the first on ties),
    /// normalised as VQA evaluation normalises answers.
    public static func answer(prompts: [String], backend: CompletionBackend, maxTokens: Int = 5) throws -> (answer: String, candidates: [(answer: String, logprob: Double)]) {
        var candidates: [(answer: String, logprob: Double)] = []
        for prompt in prompts {
            let completion = try backend.complete(CompletionRequest(prompt: prompt, maxTokens: maxTokens, temperature: 0, stop: ["\n"], logprobs: true))[0]
            candidates.append((VQAAccuracy.normalize(completion.text), completion.totalLogprob))
        }
        guard let best = candidates.indices.max(by: { candidates[$0].logprob < candidates[$1].logprob || (candidates[$0].logprob == candidates[$1].logprob && $0 > $1) }) else {
            throw MethodError.invalidInput("PICa: an ensemble needs at least one prompt")
        }
        return (candidates[best].answer, candidates)
    }
}

/// Bad input to a method: files it reads, arguments it cannot use.
public enum MethodError: Error, CustomStringConvertible, Equatable {
    case unreadableFile(String, String)
    case invalidInput(String)

    public var description: String {
        switch self {
        case let .unreadableFile(path, detail): return "\(path): \(detail)"
        case let .invalidInput(detail): return detail
        }
    }
}
