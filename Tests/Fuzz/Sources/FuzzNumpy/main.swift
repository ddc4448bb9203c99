import Foundation
import FuzzSupport
import StitchModelIO

/// A NumPy .npy file: magic, version, header dict (dtype, order, shape), then its data read as float32.
// Also libFuzzer's usual entry, which its runtime references.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ start: UnsafePointer<UInt8>, _ count: Int) -> CInt {
    withInputFile(start, count, suffix: ".npy") { path in _ = try? readNumpy(path) }
    return 0
}

@_cdecl("FuzzNumpy_main")
func entryPoint(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> CInt { fuzzerMain(argc, argv, fuzz) }
