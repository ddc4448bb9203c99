import Foundation
import StitchTensor
import StitchTokenizers

/// PICa (Yang et al. 2021): knowledge VQA by prompting a language model with the image as text, as the published
/// code (microsoft/PICa, gpt3_api_okvqa.py) does it. The prompt is the header, then per in-context example its context
/// and its question and answer, each block closed by a "===" line, then the test's context and question with the
/// answer left to the model; examples are the training-pool entries most similar to the test (question text-text plus
/// image image-image cosine); several prompts with disjoint example sets form an ensemble whose answer is the one
/// generated with the highest summed log-probability.
public struct PICa: Sendable {
    /// One training-pool or test entry: its context, question and (for the pool) answer. The published code gives an
    /// in-context example one of its image's ground-truth captions as context, the test its generated caption and tags.
    public struct Example: Sendable, Equatable {
        public var context: String
        public var question: String
        public var answer: String

        public init(context: String, question: String, answer: String = "") {
            (self.context, self.question, self.answer) = (context, question, answer)
        }

        /// The fields a few-shot template fills in.
        public var fields: [String: String] { ["context": context, "question": question, "answer": answer] }
    }

    public var header: String

    public static let defaultHeader = "Please answer the question according to the above context."

    public init(header: String = PICa.defaultHeader) {
        self.header = header.trimmingCharacters(in: .newlines)
    }

    /// The context of an image: its caption, then its object tags when there are any ("a dog on grass. dog, frisbee").
    public static func context(caption: String, tags: String) -> String {
        let sentence = caption.trimmingCharacters(in: .whitespaces)
        let trimmedTags = tags.trimmingCharacters(in: .whitespaces)
        return trimmedTags.isEmpty ? sentence : "\(sentence). \(trimmedTags)"
    }

    /// The prompt, byte for byte as the published code writes it (`FewShotPrompt.pica` with this header).
    public func prompt(examples: [Example], test: Example) throws -> String {
        var format = FewShotPrompt.pica
        format.header = header
        return try format.prompt(examples: examples.map(\.fields), query: test.fields)
    }

    /// The published code's answer clean-up (process_answer): "." and "," removed, lower case, and the words "a", "an",
    /// "the", "to" and empty ones (runs of spaces) dropped from the space-separated words. Scoring then normalises
    /// answers as the VQA evaluation does.
    public static func cleanAnswer(_ text: String) -> String {
        let kept = text.unicodeScalars.filter { $0 != "." && $0 != "," }
        let lowered = String(String.UnicodeScalarView(PythonText.lower(Array(kept))))
        let dropped: Set<Substring> = ["a", "an", "the", "to", ""]
        return lowered.split(separator: " ", omittingEmptySubsequences: false).filter { !dropped.contains($0) }.joined(separator: " ")
    }

    /// Pool indices best first by cos(question, pool question) + cos(image, pool image), ties by index;
    /// all embeddings unit length ([d], and [N, d] for the pool). As the published code computes it (float32
    /// matrix-vector products, then their sum), so that its feature files give its selection.
    public static func rankExamples(question: Tensor, image: Tensor, poolQuestions: Tensor, poolImages: Tensor) -> [Int] {
        rankExamples(similarities: [(question, poolQuestions, 1), (image, poolImages, 1)])
    }

    /// Pool indices best first by the weighted sum of each query embedding's dot products with its pool's rows
    /// ([d] against [N, d]), ties by index. With weights 1 the sum is the published one, bit for bit.
    public static func rankExamples(similarities: [(query: Tensor, pool: Tensor, weight: Float)]) -> [Int] {
        var total: [Float]?
        for (query, pool, weight) in similarities {
            let scores = matmul(query.reshaped([1, query.count]), pool, transposeB: true).scalars   // [1, N]
            total = total.map { zip($0, scores).map { $0 + weight * $1 } } ?? scores.map { weight * $0 }
        }
        return indicesByDescendingValue(total ?? [])
    }

    /// The answer of an ensemble of `prompts`: each completed greedily (at most 5 tokens, stopping at a newline or
    /// <|endoftext|>, as published), the answer kept whose tokens' summed log-probability is highest (the first on
    /// ties); answers are cleaned by `normalization` (the published code's clean-up by default).
    public static func answer(prompts: [String], backend: CompletionBackend, maxTokens: Int = 5,
                              normalization: AnswerNormalization = .pica) throws -> (answer: String, candidates: [(answer: String, logprob: Double)]) {
        var candidates: [(answer: String, logprob: Double)] = []
        for prompt in prompts {
            let completion = try backend.complete(CompletionRequest(prompt: prompt, maxTokens: maxTokens, temperature: 0, stop: ["\n", "<|endoftext|>"], logprobs: true))[0]
            // Answers are ranked by their tokens' log-probabilities: a server that sends none would rank them on nothing.
            guard completion.text.isEmpty || !completion.tokenLogprobs.isEmpty else {
                throw MethodError.invalidInput("PICa: the language model \(backend.name) returned no log-probabilities (logprobs), by which PICa ranks its answers")
            }
            // Up to the first newline: a server that ignores the stop list must not change the answer.
            let line = completion.text.split(separator: "\n", maxSplits: 1, omittingEmptySubsequences: false).first.map(String.init) ?? ""
            candidates.append((normalization.apply(line), completion.totalLogprob))
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
