import Foundation
import StitchTestSupport
import XCTest
@testable import StitchModelIO

/// Repositories shaped like the published ones, on a loopback hub: the repository is listed first, the
/// weights are whichever layout it has, optional tokenizer files come along when it has them, and
/// revisions, tokens and caches behave as the Hugging Face libraries' do.
final class FileDiscoveryTests: XCTestCase {
    var server: LocalHubServer!
    var cache: URL!
    let gpt2Files = ModelFiles(required: ["config.json"])

    override func setUpWithError() throws {
        server = try LocalHubServer()
        cache = try Fixtures.temporaryFolder()
    }

    override func tearDownWithError() throws {
        server.stop()
        try? FileManager.default.removeItem(at: cache)
    }

    func locator(offline: Bool = false, token: String? = nil) -> ModelLocator {
        var downloader = HubDownloader(endpoint: server.baseURL, token: token)
        downloader.initialBackoff = 0.01
        downloader.showProgress = false
        return ModelLocator(cacheRoot: cache, offline: offline, downloader: downloader)
    }

    /// Like cambridgeltl/magic_mscoco: only pytorch_model.bin (redirected to storage on another host), with added_tokens.json.
    func testPyTorchOnlyRepositoryWithOptionalTokenizerFiles() throws {
        try server.addFolder(Fixtures.url("checkpoints/tiny-magic"), repo: "org/magic")
        let snapshot = try locator(token: "hf_secret").resolveModel("org/magic", files: gpt2Files)
        XCTAssertEqual(snapshot.lastPathComponent, server.commit)
        let fetched = Set(try FileManager.default.contentsOfDirectory(atPath: snapshot.path))
        XCTAssertEqual(fetched, ["config.json", "pytorch_model.bin", "added_tokens.json", "special_tokens_map.json",
                                 "tokenizer_config.json", "generation_config.json"])
        XCTAssertEqual(try Data(contentsOf: snapshot.appendingPathComponent("pytorch_model.bin")),
                       try Data(contentsOf: Fixtures.url("checkpoints/tiny-magic/pytorch_model.bin")))
        XCTAssertNoThrow(try WeightStore(folder: snapshot))
        let requests = server.requests
        XCTAssertEqual(requests.first, "GET /api/models/org/magic/revision/main")
        XCTAssert(requests.contains("HEAD /org/magic/resolve/\(server.commit)/pytorch_model.bin"), "files come from the listed commit: \(requests)")
        XCTAssert(requests.contains { $0.hasPrefix("GET /cdn/") }, "\(requests)")
        // The token goes to the hub, never to the storage host the large file is redirected to.
        XCTAssert(server.authorized.contains("GET /api/models/org/magic/revision/main"), "\(server.authorized)")
        XCTAssertFalse(server.authorized.contains { $0.hasPrefix("GET /cdn/") }, "\(server.authorized)")
        let repo = cache.appendingPathComponent("models--org--magic")
        XCTAssertEqual(try String(contentsOf: repo.appendingPathComponent("refs/main"), encoding: .utf8), server.commit)

        // Complete in the cache: no more requests, online or offline.
        let before = server.requests.count
        XCTAssertEqual(try locator().resolveModel("org/magic", files: gpt2Files), snapshot)
        XCTAssertEqual(try locator(offline: true).resolveModel("org/magic", files: gpt2Files), snapshot)
        XCTAssertEqual(server.requests.count, before)
    }

