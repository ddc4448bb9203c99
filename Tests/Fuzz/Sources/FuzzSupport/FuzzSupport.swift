import Foundation

public typealias FuzzCallback = @convention(c) (UnsafePointer<UInt8>, Int) -> CInt

@_silgen_name("LLVMFuzzerRunDriver")
func runFuzzerDriver(_ argc: UnsafeMutablePointer<CInt>, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?>,
                     _ callback: FuzzCallback) -> CInt

/// SwiftPM links an executable's entry point under the name <Target>_main, so libFuzzer's own main is never
/// linked; each target's entry point calls this, which runs libFuzzer's driver on `callback`.
public func fuzzerMain(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?, _ callback: FuzzCallback) -> CInt {
    var count = argc, arguments = argv
    return runFuzzerDriver(&count, &arguments, callback)
}

/// libFuzzer's bytes as a file, for readers that take a path; removed afterwards.
public func withInputFile(_ start: UnsafePointer<UInt8>, _ count: Int, suffix: String, _ body: (String) -> Void) {
    let path = NSTemporaryDirectory() + "/stitch-fuzz-\(getpid())\(suffix)"
    FileManager.default.createFile(atPath: path, contents: Data(bytes: start, count: count))
    body(path)
    unlink(path)
}
