import Foundation
import StitchRemote

/// A small HTTP/1.1 server on 127.0.0.1 that imitates the hub's resolve
/// endpoints, for testing the downloader against real sockets:
/// - HEAD/GET /{repo}/resolve/{rev}/{file}: small files answered directly with
///   ETag and X-Repo-Commit; large ones (`redirected`) with a 302 to /cdn/{etag}
///   and X-Linked-Etag / X-Linked-Size, as the hub does for LFS files.
/// - GET /cdn/{etag}: honours Range; `dropFirstTransfer` makes the first GET
///   send half the body and close the connection (`stallFirstTransfer`: stall first).
/// Every request line and its Range header are recorded.
final class LocalHubServer: @unchecked Sendable {
    struct File {
        let data: Data
        let etag: String
        let redirected: Bool
    }

    let commit = "0123456789abcdef0123456789abcdef01234567"
    private var server: HTTPServer!
    private let lock = NSLock()
    private var files: [String: File] = [:]       // "repo/file" -> contents
    private var failuresLeft: [String: Int] = [:] // path -> how many 503s to answer first
    private var _requests: [String] = []
    var dropFirstTransfer = false
    /// The first GET sends its headers and a little data, then stalls for this long before hanging up.
    var stallFirstTransfer: TimeInterval = 0
    private var dropped = false

    var requests: [String] { lock.lock(); defer { lock.unlock() }; return _requests }
    var baseURL: String { server.baseURL }

    init() throws {
        server = try HTTPServer { [unowned self] client in self.handle(client) }
    }

    func add(repo: String, file: String, data: Data, etag: String, redirected: Bool) {
        lock.lock(); defer { lock.unlock() }
        files["\(repo)/\(file)"] = File(data: data, etag: etag, redirected: redirected)
    }

    func failNext(_ count: Int, path: String) {
        lock.lock(); defer { lock.unlock() }
        failuresLeft[path] = count
    }

    func stop() { server.stop() }

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

        // /{org}/{name}/resolve/{revision}/{file...}
        let components = path.split(separator: "/").map(String.init)
        guard components.count >= 5, components[2] == "resolve" else {
            return send(client, status: "404 Not Found", headers: [:], body: Data(), method: method)
        }
        let repo = components[0] + "/" + components[1]
        let name = components[4...].joined(separator: "/")
        lock.lock(); let file = files["\(repo)/\(name)"]; lock.unlock()
        guard let file else {
            return send(client, status: "404 Not Found", headers: ["X-Error-Code": "EntryNotFound"], body: Data(), method: method)
        }
        if file.redirected {
            send(client, status: "302 Found", headers: [
                "Location": "/cdn/\(file.etag)", "X-Repo-Commit": commit, "X-Linked-Etag": "\"\(file.etag)\"",
                "X-Linked-Size": "\(file.data.count)", "ETag": "\"sha1-of-pointer\"", "Content-Length": "0",
            ], body: Data(), method: method)
        } else {
            send(client, status: "200 OK", headers: ["X-Repo-Commit": commit, "ETag": "\"\(file.etag)\"", "Content-Length": "\(file.data.count)"],
                 body: file.data, method: method)
        }
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
