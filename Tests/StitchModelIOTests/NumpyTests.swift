import Foundation
import StitchTestSupport
import XCTest
@testable import StitchModelIO

/// NumPy .npy files: what numpy writes reads back; broken or hostile files are errors naming the file, before any
/// allocation the file cannot back.
final class NumpyTests: XCTestCase {
    func npy(_ header: String, data: [UInt8], version: UInt8 = 1) -> Data {
        var padded = header
        while (10 + padded.utf8.count + 1) % 64 != 0 { padded += " " }
        padded += "\n"
        var bytes: [UInt8] = [0x93] + Array("NUMPY".utf8) + [version, 0]
        bytes += [UInt8(padded.utf8.count & 0xFF), UInt8(padded.utf8.count >> 8)]
        return Data(bytes + Array(padded.utf8) + data)
    }

    func testReadsWhatNumpyWritesAndRefusesTheRest() throws {
        let folder = try Fixtures.temporaryFolder()
        defer { try? FileManager.default.removeItem(at: folder) }
        // numpy's own file (Tests/Fixtures/pica, written by np.save): float32 C order.
        let saved = try readNumpy(Fixtures.url("pica/val_image.npy").path)
        XCTAssertEqual(saved.shape, [6, 32])
        XCTAssertEqual(Double(saved.row(0).scalars.map { $0 * $0 }.reduce(0, +)), 1, accuracy: 1e-5, "unit rows")

        let half = Float16(1.5).bitPattern, double = Double(-2.25).bitPattern
        let cases: [(String, Data, String?)] = [
            ("f2.npy", npy("{'descr': '<f2', 'fortran_order': False, 'shape': (2,), }", data: [UInt8(half & 0xFF), UInt8(half >> 8), 0, 0x3C]), nil),
            ("f8.npy", npy("{'descr': '<f8', 'fortran_order': False, 'shape': (1, 1), }", data: (0..<8).map { UInt8(truncatingIfNeeded: double >> (8 * $0)) }), nil),
            ("magic.npy", Data("PK\u{3}\u{4}not numpy at all".utf8), "no \\x93NUMPY magic"),
            ("int.npy", npy("{'descr': '<i8', 'fortran_order': False, 'shape': (1,), }", data: Array(repeating: 0, count: 8)), "dtype '<i8'"),
            ("fortran.npy", npy("{'descr': '<f4', 'fortran_order': True, 'shape': (1,), }", data: Array(repeating: 0, count: 4)), "Fortran order"),
            ("short.npy", npy("{'descr': '<f4', 'fortran_order': False, 'shape': (3,), }", data: Array(repeating: 0, count: 8)), "file is truncated"),
            ("huge.npy", npy("{'descr': '<f4', 'fortran_order': False, 'shape': (4611686018427387904, 8), }", data: []), "too large"),
            ("header.npy", Data([0x93] + Array("NUMPY".utf8) + [1, 0, 0xFF, 0xFF]), "the header is cut off"),
            ("shape.npy", npy("{'descr': '<f4', 'fortran_order': False, 'shape': (-1,), }", data: []), "shape (-1,)"),
        ]
        for (name, contents, error) in cases {
            let path = folder.appendingPathComponent(name).path
            try contents.write(to: URL(fileURLWithPath: path))
            if let error {
                XCTAssertThrowsError(try readNumpy(path), name) { XCTAssert("\($0)".hasPrefix(path) && "\($0)".contains(error), "\(name): \($0)") }
            } else {
                XCTAssertNoThrow(try readNumpy(path), name)
            }
        }
        XCTAssertEqual(try readNumpy(folder.appendingPathComponent("f2.npy").path).scalars, [1.5, 1])
        XCTAssertEqual(try readNumpy(folder.appendingPathComponent("f8.npy").path).scalars, [-2.25])
        XCTAssertThrowsError(try readNumpy(folder.appendingPathComponent("absent.npy").path)) { XCTAssert("\($0)".contains("no such file"), "\($0)") }
    }
}
