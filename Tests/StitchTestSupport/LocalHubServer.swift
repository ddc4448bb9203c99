import Foundation
import StitchModelIO

/// A small HTTP/1.1 server on 127.0.0.1 that imitates the hub, for testing the downloader against real sockets:
/// - GET /api/models/{repo}/revision/{rev}: the commit and file list (`sha`, `siblings`), as the model-info endpoint answers.
/// - HEAD/GET /{repo}/resolve/{rev}/{file}: small files answered directly with ETag and X-Repo-Commit; large ones
///   (`redirected`) with a 302 to /cdn/{etag} on a second server reached as `localhost` (another host, as the hub's
///   storage is) and X-Linked-Etag / X-Linked-Size, as the hub does for LFS files.
/// - GET /cdn/{etag}: honours Range unless `ignoresRange`; `dropFirstTransfer` makes the first GET send half the body and close the
///   connection (`stallFirstTransfer`: stall first).
/// Revisions (branches, tags, refs/pr/N, percent-encoded or not) map to commits; each commit has its own files.
/// Every request line, its Range and whether it carried an Authorization header are recorded.
public final class LocalHubServer: @unchecked Sendable {
    struct File {
        let data: Data
        let etag: String
        let redirected: Bool
    }

    public let commit = "0123456789abcdef0123456789abcdef01234567"
    private var server: SocketServer!
    private var storage: SocketServer!
    private let lock = NSLock()
    private var files: [String: File] = [:]       // "repo@commit/file" -> contents
    private var revisions: [String: String] = [:] // "repo@revision" -> commit
    private var failuresLeft: [String: Int] = [:] // path -> how many 503s to answer first
    private var _requests: [String] = []
    private var _authorized: [String] = []
    public var dropFirstTransfer = false
    /// Storage answers every GET with the whole file and 200, as some proxies and mirrors do.
    public var ignoresRange = false
    /// The first GET sends its headers and a little data, then stalls for this long before hanging up.
    public var stallFirstTransfer: TimeInterval = 0
    private var dropped = false

    public var requests: [String] { lock.lock(); defer { lock.unlock() }; return _requests }
    /// The requests that carried an Authorization header.
    public var authorized: [String] { lock.lock(); defer { lock.unlock() }; return _authorized }
    public var baseURL: String { server.baseURL }

    public init() throws {
        server = try SocketServer { [unowned self] client in self.handle(client) }
        storage = try SocketServer { [unowned self] client in self.handle(client) }
    }

    /// Adds a file at `revision` (main unless told), whose commit is `commit` for main, else one derived from the revision.
    public func add(repo: String, file: String, data: Data, etag: String, redirected: Bool, revision: String = "main") {
        lock.lock(); defer { lock.unlock() }
        let hash = revision == "main" ? commit : Self.commit(for: revision)
        revisions["\(repo)@\(revision)"] = hash
        files["\(repo)@\(hash)/\(file)"] = File(data: data, etag: etag, redirected: redirected)
    }

    public static func commit(for revision: String) -> String {
        String(revision.utf8.reduce(UInt64(1469598103934665603)) { ($0 ^ UInt64($1)) &* 1099511628211 }, radix: 16)
            .padding(toLength: 40, withPad: "e", startingAt: 0)
    }

    public func failNext(_ count: Int, path: String) {
        lock.lock(); defer { lock.unlock() }
        failuresLeft[path] = count
    }

    /// Serves every file under `folder` (symbolic links followed) as `repo` at `revision`; weights files are
    /// redirected to storage as the hub does for LFS files. `extra` adds files from elsewhere (name -> path).
    public func addFolder(_ folder: URL, repo: String, revision: String = "main", extra: [String: URL] = [:]) throws {
        var entries = extra
        for relative in FileManager.default.subpaths(atPath: folder.path) ?? [] {
            let url = folder.appendingPathComponent(relative).resolvingSymlinksInPath()
            var isDirectory: ObjCBool = false
            if FileManager.default.fileExists(atPath: url.path, isDirectory: &isDirectory), !isDirectory.boolValue { entries[relative] = url }
        }
        for (name, url) in entries {
            let data = try Data(contentsOf: url)
            let large = name.hasSuffix(".bin") || name.hasSuffix(".safetensors") || name.hasSuffix(".gz")
            add(repo: repo, file: name, data: data, etag: Self.etag(of: data, large: large), redirected: large, revision: revision)
        }
    }

    /// The ETag the hub gives: the SHA-256 of the content for LFS files (which downloads are checked against),
    /// a shorter git-blob-like one for the rest (only unique).
    public static func etag(of data: Data, large: Bool) -> String {
        let digest = data.withUnsafeBytes { bytes in var hasher = SHA256(); hasher.update(bytes); return hasher.finish() }
        return large ? digest : String(digest.prefix(40))
    }

    public func stop() {
        server.stop()
        storage.stop()
    }

