import Foundation
import HTTPTypes
import Hummingbird
import HummingbirdCore
import Logging
import NIOCore
import NIOHTTPTypes
#if canImport(Glibc)
import Glibc
#endif

/// An HTTP request as the server hands it to its handler.
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
    /// A body written as it is produced (chunked), instead of `body`.
    public var stream: ResponseStream?

    public init(status: Int, headers: [String: String] = [:], body: Data = Data(), stream: ResponseStream? = nil) {
        (self.status, self.headers, self.body, self.stream) = (status, headers, body, stream)
    }

    /// Server-sent events: each piece of `events` is written as it comes.
    public static func eventStream(_ events: ResponseStream) -> HTTPResponse {
        HTTPResponse(status: 200, headers: ["Content-Type": "text/event-stream", "Cache-Control": "no-cache"], stream: events)
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

/// An HTTP/1.1 server on Hummingbird (SwiftNIO event loops): keep-alive, about `connections` open at once (by
/// default `maximumConnections`, fewer when the descriptor limit is lower; a new connection beyond it closes the one
/// that has waited longest for a request to begin, see `ConnectionBudget`), bodies up to `maximumBody` bytes (a
/// larger Content-Length is refused before its first byte is read), and a request not completely in within
/// `requestTimeout` seconds of the connection becoming ready for it (silent, stalled or trickling clients, idle
/// keep-alive connections) answered 408 and closed. Handlers run as tasks, never on the event loops.
public final class HTTPServer: Sendable {
    public typealias Handler = @Sendable (HTTPRequest) async -> HTTPResponse
    public static let maximumBody = 16 << 20
    public static let maximumConnections = 1024
    public let host: String
    public let port: UInt16
    private let task: Task<Void, Never>
    private let finished: DispatchSemaphore

    /// Binds `host:port` (port 0: any free port, then read `port`) and answers each request with `handler`.
    /// With `handlesSignals`, SIGINT and SIGTERM shut it down gracefully: no new connections, requests in progress
    /// answered, then `wait()` returns.
    public init(host: String = "127.0.0.1", port: UInt16 = 0, requestTimeout: Int = 30, maximumBody: Int = HTTPServer.maximumBody,
                connections: Int = HTTPServer.connectionLimit(), handlesSignals: Bool = false, handler: @escaping Handler) throws {
        let responder = CallbackResponder<BasicRequestContext> { request, _ in
            await Self.respond(to: request, maximumBody: maximumBody, handler: handler)
        }
        var logger = Logger(label: "stitch.http")
        logger.logLevel = .critical   // errors reach clients as responses; the server itself prints nothing
        let bound = Outcome<Int>()
        let budget = ConnectionBudget(limit: connections)
        let app = Application(
            responder: responder,
            server: .http1(configuration: .init(additionalChannelHandlers: [RequestDeadline(seconds: requestTimeout, budget: budget)])),
            configuration: .init(address: .hostname(host, port: Int(port)), backlog: 1024, availableConnectionsDelegate: budget),
            onServerRunning: { channel in bound.set(.success(channel.localAddress?.port ?? 0)) },
            logger: logger)
        let finished = DispatchSemaphore(value: 0)
        task = Task {
            do {
                if handlesSignals { try await app.runService() } else { try await app.run() }
            } catch {
                bound.set(.failure(error))   // bind errors; ignored once the server ran
            }
            finished.signal()
        }
        self.finished = finished
        self.host = host
        self.port = UInt16(try bound.wait())
    }

    /// A server whose handler blocks (sleeps, computes): each request's handler runs on a thread of its own.
    public convenience init(host: String = "127.0.0.1", port: UInt16 = 0, requestTimeout: Int = 30,
                            blocking handler: @escaping @Sendable (HTTPRequest) -> HTTPResponse) throws {
        try self.init(host: host, port: port, requestTimeout: requestTimeout) { request in
            await offload(to: .global()) { handler(request) }
        }
    }

    public var baseURL: String { "http://\(host):\(port)" }

    /// Stops listening and closes every connection, then returns.
    public func stop() {
        task.cancel()
        wait()
    }

    /// Returns once the server has stopped (after a signal, with `handlesSignals`, or `stop()`).
    public func wait() {
        finished.wait()
        finished.signal()   // later callers return too
    }

    /// Connections the descriptor limit leaves room for: a quarter or at least 64 descriptors stay for model files,
    /// uploads and the listener, so the server stops accepting before the process runs out.
    public static func connectionLimit() -> Int {
        var limit = rlimit()
        guard getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit) == 0, limit.rlim_cur != rlim_t.max else { return maximumConnections }
        let descriptors = Int(clamping: limit.rlim_cur)
        return max(8, min(maximumConnections, descriptors - max(64, descriptors / 4)))
    }

    private static func respond(to request: Request, maximumBody: Int, handler: Handler) async -> Response {
        if let length = request.headers[.contentLength].flatMap(Int.init), length > maximumBody {
            return Self.tooLarge(maximumBody)   // refused from the header; the connection closes unread
        }
        var request = request
        let body: ByteBuffer
        do {
            body = try await request.collectBody(upTo: maximumBody)
        } catch {
            return Self.tooLarge(maximumBody)
        }
        var headers: [String: String] = [:]
        for field in request.headers { headers[field.name.canonicalName] = field.value }
        return Self.response(await handler(HTTPRequest(method: request.method.rawValue, path: request.head.path ?? "/", headers: headers,
                                                       body: Data(buffer: body))))
    }

    /// Hummingbird's form of a handler's response.
    private static func response(_ response: HTTPResponse) -> Response {
        var fields = HTTPFields()
        for (name, value) in response.headers.sorted(by: { $0.key < $1.key }) {
            if let name = HTTPField.Name(name) { fields[name] = value }
        }
        guard let stream = response.stream else {
            return Response(status: .init(code: response.status), headers: fields, body: .init(byteBuffer: ByteBuffer(bytes: response.body)))
        }
        return Response(status: .init(code: response.status), headers: fields, body: .init { writer in
            do {
                for await data in stream.pieces { try await writer.write(ByteBuffer(bytes: data)) }
                try await writer.finish(nil)
            } catch {
                stream.finish()   // the client has gone: the producer's next send says so
                throw error
            }
        })
    }

    private static func tooLarge(_ limit: Int) -> Response {
        var refusal = HTTPResponse.error("the request body is larger than the server's limit of \(limit) bytes", status: 413)
        refusal.headers["Connection"] = "close"   // the body is never read
        return response(refusal)
    }
}

