import CCurl
import Foundation

private let curlReady: Bool = { curl_global_init(Int(CURL_GLOBAL_DEFAULT)) == CURLE_OK }()

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
        let body = try withRetries(url: url) { () throws(TransferFailure) -> Data in
            let transfer = Transfer()
            transfer.body = Data()
            let handle = try makeHandle(url, transfer: transfer)
            defer { curl_easy_cleanup(handle) }
            stitch_curl_set_long(handle, CURLOPT_FOLLOWLOCATION, 1)
            stitch_curl_set_long(handle, CURLOPT_MAXREDIRS, 10)
            let status = try perform(handle, url: url, transfer: transfer)
            guard status == 200 else { throw Self.httpFailure(status) }
            guard let body = transfer.body else { throw TransferFailure(detail: "the listing is larger than \(Transfer.maximumBody) bytes", retryable: false) }
            return body
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
        let url = "\(endpoint)/\(repo)/resolve/\(Self.pathSegment(revision))/\(file)"
        let remote = try withRetries(url: url) { () throws(TransferFailure) in try head(url) }
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
            let partial = blobs.appendingPathComponent(remote.etag + ".incomplete")
            try withRetries(url: url) { () throws(TransferFailure) in
                try get(url, to: partial.path, expectedSize: remote.size, label: file)
            }
            guard rename(partial.path, blob.path) == 0 else {
                throw .download(url: url, detail: "cannot move the finished download into \(blob.path)")
            }
        }
        // Relative link, as huggingface_hub makes it: snapshots/<commit>/<file> -> ../../blobs/<etag>
        let depth = file.split(separator: "/").count + 1
        let target = String(repeating: "../", count: depth) + "blobs/" + remote.etag
        try? FileManager.default.removeItem(at: link)
        guard symlink(target, link.path) == 0 else {
            throw .download(url: url, detail: "cannot link \(link.path): \(String(cString: strerror(errno)))")
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

    /// Why one attempt failed, and whether another attempt may succeed.
    struct TransferFailure: Error {
        let detail: String
        let retryable: Bool
    }

    private func withRetries<T>(url: String, _ attempt: () throws(TransferFailure) -> T) throws(ModelIOError) -> T {
        var delay = initialBackoff
        var number = 1
        while true {
            do {
                return try attempt()
            } catch {
                if !error.retryable || number >= attempts {
                    let tries = number > 1 ? " (after \(number) attempts)" : ""
                    throw .download(url: url, detail: error.detail + tries)
                }
                if showProgress { FileHandle.standardError.write(Data("\n\(url): \(error.detail); retrying in \(delay)s\n".utf8)) }
                Thread.sleep(forTimeInterval: delay)
                delay *= 2
                number += 1
            }
        }
    }

    /// One HEAD request that does not follow redirects: the hub answers with
    /// the commit and the blob's ETag before redirecting large files to storage.
    private func head(_ url: String) throws(TransferFailure) -> Remote {
        let transfer = Transfer()
        let handle = try makeHandle(url, transfer: transfer)
        defer { curl_easy_cleanup(handle) }
        stitch_curl_set_long(handle, CURLOPT_NOBODY, 1)
        stitch_curl_set_long(handle, CURLOPT_FOLLOWLOCATION, 0)
        let status = try perform(handle, url: url, transfer: transfer)
        guard (200..<400).contains(status) else { throw Self.httpFailure(status) }
        let headers = transfer.headers
        guard let commit = headers["x-repo-commit"], ModelLocator.isCommitHash(commit) else {
            throw TransferFailure(detail: "the server sent no X-Repo-Commit header; is \(endpoint) a Hugging Face hub?", retryable: false)
        }
        guard let rawTag = headers["x-linked-etag"] ?? headers["etag"] else {
            throw TransferFailure(detail: "the server sent no ETag", retryable: false)
        }
        let etag = rawTag.replacingOccurrences(of: "W/", with: "").trimmingCharacters(in: CharacterSet(charactersIn: "\""))
        guard !etag.isEmpty, etag.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "-") }) else {
            throw TransferFailure(detail: "the server sent an unusable ETag \(rawTag)", retryable: false)
        }
        let size = (headers["x-linked-size"] ?? (status == 200 ? headers["content-length"] : nil)).flatMap { Int($0) }
        return Remote(commit: commit, etag: etag, size: size)
    }

    /// GET following redirects, appending to `path` from its current length.
    private func get(_ url: String, to path: String, expectedSize: Int?, label: String) throws(TransferFailure) {
        guard let file = fopen(path, "ab") else {
            throw TransferFailure(detail: "cannot write \(path): \(String(cString: strerror(errno)))", retryable: false)
        }
        defer { fclose(file) }
        var existing = Int(ftello(file))
        if let expectedSize, existing == expectedSize { return }
        if let expectedSize, existing > expectedSize {   // not a prefix of this file: start over
            ftruncate(fileno(file), 0)
            existing = 0
        }
        let transfer = Transfer()
        transfer.file = file
        transfer.resumeOffset = existing
        transfer.label = label
        transfer.showProgress = showProgress
        let handle = try makeHandle(url, transfer: transfer)
        defer { curl_easy_cleanup(handle) }
        stitch_curl_set_long(handle, CURLOPT_FOLLOWLOCATION, 1)
        stitch_curl_set_long(handle, CURLOPT_MAXREDIRS, 10)
        if existing > 0 { stitch_curl_set_offset(handle, CURLOPT_RESUME_FROM_LARGE, curl_off_t(existing)) }
        stitch_curl_set_long(handle, CURLOPT_NOPROGRESS, 0)
        stitch_curl_set_progress_callback(handle) { context, total, now, _, _ in
            Unmanaged<Transfer>.fromOpaque(context!).takeUnretainedValue().progress(total: Int(total), now: Int(now))
            return 0
        }
        stitch_curl_set_pointer(handle, CURLOPT_XFERINFODATA, Unmanaged.passUnretained(transfer).toOpaque())
        let status: Int
        do {
            status = try perform(handle, url: url, transfer: transfer)
        } catch {
            transfer.finishProgressLine()
            throw error
        }
        transfer.finishProgressLine()
        if status == 416 {   // the server will not resume from here: start over
            ftruncate(fileno(file), 0)
            throw TransferFailure(detail: "HTTP 416: the server refused to resume at byte \(existing)", retryable: true)
        }
        guard status == 200 || status == 206 else { throw Self.httpFailure(status) }
        fflush(file)
        let written = Int(ftello(file))
        if let expectedSize, written != expectedSize {
            if written > expectedSize { ftruncate(fileno(file), 0) }
            throw TransferFailure(detail: "received \(written) of \(expectedSize) bytes", retryable: true)
        }
    }

    private func makeHandle(_ url: String, transfer: Transfer) throws(TransferFailure) -> UnsafeMutableRawPointer {
        guard curlReady, let handle = curl_easy_init() else {
            throw TransferFailure(detail: "libcurl could not be initialised", retryable: false)
        }
        stitch_curl_set_string(handle, CURLOPT_URL, url)
        stitch_curl_set_string(handle, CURLOPT_USERAGENT, "stitch/0.1")
        stitch_curl_set_long(handle, CURLOPT_NOSIGNAL, 1)
        stitch_curl_set_long(handle, CURLOPT_CONNECTTIMEOUT, connectTimeout)
        stitch_curl_set_long(handle, CURLOPT_LOW_SPEED_LIMIT, 1)
        stitch_curl_set_long(handle, CURLOPT_LOW_SPEED_TIME, stallTimeout)
        if let token, !token.isEmpty {
            transfer.requestHeaders = curl_slist_append(nil, "Authorization: Bearer \(token)")
            stitch_curl_set_slist(handle, CURLOPT_HTTPHEADER, transfer.requestHeaders)
        }
        stitch_curl_set_data_callback(handle, CURLOPT_HEADERFUNCTION) { data, size, count, context in
            let transfer = Unmanaged<Transfer>.fromOpaque(context!).takeUnretainedValue()
            transfer.header(UnsafeRawBufferPointer(start: data, count: size * count))
            return size * count
        }
        stitch_curl_set_pointer(handle, CURLOPT_HEADERDATA, Unmanaged.passUnretained(transfer).toOpaque())
        stitch_curl_set_data_callback(handle, CURLOPT_WRITEFUNCTION) { data, size, count, context in
            let transfer = Unmanaged<Transfer>.fromOpaque(context!).takeUnretainedValue()
            return transfer.write(data!, size * count)
        }
        stitch_curl_set_pointer(handle, CURLOPT_WRITEDATA, Unmanaged.passUnretained(transfer).toOpaque())
        return handle
    }

    private func perform(_ handle: UnsafeMutableRawPointer, url: String, transfer: Transfer) throws(TransferFailure) -> Int {
        let code = curl_easy_perform(handle)
        var status = 0
        stitch_curl_get_long(handle, CURLINFO_RESPONSE_CODE, &status)
        guard code == CURLE_OK else {
            let reason = String(cString: curl_easy_strerror(code))
            let permanent: Set<CURLcode> = [CURLE_UNSUPPORTED_PROTOCOL, CURLE_URL_MALFORMAT, CURLE_WRITE_ERROR, CURLE_TOO_MANY_REDIRECTS]
            throw TransferFailure(detail: "\(reason) (curl error \(code.rawValue))", retryable: !permanent.contains(code))
        }
        return status
    }

    private static func httpFailure(_ status: Int) -> TransferFailure {
        switch status {
        case 401, 403: return TransferFailure(detail: "HTTP \(status): the repository is private or gated; set HF_TOKEN", retryable: false)
        case 404: return TransferFailure(detail: "HTTP 404: no such repository, revision or file", retryable: false)
        case 408, 429, 500...599: return TransferFailure(detail: "HTTP \(status)", retryable: true)
        default: return TransferFailure(detail: "HTTP \(status)", retryable: false)
        }
    }
}

