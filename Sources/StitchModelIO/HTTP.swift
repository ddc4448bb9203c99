import CCurl
import Foundation

private let curlReady: Bool = { curl_global_init(Int(CURL_GLOBAL_DEFAULT)) == CURLE_OK }()

/// Why one HTTP attempt failed, and whether another attempt may succeed.
public struct HTTPFailure: Error, CustomStringConvertible {
    public let detail: String
    public let retryable: Bool

    public init(_ detail: String, retryable: Bool) {
        self.detail = detail
        self.retryable = retryable
    }

    public var description: String { detail }

    /// A response that is not a success: worth another attempt for 408, 429 and 5xx only.
    public static func status(_ status: Int, _ message: String = "") -> HTTPFailure {
        HTTPFailure("HTTP \(status)" + (message.isEmpty ? "" : ": \(message)"), retryable: status == 408 || status == 429 || (500...599).contains(status))
    }
}

/// The one retry policy of Stitch's HTTP clients (hub downloads, remote language models): up to `attempts`
/// attempts, waiting `initialBackoff` seconds after the first failure and twice as long after each next one;
/// a failure that is not retryable ends it at once.
public struct RetryPolicy: Sendable {
    public var attempts: Int
    public var initialBackoff: TimeInterval

    public init(attempts: Int, initialBackoff: TimeInterval) {
        self.attempts = attempts
        self.initialBackoff = initialBackoff
    }

    /// The attempt's result; the last failure (with the attempt count when there was more than one) otherwise.
    public func run<T>(onRetry: (HTTPFailure, TimeInterval) -> Void = { _, _ in }, _ attempt: () throws(HTTPFailure) -> T) throws(HTTPFailure) -> T {
        var delay = initialBackoff
        var number = 1
        while true {
            do {
                return try attempt()
            } catch {
                if !error.retryable || number >= attempts {
                    throw HTTPFailure(error.detail + (number > 1 ? " (after \(number) attempts)" : ""), retryable: false)
                }
                onRetry(error, delay)
                Thread.sleep(forTimeInterval: delay)
                delay *= 2
                number += 1
            }
        }
    }
}

/// What a request got back: the status of the last response (after redirects when followed), its headers
/// (lower-cased names), and the body unless it went to a file.
public struct HTTPClientResponse {
    public let status: Int
    public let headers: [String: String]
    public let body: Data
}

/// One HTTP request over libcurl, the only place Stitch sets libcurl up: user agent, connect timeout, a total
/// timeout or a stall timeout, headers, redirects. The body arrives in memory (up to a limit) or is appended to
/// a file, resuming at its length with a Range request.
public struct HTTPClientRequest {
    public enum Method { case get, head, post(Data) }

    public var url: String
    public var method: Method
    public var headers: [String]
    public var followRedirects = true
    public var connectTimeout = 30
    /// Seconds the whole transfer may take (nil: no limit).
    public var timeout: Int?
    /// A transfer slower than 1 byte/s for this many seconds is treated as dropped (nil: no limit).
    public var stallTimeout: Int?

    public init(_ url: String, method: Method = .get, headers: [String] = []) {
        self.url = url
        self.method = method
        self.headers = headers
    }

    /// Bodies read into memory stop at this size.
    public static let maximumBody = 64 << 20

