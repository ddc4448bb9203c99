import Foundation
import FuzzSupport
import StitchMethods
import StitchRemote

/// `stitch serve`'s completions endpoint on arbitrary request bodies: parameters parsed and range-checked, then
/// answered by a backend that echoes, so the fuzzer reaches the response path without a model.
struct EchoBackend: CompletionBackend {
    var name: String { "echo" }
    func complete(_ request: CompletionRequest) throws -> [Completion] {
        (0..<request.count).map { _ in Completion(text: String(request.prompt.prefix(request.maxTokens)), finishReason: "length") }
    }
}

// Also libFuzzer's usual entry, which its runtime references.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ start: UnsafePointer<UInt8>, _ count: Int) -> CInt {
    let body = Data(bytes: start, count: count)
    _ = CompletionService.complete(body, backend: EchoBackend())
    return 0
}

@_cdecl("FuzzServeRequest_main")
func entryPoint(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> CInt { fuzzerMain(argc, argv, fuzz) }
