import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// A TCP connection to a server on 127.0.0.1 for tests that speak HTTP by hand: partial or stalled requests,
/// several requests on one connection, and whether the server closed it.
public final class RawConnection: @unchecked Sendable {
    public let fd: Int32
    private var buffered = Data()

    /// Connects; every read gives up after `timeout` seconds (the client's own limit, above the server's).
    public init(port: UInt16, timeout: Int = 20) throws {
        fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = port.bigEndian
        inet_pton(AF_INET, "127.0.0.1", &address.sin_addr)
        let connected = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard connected == 0 else { close(fd); throw POSIXError(.ECONNREFUSED) }
        var wait = timeval(tv_sec: timeout, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &wait, socklen_t(MemoryLayout<timeval>.size))
    }

    deinit { close(fd) }

    /// Sends `text`; false once the server has closed the connection.
    @discardableResult
    public func send(_ text: String) -> Bool {
        text.withCString { Glibc.send(fd, $0, strlen($0), Int32(MSG_NOSIGNAL)) } >= 0
    }

    /// Everything the server sends until it closes the connection (or the read timeout passes).
    public func readUntilClosed() -> String {
        while receive() {}
        defer { buffered = Data() }
        return String(decoding: buffered, as: UTF8.self)
    }

    /// The next response's status and body (by Content-Length), or nil when the connection closes first.
    public func readResponse() -> (status: Int, headers: String, body: String)? {
        let separator = Data("\r\n\r\n".utf8)
        while buffered.range(of: separator) == nil { guard receive() else { return nil } }
        let end = buffered.range(of: separator)!
        let head = String(decoding: buffered[..<end.lowerBound], as: UTF8.self)
        let length = head.split(separator: "\r\n").first { $0.lowercased().hasPrefix("content-length:") }
            .flatMap { Int($0.split(separator: ":")[1].trimmingCharacters(in: .whitespaces)) } ?? 0
        while buffered.count - end.upperBound < length { guard receive() else { return nil } }
        let body = buffered[end.upperBound..<end.upperBound + length]
        defer { buffered = Data(buffered[(end.upperBound + length)...]) }
        guard let status = Int(head.split(separator: " ").dropFirst().first ?? "") else { return nil }
        return (status, head, String(decoding: body, as: UTF8.self))
    }

    /// What the server has sent up to and including `marker`, or nil when the connection closes (or the read times out) first.
    public func read(until marker: String) -> String? {
        while buffered.range(of: Data(marker.utf8)) == nil { guard receive() else { return nil } }
        return String(decoding: buffered, as: UTF8.self)
    }

    /// Closes both directions now (the client goes away mid-response).
    public func hangUp() { shutdown(fd, Int32(SHUT_RDWR)) }

    /// Whether the server closes the connection within `seconds` (what it sends meanwhile is kept for reading).
    public func isClosedByServer(within seconds: Double = 10) -> Bool {
        let deadline = Date().addingTimeInterval(seconds)
        while case let left = deadline.timeIntervalSinceNow, left > 0 {
            var events = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            guard poll(&events, 1, Int32(left * 1000) + 1) > 0 else { continue }
            if !receive() { return true }
        }
        return false
    }

    private func receive() -> Bool {
        var chunk = [UInt8](repeating: 0, count: 65536)
        let n = recv(fd, &chunk, chunk.count, 0)
        guard n > 0 else { return false }
        buffered.append(contentsOf: chunk[0..<n])
        return true
    }
}
