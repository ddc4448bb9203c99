import Foundation
import FuzzSupport
import StitchTokenizers

/// A tokenizer.json (its regexes included), then encoding a fixed text with it and decoding ids.
// Also libFuzzer's usual entry, which its runtime references.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ start: UnsafePointer<UInt8>, _ count: Int) -> CInt {
    withInputFile(start, count, suffix: ".json") { path in
        guard let tokenizer = try? TokenizerJSON(file: path) else { return }
        _ = try? tokenizer.encode("Hello wörld, a photo of 2 cats ▁▁ 你好 <s> <|im_start|>\n\n  😀 12345 don't")
        _ = try? tokenizer.decode(Array(0..<64) + [-1, 1 << 40])
    }
    return 0
}

@_cdecl("FuzzTokenizerJSON_main")
func entryPoint(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> CInt { fuzzerMain(argc, argv, fuzz) }
