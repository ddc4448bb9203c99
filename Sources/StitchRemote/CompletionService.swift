import Foundation
import StitchMethods

/// OpenAI's completions API over a backend: GET /v1/models and POST /v1/completions. Completions run one at a
/// time on a queue of their own (a model already uses every core), so waiting requests hold no thread and cheap
/// requests are answered meanwhile. Other paths go to `fallback`.
public final class CompletionService: Sendable {
    public let backend: CompletionBackend
    private let modelQueue = DispatchQueue(label: "stitch.serve.model")
    private let fallback: @Sendable (HTTPRequest) async -> HTTPResponse?

    public init(backend: CompletionBackend, fallback: @escaping @Sendable (HTTPRequest) async -> HTTPResponse? = { _ in nil }) {
        self.backend = backend
        self.fallback = fallback
    }

    public func handle(_ request: HTTPRequest) async -> HTTPResponse {
        let path = request.path.split(separator: "?").first.map(String.init) ?? request.path
        switch (request.method, path) {
        case ("GET", "/v1/models"):
            return .json(["object": "list", "data": [["id": backend.name, "object": "model", "owned_by": "stitch"]]])
        case ("POST", "/v1/completions"):
            return await offload(to: modelQueue) { [backend] in Self.complete(request.body, backend: backend) }
        case (_, "/v1/models"), (_, "/v1/completions"):
            return .error("\(request.method) is not allowed on \(path)", status: 405)
        default:
            return await fallback(request) ?? .error("no route \(request.method) \(path)", status: 404)
        }
    }

    /// The answer to a completions request body.
    public static func complete(_ body: Data, backend: CompletionBackend) -> HTTPResponse {
        do {
            let request = try CompletionWire.parseRequest(body)
            return .json(CompletionWire.responseBody(try backend.complete(request), model: backend.name, logprobs: request.logprobs))
        } catch let error as CompletionError {
            return .error(error.description, status: 400)
        } catch {
            return .error("\(error)", status: 500)
        }
    }
}
