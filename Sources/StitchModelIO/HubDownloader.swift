import Foundation

/// Downloads files from a Hugging Face-style hub into the cache layout with
/// libcurl: metadata from a HEAD on the resolve URL, then the body into
/// blobs/<etag>.incomplete (resumed with Range after a failure), renamed into
/// place only when complete, with retries and exponential backoff.
public struct HubDownloader: Sendable {
    public var endpoint: String
    public var token: String?
    public var attempts = 5
    public var initialBackoff: TimeInterval = 1
    /// A transfer slower than 1 byte/s for this long is treated as dropped.
    public var stallTimeout = 60
    public var connectTimeout = 30
    /// Draw a progress bar on stderr (when stderr is a terminal).
    public var showProgress = isatty(2) == 1

    public init(endpoint: String, token: String? = nil) {
        self.endpoint = endpoint.hasSuffix("/") ? String(endpoint.dropLast()) : endpoint
        self.token = token
    }

    /// Metadata the hub returns for a resolve URL.
    struct Remote {
        let commit: String
        let etag: String
        let size: Int?
    }

    /// A revision as one URL path segment, as the hub expects it ("refs/pr/15" -> "refs%2Fpr%2F15").
    static func pathSegment(_ revision: String) -> String {
        revision.addingPercentEncoding(withAllowedCharacters: CharacterSet.alphanumerics.union(CharacterSet(charactersIn: "-_.~"))) ?? revision
    }

    /// The commit a revision points to and the repository's files there (the hub's model-info endpoint).
    public func listFiles(repo: String, revision: String) throws(ModelIOError) -> (commit: String, files: [String]) {
        let url = "\(endpoint)/api/models/\(repo)/revision/\(Self.pathSegment(revision))"
        let body = try withRetries(url: url) { () throws(HTTPFailure) -> Data in
            let response = try request(url).perform()
            guard response.status == 200 else { throw Self.hubFailure(response.status) }
            return response.body
        }
        guard let object = try? JSONSerialization.jsonObject(with: body) as? [String: Any],
              let commit = object["sha"] as? String, ModelLocator.isCommitHash(commit),
              let siblings = object["siblings"] as? [[String: Any]] else {
            throw .download(url: url, detail: "the answer is not a model listing with a commit (sha) and files (siblings)")
        }
        return (commit, siblings.compactMap { $0["rfilename"] as? String })
    }

