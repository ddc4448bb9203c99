import Foundation

/// Finds models given as a local folder or a hub id ("org/name"), using the
/// standard Hugging Face cache layout so Python tools and Stitch share files:
///
///     <cache>/models--org--name/blobs/<etag>
///     <cache>/models--org--name/refs/<revision>            (holds a commit hash)
///     <cache>/models--org--name/snapshots/<commit>/<file>  (-> ../../blobs/<etag>)
public struct ModelLocator: Sendable {
    public var cacheRoot: URL
    public var offline: Bool
    public var downloader: HubDownloader
    /// The branch, tag, commit or refs/pr/N of hub ids that name none (`org/name@revision` does).
    public var revision = "main"

    /// Settings from the environment: HF_HUB_CACHE, else HF_HOME/hub, else
    /// ~/.cache/huggingface/hub; HF_HUB_OFFLINE; HF_ENDPOINT; HF_TOKEN, else the
    /// token file the Hugging Face CLI writes (HF_TOKEN_PATH, else HF_HOME/token).
    public static func fromEnvironment(_ environment: [String: String] = ProcessInfo.processInfo.environment) -> ModelLocator {
        func value(_ name: String) -> String? { environment[name].flatMap { $0.isEmpty ? nil : $0 } }
        let home = value("HF_HOME").map { URL(fileURLWithPath: $0) }
            ?? URL(fileURLWithPath: environment["HOME"] ?? NSHomeDirectory()).appendingPathComponent(".cache/huggingface")
        let cache = value("HF_HUB_CACHE").map { URL(fileURLWithPath: $0) } ?? home.appendingPathComponent("hub")
        let offline = ["1", "true", "yes", "on"].contains((environment["HF_HUB_OFFLINE"] ?? "").lowercased())
        let endpoint = value("HF_ENDPOINT") ?? "https://huggingface.co"
        let tokenFile = value("HF_TOKEN_PATH") ?? home.appendingPathComponent("token").path
        let token = value("HF_TOKEN") ?? (try? String(contentsOfFile: tokenFile, encoding: .utf8))?.trimmingCharacters(in: .whitespacesAndNewlines)
        return ModelLocator(cacheRoot: cache, offline: offline, downloader: HubDownloader(endpoint: endpoint, token: token))
    }

    public init(cacheRoot: URL, offline: Bool, downloader: HubDownloader) {
        self.cacheRoot = cacheRoot
        self.offline = offline
        self.downloader = downloader
    }

    /// This locator with `revision` for hub ids that name none; nil keeps the current one.
    public func at(revision: String?) -> ModelLocator {
        var copy = self
        if let revision { copy.revision = revision }
        return copy
    }

