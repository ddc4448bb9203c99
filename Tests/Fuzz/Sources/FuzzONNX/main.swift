import Foundation
import FuzzSupport
import StitchModelIO

/// An ONNX model: the protobuf graph, initializers and attributes.
// Also libFuzzer's usual entry, which its runtime references.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ start: UnsafePointer<UInt8>, _ count: Int) -> CInt {
    withInputFile(start, count, suffix: ".onnx") { path in _ = try? ONNXModel(path: path) }
    return 0
}

@_cdecl("FuzzONNX_main")
func entryPoint(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> CInt { fuzzerMain(argc, argv, fuzz) }
