import Foundation
import StitchMethods

/// OpenAI's API over a backend: GET /v1/models, POST /v1/completions and POST /v1/chat/completions, whole or
/// streamed as server-sent events. Completions run one at a time on a queue of their own (a model already uses every
/// core), so waiting requests hold no thread and cheap requests are answered meanwhile; a streamed completion stops
/// when its client goes. Other paths go to `fallback`.
public final class CompletionService: Sendable {
    public let backend: CompletionBackend
    private let modelQueue = DispatchQueue(label: "stitch.serve.model")
    private let fallback: @Sendable (HTTPRequest) async -> HTTPResponse?

    public init(backend: CompletionBackend, fallback: @escaping @Sendable (HTTPRequest) async -> HTTPResponse? = { _ in nil }) {
        self.backend = backend
        self.fallback = fallback
    }

    static let completionsPath = "/v1/completions", chatPath = "/v1/chat/completions"

    private var modelObject: [String: Any] { ["id": backend.name, "object": "model", "created": 0, "owned_by": "stitch"] }

    public func handle(_ request: HTTPRequest) async -> HTTPResponse {
        let path = request.path.split(separator: "?").first.map(String.init) ?? request.path
        switch (request.method, path) {
        case ("GET", "/v1/models"):
            return .json(["object": "list", "data": [modelObject]])
        case ("GET", "/v1/models/\(backend.name)"):
            return .json(modelObject)
        case ("POST", Self.completionsPath), ("POST", Self.chatPath):
            let chat = path == Self.chatPath
            let call: OpenAIWire.Call
            do {
                call = chat ? try OpenAIWire.parseChat(request.body) : try OpenAIWire.parseCompletions(request.body)
            } catch {
                return Self.refusal(error)
            }
            if call.stream { return await stream(call, chat: chat) }
            return await offload(to: modelQueue) { [backend] in Self.answer(call, chat: chat, backend: backend) }
        case (_, "/v1/models"), (_, Self.completionsPath), (_, Self.chatPath):
            return .error("\(request.method) is not allowed on \(path)", status: 405)
        default:
            return await fallback(request) ?? .error("no route \(request.method) \(path)", status: 404)
        }
    }

    /// The whole answer to a completions (`chat` false) or chat completions request body.
    public static func respond(to body: Data, chat: Bool, backend: CompletionBackend) -> HTTPResponse {
        do {
            var call = chat ? try OpenAIWire.parseChat(body) : try OpenAIWire.parseCompletions(body)
            call.stream = false
            return answer(call, chat: chat, backend: backend)
        } catch {
            return refusal(error)
        }
    }

    private static func answer(_ call: OpenAIWire.Call, chat: Bool, backend: CompletionBackend) -> HTTPResponse {
        do {
            let completions = try run(call, chat: chat, backend: backend, stream: nil)
            let logprobs = call.requests[0].logprobs
            let choices = completions.enumerated().map { index, c in
                chat ? OpenAIWire.chatChoice(c, index: index, logprobs: logprobs) : OpenAIWire.completionChoice(c, index: index, logprobs: logprobs)
            }
            var body = OpenAIWire.envelope(id: identifier(chat: chat), object: chat ? "chat.completion" : "text_completion", model: backend.name,
                                           created: Int(Date().timeIntervalSince1970), choices: choices)
            body["usage"] = OpenAIWire.usage(completions, count: call.count)
            return .json(body)
        } catch {
            return failure(error)
        }
    }

    /// Every prompt's completions, choices numbered prompt by prompt (prompt i's choice j is i * n + j).
    private static func run(_ call: OpenAIWire.Call, chat: Bool, backend: CompletionBackend, stream: CompletionStream?) throws -> [Completion] {
        var all: [Completion] = []
        for (number, request) in call.requests.enumerated() {
            let first = number * call.count
            let numbered = stream.map { send in { (choice: Int, piece: Completion) throws in try send(first + choice, piece) } }
            all += try chat ? backend.chat(call.chat!, stream: numbered) : backend.complete(request, stream: numbered)
        }
        return all
    }