/// A response body its producer writes piece by piece while the server sends it; the producer learns from `send`
/// when the client has gone, and stops.
public final class ResponseStream: Sendable {
    let pieces: AsyncStream<Data>
    private let continuation: AsyncStream<Data>.Continuation

    public init() { (pieces, continuation) = AsyncStream.makeStream() }

    /// Queues `data`; false once the client has gone (or the stream is finished).
    @discardableResult
    public func send(_ data: Data) -> Bool {
        if case .terminated = continuation.yield(data) { return false }
        return true
    }

    /// The body is complete (also what the server does when the client goes: later sends return false).
    public func finish() { continuation.finish() }
}

/// Runs blocking work (model compute, large JSON, sleeps) on `queue`, off Swift's cooperative pool and the event loops.
public func offload<T: Sendable>(to queue: DispatchQueue, _ work: @escaping @Sendable () -> T) async -> T {
    await withCheckedContinuation { continuation in queue.async { continuation.resume(returning: work()) } }
}

/// The open connections against their limit. At the limit, the connection that has waited longest for a request to
/// begin is closed, as nginx reuses connections when it runs out, so that clients sending requests get in while idle
/// ones hold every descriptor: an idle keep-alive connection, or one yet to send its first request head (silent or
/// stalled) once it has had `firstRequestGrace` (sooner, clients that reconnect at once would close each other in a
/// storm). A connection whose request head is in (reading its body, computing, answering) is never closed for room.
/// Room is made when a connection opens at the limit and, while at it, whenever one becomes closable; the server
/// accepts again once the count is below the limit.
final class ConnectionBudget: AvailableConnectionsDelegate, @unchecked Sendable {
    static let firstRequestGrace = TimeAmount.seconds(1)
    private let limit: Int
    private let lock = NSLock()
    private var open = 0
    /// Connections between requests: since when, and whether they have been answered before.
    private var waiting: [ObjectIdentifier: (channel: any Channel, since: NIODeadline, answered: Bool)] = [:]
    /// Connections closed for room and not yet gone.
    private var closing: Set<ObjectIdentifier> = []

    init(limit: Int) { self.limit = max(1, limit) }

    func connectionOpened() {
        lock.withLock { open += 1 }
        makeRoom()
    }

    func connectionClosed() { lock.withLock { open -= 1 } }

    func isAcceptingNewConnections() -> Bool { lock.withLock { open < limit } }

    /// `channel` waits for its first request (`answered` false) or its next one.
    func waitsForRequest(_ channel: any Channel, answered: Bool) {
        lock.withLock { waiting[ObjectIdentifier(channel)] = (channel, .now(), answered) }
        makeRoom()
    }

