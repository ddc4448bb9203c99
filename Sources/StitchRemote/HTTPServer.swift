import Foundation
import StitchMethods
#if canImport(Glibc)
import Glibc
#endif

/// An HTTP/1.1 request as the server hands it to its handler.
public struct HTTPRequest: Sendable {
    public let method: String
    public let path: String
    /// Header names lower-cased.
    public let headers: [String: String]
    public let body: Data

    public init(method: String, path: String, headers: [String: String], body: Data) {
        self.method = method
        self.path = path
        self.headers = headers
        self.body = body
    }
}

public struct HTTPResponse: Sendable {
    public var status: Int
    public var headers: [String: String]
    public var body: Data

    public init(status: Int, headers: [String: String] = [:], body: Data = Data()) {
        (self.status, self.headers, self.body) = (status, headers, body)
    }

    /// A JSON response.
    public static func json(_ object: Any, status: Int = 200) -> HTTPResponse {
        let data = (try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys, .withoutEscapingSlashes])) ?? Data("{}".utf8)
        return HTTPResponse(status: status, headers: ["Content-Type": "application/json"], body: data)
    }

    /// An error in OpenAI's shape: {"error": {"message", "type"}}.
    public static func error(_ message: String, status: Int) -> HTTPResponse {
        json(["error": ["message": message, "type": status < 500 ? "invalid_request_error" : "server_error"]], status: status)
    }
}

/// A small HTTP/1.1 server on a TCP port: a thread per connection, at most `maximumConnections` at once (the rest
/// wait in the listen backlog), one request per connection (Connection: close), bodies by Content-Length up to
/// `maximumBody` bytes, and a request that is not in within `requestTimeout` (slow or silent clients) dropped.
public final class HTTPServer: @unchecked Sendable {
    public typealias Handler = @Sendable (HTTPRequest) -> HTTPResponse
    /// Serves one accepted connection (the server closes it afterwards).
    public typealias ConnectionHandler = @Sendable (Int32) -> Void
    public static let maximumBody = 16 << 20
    public static let maximumConnections = 256
    public let host: String
    /// Seconds a client has to send its whole request (and to take the answer).
    public let requestTimeout: Int
    private let permits = Permits(HTTPServer.maximumConnections)
    public let port: UInt16
    private let socketFD: Int32
    private let connection: ConnectionHandler
    private let lock = NSLock()
    private var stopped = false

    /// Binds `host:port` (port 0: any free port, then read `port`) and answers each request with `handler`.
    public convenience init(host: String = "127.0.0.1", port: UInt16 = 0, requestTimeout: Int = 30, handler: @escaping Handler) throws {
        try self.init(host: host, port: port, requestTimeout: requestTimeout) { client in
            let deadline = Date().addingTimeInterval(TimeInterval(requestTimeout))
            Self.write(Self.read(client, until: deadline).map(handler) ?? .error("malformed, too large or too slow HTTP request", status: 400), to: client)
        }
    }

    /// Binds `host:port` and hands every accepted socket to `connection`, on a thread of its own.
    public init(host: String = "127.0.0.1", port: UInt16 = 0, requestTimeout: Int = 30, connection: @escaping ConnectionHandler) throws {
        self.host = host
        self.requestTimeout = requestTimeout
        self.connection = connection
        (socketFD, self.port) = try Self.listeningSocket(host: host, port: port)
        Thread { [self] in acceptLoop() }.start()
    }

