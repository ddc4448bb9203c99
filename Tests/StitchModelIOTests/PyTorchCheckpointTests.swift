import Foundation
import StitchTestSupport
import XCTest
@testable import StitchModelIO
@testable import StitchTensor

final class PyTorchCheckpointTests: XCTestCase {
    let views = Fixtures.url("checkpoints/views")
    let hostile = Fixtures.url("checkpoints/hostile")

    /// Strided views, shared storages, a scalar, an empty tensor and every dtype, written by torch.save in its
    /// zip format, its legacy format and the zip re-packed with deflate: each tensor's bytes equal the contiguous copy.
    func testEveryDtypeAndViewEqualsItsContiguousValues() throws {
        let expected = try SafetensorsFile(path: views.appendingPathComponent("expected.safetensors").path)
        for form in ["zip.bin", "legacy.bin", "deflated.bin"] {
            let checkpoint = try PyTorchCheckpoint(path: views.appendingPathComponent(form).path)
            XCTAssertEqual(Set(checkpoint.tensorNames), Set(expected.tensors.keys), form)
            for name in expected.tensors.keys.sorted() {
                let want = try expected.entry(name), got = try checkpoint.entry(name)
                XCTAssertEqual(got.dtype, want.dtype, "\(form) \(name)")
                XCTAssertEqual(got.shape, want.shape, "\(form) \(name)")
                XCTAssertEqual(got.bytes, want.bytes, "\(form) \(name)")
                if [.f32, .f16, .bf16].contains(want.dtype) {
                    XCTAssertEqual(try checkpoint.tensor(name).scalars, try expected.tensor(name).scalars, "\(form) \(name)")
                } else {
                    XCTAssertThrowsError(try checkpoint.tensor(name)) { XCTAssert("\($0)".contains(name), "\($0)") }
                }
            }
        }
    }

    /// Contiguous F32 tensors of an uncompressed zip checkpoint are used in place, not copied.
    func testContiguousFloatTensorsAreMemoryMapped() throws {
        let checkpoint = try PyTorchCheckpoint(path: views.appendingPathComponent("zip.bin").path)
        XCTAssertTrue(try checkpoint.tensor("base").storage.isReadOnly)
        XCTAssertFalse(try checkpoint.tensor("transposed").storage.isReadOnly)
    }

    /// Unused integer and boolean tensors are buffers (masks, position ids) and do not fail a load; unused floats do.
    func testUnusedBuffersAreNotProblems() throws {
        let checkpoint = try PyTorchCheckpoint(path: views.appendingPathComponent("zip.bin").path)
        let store = WeightStore(files: [checkpoint], source: "zip.bin")
        _ = store.take("base", shape: [4, 6])
        XCTAssertThrowsError(try store.finish()) { error in
            let message = "\(error)"
            XCTAssert(message.contains("unused tensor 'half'") && message.contains("unused tensor 'double'"), message)
            XCTAssertFalse(["'long'", "'byte'", "'bool'", "'int'"].contains { message.contains($0) }, message)
        }
    }

    /// Pickles that would run code or build anything but tensors are refused, naming the file and the global;
    /// nothing they ask for ever runs.
    func testMaliciousAndBrokenCheckpointsAreNamedErrors() throws {
        let sideEffect = "/tmp/stitch-pickle-side-effect"   // what make_fixtures.py's malicious pickles would create
        unlink(sideEffect)
        let cases: [(file: String, message: String)] = [
            ("os_system.bin", "posix.system"),
            ("builtins_eval.bin", "__builtin__.eval"),   // protocol 2 spells builtins the Python 2 way
            ("builtins_eval_legacy.bin", "__builtin__.eval"),
            ("numpy_array.bin", "numpy"),
            ("nested.bin", "'state_dict' holds a dict, not a tensor"),
            ("short_storage.bin", "storage '0' holds 16 bytes but claims 100 elements"),
            ("huge_claim.bin", "claims 25000000000 elements"),
            ("view_past_storage.bin", "reaches past its storage of 4 elements"),
            ("missing_storage.bin", "storage '7' has no entry"),
            ("overlapping_view.bin", "has more elements than its storage of 4"),
            ("empty_view_past_storage.bin", "offset 9) reaches past its storage of 4 elements"),
            ("not_a_checkpoint.bin", "not a PyTorch checkpoint"),
        ]
        for (file, message) in cases {
            let path = hostile.appendingPathComponent(file).path
            XCTAssertThrowsError(try PyTorchCheckpoint(path: path), file) { error in
                XCTAssert("\(error)".hasPrefix(path), "\(file): \(error)")
                XCTAssert("\(error)".contains(message), "\(file): \(error)")
            }
        }
        XCTAssertFalse(FileManager.default.fileExists(atPath: sideEffect), "a pickle's code ran")
        XCTAssert("\(try XCTUnwrap(Self.error(hostile.appendingPathComponent("os_system.bin").path)))".contains("refused without running anything"))
    }

    /// Every prefix length of a checkpoint (both formats) is an error or, never, a crash.
    func testTruncatedCheckpointsAreErrors() throws {
        let folder = try Fixtures.temporaryFolder()
        defer { try? FileManager.default.removeItem(at: folder) }
        for form in ["zip.bin", "legacy.bin"] {
            let data = try Data(contentsOf: views.appendingPathComponent(form))
            let cut = folder.appendingPathComponent(form).path
            for length in stride(from: 0, to: data.count, by: max(1, data.count / 97)) {
                try data.prefix(length).write(to: URL(fileURLWithPath: cut))
                XCTAssertNotNil(Self.error(cut), "\(form) cut at \(length) of \(data.count) bytes loaded")
            }
            let last = Self.error(cut).map { "\($0)" } ?? ""
            XCTAssert(last.hasPrefix(cut), last)
        }
        // Flipped bytes anywhere, in every encoding, give an error or tensors that read back; never a crash.
        // Seeded, so a failure is reproducible.
        var generator = SeededGenerator(seed: 7)
        let damaged = folder.appendingPathComponent("damaged.bin").path
        for form in ["zip.bin", "legacy.bin", "deflated.bin"] {
            let original = try Data(contentsOf: views.appendingPathComponent(form))
            for round in 0..<300 {
                var data = original
                for _ in 0..<Int.random(in: 1...6, using: &generator) {
                    let at = Int.random(in: 0..<data.count, using: &generator)
                    data[at] = round % 2 == 0 ? UInt8.random(in: 0...255, using: &generator) : data[at] ^ (1 << UInt8.random(in: 0..<8, using: &generator))
                }
                try data.write(to: URL(fileURLWithPath: damaged))
                if let checkpoint = try? PyTorchCheckpoint(path: damaged) {
                    for name in checkpoint.tensorNames { _ = try? checkpoint.entry(name); _ = try? checkpoint.tensor(name) }
                }
            }
        }
    }

    static func error(_ path: String) -> Error? {
        do { _ = try PyTorchCheckpoint(path: path); return nil } catch { return error }
    }
}
