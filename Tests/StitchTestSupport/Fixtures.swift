import Foundation
import StitchModelIO
import StitchTensor

/// Paths the tests share: the committed fixtures and ../shared beside the repository.
public enum Fixtures {
    /// The repository root, found from this source file's location.
    public static let repositoryRoot: URL = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

    /// Tests/Fixtures: outputs of Tests/Fixtures/make_fixtures.py.
    public static let folder = repositoryRoot.appendingPathComponent("Tests/Fixtures")

    public static func url(_ relative: String) -> URL { folder.appendingPathComponent(relative) }

    /// ../shared relative to the repository root, where real weights and images live.
    public static let shared = repositoryRoot.deletingLastPathComponent().appendingPathComponent("shared")

    /// A path under ../shared, or nil (with a clear message) when it is absent.
    public static func sharedPath(_ relative: String) -> URL? {
        let url = shared.appendingPathComponent(relative)
        if FileManager.default.fileExists(atPath: url.path) { return url }
        print("note: \(url.path) is absent; tests that need the real files in ../shared are skipped")
        return nil
    }

    /// A copy of a tiny fixture model folder (tiny-gpt2, tiny-clip) inside `folder`, with the real
    /// tokenizer files from ../shared linked in under their Hugging Face names.
    public static func modelWithTokenizer(_ fixture: String, in folder: URL) throws -> URL {
        let links = fixture.contains("gpt2")
            ? ["vocab.json": "gpt2-vocab.json", "merges.txt": "gpt2-merges.txt"]
            : ["bpe_simple_vocab_16e6.txt.gz": "bpe_simple_vocab_16e6.txt.gz"]
        let target = folder.appendingPathComponent(fixture)
        try FileManager.default.copyItem(at: url(fixture), to: target)
        for (name, source) in links {
            try FileManager.default.createSymbolicLink(at: target.appendingPathComponent(name),
                                                       withDestinationURL: shared.appendingPathComponent("models/tokenizers/\(source)"))
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

public func maxAbsoluteDifference(_ a: [Float], _ b: [Float]) -> Float {
    precondition(a.count == b.count, "compared arrays differ in length: \(a.count) vs \(b.count)")
    var worst: Float = 0
    for (x, y) in zip(a, b) { worst = max(worst, abs(x - y)) }
    return worst
}
