import Foundation
import FuzzSupport
import StitchGraph

/// YAML graph validation against the standard registry (no model is loaded by validation).
let registry = OperationRegistry.standard()

// Also libFuzzer's usual entry, which its runtime references.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ start: UnsafePointer<UInt8>, _ count: Int) -> CInt {
    _ = try? Graph.parse(String(decoding: UnsafeBufferPointer(start: start, count: count), as: UTF8.self), file: "/tmp/stitch-fuzz/graph.yaml", registry: registry)
    return 0
}

@_cdecl("FuzzGraph_main")
func entryPoint(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> CInt { fuzzerMain(argc, argv, fuzz) }
