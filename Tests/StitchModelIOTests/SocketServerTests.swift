import StitchTestSupport
import XCTest
#if canImport(Glibc)
import Glibc
#endif

/// The tests' socket server itself: a server stopped at once (its accept thread not yet run, as on a busy machine)
/// must not take the connections of the server started next. It did when stop() closed the listening socket: the
/// next server's socket got the same descriptor number, the late thread accepted on it and dropped what it took, and
/// a download test saw "connection reset" (curl error 56) on both of its attempts.
final class SocketServerTests: XCTestCase {
    func testAStoppedServerNeverTakesTheNextServersConnections() throws {
        let answer = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
        let respond: @Sendable (Int32) -> Void = { client in
            var request = [UInt8](repeating: 0, count: 256)
            _ = recv(client, &request, request.count, 0)
            _ = answer.withCString { send(client, $0, strlen($0), Int32(MSG_NOSIGNAL)) }
        }
        var dropped = 0
        for _ in 0..<300 {
            try SocketServer(connection: respond).stop()
            let server = try SocketServer(connection: respond)
            defer { server.stop() }
            let connection = try RawConnection(port: server.port)
            connection.send("GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            if connection.readUntilClosed() != answer { dropped += 1 }
        }
        XCTAssertEqual(dropped, 0, "connections to a running server dropped")
    }
}
