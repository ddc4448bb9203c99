import CZlib
import Foundation

/// A read-only zip archive over a memory map: the container `torch.save` has written since
/// PyTorch 1.6. Entries stored uncompressed (all that torch writes) are handed out in place;
/// deflated ones are inflated. Every offset and size is checked against the file before use,
/// ZIP64 records included.
final class ZipArchive {
    struct Entry {
        let name: String
        let method: UInt16
        let compressedSize: Int
        let size: Int
        let localHeaderOffset: Int
    }

    let path: String
    let map: MemoryMap
    /// Entries by name, in central-directory order.
    let entries: [Entry]
    private let byName: [String: Int]

    /// Whether `map` starts like a zip archive (a local file header).
    static func looksLikeZip(_ map: MemoryMap) -> Bool {
        map.size >= 4 && map.base.loadUnaligned(as: UInt32.self) == UInt32(0x04034b50).littleEndian
    }

    init(map: MemoryMap, path: String) throws(ModelIOError) {
        self.path = path
        self.map = map
        let reader = ByteReader(map: map, file: path)
        // End of central directory: 22 bytes plus a comment of at most 65,535, at the end of the file.
        let searchStart = max(0, map.size - 22 - 65_535)
        var end = -1
        var position = map.size - 22
        while position >= searchStart {
            if reader.u32(position) == 0x06054b50 { end = position; break }
            position -= 1
        }
        guard end >= 0 else { throw .invalidModel(file: path, detail: "not a zip archive: no end-of-central-directory record (truncated?)") }
        var count = Int(reader.u16(end + 10))
        var directorySize = Int(reader.u32(end + 12))
        var directoryOffset = Int(reader.u32(end + 16))
        // ZIP64: a locator just before the end record points to the 64-bit end record.
        if end >= 20, reader.u32(end - 20) == 0x07064b50 {
            let record = try reader.offset(reader.u64(end - 12), "ZIP64 end record")
            guard record + 56 <= map.size, reader.u32(record) == 0x06064b50 else {
                throw .invalidModel(file: path, detail: "zip: the ZIP64 end record is missing or out of the file")
            }
            count = try reader.offset(reader.u64(record + 32), "entry count")
            directorySize = try reader.offset(reader.u64(record + 40), "central directory size")
            directoryOffset = try reader.offset(reader.u64(record + 48), "central directory offset")
        }
        guard directoryOffset <= map.size, directorySize <= map.size - directoryOffset, count <= directorySize / 46 + 1 else {
            throw .truncated(file: path, detail: "the zip central directory (\(count) entries, \(directorySize) bytes at \(directoryOffset)) lies outside the \(map.size)-byte file")
        }
        var entries: [Entry] = []
        var byName: [String: Int] = [:]
        var cursor = directoryOffset
        let directoryEnd = directoryOffset + directorySize
        for _ in 0..<count {
            guard cursor + 46 <= directoryEnd, reader.u32(cursor) == 0x02014b50 else {
                throw .invalidModel(file: path, detail: "zip: damaged central directory at byte \(cursor)")
            }
            let method = reader.u16(cursor + 10)
            var compressed = Int(reader.u32(cursor + 20))
            var size = Int(reader.u32(cursor + 24))
            let nameLength = Int(reader.u16(cursor + 28))
            let extraLength = Int(reader.u16(cursor + 30))
            let commentLength = Int(reader.u16(cursor + 32))
            var local = Int(reader.u32(cursor + 42))
            let next = cursor + 46 + nameLength + extraLength + commentLength
            guard next <= directoryEnd else { throw .invalidModel(file: path, detail: "zip: damaged central directory at byte \(cursor)") }
            let name = String(decoding: UnsafeRawBufferPointer(start: map.base + cursor + 46, count: nameLength), as: UTF8.self)
            // ZIP64 extra field (id 1): the 64-bit values of the fields that hold 0xFFFFFFFF, in this order.
            var extra = cursor + 46 + nameLength
            let extraEnd = extra + extraLength
            while extra + 4 <= extraEnd {
                let id = reader.u16(extra), length = Int(reader.u16(extra + 2))
                guard extra + 4 + length <= extraEnd else { break }
                if id == 1 {
                    var field = extra + 4
                    func take() throws(ModelIOError) -> Int {
                        guard field + 8 <= extra + 4 + length else { throw .invalidModel(file: path, detail: "zip: short ZIP64 field in entry '\(name)'") }
                        defer { field += 8 }
                        return try reader.offset(reader.u64(field), "ZIP64 field of '\(name)'")
                    }
                    if size == 0xFFFF_FFFF { size = try take() }
                    if compressed == 0xFFFF_FFFF { compressed = try take() }
                    if local == 0xFFFF_FFFF { local = try take() }
                }
                extra += 4 + length
            }
            byName[name] = entries.count
            entries.append(Entry(name: name, method: method, compressedSize: compressed, size: size, localHeaderOffset: local))
            cursor = next
        }
        self.entries = entries
        self.byName = byName
    }

