import CStitchKernels
import Foundation
import XCTest

/// The memory products stream (product_memory.c): packed weights carved from shared huge-page chunks, and each thread's
/// packing buffers.
final class ProductMemoryTests: XCTestCase {
    /// Whether `address` lies in a mapping of this process (Linux's /proc/self/maps; nil elsewhere).
    private func isMapped(_ address: UnsafeRawPointer) -> Bool? {
        guard let maps = try? String(contentsOfFile: "/proc/self/maps", encoding: .utf8) else { return nil }
        let value = UInt(bitPattern: address)
        return maps.split(separator: "\n").contains { line in
            let range = line.prefix { $0 != " " }.split(separator: "-").compactMap { UInt($0, radix: 16) }
            return range.count == 2 && range[0] <= value && value < range[1]
        }
    }

    func testWeightBlocksAreAlignedDisjointAndOutliveEachOther() throws {
        // Sizes around the 64-byte alignment and past the 32 MB chunk, in an order that fills chunks unevenly.
        var generator = SystemRandomNumberGenerator()
        var sizes = [0, 1, 63, 64, 65, 4096, 1 << 20, 5 << 20, 33 << 20]
        sizes += (0..<200).map { _ in Int.random(in: 1...300_000, using: &generator) }
        var blocks: [(pointer: UnsafeMutableRawPointer, size: Int, tag: UInt8)] = []
        for (index, size) in sizes.enumerated() {
            let pointer = try XCTUnwrap(stitch_weight_allocate(size), "\(size) bytes")
            XCTAssertEqual(Int(bitPattern: pointer) % 64, 0, "\(size) bytes at \(pointer)")
            let tag = UInt8(truncatingIfNeeded: index &* 37 &+ 1)
            pointer.initializeMemory(as: UInt8.self, repeating: tag, count: size)
            blocks.append((pointer, size, tag))
        }
        // No block overwrote another.
        for block in blocks where block.size > 0 {
            let bytes = UnsafeBufferPointer(start: block.pointer.assumingMemoryBound(to: UInt8.self), count: block.size)
            XCTAssertTrue(bytes.allSatisfy { $0 == block.tag }, "a \(block.size)-byte block was overwritten")
        }
        // A block larger than a chunk gets a chunk of its own: huge-page aligned, and unmapped once freed.
        let large = blocks.first { $0.size == 33 << 20 }!.pointer
        XCTAssertEqual(Int(bitPattern: large) % (2 << 20), 0)
        blocks.shuffle(using: &generator)
        for block in blocks { stitch_weight_free(block.pointer) }
        if let mapped = isMapped(large) { XCTAssertFalse(mapped, "a chunk whose blocks are all freed is returned to the system") }
        // And the arena serves again after everything was freed.
        let again = try XCTUnwrap(stitch_weight_allocate(100))
        stitch_weight_free(again)
    }

    func testEachThreadKeepsItsOwnPackingBuffers() throws {
        let first = try XCTUnwrap(stitch_thread_scratch(0, 1000))
        XCTAssertEqual(Int(bitPattern: first) % 64, 0, "64-byte aligned")
        XCTAssertEqual(stitch_thread_scratch(0, 500), first, "a request within the buffer reuses it")
        let other = try XCTUnwrap(stitch_thread_scratch(1, 1000))
        XCTAssertNotEqual(other, first, "each slot is its own buffer")
        let grown = try XCTUnwrap(stitch_thread_scratch(0, 3 << 20))
        grown.initializeMemory(as: UInt8.self, repeating: 7, count: 3 << 20)   // all of it writable
        XCTAssertEqual(stitch_thread_scratch(0, 10), grown)

        // Another thread gets other buffers, freed when it ends (its key's destructor runs before the join returns). A
        // buffer this large is a mapping of its own in glibc's malloc (above any mmap threshold Stitch sets), gone once freed.
        final class Address { var value: UInt = 0 }
        let theirs = Address()
        var thread = pthread_t()
        XCTAssertEqual(pthread_create(&thread, nil, { context in
            Unmanaged<Address>.fromOpaque(context!).takeUnretainedValue().value = UInt(bitPattern: stitch_thread_scratch(0, 300 << 20))
            return nil
        }, Unmanaged.passUnretained(theirs).toOpaque()), 0)
        XCTAssertEqual(pthread_join(thread, nil), 0)
        let address = try XCTUnwrap(UnsafeRawPointer(bitPattern: theirs.value))
        XCTAssertNotEqual(address, UnsafeRawPointer(grown))
        if let mapped = isMapped(address) { XCTAssertFalse(mapped, "a finished thread's packing buffers are freed") }
    }
}
