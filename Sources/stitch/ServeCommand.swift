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

    @Option(help: "Address to listen on.")
    var host = "127.0.0.1"

    @Option(help: "Port (0: any free port; the address is printed on stderr).")
    var port: UInt16 = 8080

    @Option(help: "A graph served at POST /graphs/NAME (repeatable): NAME=FILE.yaml.")
    var graph: [String] = []

    @OptionGroup var hub: HubOptions

    func run() throws {
        let model = try GPT2(folder: hub.locator.resolveModel(lm, files: GPT2.files))
        _ = try model.requireTokenizer()
        let registry = OperationRegistry.standard()
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
            return Self.runGraph(runner, body: request.body)
        }
        let server = try HTTPServer(host: host, port: port, handler: service.handle)
        FileHandle.standardError.write(Data("stitch serve: listening on \(server.baseURL) (model \(service.backend.name)\(graphs.isEmpty ? "" : "; graphs \(graphs.keys.sorted().joined(separator: ", "))"))\n".utf8))
        while true { sleep(3600) }
    }

    /// Runs a graph on the JSON inputs of a request body; its outputs, or the error as a 400.
    static func runGraph(_ runner: GraphRunner, body: Data) -> HTTPResponse {
        guard let object = (try? JSONSerialization.jsonObject(with: body)) as? [String: Any],
              let inputs = try? object.mapValues(Value.init(json:)) else {
            return .error("the body must be a JSON object of the graph's inputs", status: 400)
        }
        switch waitForTask({ try await runner.run(inputs: inputs) }) {
        case .success(let outputs): return .json(outputs.mapValues(\.json))
        case .failure(let error): return .error("\(error)", status: 400)
        }
    }
}