    /// The folder of model `spec` (a folder, `org/name` or `org/name@revision`) with the files `files` asks
    /// for. For a hub id the repository is listed at the revision first, so the weights are whichever
    /// `CheckpointLayout` the repository has (shards included) and the optional files are fetched when it
    /// has them; everything comes from one commit. A cached snapshot that holds the required files and
    /// complete weights is used without any request; offline, it must.
    public func resolveModel(_ spec: String, files: ModelFiles) throws(ModelIOError) -> URL {
        if let folder = try localFolder(spec) { return folder }
        let (id, revision) = try hubReference(spec)
        let repo = repoFolder(id)
        if let commit = cachedCommit(repo: repo, revision: revision) {
            let snapshot = repo.appendingPathComponent("snapshots/\(commit)")
            let missing = files.missing(in: snapshot)
            if missing.isEmpty { return snapshot }
            if offline { throw .offline(repo: id, missing: missing) }
        } else if offline {
            throw .offline(repo: id, missing: files.required + (files.weights ? ["weights"] : []))
        }
        let listing = try downloader.listFiles(repo: id, revision: revision)
        let available = Set(listing.files)
        let absent = files.required.filter { !available.contains($0) }
        guard absent.isEmpty else {
            throw .modelNotFound(spec: spec, detail: "the repository has no \(absent.joined(separator: ", ")) at revision \(revision)")
        }
        var wanted = files.required + files.optional.filter(available.contains)
        var layout: CheckpointLayout?
        if files.weights {
            layout = CheckpointLayout.choose(among: available)
            guard let layout else {
                throw .modelNotFound(spec: spec, detail: "the repository has no weights at revision \(revision) (looked for \(CheckpointLayout.allCases.map(\.file).joined(separator: ", ")))")
            }
            wanted.append(layout.file)
        }
        var snapshot = repo.appendingPathComponent("snapshots/\(listing.commit)")
        for file in wanted { snapshot = try downloader.fetch(repo: id, file: file, revision: listing.commit, into: repo) }
        if let layout, layout.isSharded {
            for shard in try CheckpointLayout.shardNames(indexFile: snapshot.appendingPathComponent(layout.file).path) {
                guard available.contains(shard) else {
                    throw .modelNotFound(spec: spec, detail: "\(layout.file) names shard \(shard), which the repository does not have")
                }
                snapshot = try downloader.fetch(repo: id, file: shard, revision: listing.commit, into: repo)
            }
        }
        if revision != listing.commit { try writeRef(repo: repo, revision: revision, commit: listing.commit) }
        return snapshot
    }

    /// `spec` itself when it is a folder on disk; nil when it is not there.
    private func localFolder(_ spec: String) throws(ModelIOError) -> URL? {
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: spec, isDirectory: &isDirectory) else { return nil }
        guard isDirectory.boolValue else { throw .modelNotFound(spec: spec, detail: "is a file; give the model's folder") }
        return URL(fileURLWithPath: spec)
    }

    /// The hub id and revision of `org/name[@revision]`, both checked, so neither can reach outside the cache.
    func hubReference(_ spec: String) throws(ModelIOError) -> (id: String, revision: String) {
        var id = spec, revision = self.revision
        if let at = spec.lastIndex(of: "@") {
            id = String(spec[..<at])
            revision = String(spec[spec.index(after: at)...])
        }
        guard Self.isHubID(id) else {
            throw .modelNotFound(spec: spec, detail: "no such folder, and not a hub id of the form org/name (or org/name@revision)")
        }
        guard Self.isRevision(revision) else {
            throw .modelNotFound(spec: spec, detail: "'\(revision)' is not a branch, tag, commit or refs/pr/N")
        }
        return (id, revision)
    }

    private func writeRef(repo: URL, revision: String, commit: String) throws(ModelIOError) {
        let ref = repo.appendingPathComponent("refs/\(revision)")
        try? FileManager.default.createDirectory(at: ref.deletingLastPathComponent(), withIntermediateDirectories: true)
        guard (try? Data(commit.utf8).write(to: ref, options: .atomic)) != nil else {
            throw .cannotOpen(file: ref.path, reason: "cannot write the revision's commit")
        }
    }

    /// The folder holding exactly `files` for `spec`: the path itself when it is a
    /// directory, else the cached snapshot of hub id `spec`, downloading what is missing.
    public func resolve(_ spec: String, files: [String]) throws(ModelIOError) -> URL {
        if let folder = try localFolder(spec) { return folder }
        let (id, revision) = try hubReference(spec)
        let repo = repoFolder(id)
        if let commit = cachedCommit(repo: repo, revision: revision) {
            let snapshot = repo.appendingPathComponent("snapshots/\(commit)")
            let missing = files.filter { !FileManager.default.fileExists(atPath: snapshot.appendingPathComponent($0).path) }
            if missing.isEmpty { return snapshot }
            if offline { throw .offline(repo: id, missing: missing) }
        } else if offline {
            throw .offline(repo: id, missing: files)
        }
        var snapshot: URL?
        for file in files {
            snapshot = try downloader.fetch(repo: id, file: file, revision: revision, into: repo)
        }
        guard let snapshot else { throw .modelNotFound(spec: spec, detail: "no files were requested") }
        return snapshot
    }

    /// The cache folder of hub repository `id`: models--org--name.
    public func repoFolder(_ id: String) -> URL {
        cacheRoot.appendingPathComponent("models--" + id.replacingOccurrences(of: "/", with: "--"))
    }

    func cachedCommit(repo: URL, revision: String) -> String? {
        if Self.isCommitHash(revision) { return revision }
        let ref = repo.appendingPathComponent("refs/\(revision)")
        guard let text = try? String(contentsOf: ref, encoding: .utf8) else { return nil }
        let commit = text.trimmingCharacters(in: .whitespacesAndNewlines)
        return commit.isEmpty ? nil : commit
    }

    /// A branch, tag, commit or refs/pr/N: path segments of safe characters, none "." or "..".
    static func isRevision(_ text: String) -> Bool {
        let parts = text.split(separator: "/", omittingEmptySubsequences: false)
        return !text.isEmpty && text.count <= 256 && parts.allSatisfy { part in
            !part.isEmpty && part != "." && part != ".." && part.allSatisfy { $0.isASCII && ($0.isLetter || $0.isNumber || "-_.+".contains($0)) }
        }
    }

    static func isCommitHash(_ text: String) -> Bool {
        text.count == 40 && text.allSatisfy(\.isHexDigit)
    }

    /// "name" or "org/name" made of the characters the hub allows.
    static func isHubID(_ spec: String) -> Bool {
        let parts = spec.split(separator: "/", omittingEmptySubsequences: false)
        guard (1...2).contains(parts.count) else { return false }
        return parts.allSatisfy { part in
            !part.isEmpty && part != "." && part != ".." && !part.hasPrefix("-")
                && part.allSatisfy { $0.isASCII && ($0.isLetter || $0.isNumber || "-_.".contains($0)) }
        }
    }
}

