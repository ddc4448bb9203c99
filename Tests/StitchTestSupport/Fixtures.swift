import Foundation
import StitchModelIO
import StitchTensor
import XCTest

/// Paths the tests share: the committed fixtures (real tokenizer files, photos and YOLOX-Nano among them)
/// and the real weights Scripts/fetch-test-models fetches.
public enum Fixtures {
    /// The repository root, found from this source file's location.
    public static let repositoryRoot: URL = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

    /// The option that lets the Examples/ graphs read their prompts from the repository's Prompts/ folder.
    public static let allowPrompts = ["--allow-path", repositoryRoot.appendingPathComponent("Prompts").path]

    /// Tests/Fixtures: outputs of Tests/Fixtures/make_fixtures.py.
    public static let folder = repositoryRoot.appendingPathComponent("Tests/Fixtures")

    public static func url(_ relative: String) -> URL { folder.appendingPathComponent(relative) }

    /// A real photo under Tests/Fixtures/photos (public domain or CC0; see its LICENSES.md).
    public static func photo(_ name: String) -> URL { url("photos/\(name)") }

    /// Real tokenizer files (GPT-2's vocab.json / merges.txt, CLIP's BPE file) under Tests/Fixtures/tokenizers.
    public static func tokenizerFile(_ name: String) -> URL { url("tokenizers/\(name)") }

    /// The real YOLOX-Nano (COCO) ONNX file with its labels (Apache-2.0).
    public static let yolox = url("yolox-nano-coco")

    /// Where Scripts/fetch-test-models puts the real weights too large to commit (MiniLM, EfficientNet-Lite0).
    public static let testModels: URL = {
        let environment = ProcessInfo.processInfo.environment
        if let folder = environment["STITCH_TEST_MODELS"], !folder.isEmpty { return URL(fileURLWithPath: folder) }
        let cache = environment["XDG_CACHE_HOME"].flatMap { $0.isEmpty ? nil : $0 } ?? NSHomeDirectory() + "/.cache"
        return URL(fileURLWithPath: cache).appendingPathComponent("stitch/test-models")
    }()

    /// A real model folder of `testModels`; its absence fails the test (it never skips) with what to run.
    public static func realModel(_ name: String) throws -> URL {
        let folder = testModels.appendingPathComponent(name)
        guard FileManager.default.fileExists(atPath: folder.appendingPathComponent("config.json").path) else {
            throw MissingTestModel(folder: folder)
        }
        return folder
    }

    public struct MissingTestModel: Error, CustomStringConvertible {
        let folder: URL
        public var description: String { "\(folder.path) is missing: run Scripts/fetch-test-models (the README's test command does)" }
    }

    /// A copy of a tiny fixture model folder (tiny-gpt2, tiny-clip, tiny-siglip) inside `folder`, with the real
    /// tokenizer files linked in under their Hugging Face names.
    public static func modelWithTokenizer(_ fixture: String, in folder: URL) throws -> URL {
        let links = fixture.contains("gpt2") ? ["vocab.json": tokenizerFile("gpt2-vocab.json"), "merges.txt": tokenizerFile("gpt2-merges.txt")]
            : fixture.contains("siglip") ? ["spiece.model": url("sentencepiece/siglip.model")]
            : ["bpe_simple_vocab_16e6.txt.gz": tokenizerFile("bpe_simple_vocab_16e6.txt.gz")]
        let target = folder.appendingPathComponent(fixture)
        try FileManager.default.copyItem(at: url(fixture), to: target)
        for (name, source) in links {
            try FileManager.default.createSymbolicLink(at: target.appendingPathComponent(name), withDestinationURL: source)
        }
        return target
    }

    /// All tensors of a committed fixture safetensors file.
    public static func tensors(_ relative: String) throws -> [String: Tensor] {
        let file = try SafetensorsFile(path: url(relative).path)
        var out: [String: Tensor] = [:]
        for name in file.tensors.keys { out[name] = try file.tensor(name) }
        return out
    }

    public static func json(_ relative: String) throws -> Any {
        try JSONSerialization.jsonObject(with: Data(contentsOf: url(relative)))
    }

    /// A fresh temporary folder, removed by the caller when done.
    public static func temporaryFolder() throws -> URL {
        let url = FileManager.default.temporaryDirectory.appendingPathComponent("stitch-test-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
        return url
    }
}

/// max |a - b| / max(1, |b|) over all elements: relative error with an absolute floor near zero.
public func maxRelativeDifference(_ a: [Float], _ b: [Float]) -> Float {
    precondition(a.count == b.count, "compared arrays differ in length: \(a.count) vs \(b.count)")
    var worst: Float = 0
    for (x, y) in zip(a, b) { worst = max(worst, abs(x - y) / max(1, abs(y))) }
    return worst
}

/// The cosine of the angle between two vectors.
public func cosine(_ a: [Float], _ b: [Float]) -> Float {
    var (dot, aa, bb): (Float, Float, Float) = (0, 0, 0)
    for (x, y) in zip(a, b) { dot += x * y; aa += x * x; bb += y * y }
    return dot / (aa.squareRoot() * bb.squareRoot())
}

public func maxAbsoluteDifference(_ a: [Float], _ b: [Float]) -> Float {
    precondition(a.count == b.count, "compared arrays differ in length: \(a.count) vs \(b.count)")
    var worst: Float = 0
    for (x, y) in zip(a, b) { worst = max(worst, abs(x - y)) }
    return worst
}

/// Fails unless `got` has `want`'s shape and every element lies within `tolerance` of it; prints the largest difference.
public func assertClose(_ got: Tensor, _ want: Tensor, _ what: String, tolerance: Float = 1e-4, file: StaticString = #filePath, line: UInt = #line) {
    XCTAssertEqual(got.shape, want.shape, what, file: file, line: line)
    guard got.shape == want.shape else { return }
    let difference = maxAbsoluteDifference(got.scalars, want.scalars)
    print("\(what): max abs difference \(difference)")
    XCTAssertLessThanOrEqual(difference, tolerance, what, file: file, line: line)
}

/// Compares `produce(input)` with the expected value for every input, prints how many agree, and fails
/// with the first few mismatches and their inputs.
public func assertEveryInputMatches<T: Equatable>(_ name: String, inputs: [String], expected: [T], minimumCount: Int,
                                                  file: StaticString = #filePath, line: UInt = #line, _ produce: (String) -> T) {
    XCTAssertGreaterThanOrEqual(inputs.count, minimumCount, file: file, line: line)
    XCTAssertEqual(inputs.count, expected.count, file: file, line: line)
    var mismatches: [String] = []
    for (input, want) in zip(inputs, expected) {
        let got = produce(input)
        if got != want { mismatches.append("\(input.debugDescription): expected \(want) got \(got)") }
    }
    print("\(name): \(inputs.count - mismatches.count)/\(inputs.count) inputs give identical results")
    XCTAssert(mismatches.isEmpty, "\(name) differs on \(mismatches.count) inputs:\n" + mismatches.prefix(8).joined(separator: "\n"), file: file, line: line)
}