    /// Like openai/clip-vit-base-patch32: .bin on main, safetensors only in refs/pr/15; both revisions cached side by side.
    func testRevisionsIncludingPullRequestRefs() throws {
        let config = try Data(contentsOf: Fixtures.url("tiny-clip/config.json"))
        let bin = try Data(contentsOf: Fixtures.url("checkpoints/tiny-clip/zip/pytorch_model.bin"))
        let safetensors = try Data(contentsOf: Fixtures.url("tiny-clip/model.safetensors"))
        server.add(repo: "org/clip", file: "config.json", data: config, etag: "c1", redirected: false)
        server.add(repo: "org/clip", file: "pytorch_model.bin", data: bin, etag: LocalHubServer.etag(of: bin, large: true), redirected: true)
        server.add(repo: "org/clip", file: "config.json", data: config, etag: "c1", redirected: false, revision: "refs/pr/15")
        server.add(repo: "org/clip", file: "model.safetensors", data: safetensors, etag: LocalHubServer.etag(of: safetensors, large: true), redirected: true, revision: "refs/pr/15")

        let main = try locator().resolveModel("org/clip", files: gpt2Files)
        XCTAssertEqual(try Checkpoint(folder: main).layout, .pytorch)
        let pull = try locator().at(revision: "refs/pr/15").resolveModel("org/clip", files: gpt2Files)
        XCTAssertEqual(try Checkpoint(folder: pull).layout, .safetensors)
        XCTAssertEqual(pull.lastPathComponent, LocalHubServer.commit(for: "refs/pr/15"))
        XCTAssert(server.requests.contains("GET /api/models/org/clip/revision/refs%2Fpr%2F15"), "\(server.requests)")
        XCTAssertEqual(try String(contentsOf: cache.appendingPathComponent("models--org--clip/refs/refs/pr/15"), encoding: .utf8), pull.lastPathComponent)
        // org/name@revision says the same; offline both revisions come from the cache.
        XCTAssertEqual(try locator(offline: true).resolveModel("org/clip@refs/pr/15", files: gpt2Files), pull)
        XCTAssertEqual(try locator(offline: true).resolveModel("org/clip", files: gpt2Files), main)
        XCTAssertEqual(try locator(offline: true).resolveModel("org/clip@\(main.lastPathComponent)", files: gpt2Files), main)

        XCTAssertThrowsError(try locator().resolveModel("org/clip@refs/pr/99", files: gpt2Files)) { error in
            XCTAssert("\(error)".contains("HTTP 404"), "\(error)")
        }
        for bad in ["org/clip@../../etc", "org/clip@", "org/clip@a//b", "org/clip@/abs"] {
            XCTAssertThrowsError(try locator().resolveModel(bad, files: gpt2Files), bad) { error in
                XCTAssert("\(error)".contains("not a branch, tag, commit or refs/pr/N"), "\(error)")
            }
        }
    }

    /// A sharded .bin repository: the index, then each shard it names.
    func testShardedRepositories() throws {
        try server.addFolder(Fixtures.url("checkpoints/tiny-gpt2/sharded"), repo: "org/sharded")
        let snapshot = try locator().resolveModel("org/sharded", files: gpt2Files)
        let checkpoint = try Checkpoint(folder: snapshot)
        XCTAssertEqual(checkpoint.layout, .pytorchShards)
        XCTAssertEqual(checkpoint.files, ["pytorch_model-00001-of-00002.bin", "pytorch_model-00002-of-00002.bin"])
        XCTAssertNoThrow(try WeightStore(folder: snapshot))
        XCTAssertEqual(checkpoint.identity, try Checkpoint(folder: Fixtures.url("checkpoints/tiny-gpt2/sharded")).identity
            .replacingOccurrences(of: "sharded[", with: "\(server.commit)["))

        // An index naming a shard outside the folder, or one the repository lacks, is refused.
        let index = #"{"weight_map": {"a": "../../../../etc/passwd"}}"#
        server.add(repo: "org/evil", file: "config.json", data: Data("{}".utf8), etag: "e1", redirected: false)
        server.add(repo: "org/evil", file: "pytorch_model.bin.index.json", data: Data(index.utf8), etag: "e2", redirected: false)
        XCTAssertThrowsError(try locator().resolveModel("org/evil", files: gpt2Files)) { error in
            XCTAssert("\(error)".contains("is not a file inside the model's folder"), "\(error)")
        }
    }