    /// A TCP socket listening on `host:port` (port 0: any free port) and the port it got.
    public static func listeningSocket(host: String, port: UInt16) throws -> (socket: Int32, port: UInt16) {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw POSIXError(POSIXErrorCode(rawValue: errno) ?? .EIO) }
        var yes: Int32 = 1
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &yes, socklen_t(MemoryLayout<Int32>.size))
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        guard inet_pton(AF_INET, host, &address.sin_addr) == 1 else {
            close(fd)
            throw HTTPServerError.invalidAddress(host)
        }
        address.sin_port = port.bigEndian
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard bound == 0, listen(fd, 64) == 0 else {
            let code = errno
            close(fd)
            throw POSIXError(POSIXErrorCode(rawValue: code) ?? .EADDRINUSE)
        }
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { _ = getsockname(fd, $0, &length) }
        }
        return (fd, UInt16(bigEndian: address.sin_port))
    }

    public var baseURL: String { "http://\(host):\(port)" }

    public func stop() {
        lock.lock(); stopped = true; lock.unlock()
        shutdown(socketFD, Int32(SHUT_RDWR))
        close(socketFD)
    }

    private func acceptLoop() {
        while true {
            permits.acquire()
            let client = accept(socketFD, nil, nil)
            let failure = errno
            lock.lock(); let done = stopped; lock.unlock()
            if done { if client >= 0 { close(client) }; return }
            guard client >= 0 else {
                permits.release()
                // Out of file descriptors or memory: wait for connections to finish rather than spin.
                if [EMFILE, ENFILE, ENOBUFS, ENOMEM].contains(failure) { usleep(50_000) }
                continue
            }
            // Every recv and send on the connection gives up after the request timeout.
            var timeout = timeval(tv_sec: requestTimeout, tv_usec: 0)
            setsockopt(client, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
            setsockopt(client, SOL_SOCKET, SO_SNDTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
            Thread { [connection, permits] in
                connection(client)
                close(client)
                permits.release()
            }.start()
        }
    }

    /// The request on `client`, or nil when it is not HTTP, its body is too large, or it is not all in by `deadline`.
    static func read(_ client: Int32, until deadline: Date = .distantFuture) -> HTTPRequest? {
        var data = Data()
        var buffer = [UInt8](repeating: 0, count: 65536)
        let separator = Data("\r\n\r\n".utf8)
        var headEnd: Range<Data.Index>?
        while headEnd == nil {
            let n = recv(client, &buffer, buffer.count, 0)
            guard n > 0, data.count < 1 << 20, Date() < deadline else { return nil }
            data.append(contentsOf: buffer[0..<n])
            headEnd = data.range(of: separator)
        }
        let head = String(decoding: data[..<headEnd!.lowerBound], as: UTF8.self).components(separatedBy: "\r\n")
        let requestLine = head[0].split(separator: " ")
        guard requestLine.count >= 2 else { return nil }
        var headers: [String: String] = [:]
        for line in head.dropFirst() {
            guard let colon = line.firstIndex(of: ":") else { continue }
            headers[line[..<colon].lowercased()] = line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces)
        }
        let length = Int(headers["content-length"] ?? "0") ?? -1
        guard length >= 0, length <= maximumBody else { return nil }
        var body = Data(data[headEnd!.upperBound...])
        while body.count < length {
            let n = recv(client, &buffer, min(buffer.count, length - body.count), 0)
            guard n > 0, Date() < deadline else { return nil }
            body.append(contentsOf: buffer[0..<n])
        }
        return HTTPRequest(method: String(requestLine[0]), path: String(requestLine[1]), headers: headers, body: body.prefix(length))
    }

    static func write(_ response: HTTPResponse, to client: Int32) {
        let reasons = [200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found", 405: "Method Not Allowed", 429: "Too Many Requests",
                       500: "Internal Server Error", 503: "Service Unavailable"]
        var head = "HTTP/1.1 \(response.status) \(reasons[response.status] ?? "Status")\r\nConnection: close\r\n"
        var headers = response.headers
        headers["Content-Length"] = "\(response.body.count)"
        for (name, value) in headers.sorted(by: { $0.key < $1.key }) { head += "\(name): \(value)\r\n" }
        var bytes = Data((head + "\r\n").utf8)
        bytes.append(response.body)
        bytes.withUnsafeBytes { raw in
            var sent = 0
            while sent < raw.count {
                let n = send(client, raw.baseAddress! + sent, raw.count - sent, Int32(MSG_NOSIGNAL))
                if n <= 0 { return }
                sent += n
            }
        }
    }
}

/// A counting limit on open connections (a DispatchSemaphore may not be freed while a permit is out, which a
/// stopped server's accept loop holds).
private final class Permits: @unchecked Sendable {
    private let condition = NSCondition()
    private var available: Int

    init(_ count: Int) { available = count }

    func acquire() {
        condition.lock()
        while available == 0 { condition.wait() }
        available -= 1
        condition.unlock()
    }

    func release() {
        condition.lock()
        available += 1
        condition.signal()
        condition.unlock()
    }
}

public enum HTTPServerError: Error, CustomStringConvertible, Equatable {
    case invalidAddress(String)

    public var description: String {
        switch self {
        case .invalidAddress(let host): return "'\(host)' is not an IPv4 address to listen on"
        }
    }
}
