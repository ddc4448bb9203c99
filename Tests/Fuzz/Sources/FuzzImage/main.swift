import Foundation
import FuzzSupport
import StitchImaging

/// JPEG and PNG decoding (size limits from the header), then CLIP-style preprocessing of what decodes.
// Also libFuzzer's usual entry, which its runtime references.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ start: UnsafePointer<UInt8>, _ count: Int) -> CInt {
    guard let image = try? RGBImage(data: Data(bytes: start, count: count), name: "fuzz") else { return 0 }
    _ = image.resized(width: 7, height: 5)
    return 0
}

@_cdecl("FuzzImage_main")
func entryPoint(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> CInt { fuzzerMain(argc, argv, fuzz) }