    func testMissingWeightsAndRequiredFilesAreNamed() throws {
        server.add(repo: "org/empty", file: "config.json", data: Data("{}".utf8), etag: "e1", redirected: false)
        server.add(repo: "org/empty", file: "tf_model.h5", data: Data("x".utf8), etag: "e3", redirected: false)
        XCTAssertThrowsError(try locator().resolveModel("org/empty", files: gpt2Files)) { error in
            XCTAssert("\(error)".contains("has no weights at revision main"), "\(error)")
        }
        XCTAssertThrowsError(try locator().resolveModel("org/empty", files: ModelFiles(required: ["config.json", "vocab.json"]))) { error in
            XCTAssert("\(error)".contains("has no vocab.json at revision main"), "\(error)")
        }
        XCTAssertThrowsError(try locator(offline: true).resolveModel("org/never", files: gpt2Files)) { error in
            XCTAssert("\(error)".contains("HF_HUB_OFFLINE"), "\(error)")
        }
    }

    /// A cache that huggingface_hub's snapshot_download filled (committed by make_fixtures.py, links into blobs/)
    /// is used as it is: no request at all, even online.
    func testSnapshotDownloadCacheIsReadWithoutRequests() throws {
        let copy = cache.appendingPathComponent("hub")
        try FileManager.default.copyItem(at: Fixtures.url("hub-cache"), to: copy)
        var locator = locator()
        locator.cacheRoot = copy
        let snapshot = try locator.resolveModel("stitch-fixtures/tiny-captioner", files: ModelFiles(required: ["config.json", "vocab.json", "merges.txt"]))
        XCTAssertEqual(snapshot.lastPathComponent, String(repeating: "f1c2", count: 10))
        XCTAssertEqual(try Checkpoint(folder: snapshot).layout, .pytorch)
        XCTAssertNoThrow(try WeightStore(folder: snapshot))
        XCTAssertEqual(server.requests, [])
    }

    func testTokenFromEnvironmentOrTheCLIFile() throws {
        let home = try Fixtures.temporaryFolder()
        defer { try? FileManager.default.removeItem(at: home) }
        try Data("hf_from_file\n".utf8).write(to: home.appendingPathComponent("token"))
        XCTAssertEqual(ModelLocator.fromEnvironment(["HF_HOME": home.path]).downloader.token, "hf_from_file")
        XCTAssertEqual(ModelLocator.fromEnvironment(["HF_HOME": home.path, "HF_TOKEN": "hf_env"]).downloader.token, "hf_env")
        XCTAssertEqual(ModelLocator.fromEnvironment(["HF_TOKEN_PATH": home.appendingPathComponent("token").path, "HOME": "/nonexistent"]).downloader.token,
                       "hf_from_file")
        XCTAssertNil(ModelLocator.fromEnvironment(["HOME": home.path]).downloader.token)
    }

    /// The identity changes with the weights' content and the config, not with where the folder is.
    func testCheckpointIdentity() throws {
        let folder = try Fixtures.temporaryFolder()
        defer { try? FileManager.default.removeItem(at: folder) }
        let a = folder.appendingPathComponent("model"), b = folder.appendingPathComponent("elsewhere/model")
        try FileManager.default.createDirectory(at: b.deletingLastPathComponent(), withIntermediateDirectories: true)
        try FileManager.default.copyItem(at: Fixtures.url("checkpoints/tiny-gpt2/zip"), to: a)
        try FileManager.default.copyItem(at: a, to: b)
        XCTAssertEqual(try Checkpoint(folder: a).identity, try Checkpoint(folder: b).identity)
        var weights = try Data(contentsOf: b.appendingPathComponent("pytorch_model.bin"))
        weights[weights.count - 100] ^= 0xFF
        try weights.write(to: b.appendingPathComponent("pytorch_model.bin"))
        XCTAssertNotEqual(try Checkpoint(folder: a).identity, try Checkpoint(folder: b).identity)
        let before = try Checkpoint(folder: a).identity
        try Data("{}".utf8).write(to: a.appendingPathComponent("added_tokens.json"))
        XCTAssertNotEqual(try Checkpoint(folder: a).identity, before)
    }
}
