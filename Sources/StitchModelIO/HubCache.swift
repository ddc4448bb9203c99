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

    /// Settings from the environment: HF_HUB_CACHE, else HF_HOME/hub, else
    /// ~/.cache/huggingface/hub; HF_HUB_OFFLINE; HF_ENDPOINT; HF_TOKEN.
    public static func fromEnvironment(_ environment: [String: String] = ProcessInfo.processInfo.environment) -> ModelLocator {
        let cache: URL
        if let hubCache = environment["HF_HUB_CACHE"], !hubCache.isEmpty {
            cache = URL(fileURLWithPath: hubCache)
        } else if let home = environment["HF_HOME"], !home.isEmpty {
            cache = URL(fileURLWithPath: home).appendingPathComponent("hub")
        } else {
            let user = environment["HOME"] ?? NSHomeDirectory()
            cache = URL(fileURLWithPath: user).appendingPathComponent(".cache/huggingface/hub")
        }
        let offline = ["1", "true", "yes", "on"].contains((environment["HF_HUB_OFFLINE"] ?? "").lowercased())
        let endpoint = environment["HF_ENDPOINT"].flatMap { $0.isEmpty ? nil : $0 } ?? "https://huggingface.co"
        return ModelLocator(cacheRoot: cache, offline: offline,
                            downloader: HubDownloader(endpoint: endpoint, token: environment["HF_TOKEN"]))
    }

    public init(cacheRoot: URL, offline: Bool, downloader: HubDownloader) {
        self.cacheRoot = cacheRoot
        self.offline = offline
        self.downloader = downloader
    }

    /// The folder holding `files` for `spec`: the path itself when it is a
    /// directory, else the cached snapshot of hub id `spec`, downloading what is missing.
    public func resolve(_ spec: String, files: [String], revision: String = "main") throws(ModelIOError) -> URL {
        var isDirectory: ObjCBool = false
        if FileManager.default.fileExists(atPath: spec, isDirectory: &isDirectory) {
            guard isDirectory.boolValue else { throw .modelNotFound(spec: spec, detail: "is a file; give the model's folder") }
            return URL(fileURLWithPath: spec)
        }
        guard Self.isHubID(spec) else {
            throw .modelNotFound(spec: spec, detail: "no such folder, and not a hub id of the form org/name")
        }
        let repo = repoFolder(spec)
        if let commit = cachedCommit(repo: repo, revision: revision) {
            let snapshot = repo.appendingPathComponent("snapshots/\(commit)")
            let missing = files.filter { !FileManager.default.fileExists(atPath: snapshot.appendingPathComponent($0).path) }
            if missing.isEmpty { return snapshot }
            if offline { throw .offline(repo: spec, missing: missing) }
        } else if offline {
            throw .offline(repo: spec, missing: files)
        }
        var snapshot: URL?
        for file in files {
            snapshot = try downloader.fetch(repo: spec, file: file, revision: revision, into: repo)
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