    /// Makes `file` of `repo` at `revision` present in the cache and returns the snapshot folder.
    func fetch(repo: String, file: String, revision: String, into repoFolder: URL) throws(ModelIOError) -> URL {
        let parts = file.split(separator: "/", omittingEmptySubsequences: false)
        guard !file.isEmpty, parts.allSatisfy({ !$0.isEmpty && $0 != "." && $0 != ".." }) else {
            throw .modelNotFound(spec: repo, detail: "'\(file)' is not a file name inside the repository")
        }
        let url = "\(endpoint)/\(repo)/resolve/\(Self.pathSegment(revision))/\(file)"
        let remote = try withRetries(url: url) { () throws(HTTPFailure) in try head(url) }
        let blobs = repoFolder.appendingPathComponent("blobs")
        let blob = blobs.appendingPathComponent(remote.etag)
        let snapshot = repoFolder.appendingPathComponent("snapshots/\(remote.commit)")
        let link = snapshot.appendingPathComponent(file)
        do {
            try FileManager.default.createDirectory(at: blobs, withIntermediateDirectories: true)
            try FileManager.default.createDirectory(at: link.deletingLastPathComponent(), withIntermediateDirectories: true)
        } catch {
            throw .download(url: url, detail: "cannot create cache folders under \(repoFolder.path): \(error.localizedDescription)")
        }
        if !FileManager.default.fileExists(atPath: blob.path) {
            // One process downloads a blob at a time; the others wait, then find it in place. The lock lives where
            // huggingface_hub keeps its own: <cache>/.locks/models--org--name/<etag>.lock.
            let locks = repoFolder.deletingLastPathComponent().appendingPathComponent(".locks/\(repoFolder.lastPathComponent)")
            try? FileManager.default.createDirectory(at: locks, withIntermediateDirectories: true)
            let lockPath = locks.appendingPathComponent(remote.etag + ".lock").path
            let lock = open(lockPath, O_CREAT | O_RDWR, 0o644)
            guard lock >= 0, flock(lock, LOCK_EX) == 0 else {
                throw .download(url: url, detail: "cannot lock \(lockPath): \(String(cString: strerror(errno)))")
            }
            defer { close(lock) }
            if !FileManager.default.fileExists(atPath: blob.path) {
                let partial = blobs.appendingPathComponent(remote.etag + ".incomplete")
                try withRetries(url: url) { () throws(HTTPFailure) in
                    try get(url, to: partial.path, expectedSize: remote.size, label: file)
                    try Self.verify(partial.path, etag: remote.etag)
                }
                guard rename(partial.path, blob.path) == 0 else {
                    throw .download(url: url, detail: "cannot move the finished download into \(blob.path)")
                }
            }
        }
        // Relative link, as huggingface_hub makes it: snapshots/<commit>/<file> -> ../../blobs/<etag>
        let depth = file.split(separator: "/").count + 1
        let target = String(repeating: "../", count: depth) + "blobs/" + remote.etag
        // Made under a private name, then renamed over: concurrent fetches of one file each replace the link whole.
        let pendingLink = link.path + ".\(getpid()).\(UInt64.random(in: 0...UInt64.max)).link"
        guard symlink(target, pendingLink) == 0, rename(pendingLink, link.path) == 0 else {
            let reason = String(cString: strerror(errno))
            unlink(pendingLink)
            throw .download(url: url, detail: "cannot link \(link.path): \(reason)")
        }
        if revision != remote.commit {
            let ref = repoFolder.appendingPathComponent("refs/\(revision)")
            try? FileManager.default.createDirectory(at: ref.deletingLastPathComponent(), withIntermediateDirectories: true)
            guard (try? Data(remote.commit.utf8).write(to: ref, options: .atomic)) != nil else {
                throw .download(url: url, detail: "cannot write \(ref.path)")
            }
        }
        return snapshot
    }

    private func withRetries<T>(url: String, _ attempt: () throws(HTTPFailure) -> T) throws(ModelIOError) -> T {
        do {
            return try RetryPolicy(attempts: attempts, initialBackoff: initialBackoff).run(onRetry: { failure, delay in
                if showProgress { FileHandle.standardError.write(Data("\n\(url): \(failure.detail); retrying in \(delay)s\n".utf8)) }
            }, attempt)
        } catch {
            throw .download(url: url, detail: error.detail)
        }
    }

    /// A request to the hub: the token as a bearer token (libcurl does not send it on to another host a
    /// redirect leads to), and the stall timeout.
    private func request(_ url: String, method: HTTPClientRequest.Method = .get) -> HTTPClientRequest {
        var request = HTTPClientRequest(url, method: method, headers: token.map { $0.isEmpty ? [] : ["Authorization: Bearer \($0)"] } ?? [])
        request.connectTimeout = connectTimeout
        request.stallTimeout = stallTimeout
        return request
    }

