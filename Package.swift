// swift-tools-version:6.0
import PackageDescription

let package = Package(
    name: "Stitch",
    platforms: [.macOS(.v14)],
    products: [
        .executable(name: "stitch", targets: ["stitch"]),
        .library(name: "StitchTensor", targets: ["StitchTensor"]),
        .library(name: "StitchModelIO", targets: ["StitchModelIO"]),
        .library(name: "StitchImaging", targets: ["StitchImaging"]),
        .library(name: "StitchTokenizers", targets: ["StitchTokenizers"]),
        .library(name: "StitchModels", targets: ["StitchModels"]),
        .library(name: "StitchMethods", targets: ["StitchMethods"]),
        .library(name: "StitchGraph", targets: ["StitchGraph"]),
        .library(name: "StitchRemote", targets: ["StitchRemote"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/jpsim/Yams", from: "6.0.0"),
        .package(url: "https://github.com/hummingbird-project/hummingbird", from: "2.28.0"),
        .package(url: "https://github.com/apple/swift-nio", from: "2.101.0"),
        .package(url: "https://github.com/apple/swift-nio-extras", from: "1.35.0"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.0"),
        .package(url: "https://github.com/apple/swift-http-types", from: "1.8.0"),
    ],
    targets: [
        // C libraries from Debian's -dev packages, each wrapped once.
        .systemLibrary(name: "CBLAS", pkgConfig: "openblas", providers: [.apt(["libopenblas-dev"])]),
        .systemLibrary(name: "CJPEG", providers: [.apt(["libjpeg-dev"])]),
        .systemLibrary(name: "CPNG", pkgConfig: "libpng", providers: [.apt(["libpng-dev"])]),
        .systemLibrary(name: "CCurl", pkgConfig: "libcurl", providers: [.apt(["libcurl4-openssl-dev"])]),
        .systemLibrary(name: "CZlib", pkgConfig: "zlib", providers: [.apt(["zlib1g-dev"])]),
        .systemLibrary(name: "CDeflate", pkgConfig: "libdeflate", providers: [.apt(["libdeflate-dev"]), .brew(["libdeflate"])]),

        // Vectorised inner loops (activations, depthwise convolution) built for several x86-64 levels, picked at load time.
        .target(name: "CStitchKernels"),
        // A SIGBUS guard for memory-mapped files that shrink while in use (zero pages in place, the owner reports it).
        .target(name: "CMapGuard"),
        // Tensor core: Float32 tensors, BLAS-backed linear algebra, transformer building blocks.
        // OpenBLAS on Linux; Accelerate's CBLAS on macOS (Sources/CBLAS/shim.h).
        .target(name: "StitchTensor", dependencies: ["CBLAS", "CStitchKernels"],
                linkerSettings: [.linkedLibrary("openblas", .when(platforms: [.linux])), .linkedFramework("Accelerate", .when(platforms: [.macOS]))]),
        // Model I/O: safetensors and PyTorch checkpoints (allow-list unpickler), config.json, weight store, Hugging Face cache and downloads,
        // and the one HTTP client layer (libcurl, timeouts, retry policy) the downloads and remote LMs share.
        .target(name: "StitchModelIO", dependencies: ["StitchTensor", "CCurl", "CZlib", "CMapGuard"]),
        // Imaging: JPEG/PNG decoding (the common PNGs inflated by libdeflate, the rest by libpng), PIL-exact resampling, CLIP and ImageNet preprocessing.
        .target(name: "StitchImaging", dependencies: ["StitchTensor", "CJPEG", "CPNG", "CDeflate"]),
        // Tokenizers: GPT-2 byte-level BPE, CLIP BPE, BERT WordPiece, SentencePiece (unigram and BPE model files).
        .target(name: "StitchTokenizers", dependencies: ["StitchTensor", "StitchModelIO", "CZlib"]),
        // Models: CLIP, GPT-2, BERT sentence encoders, EfficientNet-Lite; one file each.
        .target(name: "StitchModels", dependencies: ["StitchTensor", "StitchModelIO", "StitchImaging", "StitchTokenizers"]),
        // Methods: decoding strategies (greedy, sampling, beam, contrastive) and MAGiC.
        .target(name: "StitchMethods", dependencies: ["StitchTensor", "StitchModelIO", "StitchImaging", "StitchTokenizers", "StitchModels", "CZlib", "CStitchKernels"]),
        // Remote language models: an OpenAI-compatible completions client (over StitchModelIO's HTTP layer) and the
        // HTTP server `stitch serve` runs on (Hummingbird over SwiftNIO).
        .target(name: "StitchRemote", dependencies: ["StitchModels", "StitchMethods", "StitchModelIO",
                                                     .product(name: "Hummingbird", package: "hummingbird"),
                                                     .product(name: "HummingbirdCore", package: "hummingbird"),
                                                     .product(name: "NIOCore", package: "swift-nio"),
                                                     .product(name: "NIOHTTPTypes", package: "swift-nio-extras"),
                                                     .product(name: "HTTPTypes", package: "swift-http-types"),
                                                     .product(name: "Logging", package: "swift-log")]),
        // Graph: YAML pipelines of components and operations, validated, then run in parallel with a result cache.
        .target(name: "StitchGraph", dependencies: ["StitchTensor", "StitchModelIO", "StitchImaging", "StitchModels", "StitchMethods", "StitchRemote",
                                                    .product(name: "Yams", package: "Yams")]),
        // The command-line tool.
        .executableTarget(name: "stitch", dependencies: [
            "StitchTensor", "StitchModelIO", "StitchImaging", "StitchTokenizers", "StitchModels", "StitchMethods", "StitchGraph", "StitchRemote", "CBLAS", "CStitchKernels",
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
        ], resources: [.copy("Resources/bench_reference.py"), .copy("Resources/magic_reference.py"), .copy("Resources/yolox_reference.py")]),

        .target(name: "StitchTestSupport", dependencies: ["StitchTensor", "StitchModelIO", "StitchModels", "StitchTokenizers"], path: "Tests/StitchTestSupport"),
        .testTarget(name: "StitchTensorTests", dependencies: ["StitchTensor", "StitchTestSupport", "CStitchKernels"]),
        .testTarget(name: "StitchModelIOTests", dependencies: ["StitchModelIO", "StitchTensor", "StitchRemote", "StitchTestSupport"]),
        .testTarget(name: "StitchImagingTests", dependencies: ["StitchImaging", "StitchTestSupport"]),
        .testTarget(name: "StitchTokenizersTests", dependencies: ["StitchTokenizers", "StitchTensor", "StitchTestSupport", "CZlib"]),
        .testTarget(name: "StitchModelsTests", dependencies: ["StitchModels", "StitchTestSupport", "CZlib"]),
        .testTarget(name: "StitchMethodsTests", dependencies: ["StitchMethods", "StitchModels", "StitchModelIO", "StitchImaging", "StitchTokenizers", "StitchTestSupport"]),
        .testTarget(name: "StitchGraphTests", dependencies: ["StitchGraph", "StitchRemote", "StitchMethods", "StitchModels", "StitchModelIO", "StitchImaging", "StitchTensor", "StitchTestSupport"]),
        .testTarget(name: "StitchRemoteTests", dependencies: ["StitchRemote", "StitchMethods", "StitchModels", "StitchModelIO", "StitchTokenizers", "StitchTestSupport"]),
        .testTarget(name: "StitchCLITests", dependencies: ["stitch", "StitchImaging", "StitchMethods", "StitchModelIO", "StitchModels", "StitchRemote", "StitchTensor", "StitchTokenizers", "StitchTestSupport"]),
    ]
)
