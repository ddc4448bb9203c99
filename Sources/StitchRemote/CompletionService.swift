import Foundation
import StitchMethods

/// OpenAI's completions API over a backend: GET /v1/models and POST /v1/completions, one
/// request at a time (a model already uses every core). Other paths go to `fallback`.
public final class CompletionService: @unchecked Sendable {
    public let backend: CompletionBackend
    private let lock = NSLock()
    private let fallback: @Sendable (HTTPRequest) -> HTTPResponse?

    public init(backend: CompletionBackend, fallback: @escaping @Sendable (HTTPRequest) -> HTTPResponse? = { _ in nil }) {
        self.backend = backend
        self.fallback = fallback
    }

    public func handle(_ request: HTTPRequest) -> HTTPResponse {
        let path = request.path.split(separator: "?").first.map(String.init) ?? request.path
        switch (request.method, path) {
        case ("GET", "/v1/models"):
            return .json(["object": "list", "data": [["id": backend.name, "object": "model", "owned_by": "stitch"]]])
        case ("POST", "/v1/completions"):
            do {
                let completionRequest = try CompletionWire.parseRequest(request.body)
                lock.lock()
                defer { lock.unlock() }
                let completions = try backend.complete(completionRequest)
                return .json(CompletionWire.responseBody(completions, model: backend.name, logprobs: completionRequest.logprobs))
            } catch let error as CompletionError {
                return .error(error.description, status: 400)
            } catch {
                return .error("\(error)", status: 500)
            }
        case (_, "/v1/models"), (_, "/v1/completions"):
            return .error("\(request.method) is not allowed on \(path)", status: 405)
        default:
            return fallback(request) ?? .error("no route \(request.method) \(path)", status: 404)
        }
    }
}
