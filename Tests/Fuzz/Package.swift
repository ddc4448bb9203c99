// swift-tools-version:6.0
// Coverage-guided fuzz targets (libFuzzer) for Stitch's readers of untrusted input. Built and run by
// Scripts/fuzz with -sanitize=fuzzer,address and -parse-as-library; each target's entry point hands over to
// libFuzzer's driver (FuzzSupport).
import PackageDescription

let targets: [(name: String, modules: [String])] = [
    ("FuzzSafetensors", ["StitchModelIO"]),
    ("FuzzPyTorch", ["StitchModelIO"]),
    ("FuzzONNX", ["StitchModelIO"]),
    ("FuzzNumpy", ["StitchModelIO"]),
    ("FuzzImage", ["StitchImaging"]),
    ("FuzzGraph", ["StitchGraph"]),
    ("FuzzSentencePiece", ["StitchTokenizers"]),
    ("FuzzTokenizerJSON", ["StitchTokenizers"]),
    ("FuzzChatTemplate", ["StitchTokenizers"]),
    ("FuzzServeRequest", ["StitchRemote", "StitchMethods"]),
    ("FuzzCaptionEvaluation", ["StitchMethods"]),
]

let package = Package(
    name: "StitchFuzz",
    dependencies: [.package(name: "Stitch", path: "../..")],
    targets: [.target(name: "FuzzSupport", path: "Sources/FuzzSupport")] + targets.map { target in
        .executableTarget(name: target.name, dependencies: ["FuzzSupport"] + target.modules.map { .product(name: $0, package: "Stitch") },
                          path: "Sources/\(target.name)")
    }
)
