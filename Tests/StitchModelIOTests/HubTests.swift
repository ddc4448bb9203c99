import Foundation
import StitchTestSupport
import XCTest
@testable import StitchModelIO

final class ModelLocatorTests: XCTestCase {
    func testCacheFolderFromEnvironment() {
        XCTAssertEqual(ModelLocator.fromEnvironment(["HF_HUB_CACHE": "/a", "HF_HOME": "/b", "HOME": "/c"]).cacheRoot.path, "/a")
        XCTAssertEqual(ModelLocator.fromEnvironment(["HF_HOME": "/b", "HOME": "/c"]).cacheRoot.path, "/b/hub")
        XCTAssertEqual(ModelLocator.fromEnvironment(["HOME": "/c"]).cacheRoot.path, "/c/.cache/huggingface/hub")
        XCTAssertTrue(ModelLocator.fromEnvironment(["HF_HUB_OFFLINE": "1"]).offline)
        XCTAssertFalse(ModelLocator.fromEnvironment(["HF_HUB_OFFLINE": "0"]).offline)
        XCTAssertEqual(ModelLocator.fromEnvironment(["HF_ENDPOINT": "http://mirror/"]).downloader.endpoint, "http://mirror")
        XCTAssertEqual(ModelLocator.fromEnvironment([:]).repoFolder("openai/clip-vit-base-patch32").lastPathComponent,
                       "models--openai--clip-vit-base-patch32")
    }

    func testFoldersCachedSnapshotsAndOfflineErrors() throws {
        let root = try Fixtures.temporaryFolder()
        defer { try? FileManager.default.removeItem(at: root) }
        let locator = ModelLocator(cacheRoot: root, offline: true, downloader: HubDownloader(endpoint: "http://127.0.0.1:9"))
        XCTAssertEqual(try locator.resolve(Fixtures.url("tiny-gpt2").path, files: ["config.json"]).path, Fixtures.url("tiny-gpt2").path)

        // A snapshot laid out by huggingface_hub: refs/main -> commit, snapshots/<commit>/<file>.
        let repo = locator.repoFolder("org/model")
        let commit = String(repeating: "ab", count: 20)
        try FileManager.default.createDirectory(at: repo.appendingPathComponent("refs"), withIntermediateDirectories: true)
        try FileManager.default.createDirectory(at: repo.appendingPathComponent("snapshots/\(commit)"), withIntermediateDirectories: true)
        try Data("\(commit)\n".utf8).write(to: repo.appendingPathComponent("refs/main"))
        try Data("{}".utf8).write(to: repo.appendingPathComponent("snapshots/\(commit)/config.json"))
        XCTAssertEqual(try locator.resolve("org/model", files: ["config.json"]).lastPathComponent, commit)

        XCTAssertThrowsError(try locator.resolve("org/model", files: ["config.json", "model.safetensors"])) { error in
            XCTAssertEqual(error as? ModelIOError, .offline(repo: "org/model", missing: ["model.safetensors"]))
            XCTAssert("\(error)".contains("HF_HUB_OFFLINE"))
        }
        XCTAssertThrowsError(try locator.resolve("org/other", files: ["config.json"])) { error in
            XCTAssertEqual(error as? ModelIOError, .offline(repo: "org/other", missing: ["config.json"]))
        }
        XCTAssertThrowsError(try locator.resolve("./no/such/folder/x", files: [])) { error in
            XCTAssert("\(error)".contains("no such folder"), "\(error)")
        }
        XCTAssertThrowsError(try locator.resolve(Fixtures.url("tiny-gpt2/config.json").path, files: [])) { error in
            XCTAssert("\(error)".contains("is a file"), "\(error)")
        }
    }
}

final class HubDownloaderTests: XCTestCase {
    var server: LocalHubServer!
    var cache: URL!
    let weights = try! Data(contentsOf: Fixtures.url("tiny-gpt2/model.safetensors"))
    let config = try! Data(contentsOf: Fixtures.url("tiny-gpt2/config.json"))
    lazy var blobTag = LocalHubServer.etag(of: weights, large: true)   // an LFS ETag: the content's SHA-256

    override func setUpWithError() throws {
        server = try LocalHubServer()
        cache = try Fixtures.temporaryFolder()
        server.add(repo: "org/tiny", file: "config.json", data: config, etag: "c0ffee", redirected: false)
        server.add(repo: "org/tiny", file: "model.safetensors", data: weights, etag: blobTag, redirected: true)
    }

    override func tearDownWithError() throws {
        server.stop()
        try? FileManager.default.removeItem(at: cache)
    }

