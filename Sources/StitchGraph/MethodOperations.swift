import Foundation
import StitchImaging
import StitchMethods
import StitchModelIO
import StitchModels
import StitchTensor
import StitchTokenizers

/// The building blocks of PICa and Socratic captioning as graph operations, each useful on its own;
/// Examples/pica_okvqa.yaml and Examples/socratic_caption.yaml put them together as published.
extension OperationRegistry {
    static let methodOperations: [Operation] = [
        Operation("clip_embed_texts", "Unit-length embeddings of texts by a scorer, one row each ([texts, d] as a list of lists).",
                  arguments: [.component("clip", kind: "scorer"), .value("texts", .texts)], output: .json) { input in
            let texts = try input.texts("texts")
            guard !texts.isEmpty else { return .array([]) }
            return Value(try input.component("clip", as: (any ImageTextScorer).self).textEmbeddings(texts))
        },
        Operation("clip_embed_images", "Unit-length embeddings of images (paths) by a scorer, one row each; an empty path gives a row of zeros (no image similarity).",
                  arguments: [.component("clip", kind: "scorer"), .value("images", .texts)], output: .json) { input in
            let paths = try input.texts("images")
            let present = paths.filter { !$0.isEmpty }
            let clip = try input.component("clip", as: (any ImageTextScorer).self)
            guard !paths.isEmpty else { return .array([]) }
            let embedded = present.isEmpty ? nil : try clip.imageEmbeddings(present.map { try RGBImage(contentsOf: $0) })   // [present, d]
            let width = try embedded?.shape[1] ?? clip.textEmbeddings([""]).shape[1]
            var next = 0
            return .array(paths.map { path in
                guard !path.isEmpty, let embedded else { return .array(Array(repeating: .number(0), count: width)) }
                defer { next += 1 }
                return Value(embedded.row(next))
            })
        },
        Operation("pluck", "One field of every object in a list, as texts (`default` where an object lacks it).",
                  arguments: [.value("values", .json), .value("field", .text), .value("default", .text, optional: true)], output: .texts) { input in
            guard case .array(let items) = input.arguments["values"] ?? .null else { throw GraphError.operationFailed(node: input.node, detail: "'values' must be a list") }
            let field = try input.text("field")
            return .array(try items.enumerated().map { index, item in
                guard let text = item[field]?.string ?? input.arguments["default"]?.string else {
                    throw GraphError.operationFailed(node: input.node, detail: "item \(index) has no text field '\(field)' (and there is no default)")
                }
                return .string(text)
            })
        },
        Operation("select_examples", "The `count` pool entries most similar to the query, best first: question_weight x (question . pool_questions) "
                  + "+ image_weight x (image . pool_images) over unit embeddings, ties by pool order (PICa's selection).",
                  arguments: [.value("pool", .json), .value("question", .json), .value("pool_questions", .json),
                              .value("image", .json, default: .null), .value("pool_images", .json, default: .null),
                              .value("question_weight", .number, default: .number(1)), .value("image_weight", .number, default: .number(1)),
                              .value("count", .number)], output: .json) { input in
            guard case .array(let pool) = input.arguments["pool"] ?? .null else { throw GraphError.operationFailed(node: input.node, detail: "'pool' must be a list") }
            let count = try input.integer("count")
            guard !pool.isEmpty, count > 0 else { return .array([]) }
            var similarities = [(query: try vector(input, "question"), pool: try matrix(input, "pool_questions", rows: pool.count),
                                 weight: Float(try input.number("question_weight")))]
            if input.arguments["image"] != .null || input.arguments["pool_images"] != .null {
                similarities.append((try vector(input, "image"), try matrix(input, "pool_images", rows: pool.count), Float(try input.number("image_weight"))))
            }
            for (query, rows, _) in similarities where query.count != rows.shape[1] {
                throw GraphError.operationFailed(node: input.node, detail: "a query embedding of width \(query.count) against pool embeddings of width \(rows.shape[1])")
            }
            return .array(PICa.rankExamples(similarities: similarities).prefix(count).map { pool[$0] })
        },
        Operation("few_shot_prompt", "Prompts of a header, in-context example blocks and the query's block (templates filled from each object's fields); "
                  + "with `shots`, one prompt per group of that many examples (PICa's ensemble). Defaults: PICa's published format.",
                  arguments: [.value("examples", .json), .value("query", .json), .value("shots", .number, default: .number(0)),
                              .value("header", .text, default: .string(FewShotPrompt.pica.header)),
                              .value("separator", .text, default: .string(FewShotPrompt.pica.separator)),
                              .value("example_template", .text, default: .string(FewShotPrompt.pica.exampleTemplate)),
                              .value("query_template", .text, default: .string(FewShotPrompt.pica.queryTemplate))],
                  output: .record(["prompt": .text, "prompts": .texts])) { input in
            guard case .array(let examples) = input.arguments["examples"] ?? .null else {
                throw GraphError.operationFailed(node: input.node, detail: "'examples' must be a list of objects")
            }
            let format = FewShotPrompt(header: try input.text("header"), separator: try input.text("separator"),
                                       exampleTemplate: try input.text("example_template"), queryTemplate: try input.text("query_template"))
            let prompts = try format.prompts(examples: try examples.map { try fields($0, input) }, query: try fields(input.arguments["query"] ?? .null, input),
                                             shots: max(0, try input.integer("shots")))
            return .object(["prompt": .string(prompts[0]), "prompts": .array(prompts.map(Value.string))])
        },
        Operation("ensemble", "Each prompt completed greedily (stopping at a newline), the answer with the highest summed log-probability kept (the first on ties); "
                  + "answers normalised by `normalize`: pica (the published clean-up), vqa (the VQA evaluator's) or none.",
                  arguments: [.component("lm", kind: "completion"), .value("prompts", .texts), .value("max_tokens", .number, default: .number(5)),
                              .value("normalize", .text, default: .string(AnswerNormalization.pica.rawValue))],
                  output: .record(["answer": .text, "candidates": .json])) { input in
            let result = try PICa.answer(prompts: try input.texts("prompts"), backend: try input.component("lm", as: CompletionComponent.self).backend,
                                         maxTokens: try input.integer("max_tokens"), normalization: try normalization(input))
            return .object(["answer": .string(result.answer),
                            "candidates": .array(result.candidates.map { .object(["answer": .string($0.answer), "logprob": .number($0.logprob)]) })])
        },
        Operation("normalize_answer", "An answer normalised by `style`: vqa (the VQA evaluator's), pica (the published PICa clean-up) or none.",
                  arguments: [.value("answer", .text), .value("style", .text, default: .string(AnswerNormalization.vqa.rawValue))], output: .text) { input in
            .string(try normalization(input, argument: "style").apply(try input.text("answer")))
        },
        Operation("image_context", "PICa's context of an image: its caption, then its tags after \". \" when there are any.",
                  arguments: [.value("caption", .text), .value("tags", .text, default: .string(""))], output: .text) { input in
            .string(PICa.context(caption: try input.text("caption"), tags: try input.text("tags")))
        },
        Operation("clip_top_k", "Zero-shot: the k labels whose texts (`template` with {} replaced by the label) a scorer finds closest to the image, "
                  + "best first, by cosine similarity (ties by label order); the labels' embeddings are made once per run.",
                  arguments: [.component("clip", kind: "scorer"), .value("image", .image), .value("labels", .texts),
                              .value("template", .text, default: .string("{}")), .value("k", .number, default: .number(1))],
                  output: .record(["best": .text, "labels": .texts, "scores": .json])) { input in
            let clip = try input.component("clip", as: (any ImageTextScorer).self), memo = try input.memo("clip")
            let labels = try input.texts("labels"), template = try input.text("template")
            guard !labels.isEmpty else { throw GraphError.operationFailed(node: input.node, detail: "no labels to choose from") }
            let texts = labels.map { template.replacingOccurrences(of: "{}", with: $0) }
            let labelEmbeddings = try memo.value("texts:" + Value.array(texts.map(Value.string)).canonicalJSON) { try clip.textEmbeddings(texts) }
            let path = try input.text("image")
            guard let bytes = FileManager.default.contents(atPath: path) else { throw GraphError.operationFailed(node: input.node, detail: "cannot read image \(path)") }
            let image = try memo.value("image:" + SHA256.hex(bytes)) { try clip.imageEmbeddings([RGBImage(contentsOf: path)]).row(0) }
            // Cosine similarities (unit embeddings), ranked best first with ties in label order, as the notebook ranks.
            let scores = matmul(labelEmbeddings, image.reshaped([image.count, 1])).scalars   // [labels, 1]
            let ranked = Array(indicesByDescendingValue(scores).prefix(max(1, try input.integer("k"))))
            return .object(["best": .string(labels[ranked[0]]), "labels": .array(ranked.map { .string(labels[$0]) }),
                            "scores": .array(ranked.map { .number(Double(scores[$0])) })])
        },
        Operation("choose", "`then` when `value` equals `equals`, else `else`.",
                  arguments: [.value("value", .json), .value("equals", .json), .value("then", .json), .value("else", .json)], output: .json) { input in
            input.arguments["value"] == input.arguments["equals"] ? input.arguments["then"]! : input.arguments["else"]!
        },
        Operation("strip", "Each text without the whitespace around it (as Python's str.strip).",
                  arguments: [.value("texts", .texts)], output: .texts) { input in
            .array(try input.texts("texts").map { .string(String(PythonText.strip($0[...]))) })
        },
    ]