    /// Performs the request. With `file`, a successful response's body is appended to it, asking the server for
    /// the bytes from `resumeOffset` on (a server that answers with the whole file starts it over); `progress`
    /// receives the bytes so far and in all.
    public func perform(file: UnsafeMutablePointer<FILE>? = nil, resumeOffset: Int = 0,
                        progress: ((_ done: Int, _ total: Int) -> Void)? = nil) throws(HTTPFailure) -> HTTPClientResponse {
        guard curlReady, let handle = curl_easy_init() else { throw HTTPFailure("libcurl could not be initialised", retryable: false) }
        defer { curl_easy_cleanup(handle) }
        let transfer = Transfer(file: file, resumeOffset: resumeOffset, progress: progress)
        for header in headers { transfer.requestHeaders = curl_slist_append(transfer.requestHeaders, header) }
        stitch_curl_set_string(handle, CURLOPT_URL, url)
        stitch_curl_set_string(handle, CURLOPT_USERAGENT, "stitch/0.1")
        stitch_curl_set_long(handle, CURLOPT_NOSIGNAL, 1)
        stitch_curl_set_long(handle, CURLOPT_CONNECTTIMEOUT, connectTimeout)
        if let timeout { stitch_curl_set_long(handle, CURLOPT_TIMEOUT, timeout) }
        if let stallTimeout {
            stitch_curl_set_long(handle, CURLOPT_LOW_SPEED_LIMIT, 1)
            stitch_curl_set_long(handle, CURLOPT_LOW_SPEED_TIME, stallTimeout)
        }
        stitch_curl_set_slist(handle, CURLOPT_HTTPHEADER, transfer.requestHeaders)
        stitch_curl_set_long(handle, CURLOPT_FOLLOWLOCATION, followRedirects ? 1 : 0)
        stitch_curl_set_long(handle, CURLOPT_MAXREDIRS, 10)
        switch method {
        case .get: break
        case .head: stitch_curl_set_long(handle, CURLOPT_NOBODY, 1)
        case .post(let body):
            stitch_curl_set_long(handle, CURLOPT_POSTFIELDSIZE, body.count)
            body.withUnsafeBytes { raw in
                _ = stitch_curl_set_pointer(handle, CURLOPT_COPYPOSTFIELDS, UnsafeMutableRawPointer(mutating: raw.baseAddress ?? UnsafeRawPointer(bitPattern: 1)!))
            }
        }
        // A Range header rather than CURLOPT_RESUME_FROM, which fails the transfer when the server ignores Range; the
        // write callback starts the file over then instead.
        if resumeOffset > 0 { stitch_curl_set_string(handle, CURLOPT_RANGE, "\(resumeOffset)-") }
        let context = Unmanaged.passUnretained(transfer).toOpaque()
        stitch_curl_set_data_callback(handle, CURLOPT_HEADERFUNCTION) { data, size, count, context in
            Unmanaged<Transfer>.fromOpaque(context!).takeUnretainedValue().header(UnsafeRawBufferPointer(start: data, count: size * count))
            return size * count
        }
        stitch_curl_set_pointer(handle, CURLOPT_HEADERDATA, context)
        stitch_curl_set_data_callback(handle, CURLOPT_WRITEFUNCTION) { data, size, count, context in
            Unmanaged<Transfer>.fromOpaque(context!).takeUnretainedValue().write(data!, size * count)
        }
        stitch_curl_set_pointer(handle, CURLOPT_WRITEDATA, context)
        if progress != nil {
            stitch_curl_set_long(handle, CURLOPT_NOPROGRESS, 0)
            stitch_curl_set_progress_callback(handle) { context, total, now, _, _ in
                Unmanaged<Transfer>.fromOpaque(context!).takeUnretainedValue().reportProgress(total: Int(total), now: Int(now))
                return 0
            }
            stitch_curl_set_pointer(handle, CURLOPT_XFERINFODATA, context)
        }
        let code = curl_easy_perform(handle)
        if transfer.bodyTooLarge { throw HTTPFailure("the response is larger than \(Self.maximumBody) bytes", retryable: false) }
        guard code == CURLE_OK else {
            let permanent: Set<CURLcode> = [CURLE_UNSUPPORTED_PROTOCOL, CURLE_URL_MALFORMAT, CURLE_WRITE_ERROR, CURLE_TOO_MANY_REDIRECTS]
            throw HTTPFailure("\(String(cString: curl_easy_strerror(code))) (curl error \(code.rawValue))", retryable: !permanent.contains(code))
        }
        var status = 0
        stitch_curl_get_long(handle, CURLINFO_RESPONSE_CODE, &status)
        return HTTPClientResponse(status: status, headers: transfer.headers, body: transfer.body)
    }
}

/// State shared with libcurl's C callbacks for one request.
private final class Transfer {
    var headers: [String: String] = [:]
    var requestHeaders: UnsafeMutablePointer<curl_slist>?
    var body = Data()
    var bodyTooLarge = false
    let file: UnsafeMutablePointer<FILE>?
    var resumeOffset: Int
    let progress: ((Int, Int) -> Void)?
    private var bodyStarted = false
    private var responseStatus = 0

    init(file: UnsafeMutablePointer<FILE>?, resumeOffset: Int, progress: ((Int, Int) -> Void)?) {
        self.file = file
        self.resumeOffset = resumeOffset
        self.progress = progress
    }

    deinit { curl_slist_free_all(requestHeaders) }

    /// Each response (of a redirect chain, too) starts with a status line; the status kept is the latest,
    /// which `write` needs to tell 200 from 206.
    func header(_ bytes: UnsafeRawBufferPointer) {
        let line = String(decoding: bytes, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
        if line.hasPrefix("HTTP/") {
            responseStatus = Int(line.split(separator: " ").dropFirst().first ?? "") ?? 0
            return
        }
        guard let colon = line.firstIndex(of: ":") else { return }
        headers[line[..<colon].lowercased()] = line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces)
    }

    func write(_ data: UnsafeMutablePointer<CChar>, _ length: Int) -> Int {
        guard let file else {
            guard body.count + length <= HTTPClientRequest.maximumBody else { bodyTooLarge = true; return 0 }
            body.append(UnsafeRawPointer(data).assumingMemoryBound(to: UInt8.self), count: length)
            return length
        }
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

    func reportProgress(total: Int, now: Int) {
        guard total > 0 else { return }
        progress?(resumeOffset + now, resumeOffset + total)
    }
}