    func locator(offline: Bool = false, attempts: Int = 4) -> ModelLocator {
        var downloader = HubDownloader(endpoint: server.baseURL)
        downloader.attempts = attempts
        downloader.initialBackoff = 0.01
        downloader.showProgress = false
        return ModelLocator(cacheRoot: cache, offline: offline, downloader: downloader)
    }

    /// Redirect to storage, a dropped connection mid-file, a resumed Range request,
    /// then the standard cache layout; a second resolve is served from the cache offline.
    func testDownloadsFollowRedirectsResumeAndFillTheCache() throws {
        server.dropFirstTransfer = true
        let snapshot = try locator().resolve("org/tiny", files: ["config.json", "model.safetensors"])
        XCTAssertEqual(snapshot.lastPathComponent, server.commit)
        XCTAssertEqual(try Data(contentsOf: snapshot.appendingPathComponent("model.safetensors")), weights)
        XCTAssertEqual(try Data(contentsOf: snapshot.appendingPathComponent("config.json")), config)

        let repo = cache.appendingPathComponent("models--org--tiny")
        XCTAssertEqual(try String(contentsOf: repo.appendingPathComponent("refs/main"), encoding: .utf8), server.commit)
        XCTAssertEqual(try FileManager.default.destinationOfSymbolicLink(atPath: snapshot.appendingPathComponent("model.safetensors").path),
                       "../../blobs/\(blobTag)")
        let blobs = try FileManager.default.contentsOfDirectory(atPath: repo.appendingPathComponent("blobs").path).sorted()
        XCTAssertEqual(blobs, [blobTag, "c0ffee"].sorted(), "no .incomplete file may be left behind")

        let requests = server.requests
        XCTAssert(requests.contains("HEAD /org/tiny/resolve/main/model.safetensors"), "\(requests)")
        XCTAssert(requests.contains("GET /cdn/\(blobTag) range=\(weights.count / 2)"), "the retry must resume: \(requests)")

        // Offline now works from the cache, and loads as a checkpoint.
        let again = try locator(offline: true).resolve("org/tiny", files: ["config.json", "model.safetensors"])
        XCTAssertEqual(again, snapshot)
        XCTAssertNoThrow(try WeightStore(folder: again))
    }

    /// A server that stops sending is given up on after the stall timeout and the transfer resumed.
    func testStalledTransferIsRetried() throws {
        server.stallFirstTransfer = 2.5
        var locator = locator()
        locator.downloader.stallTimeout = 1
        let snapshot = try locator.resolve("org/tiny", files: ["model.safetensors"])
        XCTAssertEqual(try Data(contentsOf: snapshot.appendingPathComponent("model.safetensors")), weights)
        XCTAssert(server.requests.contains("GET /cdn/\(blobTag) range=\(weights.count / 2)"), "\(server.requests)")
    }

    /// A partial file left by an earlier run is resumed when it is a prefix, restarted when it is longer than the file
    /// or when the server ignores Range and sends the whole file.
    func testLeftoverPartialFilesAreResumedOrReplaced() throws {
        let blobs = cache.appendingPathComponent("models--org--tiny/blobs")
        try FileManager.default.createDirectory(at: blobs, withIntermediateDirectories: true)
        let partial = blobs.appendingPathComponent(blobTag + ".incomplete")
        try weights.prefix(1000).write(to: partial)
        var snapshot = try locator().resolve("org/tiny", files: ["model.safetensors"])
        XCTAssertEqual(try Data(contentsOf: snapshot.appendingPathComponent("model.safetensors")), weights)
        XCTAssert(server.requests.contains("GET /cdn/\(blobTag) range=1000"), "\(server.requests)")

        try FileManager.default.removeItem(at: blobs.appendingPathComponent(blobTag))
        try Data(repeating: 0xAB, count: weights.count + 10).write(to: partial)
        snapshot = try locator().resolve("org/tiny", files: ["model.safetensors"])
        XCTAssertEqual(try Data(contentsOf: snapshot.appendingPathComponent("model.safetensors")), weights)
        XCTAssertFalse(FileManager.default.fileExists(atPath: partial.path))

        try FileManager.default.removeItem(at: blobs.appendingPathComponent(blobTag))
        try weights.prefix(1000).write(to: partial)
        server.ignoresRange = true
        snapshot = try locator(attempts: 1).resolve("org/tiny", files: ["model.safetensors"])
        XCTAssertEqual(try Data(contentsOf: snapshot.appendingPathComponent("model.safetensors")), weights)
        XCTAssert(server.requests.filter { $0 == "GET /cdn/\(blobTag) range=1000" }.count == 2, "\(server.requests)")
    }

