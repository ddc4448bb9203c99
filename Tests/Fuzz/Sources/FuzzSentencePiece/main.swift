import Foundation
import FuzzSupport
import StitchTokenizers

/// A SentencePiece model file (protobuf), then encoding a fixed text with it.
// Also libFuzzer's usual entry, which its runtime references.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ start: UnsafePointer<UInt8>, _ count: Int) -> CInt {
    guard let model = try? SentencePieceModel(data: Data(bytes: start, count: count), file: "fuzz.model") else { return 0 }
    _ = model.encode("Hello wörld, a photo of 2 cats ▁▁ 你好")
    return 0
}

@_cdecl("FuzzSentencePiece_main")
func entryPoint(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> CInt { fuzzerMain(argc, argv, fuzz) }
