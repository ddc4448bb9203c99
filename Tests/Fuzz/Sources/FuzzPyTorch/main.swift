import Foundation
import FuzzSupport
import StitchModelIO

/// A PyTorch checkpoint: zip container (or legacy tar/pickle) and the allow-list unpickler, then every tensor read.
// Also libFuzzer's usual entry, which its runtime references.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ start: UnsafePointer<UInt8>, _ count: Int) -> CInt {
    withInputFile(start, count, suffix: ".bin") { path in
        guard let file = try? PyTorchCheckpoint(path: path) else { return }
        for name in file.tensorNames { _ = try? file.entry(name) }
    }
    return 0
}

@_cdecl("FuzzPyTorch_main")
func entryPoint(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> CInt { fuzzerMain(argc, argv, fuzz) }