    /// Server-sent events as the API sends them: chunks as text is generated, each choice's last with its finish
    /// reason, the usage when asked (stream_options.include_usage), then [DONE]. A request refused before its first
    /// chunk gets an error response instead; an error after it, an error event.
    private func stream(_ call: OpenAIWire.Call, chat: Bool) async -> HTTPResponse {
        let events = ResponseStream()
        let backend = self.backend
        let (id, created) = (Self.identifier(chat: chat), Int(Date().timeIntervalSince1970))
        let object = chat ? "chat.completion.chunk" : "text_completion"
        let logprobs = call.requests[0].logprobs
        return await withCheckedContinuation { (reply: CheckedContinuation<HTTPResponse, Never>) in
            let replied = ReplyOnce(reply)
            modelQueue.async {
                var textSent: [Int: Int] = [:]
                func send(_ choices: [[String: Any]], extra: [String: Any] = [:]) throws {
                    replied.resume(.eventStream(events))
                    let chunk = OpenAIWire.envelope(id: id, object: object, model: backend.name, created: created, choices: choices).merging(extra) { $1 }
                    guard events.send(OpenAIWire.event(chunk)) else { throw CancellationError() }
                }
                let onPiece: CompletionStream = { index, piece in
                    let final = !piece.finishReason.isEmpty
                    if chat {
                        if textSent[index] == nil {
                            try send([["index": index, "delta": ["role": "assistant", "content": ""], "logprobs": NSNull(), "finish_reason": NSNull()]])
                        }
                        if !piece.text.isEmpty || !piece.tokens.isEmpty {
                            try send([["index": index, "delta": ["content": piece.text], "logprobs": logprobs ? OpenAIWire.chatLogprobs(piece) : NSNull(),
                                       "finish_reason": NSNull()]])
                        }
                        if final { try send([["index": index, "delta": [String: Any](), "logprobs": NSNull(), "finish_reason": piece.finishReason]]) }
                    } else {
                        try send([OpenAIWire.completionChoice(piece, index: index, logprobs: logprobs, textOffset: textSent[index] ?? 0, final: final)])
                    }
                    textSent[index, default: 0] += ((piece.echo?.text ?? "") + piece.text).unicodeScalars.count
                }
                do {
                    let completions = try Self.run(call, chat: chat, backend: backend, stream: onPiece)
                    if call.includeUsage { try send([], extra: ["usage": OpenAIWire.usage(completions, count: call.count)]) }
                    events.send(OpenAIWire.done)
                } catch is CancellationError {
                    // The client went: nothing to tell it.
                } catch {
                    let response = Self.failure(error)
                    if !replied.resume(response) { events.send(OpenAIWire.event((try? JSONSerialization.jsonObject(with: response.body)) ?? [:])) }
                }
                replied.resume(.eventStream(events))
                events.finish()
            }
        }
    }

    private static func identifier(chat: Bool) -> String { (chat ? "chatcmpl-" : "cmpl-") + UUID().uuidString.lowercased() }

    static func refusal(_ error: WireError) -> HTTPResponse {
        .json(["error": ["message": error.message, "type": "invalid_request_error", "param": error.parameter ?? NSNull(), "code": NSNull()] as [String: Any]],
              status: 400)
    }

    /// A request the backend refused is the client's error (400); anything else is the server's (500).
    static func failure(_ error: Error) -> HTTPResponse {
        if let error = error as? CompletionError, case .invalidRequest = error { return refusal(WireError(error.description)) }
        return .error("\(error)", status: 500)
    }
}

/// Answers a waiting request once: the first of a stream's start or an error before it.
private final class ReplyOnce: @unchecked Sendable {
    private let lock = NSLock()
    private var reply: CheckedContinuation<HTTPResponse, Never>?

    init(_ reply: CheckedContinuation<HTTPResponse, Never>) { self.reply = reply }

    /// Whether this call answered (false: answered before).
    @discardableResult
    func resume(_ response: HTTPResponse) -> Bool {
        let waiting: CheckedContinuation<HTTPResponse, Never>? = lock.withLock {
            defer { reply = nil }
            return reply
        }
        waiting?.resume(returning: response)
        return waiting != nil
    }
}