    /// One HEAD request that does not follow redirects: the hub answers with the commit and the blob's
    /// ETag before redirecting large files to storage.
    private func head(_ url: String) throws(HTTPFailure) -> Remote {
        var head = request(url, method: .head)
        head.followRedirects = false
        let response = try head.perform()
        guard (200..<400).contains(response.status) else { throw Self.hubFailure(response.status) }
        let headers = response.headers
        guard let commit = headers["x-repo-commit"], ModelLocator.isCommitHash(commit) else {
            throw HTTPFailure("the server sent no X-Repo-Commit header; is \(endpoint) a Hugging Face hub?", retryable: false)
        }
        guard let rawTag = headers["x-linked-etag"] ?? headers["etag"] else {
            throw HTTPFailure("the server sent no ETag", retryable: false)
        }
        let etag = rawTag.replacingOccurrences(of: "W/", with: "").trimmingCharacters(in: CharacterSet(charactersIn: "\""))
        guard !etag.isEmpty, etag.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "-") }) else {
            throw HTTPFailure("the server sent an unusable ETag \(rawTag)", retryable: false)
        }
        let size = (headers["x-linked-size"] ?? (response.status == 200 ? headers["content-length"] : nil)).flatMap { Int($0) }
        return Remote(commit: commit, etag: etag, size: size)
    }

    /// GET following redirects, appending to `path` from its current length.
    private func get(_ url: String, to path: String, expectedSize: Int?, label: String) throws(HTTPFailure) {
        guard let file = fopen(path, "ab") else {
            throw HTTPFailure("cannot write \(path): \(String(cString: strerror(errno)))", retryable: false)
        }
        defer { fclose(file) }
        var existing = Int(ftello(file))
        if let expectedSize, existing == expectedSize { return }
        if let expectedSize, existing > expectedSize {   // not a prefix of this file: start over
            ftruncate(fileno(file), 0)
            existing = 0
        }
        let bar = showProgress ? ProgressLine(label: label) : nil
        let response: HTTPClientResponse
        do {
            response = try request(url).perform(file: file, resumeOffset: existing, progress: bar.map { bar in { bar.draw(done: $0, total: $1) } })
        } catch {
            bar?.finish()
            throw error
        }
        bar?.finish()
        if response.status == 416 {   // the server will not resume from here: start over
            ftruncate(fileno(file), 0)
            throw HTTPFailure("HTTP 416: the server refused to resume at byte \(existing)", retryable: true)
        }
        guard response.status == 200 || response.status == 206 else { throw Self.hubFailure(response.status) }
        fflush(file)
        let written = Int(ftello(file))
        if let expectedSize, written != expectedSize {
            if written > expectedSize { ftruncate(fileno(file), 0) }
            throw HTTPFailure("received \(written) of \(expectedSize) bytes", retryable: true)
        }
    }

    /// An LFS blob's ETag is the SHA-256 of its content: a download that does not hash to it (cut short without a
    /// length to tell, or corrupted) is started over rather than put in place.
    static func verify(_ path: String, etag: String) throws(HTTPFailure) {
        guard etag.count == 64, etag.allSatisfy(\.isHexDigit) else { return }
        guard let handle = FileHandle(forReadingAtPath: path) else { throw HTTPFailure("cannot read \(path)", retryable: false) }
        defer { try? handle.close() }
        var hasher = SHA256()
        while let chunk = try? handle.read(upToCount: 1 << 22), !chunk.isEmpty { chunk.withUnsafeBytes { hasher.update($0) } }
        let digest = hasher.finish()
        guard digest == etag.lowercased() else {
            truncate(path, 0)
            throw HTTPFailure("the download's SHA-256 \(digest) is not its ETag \(etag)", retryable: true)
        }
    }

    /// What the hub's statuses mean.
    private static func hubFailure(_ status: Int) -> HTTPFailure {
        switch status {
        case 401, 403: return HTTPFailure("HTTP \(status): the repository is private or gated; set HF_TOKEN", retryable: false)
        case 404: return HTTPFailure("HTTP 404: no such repository, revision or file", retryable: false)
        default: return .status(status)
        }
    }
}

/// A download's progress bar on stderr, redrawn at most ten times a second.
private final class ProgressLine {
    let label: String
    private var lastDraw = Date.distantPast
    private var drew = false

    init(label: String) { self.label = label }

    func draw(done: Int, total: Int) {
        let moment = Date()
        guard moment.timeIntervalSince(lastDraw) > 0.1 || done == total else { return }
        lastDraw = moment
        drew = true
        let fraction = Double(done) / Double(max(total, 1))
        let width = 30
        let filled = Int(fraction * Double(width))
        let bar = String(repeating: "#", count: filled) + String(repeating: "-", count: width - filled)
        let line = String(format: "\r%@ [%@] %.1f/%.1f MB %3d%%", label, bar, Double(done) / 1e6, Double(total) / 1e6, Int(fraction * 100))
        FileHandle.standardError.write(Data(line.utf8))
    }

    func finish() {
        if drew { FileHandle.standardError.write(Data("\n".utf8)) }
        drew = false
    }
}
