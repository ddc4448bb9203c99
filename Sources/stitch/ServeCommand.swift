import ArgumentParser
import Foundation
import StitchGraph
import StitchMethods
import StitchModelIO
import StitchModels
import StitchRemote
import StitchTokenizers

struct Serve: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Serve a local language model as an OpenAI-compatible server (completions and chat), and graphs as HTTP endpoints.",
        discussion: """
        POST /v1/completions takes OpenAI's fields (prompt: a string, a list of strings or token ids; max_tokens, \
        temperature (0: greedy), top_p, n, stop, logprobs (0-5), echo, seed, stream, stream_options). \
        POST /v1/chat/completions renders the messages with the model's chat template (tokenizer_config.json), the \
        reply ending at its eos_token (also logprobs, top_logprobs, max_completion_tokens, tools for templates that \
        use them). Both stream server-sent events with stream: true and report usage; invalid parameters are 400 \
        with the API's error object. GET /v1/models lists the model. Each --graph name=file.yaml adds POST \
        /graphs/name, whose JSON body holds the graph's inputs and whose answer holds its outputs. Runs until interrupted.
        """)

    @Option(help: "Language model folder or hub id (GPT-2 or a Llama-architecture model with its tokenizer).")
    var lm = "gpt2"

    @Option(help: "Address to listen on. Beyond loopback it needs --api-key (or --insecure).")
    var host = "127.0.0.1"

    @Option(name: .customLong("api-key"), help: "Clients must send 'Authorization: Bearer KEY' (else STITCH_SERVE_API_KEY); never printed.")
    var apiKey: String?

    @Flag(help: "Serve beyond loopback without an API key.")
    var insecure = false

    @Option(help: "Port (0: any free port; the address is printed on stderr).")
    var port: UInt16 = 8080

    @Option(name: .customLong("max-body-mb"), help: "Largest request body in MB (a base64 image is 4/3 of its file).")
    var maxBodyMB = 16

    @Option(help: "A graph served at POST /graphs/NAME (repeatable): NAME=FILE.yaml.")
    var graph: [String] = []

    @OptionGroup var hub: HubOptions

    @OptionGroup var precision: PrecisionOptions

    @OptionGroup var trust: GraphTrustOptions

    func validate() throws {
        guard (1...4096).contains(maxBodyMB) else { throw ValidationError("--max-body-mb must be in 1...4096") }
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
        let model = try hub.load(lm, as: (any CausalLanguageModel).self, precision: precision)
        _ = try model.decode([])   // a server needs the model's tokenizer: refused now, not at the first request
        // The folder the model came from (a hub id's snapshot is cached by now) holds its chat template, if any.
        let chatTemplate = try ChatTemplate(folder: try hub.locator.resolveModel(lm, files: .configOnly))
        let registry = trust.registry()
        var graphs: [String: Graph] = [:]
        for entry in graph {
            guard let equals = entry.firstIndex(of: "="), !entry[..<equals].isEmpty else { throw ValidationError("--graph takes NAME=FILE.yaml, got '\(entry)'") }
            let file = String(entry[entry.index(after: equals)...])
            graphs[String(entry[..<equals])] = try Graph.load(file, registry: registry)
        }
        let runners = graphs.mapValues { GraphRunner(graph: $0, registry: registry, cacheFolder: nil) }
        let backend = LocalCompletionBackend(model: model, name: URL(fileURLWithPath: lm).lastPathComponent, chatTemplate: chatTemplate)
        let service = CompletionService(backend: backend) { request in
            guard request.method == "POST", request.path.hasPrefix("/graphs/") else { return nil }
            let name = String(request.path.dropFirst("/graphs/".count))
            guard let runner = runners[name] else { return .error("no graph named '\(name)'", status: 404) }
            return await Self.runGraph(runner, body: request.body, trust: registry.trust)
        }
        let key = self.key
        let server: HTTPServer
        do {
            server = try HTTPServer(host: host, port: port, maximumBody: maxBodyMB << 20, handlesSignals: true) { request in
                if let key, !Self.isAuthorized(request, key: key) {
                    var refusal = HTTPResponse.error("missing or wrong API key (Authorization: Bearer ...)", status: 401)
                    refusal.headers["WWW-Authenticate"] = "Bearer"
                    return refusal
                }
                let faultsBefore = MappedFiles.faults
                let response = await service.handle(request)
                if MappedFiles.faults != faultsBefore {
                    return .error("\(MappedFiles.changedError()); restart stitch serve", status: 500)
                }
                return response
            }
        } catch {
            throw ValidationError("cannot listen on \(host):\(port): \(error)")
        }
        let chat = chatTemplate == nil ? "; no chat template, so completions only" : "; chat template from \(chatTemplate!.file)"
        FileHandle.standardError.write(Data("stitch serve: listening on \(server.baseURL) (model \(service.backend.name)\(chat)\(graphs.isEmpty ? "" : "; graphs \(graphs.keys.sorted().joined(separator: ", "))"))\n".utf8))
        server.wait()
        FileHandle.standardError.write(Data("stitch serve: stopped\n".utf8))
    }

    /// Runs a graph on the JSON inputs of a request body; its outputs, or the error as a 400. Clients send images
    /// as data, {"base64": "..."}, held in a private file for the request; a path on the server is accepted only
    /// inside a folder the operator allowed, and the refusal is the same whether or not the file exists. The body
    /// is decoded off the cooperative pool (a large upload takes a while).
    static func runGraph(_ runner: GraphRunner, body: Data, trust: GraphTrust) async -> HTTPResponse {
        // Bulk work at utility priority: other clients' small requests go first.
        let prepared = await offload(to: .global(qos: .utility)) { prepareGraphInputs(runner.graph, body: body, trust: trust) }
        let inputs: [String: Value], uploads: [URL]
        switch prepared {
        case .failure(let refusal): return refusal.response
        case .success(let value): (inputs, uploads) = value
        }
        defer { for file in uploads { try? FileManager.default.removeItem(at: file) } }
        do {
            return .json(try await runner.run(inputs: inputs).mapValues(\.json))
        } catch {
            return .error("\(error)", status: 400)
        }
    }

    /// A refused request body, as the response to give.
    struct Refusal: Error {
        let response: HTTPResponse
        init(_ message: String, status: Int = 400) { response = .error(message, status: status) }
    }

    /// The graph's inputs from a request body, uploaded images written to private files (the caller removes them).
    static func prepareGraphInputs(_ graph: Graph, body: Data, trust: GraphTrust) -> Result<([String: Value], [URL]), Refusal> {
        // Value.parse reads numbers exactly (JSONSerialization on Linux can miss by an ulp).
        guard case .object(var inputs)? = try? Value.parse(json: String(decoding: body, as: UTF8.self)) else {
            return .failure(Refusal("the body must be a JSON object of the graph's inputs"))
        }
        var uploads: [URL] = []
        func refuse(_ refusal: Refusal) -> Result<([String: Value], [URL]), Refusal> {
            for file in uploads { try? FileManager.default.removeItem(at: file) }
            return .failure(refusal)
        }
        for (name, type) in graph.inputs where type == .image {
            switch inputs[name] {
            case .object(let fields) where fields.count == 1 && fields["base64"] != nil:
                // Line breaks allowed (as `base64` writes them); filtered as bytes, which is fast on megabytes.
                guard let encoded = fields["base64"]?.string,
                      let data = Data(base64Encoded: Data(encoded.utf8.filter { ![0x20, 0x09, 0x0A, 0x0D].contains($0) })), !data.isEmpty else {
                    return refuse(Refusal("input '\(name)': 'base64' must be the image's bytes in base64"))
                }
                let file = FileManager.default.temporaryDirectory.appendingPathComponent("stitch-upload-\(UUID().uuidString)")
                guard FileManager.default.createFile(atPath: file.path, contents: data, attributes: [.posixPermissions: 0o600]) else {
                    return refuse(Refusal("cannot hold the uploaded image", status: 500))
                }
                uploads.append(file)
                inputs[name] = .string(file.path)
            case .string(let path) where !trust.mayRead(path):
                return refuse(Refusal("input '\(name)': send the image as {\"base64\": \"...\"}; paths on the server are read only inside folders the operator allows (--allow-path)"))
            default: break
            }
        }
        return .success((inputs, uploads))
    }
}