/// What a model type reads from its folder: files it cannot do without, files it reads when present
/// (fetched when the repository has them), and whether it needs weights (in any `CheckpointLayout`).
public struct ModelFiles: Sendable {
    public let required: [String]
    public let optional: [String]
    public let weights: Bool

    /// The tokenizer and processor files the Hugging Face libraries read when a repository has them.
    public static let tokenizerAndProcessorFiles = ["added_tokens.json", "special_tokens_map.json", "tokenizer_config.json",
                                                   "tokenizer.json", "preprocessor_config.json", "generation_config.json", "chat_template.jinja"]

    /// Config, weights and every tokenizer and processor file a model of any kind may have: what
    /// `stitch fetch` and `stitch convert` take when they do not know the model's kind.
    public static let wholeModel = ModelFiles(required: ["config.json"], optional: tokenizerAndProcessorFiles + [
        "vocab.json", "merges.txt", "vocab.txt", "spiece.model", "tokenizer.model", "bpe_simple_vocab_16e6.txt.gz",
        "modules.json", "sentence_bert_config.json", "config_sentence_transformers.json", "1_Pooling/config.json",
    ])

    /// Just config.json: enough to tell which model a repository holds.
    public static let configOnly = ModelFiles(required: ["config.json"], optional: [], weights: false)

    public init(required: [String], optional: [String] = ModelFiles.tokenizerAndProcessorFiles, weights: Bool = true) {
        self.required = required
        self.optional = optional.filter { !required.contains($0) }
        self.weights = weights
    }

    /// What `folder` lacks: required files, and the weights' file or shards ("weights" when there are none).
    func missing(in folder: URL) -> [String] {
        let exists = { (name: String) in FileManager.default.fileExists(atPath: folder.appendingPathComponent(name).path) }
        var missing = required.filter { !exists($0) }
        if weights {
            if let checkpoint = try? Checkpoint(folder: folder) {
                missing += checkpoint.files.filter { !exists($0) }
            } else {
                missing.append("weights")
            }
        }
        return missing
    }
}