    /// A body that does not hash to its LFS ETag (cut short without a length to tell, or corrupted) never lands in
    /// the cache; file names that leave the repository are refused; two fetches of one blob at once both succeed.
    func testBlobsAreVerifiedLockedAndKeptInsideTheCache() throws {
        var damaged = weights
        damaged[damaged.count / 2] ^= 0xFF
        let claimedTag = LocalHubServer.etag(of: weights + Data([0]), large: true)   // not the body's hash
        server.add(repo: "org/bad", file: "model.safetensors", data: damaged, etag: claimedTag, redirected: true)
        XCTAssertThrowsError(try locator(attempts: 2).resolve("org/bad", files: ["model.safetensors"])) { error in
            XCTAssert("\(error)".contains("SHA-256") && "\(error)".contains("is not its ETag"), "\(error)")
        }
        XCTAssertFalse(FileManager.default.fileExists(atPath: cache.appendingPathComponent("models--org--bad/blobs/\(claimedTag)").path))

        for file in ["../../escape.txt", "/etc/passwd", "a//b", "./x"] {
            XCTAssertThrowsError(try locator().resolve("org/tiny", files: [file]), file) { XCTAssert("\($0)".contains("is not a file name inside the repository"), "\($0)") }
        }
        XCTAssertFalse(FileManager.default.fileExists(atPath: cache.deletingLastPathComponent().appendingPathComponent("escape.txt").path))
        // None of these is an existing folder from any working directory (a clone named x made "../x" one).
        for spec in ["org/tiny@../../x", "org/tiny@refs/../../x", "../stitch-absent-folder", "org/tiny/../../x"] {
            XCTAssertThrowsError(try locator().resolve(spec, files: ["config.json"]), spec) { error in
                XCTAssert("\(error)".contains("is not a branch, tag") || "\(error)".contains("not a hub id"), "\(error)")
            }
        }
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: cache.path).filter { !$0.hasPrefix("models--") && $0 != ".locks" }, [])

        let group = DispatchGroup()
        let results = Results()
        let concurrentLocator = locator()
        for _ in 0..<3 {
            DispatchQueue.global().async(group: group) {
                results.add(Result { try concurrentLocator.resolve("org/tiny", files: ["config.json", "model.safetensors"]) })
            }
        }
        group.wait()
        XCTAssertEqual(results.all.compactMap { try? $0.get() }.count, 3, "\(results.all)")
        XCTAssertEqual(try Data(contentsOf: cache.appendingPathComponent("models--org--tiny/blobs/\(blobTag)")), weights)
    }

    final class Results: @unchecked Sendable {
        private let lock = NSLock()
        private var values: [Result<URL, Error>] = []
        func add(_ result: Result<URL, Error>) { lock.withLock { values.append(result) } }
        var all: [Result<URL, Error>] { lock.withLock { values } }
    }

    func testRetriesServerErrorsThenSucceeds() throws {
        server.failNext(2, path: "/org/tiny/resolve/main/config.json")
        let snapshot = try locator().resolve("org/tiny", files: ["config.json"])
        XCTAssertEqual(try Data(contentsOf: snapshot.appendingPathComponent("config.json")), config)
        XCTAssertEqual(server.requests.filter { $0 == "HEAD /org/tiny/resolve/main/config.json" }.count, 3)
    }

    func testClearErrorsForMissingFilesExhaustedRetriesAndUnreachableHosts() throws {
        XCTAssertThrowsError(try locator().resolve("org/tiny", files: ["nope.bin"])) { error in
            XCTAssertEqual("\(error)", "download of \(server.baseURL)/org/tiny/resolve/main/nope.bin failed: HTTP 404: no such repository, revision or file")
        }
        server.failNext(10, path: "/org/tiny/resolve/main/config.json")
        XCTAssertThrowsError(try locator(attempts: 3).resolve("org/tiny", files: ["config.json"])) { error in
            XCTAssert("\(error)".hasSuffix("HTTP 503 (after 3 attempts)"), "\(error)")
        }
        server.stop()
        XCTAssertThrowsError(try locator(attempts: 2).resolve("org/tiny", files: ["config.json"])) { error in
            XCTAssert("\(error)".contains("Couldn't connect") || "\(error)".contains("curl error 7"), "\(error)")
        }
        let files = (try? FileManager.default.subpathsOfDirectory(atPath: cache.path)) ?? []
        XCTAssertFalse(files.contains { $0.hasSuffix(".incomplete") || $0.contains("snapshots/") && $0.hasSuffix(".json") }, "\(files)")
    }
}
