import Foundation
import FuzzSupport
import StitchMethods

/// Captions as `stitch eval captions` takes them (NUL-separated here, any bytes as UTF-8): the PTB tokenizer over them
/// as one text, then the scores of the first half against the second.
// Also libFuzzer's usual entry, which its runtime references.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ start: UnsafePointer<UInt8>, _ count: Int) -> CInt {
    let captions = String(decoding: UnsafeBufferPointer(start: start, count: count), as: UTF8.self)
        .split(separator: "\u{0}", omittingEmptySubsequences: false).map(String.init)
        .filter { $0.utf16.count <= CaptionTokenizer.maximumLength }
    let tokenized = CaptionTokenizer.tokenize(captions)
    let half = tokenized.count / 2
    if half > 0 {
        _ = CaptionMetrics.score(candidates: Array(tokenized[..<half]), references: tokenized[half..<2 * half].map { [$0] })
    }
    return 0
}

@_cdecl("FuzzCaptionEvaluation_main")
func entryPoint(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> CInt { fuzzerMain(argc, argv, fuzz) }