    /// `channel`'s request head is in, or the channel is gone.
    func isBusyOrGone(_ channel: any Channel) {
        lock.withLock {
            waiting[ObjectIdentifier(channel)] = nil
            closing.remove(ObjectIdentifier(channel))
        }
    }

    /// At the limit, closes the connection that has waited longest among those that may be closed for room.
    func makeRoom() {
        let longestWaiting: (any Channel)? = lock.withLock {
            guard open - closing.count >= limit else { return nil }
            let graceEnded = NIODeadline.now() - Self.firstRequestGrace
            guard let oldest = waiting.filter({ $0.value.answered || $0.value.since <= graceEnded })
                .min(by: { $0.value.since < $1.value.since }) else { return nil }
            waiting[oldest.key] = nil
            closing.insert(oldest.key)
            return oldest.value.channel
        }
        longestWaiting?.close(promise: nil)
    }
}

/// Per connection: a request must be completely in within the timeout of the connection becoming ready for it (open,
/// or its previous response written), else the client gets 408 and the connection closes. Also closes the
/// connection after a response that says `Connection: close` (a refused body is then never read), and tells the
/// budget when the connection waits for a request.
final class RequestDeadline: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPRequestPart
    typealias InboundOut = HTTPRequestPart
    typealias OutboundIn = HTTPResponsePart
    typealias OutboundOut = HTTPResponsePart

    private let timeout: TimeAmount
    private let budget: ConnectionBudget
    private var timer: Scheduled<Void>?
    /// Requests read completely and not yet answered (clients may pipeline).
    private var pending = 0
    private var closeAfterResponse = false
    /// A request's head is in, its end not yet (a pipelined one may begin before the previous answer is written).
    private var readingRequest = false

    init(seconds: Int, budget: ConnectionBudget) {
        timeout = .seconds(Int64(seconds))
        self.budget = budget
    }

    func handlerAdded(context: ChannelHandlerContext) {
        if context.channel.isActive { waitForFirstRequest(context) }
    }

    func channelActive(context: ChannelHandlerContext) {
        waitForFirstRequest(context)
        context.fireChannelActive()
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        timer?.cancel()
        timer = nil
        budget.isBusyOrGone(context.channel)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head:
            readingRequest = true
            budget.isBusyOrGone(context.channel)
        case .body:
            break
        case .end:
            readingRequest = false
            pending += 1
            timer?.cancel()
            timer = nil
        }
        context.fireChannelRead(data)
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        switch unwrapOutboundIn(data) {
        case .head(let head):
            closeAfterResponse = head.headerFields[.connection] == "close"
        case .body:
            break
        case .end:
            if closeAfterResponse {
                context.writeAndFlush(data, promise: promise)
                context.close(promise: nil)
                return
            }
            pending = max(0, pending - 1)
            guard pending == 0 else { break }
            armDeadline(context)
            // Closable for room only once the answer is out (closed sooner, the answer would be lost).
            let written = context.eventLoop.makePromise(of: Void.self)
            written.futureResult.assumeIsolated().whenSuccess { [self] in
                if pending == 0, !readingRequest { budget.waitsForRequest(context.channel, answered: true) }
            }
            promise.map(written.futureResult.cascade(to:))
            context.write(data, promise: written)
            return
        }
        context.write(data, promise: promise)
    }

    /// A new connection: its deadline, and closable for room once its grace is over.
    private func waitForFirstRequest(_ context: ChannelHandlerContext) {
        armDeadline(context)
        budget.waitsForRequest(context.channel, answered: false)
        context.eventLoop.assumeIsolated().scheduleTask(in: ConnectionBudget.firstRequestGrace) { [budget] in budget.makeRoom() }
    }

    private func armDeadline(_ context: ChannelHandlerContext) {
        timer?.cancel()
        timer = context.eventLoop.assumeIsolated().scheduleTask(in: timeout) { [self] in
            timer = nil
            let head = HTTPTypes.HTTPResponse(status: .requestTimeout, headerFields: [.connection: "close", .contentLength: "0"])
            context.write(wrapOutboundOut(.head(head)), promise: nil)
            context.writeAndFlush(wrapOutboundOut(.end(nil)), promise: nil)
            context.close(promise: nil)
        }
    }
}

/// A value one task sets once and a thread waits for.
private final class Outcome<T: Sendable>: @unchecked Sendable {
    private let ready = DispatchSemaphore(value: 0)
    private let lock = NSLock()
    private var result: Result<T, Error>?

    func set(_ value: Result<T, Error>) {
        lock.lock()
        defer { lock.unlock() }
        guard result == nil else { return }
        result = value
        ready.signal()
    }

    func wait() throws -> T {
        ready.wait()
        ready.signal()
        lock.lock()
        defer { lock.unlock() }
        return try result!.get()
    }
}