/// State shared with libcurl's C callbacks for one request.
private final class Transfer {
    /// Listings are read into memory up to this size; past it `body` becomes nil and the transfer stops.
    static let maximumBody = 64 << 20
    var headers: [String: String] = [:]
    /// Set to receive a successful response's body in memory rather than in `file`.
    var body: Data?
    var requestHeaders: UnsafeMutablePointer<curl_slist>?
    var file: UnsafeMutablePointer<FILE>?
    var resumeOffset = 0
    var label = ""
    var showProgress = false
    private var lastDraw = Date.distantPast
    private var drewProgress = false
    private var bodyStarted = false
    private var responseStatus = 0

    deinit { curl_slist_free_all(requestHeaders) }

    /// Each response (of a redirect chain, too) starts with a status line; the
    /// status kept is the latest, which `write` needs to tell 200 from 206.
    func header(_ bytes: UnsafeRawBufferPointer) {
        let line = String(decoding: bytes, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
        if line.hasPrefix("HTTP/") {
            responseStatus = Int(line.split(separator: " ").dropFirst().first ?? "") ?? 0
            return
        }
        guard let colon = line.firstIndex(of: ":") else { return }
        let name = line[..<colon].lowercased()
        let value = line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces)
        headers[name] = value
    }

    func write(_ data: UnsafeMutablePointer<CChar>, _ length: Int) -> Int {
        if body != nil, (200..<300).contains(responseStatus) {
            guard body!.count + length <= Self.maximumBody else { body = nil; return 0 }
            body!.append(UnsafeRawPointer(data).assumingMemoryBound(to: UInt8.self), count: length)
            return length
        }
        guard let file else { return length }
        if !bodyStarted {
            bodyStarted = true
            // A server that ignores Range answers 200 with the whole file: start over.
            if resumeOffset > 0 && responseStatus == 200 {
                fflush(file)
                ftruncate(fileno(file), 0)
                fseeko(file, 0, SEEK_SET)
                resumeOffset = 0
            }
        }
        guard (200..<300).contains(responseStatus) else { return length }   // error bodies are not file content
        return fwrite(data, 1, length, file)
    }

    func progress(total: Int, now: Int) {
        guard showProgress, total > 0 else { return }
        let moment = Date()
        guard moment.timeIntervalSince(lastDraw) > 0.1 || now == total else { return }
        lastDraw = moment
        drewProgress = true
        let done = resumeOffset + now, all = resumeOffset + total
        let fraction = Double(done) / Double(max(all, 1))
        let width = 30
        let filled = Int(fraction * Double(width))
        let bar = String(repeating: "#", count: filled) + String(repeating: "-", count: width - filled)
        let line = String(format: "\r%@ [%@] %.1f/%.1f MB %3d%%", label, bar, Double(done) / 1e6, Double(all) / 1e6, Int(fraction * 100))
        FileHandle.standardError.write(Data(line.utf8))
    }

    func finishProgressLine() {
        if drewProgress { FileHandle.standardError.write(Data("\n".utf8)) }
        drewProgress = false
    }
}