    private func handle(_ client: Int32) {
        var request = Data()
        var buffer = [UInt8](repeating: 0, count: 4096)
        while !request.contains("\r\n\r\n".data(using: .utf8)!) {
            let n = recv(client, &buffer, buffer.count, 0)
            if n <= 0 { return }
            request.append(contentsOf: buffer[0..<n])
        }
        let text = String(decoding: request, as: UTF8.self)
        let lines = text.components(separatedBy: "\r\n")
        let parts = lines[0].split(separator: " ")
        guard parts.count >= 2 else { return }
        let (method, path) = (String(parts[0]), String(parts[1]))
        let range = lines.first { $0.lowercased().hasPrefix("range:") }
            .flatMap { $0.split(separator: "=").last }.flatMap { Int($0.split(separator: "-").first ?? "") }
        lock.lock()
        _requests.append("\(method) \(path)" + (range.map { " range=\($0)" } ?? ""))
        if lines.contains(where: { $0.lowercased().hasPrefix("authorization:") }) { _authorized.append("\(method) \(path)") }
        let failing = failuresLeft[path] ?? 0
        if failing > 0 { failuresLeft[path] = failing - 1 }
        lock.unlock()
        if failing > 0 { return send(client, status: "503 Service Unavailable", headers: [:], body: Data(), method: method) }

        if path.hasPrefix("/cdn/") {
            let etag = String(path.dropFirst(5))
            lock.lock()
            let file = files.values.first { $0.etag == etag }
            let drop = (dropFirstTransfer || stallFirstTransfer > 0) && !dropped && method == "GET"
            if drop { dropped = true }
            lock.unlock()
            guard let file else { return send(client, status: "404 Not Found", headers: [:], body: Data(), method: method) }
            let range = ignoresRange ? nil : range
            let start = min(range ?? 0, file.data.count)
            let body = file.data.subdata(in: start..<file.data.count)
            var headers = ["Content-Length": "\(body.count)", "ETag": "\"\(etag)\""]
            if range != nil { headers["Content-Range"] = "bytes \(start)-\(file.data.count - 1)/\(file.data.count)" }
            let status = range != nil ? "206 Partial Content" : "200 OK"
            if drop {
                // Promise the whole body, send half, hang up.
                sendHead(client, status: status, headers: headers)
                body.prefix(body.count / 2).withUnsafeBytes { _ = Glibc.send(client, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
                if stallFirstTransfer > 0 { Thread.sleep(forTimeInterval: stallFirstTransfer) }
                return
            }
            return send(client, status: status, headers: headers, body: body, method: method)
        }

        let components = path.split(separator: "/").map { $0.removingPercentEncoding ?? String($0) }
        // /api/models/{org}/{name}/revision/{revision...}
        if components.count >= 6, components[0] == "api", components[1] == "models", components[4] == "revision" {
            let repo = components[2] + "/" + components[3]
            guard let hash = commitOf(repo: repo, revision: components[5...].joined(separator: "/")) else {
                return send(client, status: "404 Not Found", headers: ["X-Error-Code": "RevisionNotFound"], body: Data(), method: method)
            }
            lock.lock()
            let names = files.keys.filter { $0.hasPrefix("\(repo)@\(hash)/") }.map { String($0.dropFirst("\(repo)@\(hash)/".count)) }.sorted()
            lock.unlock()
            let listing: [String: Any] = ["id": repo, "sha": hash, "siblings": names.map { ["rfilename": $0] }]
            return send(client, status: "200 OK", headers: ["Content-Type": "application/json"],
                        body: try! JSONSerialization.data(withJSONObject: listing), method: method)
        }
        // /{org}/{name}/resolve/{revision}/{file...}; the revision is one segment (refs/pr/N percent-encoded) or a commit.
        guard components.count >= 5, components[2] == "resolve" else {
            return send(client, status: "404 Not Found", headers: [:], body: Data(), method: method)
        }
        let repo = components[0] + "/" + components[1]
        let name = components[4...].joined(separator: "/")
        lock.lock()
        let hash = revisions["\(repo)@\(components[3])"] ?? components[3]
        let file = files["\(repo)@\(hash)/\(name)"]
        lock.unlock()
        guard let file else {
            return send(client, status: "404 Not Found", headers: ["X-Error-Code": "EntryNotFound"], body: Data(), method: method)
        }
        if file.redirected {
            send(client, status: "302 Found", headers: [
                "Location": "\(storage.baseURL.replacingOccurrences(of: "127.0.0.1", with: "localhost"))/cdn/\(file.etag)",
                "X-Repo-Commit": hash, "X-Linked-Etag": "\"\(file.etag)\"",
                "X-Linked-Size": "\(file.data.count)", "ETag": "\"sha1-of-pointer\"", "Content-Length": "0",
            ], body: Data(), method: method)
        } else {
            send(client, status: "200 OK", headers: ["X-Repo-Commit": hash, "ETag": "\"\(file.etag)\"", "Content-Length": "\(file.data.count)"],
                 body: file.data, method: method)
        }
    }

    private func commitOf(repo: String, revision: String) -> String? {
        lock.lock(); defer { lock.unlock() }
        if let hash = revisions["\(repo)@\(revision)"] { return hash }
        return files.keys.contains { $0.hasPrefix("\(repo)@\(revision)/") } ? revision : nil
    }

    private func sendHead(_ client: Int32, status: String, headers: [String: String]) {
        var head = "HTTP/1.1 \(status)\r\nConnection: close\r\n"
        for (name, value) in headers { head += "\(name): \(value)\r\n" }
        head += "\r\n"
        _ = head.withCString { Glibc.send(client, $0, strlen($0), Int32(MSG_NOSIGNAL)) }
    }

    private func send(_ client: Int32, status: String, headers: [String: String], body: Data, method: String) {
        var headers = headers
        if headers["Content-Length"] == nil { headers["Content-Length"] = "\(body.count)" }
        sendHead(client, status: status, headers: headers)
        guard method != "HEAD" else { return }
        body.withUnsafeBytes { raw in
            var sent = 0
            while sent < raw.count {
                let n = Glibc.send(client, raw.baseAddress! + sent, raw.count - sent, Int32(MSG_NOSIGNAL))
                if n <= 0 { return }
                sent += n
            }
        }
    }
}
