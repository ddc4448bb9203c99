import Foundation
import FuzzSupport
import StitchMethods
import StitchRemote

/// `stitch serve`'s completions and chat completions endpoints on arbitrary request bodies (the first byte picks
/// which): parameters parsed and range-checked, then answered by a backend that echoes, so the fuzzer reaches the
/// response path without a model.
struct EchoBackend: CompletionBackend {
    var name: String { "echo" }
    func complete(_ request: CompletionRequest, stream: CompletionStream?) throws -> [Completion] {
        (0..<request.count).map { _ in Completion(text: String(request.prompt.prefix(min(request.maxTokens, 1 << 16))), finishReason: "length") }
    }
    func chat(_ request: ChatRequest, stream: CompletionStream?) throws -> [Completion] {
        (0..<request.settings.count).map { _ in Completion(text: request.messages.text.prefix(64).description, finishReason: "stop") }
    }
}

// Also libFuzzer's usual entry, which its runtime references.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ start: UnsafePointer<UInt8>, _ count: Int) -> CInt {
    guard count > 0 else { return 0 }
    let body = Data(bytes: start + 1, count: count - 1)
    _ = CompletionService.respond(to: body, chat: start[0] & 1 == 1, backend: EchoBackend())
    return 0
}

@_cdecl("FuzzServeRequest_main")
func entryPoint(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> CInt { fuzzerMain(argc, argv, fuzz) }