    /// The argument `name` as an embedding [d].
    static func vector(_ input: OperationInput, _ name: String) throws -> Tensor {
        guard case .array(let items) = input.arguments[name] ?? .null, !items.isEmpty else {
            throw GraphError.operationFailed(node: input.node, detail: "'\(name)' must be an embedding: a list of numbers")
        }
        return Tensor(shape: [items.count], scalars: try items.map { item in
            guard let number = item.number else { throw GraphError.operationFailed(node: input.node, detail: "'\(name)' holds \(item.canonicalJSON), not a number") }
            return Float(number)
        })
    }

    /// The argument `name` as `rows` embeddings [rows, d] of equal width.
    static func matrix(_ input: OperationInput, _ name: String, rows: Int) throws -> Tensor {
        guard case .array(let items) = input.arguments[name] ?? .null, items.count == rows else {
            throw GraphError.operationFailed(node: input.node, detail: "'\(name)' must be a list of \(rows) embeddings, one per pool entry")
        }
        var scalars: [Float] = []
        var width: Int?
        for (index, item) in items.enumerated() {
            guard case .array(let numbers) = item, width == nil || numbers.count == width else {
                throw GraphError.operationFailed(node: input.node, detail: "'\(name)' row \(index) is not an embedding of width \(width ?? 0)")
            }
            width = numbers.count
            for number in numbers {
                guard let value = number.number else { throw GraphError.operationFailed(node: input.node, detail: "'\(name)' row \(index) holds a non-number") }
                scalars.append(Float(value))
            }
        }
        return Tensor(shape: [rows, width ?? 0], scalars: scalars)
    }

    /// The text fields of an example or query object, for a template.
    static func fields(_ value: Value, _ input: OperationInput) throws -> [String: String] {
        guard case .object(let object) = value else { throw GraphError.operationFailed(node: input.node, detail: "an example or query must be an object, got \(value.canonicalJSON)") }
        return object.compactMapValues { $0.string ?? ($0 == .null ? nil : $0.canonicalJSON) }
    }

    static func normalization(_ input: OperationInput, argument: String = "normalize") throws -> AnswerNormalization {
        let name = try input.text(argument)
        guard let style = AnswerNormalization(rawValue: name) else {
            throw GraphError.operationFailed(node: input.node, detail: "unknown '\(argument)' \(name) (\(AnswerNormalization.allCases.map(\.rawValue).joined(separator: ", ")))")
        }
        return style
    }
}
