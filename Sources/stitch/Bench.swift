import ArgumentParser
import CBLAS
import Foundation
import StitchTensor

/// Benchmarks printed as ratios against a reference run side by side.
/// Today: the tensor core's products against raw OpenBLAS sgemm on the GEMM
/// shapes of CLIP ViT-B/32 and GPT-2 small; model rows join as models land.
struct Bench: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Measure Stitch against its references and print the ratios.")

    @Option(help: "Minimum seconds spent timing each side of each row.")
    var seconds = 0.3

    @Option(help: "Threads for OpenBLAS and parallel loops (default: all cores).")
    var threads = Parallel.cores

    func run() throws {
        BLAS.configureThreads(threads)
        print("stitch bench: \(threads) thread(s), OpenBLAS \(String(cString: openblas_get_config()))")
        try GemmBench(seconds: seconds).run()
    }
}

/// Best time of repeated calls, after a warm-up, over at least `seconds`.
func bestTime(seconds: Double, _ body: () -> Void) -> Double {
    body()
    var best = Double.infinity
    let start = DispatchTime.now().uptimeNanoseconds
    var runs = 0
    repeat {
        let t0 = DispatchTime.now().uptimeNanoseconds
        body()
        best = min(best, Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9)
        runs += 1
    } while runs < 3 || Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9 < seconds
    return best
}

struct GemmBench {
    let seconds: Double

    /// (label, rows m, inputs k, outputs n): x [m, k] times a PyTorch-layout weight [n, k].
    static let shapes: [(String, Int, Int, Int)] = [
        ("CLIP-B/32 vision patch embed", 49, 3072, 768),
        ("CLIP-B/32 vision q/k/v/out (50 tok)", 50, 768, 768),
        ("CLIP-B/32 vision mlp fc1", 50, 768, 3072),
        ("CLIP-B/32 vision mlp fc2", 50, 3072, 768),
        ("CLIP-B/32 vision fc1, batch 16", 800, 768, 3072),
        ("CLIP text q/k/v/out (45x16 tok)", 720, 512, 512),
        ("CLIP text mlp fc1 (45x16 tok)", 720, 512, 2048),
        ("CLIP text mlp fc2 (45x16 tok)", 720, 2048, 512),
        ("GPT-2 c_attn prefill (64 tok)", 64, 768, 2304),
        ("GPT-2 mlp c_fc prefill (64 tok)", 64, 768, 3072),
        ("GPT-2 mlp c_proj prefill (64 tok)", 64, 3072, 768),
        ("GPT-2 c_attn decode (1 tok)", 1, 768, 2304),
        ("GPT-2 c_fc decode, 45 candidates", 45, 768, 3072),
        ("GPT-2 LM head decode (1 tok)", 1, 768, 50257),
    ]

    func run() throws {
        print("")
        print("sgemm: tensor core `matmul` (allocates its output) vs raw cblas_sgemm into a preallocated buffer")
        let header = "shape".padding(toLength: 38, withPad: " ", startingAt: 0) + "   m     k     n   stitch GF/s   openblas GF/s   ratio"
        print(header)
        print(String(repeating: "-", count: header.count))
        var worst = Double.infinity
        for (label, m, k, n) in Self.shapes {
            let x = Tensor(shape: [m, k], scalars: (0..<m * k).map { Float(($0 * 7919) % 1000) / 1000 - 0.5 })
            let w = Tensor(shape: [n, k], scalars: (0..<n * k).map { Float(($0 * 104_729) % 1000) / 1000 - 0.5 })
            var output = Tensor(zeros: [m, n])
            let stitch = bestTime(seconds: seconds) { _ = matmul(x, w, transposeB: true) }
            let raw = bestTime(seconds: seconds) {
                x.withUnsafeBufferPointer { xp in
                    w.withUnsafeBufferPointer { wp in
                        output.withUnsafeMutableBufferPointer { op in
                            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, Int32(m), Int32(n), Int32(k), 1,
                                        xp.baseAddress, Int32(k), wp.baseAddress, Int32(k), 0, op.baseAddress, Int32(n))
                        }
                    }
                }
            }
            let flops = 2.0 * Double(m * k * n)
            let ratio = raw / stitch
            worst = min(worst, ratio)
            print(label.padding(toLength: 38, withPad: " ", startingAt: 0)
                  + String(format: "%4d  %4d  %5d   %11.1f   %13.1f   %5.2f", m, k, n, flops / stitch / 1e9, flops / raw / 1e9, ratio))
        }
        print(String(format: "lowest ratio (stitch / openblas throughput): %.2f", worst))
    }
}
