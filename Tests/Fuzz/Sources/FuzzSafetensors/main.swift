import Foundation
import FuzzSupport
import StitchModelIO

/// A safetensors file: header, offsets, dtypes and shapes, then every tensor read.
// Also libFuzzer's usual entry, which its runtime references.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ start: UnsafePointer<UInt8>, _ count: Int) -> CInt {
    withInputFile(start, count, suffix: ".safetensors") { path in
        guard let file = try? SafetensorsFile(path: path) else { return }
        for name in file.tensors.keys { _ = try? file.tensor(name) }
    }
    return 0
}

@_cdecl("FuzzSafetensors_main")
func entryPoint(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> CInt { fuzzerMain(argc, argv, fuzz) }
