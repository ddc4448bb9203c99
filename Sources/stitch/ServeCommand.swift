import ArgumentParser
import Foundation
import StitchGraph
import StitchMethods
import StitchModelIO
import StitchModels
import StitchRemote

struct Serve: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Serve the local GPT-2 as an OpenAI-compatible completions server, and graphs as HTTP endpoints.",
        discussion: """
        POST /v1/completions takes OpenAI's fields (prompt, max_tokens, temperature (0: greedy), top_p, n, stop, \
        logprobs, seed); GET /v1/models lists the model. Each --graph name=file.yaml adds POST /graphs/name, whose \
        JSON body holds the graph's inputs and whose answer holds its outputs. Runs until interrupted.
        """)

    @Option(help: "GPT-2 model folder or hub id.")
    var lm = "gpt2"

    @Option(help: "Address to listen on. Beyond loopback it needs --api-key (or --insecure).")
    var host = "127.0.0.1"

    @Option(name: .customLong("api-key"), help: "Clients must send 'Authorization: Bearer KEY' (else STITCH_SERVE_API_KEY); never printed.")
    var apiKey: String?

    @Flag(help: "Serve beyond loopback without an API key.")
    var insecure = false

    @Option(help: "Port (0: any free port; the address is printed on stderr).")
    var port: UInt16 = 8080

    @Option(help: "A graph served at POST /graphs/NAME (repeatable): NAME=FILE.yaml.")
    var graph: [String] = []

    @OptionGroup var hub: HubOptions

    @OptionGroup var trust: GraphTrustOptions

    func validate() throws {
        if !Self.isLoopback(host) && key == nil && !insecure {
            throw ValidationError("--host \(host) is reachable from other machines: give --api-key (or STITCH_SERVE_API_KEY), or --insecure to serve without one")
        }
    }

    /// The key clients must present, if any.
    var key: String? {
        (apiKey ?? ProcessInfo.processInfo.environment["STITCH_SERVE_API_KEY"]).flatMap { $0.isEmpty ? nil : $0 }
    }

    static func isLoopback(_ host: String) -> Bool {
        host == "localhost" || host == "::1" || host.hasPrefix("127.")
    }

    /// Whether `request` carries `Authorization: Bearer <key>`; compared in time independent of where they differ.
    static func isAuthorized(_ request: HTTPRequest, key: String) -> Bool {
        let given = Array((request.headers["authorization"] ?? "").utf8), expected = Array("Bearer \(key)".utf8)
        guard given.count == expected.count else { return false }
        return zip(given, expected).reduce(UInt8(0)) { $0 | ($1.0 ^ $1.1) } == 0
    }

    func run() throws {
        let model = try GPT2(folder: hub.locator.resolveModel(lm, files: GPT2.files))
        _ = try model.requireTokenizer()
        let registry = trust.registry()
        var graphs: [String: Graph] = [:]
        for entry in graph {
            guard let equals = entry.firstIndex(of: "="), !entry[..<equals].isEmpty else { throw ValidationError("--graph takes NAME=FILE.yaml, got '\(entry)'") }
            let file = String(entry[entry.index(after: equals)...])
            graphs[String(entry[..<equals])] = try Graph.load(file, registry: registry)
        }
        let runners = graphs.mapValues { GraphRunner(graph: $0, registry: registry, cacheFolder: nil) }
        let service = CompletionService(backend: LocalCompletionBackend(model: model, name: URL(fileURLWithPath: lm).lastPathComponent)) { request in
            guard request.method == "POST", request.path.hasPrefix("/graphs/") else { return nil }
            let name = String(request.path.dropFirst("/graphs/".count))
            guard let runner = runners[name] else { return .error("no graph named '\(name)'", status: 404) }
            return Self.runGraph(runner, body: request.body, trust: registry.trust)
        }
        let key = self.key
        let server = try HTTPServer(host: host, port: port) { request in
            if let key, !Self.isAuthorized(request, key: key) {
                var refusal = HTTPResponse.error("missing or wrong API key (Authorization: Bearer ...)", status: 401)
                refusal.headers["WWW-Authenticate"] = "Bearer"
                return refusal
            }
            let faultsBefore = MappedFiles.faults
            let response = service.handle(request)
            if MappedFiles.faults != faultsBefore {
                return .error("\(MappedFiles.changedError()); restart stitch serve", status: 500)
            }
            return response
        }
        FileHandle.standardError.write(Data("stitch serve: listening on \(server.baseURL) (model \(service.backend.name)\(graphs.isEmpty ? "" : "; graphs \(graphs.keys.sorted().joined(separator: ", "))"))\n".utf8))
        while true { sleep(3600) }
    }

    /// Runs a graph on the JSON inputs of a request body; its outputs, or the error as a 400. Clients send images
    /// as data, {"base64": "..."}, held in a private file for the request; a path on the server is accepted only
    /// inside a folder the operator allowed, and the refusal is the same whether or not the file exists.
    static func runGraph(_ runner: GraphRunner, body: Data, trust: GraphTrust) -> HTTPResponse {
        guard let object = (try? JSONSerialization.jsonObject(with: body)) as? [String: Any],
              var inputs = try? object.mapValues(Value.init(json:)) else {
            return .error("the body must be a JSON object of the graph's inputs", status: 400)
        }
        var uploads: [URL] = []
        defer { for file in uploads { try? FileManager.default.removeItem(at: file) } }
        for (name, type) in runner.graph.inputs where type == .image {
            switch inputs[name] {
            case .object(let fields) where fields.count == 1 && fields["base64"] != nil:
                guard let encoded = fields["base64"]?.string, let data = Data(base64Encoded: encoded.filter { !$0.isWhitespace }), !data.isEmpty else {
                    return .error("input '\(name)': 'base64' must be the image's bytes in base64", status: 400)
                }
                let file = FileManager.default.temporaryDirectory.appendingPathComponent("stitch-upload-\(UUID().uuidString)")
                guard FileManager.default.createFile(atPath: file.path, contents: data, attributes: [.posixPermissions: 0o600]) else {
                    return .error("cannot hold the uploaded image", status: 500)
                }
                uploads.append(file)
                inputs[name] = .string(file.path)
            case .string(let path) where !trust.mayRead(path):
                return .error("input '\(name)': send the image as {\"base64\": \"...\"}; paths on the server are read only inside folders the operator allows (--allow-path)", status: 400)
            default: break
            }
        }
        let given = inputs
        switch waitForTask({ try await runner.run(inputs: given) }) {
        case .success(let outputs): return .json(outputs.mapValues(\.json))
        case .failure(let error): return .error("\(error)", status: 400)
        }
    }
}