    func entry(_ name: String) -> Entry? { byName[name].map { entries[$0] } }

    /// Where an entry's data starts, checked to lie inside the file.
    private func dataRange(_ entry: Entry) throws(ModelIOError) -> Range<Int> {
        let reader = ByteReader(map: map, file: path)
        let header = entry.localHeaderOffset
        guard header <= map.size - 30, reader.u32(header) == 0x04034b50 else {
            throw .truncated(file: path, detail: "zip entry '\(entry.name)': no local header at byte \(header)")
        }
        let start = header + 30 + Int(reader.u16(header + 26)) + Int(reader.u16(header + 28))
        guard start <= map.size, entry.compressedSize <= map.size - start else {
            throw .truncated(file: path, detail: "zip entry '\(entry.name)' claims \(entry.compressedSize) bytes at byte \(start) of a \(map.size)-byte file")
        }
        return start..<(start + entry.compressedSize)
    }

    /// The bytes of a stored entry, in place in the mapping (valid while this archive lives).
    func storedBytes(_ entry: Entry) throws(ModelIOError) -> UnsafeRawBufferPointer? {
        guard entry.method == 0 else { return nil }
        guard entry.size == entry.compressedSize else {
            throw .invalidModel(file: path, detail: "zip entry '\(entry.name)' is stored but its sizes differ (\(entry.compressedSize) vs \(entry.size))")
        }
        let range = try dataRange(entry)
        return UnsafeRawBufferPointer(start: map.base + range.lowerBound, count: range.count)
    }

    /// The bytes of an entry, stored or deflated.
    func data(_ entry: Entry) throws(ModelIOError) -> Data {
        if let stored = try storedBytes(entry) { return Data(stored) }
        guard entry.method == 8 else {
            throw .invalidModel(file: path, detail: "zip entry '\(entry.name)' uses compression method \(entry.method); only stored and deflate are read")
        }
        let range = try dataRange(entry)
        // Pickles and weights compress far less than 64:1 (torch writes neither compressed), so a larger claim is a bomb or a lie.
        guard entry.size <= entry.compressedSize * 64 + (1 << 20) else {
            throw .invalidModel(file: path, detail: "zip entry '\(entry.name)' claims \(entry.size) bytes from \(entry.compressedSize) compressed")
        }
        var output = Data(count: entry.size)
        var stream = z_stream()
        guard inflateInit2_(&stream, -MAX_WBITS, ZLIB_VERSION, Int32(MemoryLayout<z_stream>.size)) == Z_OK else {
            throw .invalidModel(file: path, detail: "zlib could not be initialised")
        }
        defer { inflateEnd(&stream) }
        let status = output.withUnsafeMutableBytes { out -> Int32 in
            stream.next_in = UnsafeMutablePointer(mutating: (map.base + range.lowerBound).assumingMemoryBound(to: Bytef.self))
            stream.avail_in = uInt(range.count)
            stream.next_out = out.bindMemory(to: Bytef.self).baseAddress
            stream.avail_out = uInt(out.count)
            return inflate(&stream, Z_FINISH)
        }
        guard status == Z_STREAM_END, Int(stream.total_out) == entry.size else {
            throw .invalidModel(file: path, detail: "zip entry '\(entry.name)' does not inflate to its \(entry.size) bytes (zlib status \(status))")
        }
        return output
    }
}

/// Little-endian reads at checked positions of a mapping (out-of-range reads give 0, which no record signature equals).
struct ByteReader {
    let map: MemoryMap
    let file: String

    func u16(_ at: Int) -> UInt16 { at >= 0 && at + 2 <= map.size ? UInt16(littleEndian: map.base.loadUnaligned(fromByteOffset: at, as: UInt16.self)) : 0 }
    func u32(_ at: Int) -> UInt32 { at >= 0 && at + 4 <= map.size ? UInt32(littleEndian: map.base.loadUnaligned(fromByteOffset: at, as: UInt32.self)) : 0 }
    func u64(_ at: Int) -> UInt64 { at >= 0 && at + 8 <= map.size ? UInt64(littleEndian: map.base.loadUnaligned(fromByteOffset: at, as: UInt64.self)) : 0 }

    /// A 64-bit size or offset as Int, refused when it could not lie inside the file.
    func offset(_ value: UInt64, _ what: String) throws(ModelIOError) -> Int {
        guard value <= UInt64(map.size) else { throw .truncated(file: file, detail: "zip \(what) \(value) lies past the end of the \(map.size)-byte file") }
        return Int(value)
    }
}
