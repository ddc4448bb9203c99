import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// A TCP server on 127.0.0.1 that hands each accepted socket to a handler on a thread of its own and closes it
/// afterwards: for imitating servers that misbehave below HTTP (bodies cut short, stalls, ignored headers), which
/// a real HTTP stack would not let a test write.
public final class SocketServer: @unchecked Sendable {
    public let port: UInt16
    private let socketFD: Int32
    private let lock = NSLock()
    private var stopped = false

    public init(connection: @escaping @Sendable (Int32) -> Void) throws {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw POSIXError(.EIO) }
        var yes: Int32 = 1
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &yes, socklen_t(MemoryLayout<Int32>.size))
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        inet_pton(AF_INET, "127.0.0.1", &address.sin_addr)
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard bound == 0, listen(fd, 64) == 0 else {
            close(fd)
            throw POSIXError(.EADDRINUSE)
        }
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { _ = getsockname(fd, $0, &length) }
        }
        (socketFD, port) = (fd, UInt16(bigEndian: address.sin_port))
        Thread { [self] in
            while true {
                let client = accept(fd, nil, nil)
                lock.lock(); let done = stopped; lock.unlock()
                if done {
                    if client >= 0 { close(client) }
                    close(fd)   // only now: see stop()
                    return
                }
                guard client >= 0 else { continue }
                Thread { connection(client); close(client) }.start()
            }
        }.start()
    }

    public var baseURL: String { "http://127.0.0.1:\(port)" }

    /// Shuts the listening socket down, so that accept fails from now on; the accept thread closes it when it sees
    /// that. Closed here, its descriptor's number went to the next server's socket, and an accept thread that had not
    /// yet run (a server stopped at once on a busy machine) took that server's connections and dropped them. Only the
    /// first call shuts it down: by a second (a test's own stop, then its tearDown's) the number may name another socket.
    public func stop() {
        lock.lock(); let first = !stopped; stopped = true; lock.unlock()
        if first { shutdown(socketFD, Int32(SHUT_RDWR)) }
    }
}
