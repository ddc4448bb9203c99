import Foundation
import StitchTestSupport
import StitchTensor
import XCTest
@testable import StitchModelIO

final class SafetensorsTests: XCTestCase {
    var folder: URL!
    override func setUpWithError() throws { folder = try Fixtures.temporaryFolder() }
    override func tearDownWithError() throws { try? FileManager.default.removeItem(at: folder) }

    /// F16 and BF16 written by the safetensors library convert to exactly torch's float32 values.
    func testDtypesConvertLikeTorch() throws {
        let file = try SafetensorsFile(path: Fixtures.url("tensor/dtypes.safetensors").path)
        let expected = try Fixtures.tensors("tensor/dtypes_expected.safetensors")
        for name in ["x.f32", "x.f16", "x.bf16", "x.f16_2d"] {
            let got = try file.tensor(name)
            XCTAssertEqual(got.shape, expected[name]!.shape, name)
            XCTAssertEqual(got.scalars, expected[name]!.scalars, name)
        }
        XCTAssertEqual(file.tensors["x.bf16"]?.dtype, .bf16)
    }

    /// A mapped file truncated in place while its tensor is in use: reads past the new end see zeros instead of
    /// SIGBUS (which would end this test process), and the change is reported by file.
    func testAFileShrinkingWhileMappedIsReportedNotFatal() throws {
        let path = folder.appendingPathComponent("shrinks.safetensors").path
        let values = (0..<1 << 18).map { Float($0 % 97) + 1 }   // 1 MB: many pages past the header
        try writeSafetensors(["w": Tensor(shape: [values.count], scalars: values)], to: path)
        let file = try SafetensorsFile(path: path)
        let weights = try file.tensor("w")   // borrowed in place from the mapping
        XCTAssertFalse(file.changedOnDisk)
        let faultsBefore = MappedFiles.faults
        XCTAssertEqual(truncate(path, 4096), 0)
        let sum = weights.scalars.reduce(0, +)
        XCTAssertLessThan(sum, values.reduce(0, +), "pages past the new end read as zeros")
        XCTAssert(file.changedOnDisk)
        XCTAssertGreaterThan(MappedFiles.faults, faultsBefore)
        XCTAssertEqual(MappedFiles.changedFiles(), [path])
        XCTAssert("\(MappedFiles.changedError())".contains("\(path): cannot open: changed on disk"), "\(MappedFiles.changedError())")
    }

    func testWriteReadRoundTripAndMappedViewsAreReadOnly() throws {
        let path = folder.appendingPathComponent("t.safetensors").path
        let a = Tensor(shape: [2, 3], scalars: [1, 2, 3, 4, 5, 6])
        try writeSafetensors(["a": a, "b": Tensor(shape: [0], scalars: [])], metadata: ["format": "pt"], to: path)
        let file = try SafetensorsFile(path: path)
        XCTAssertEqual(file.metadata["format"], "pt")
        var mapped = try file.tensor("a")
        XCTAssertEqual(mapped.scalars, a.scalars)
        XCTAssertEqual(try file.tensor("b").shape, [0])
        mapped.withUnsafeMutableBufferPointer { $0[0] = 42 }   // copies: the mapping is read-only
        XCTAssertEqual(mapped.scalars.first, 42)
        XCTAssertEqual(try SafetensorsFile(path: path).tensor("a").scalars, a.scalars)
        XCTAssertThrowsError(try file.tensor("nope")) { XCTAssertEqual($0 as? ModelIOError, .missingTensor(file: path, tensor: "nope")) }
    }

    /// A streamed file reads back as written: entries in name order whatever order they were declared in, metadata
    /// decided at the end; too much or too little data is refused, and an unfinished file never appears.
    func testStreamedFilesReadBackAndAppearOnlyWhenFinished() throws {
        let path = folder.appendingPathComponent("s.safetensors").path
        let (a, b) = (Tensor(shape: [2, 3], scalars: [1, 2, 3, 4, 5, 6]), Tensor(shape: [4], scalars: [7, 8, 9, 10]))
        func stream() throws -> SafetensorsStreamWriter {
            try SafetensorsStreamWriter(path: path, entries: [("b", .f32, [4]), ("a", .f32, [2, 3])], metadataRoom: ["sum": "00000000"])
        }
        let writer = try stream()
        for tensor in [a, b] {   // the file's order: a, then b
            for row in 0..<tensor.shape[0] where tensor.rank == 2 { try tensor.row(row).withUnsafeBufferPointer { try writer.append(UnsafeRawBufferPointer($0)) } }
            if tensor.rank == 1 { try tensor.withUnsafeBufferPointer { try writer.append(UnsafeRawBufferPointer($0)) } }
        }
        XCTAssertFalse(FileManager.default.fileExists(atPath: path))
        try writer.finish(metadata: ["sum": "12345678"])
        let file = try SafetensorsFile(path: path)
        XCTAssertEqual(file.metadata["sum"], "12345678")
        XCTAssertEqual(try file.tensor("a").scalars, a.scalars)
        XCTAssertEqual(try file.tensor("b").scalars, b.scalars)

        try FileManager.default.removeItem(atPath: path)
        let short = try stream()
        try a.withUnsafeBufferPointer { try short.append(UnsafeRawBufferPointer($0)) }
        XCTAssertThrowsError(try short.finish(metadata: [:])) { XCTAssert("\($0)".contains("16 bytes of data missing"), "\($0)") }
        let long = try stream()
        let tooMuch = [Float](repeating: 0, count: 11)
        XCTAssertThrowsError(try tooMuch.withUnsafeBufferPointer { try long.append(UnsafeRawBufferPointer($0)) }) { XCTAssert("\($0)".contains("more data than the entries declared")) }
        XCTAssertThrowsError(try long.finish(metadata: ["sum": String(repeating: "x", count: 500)]))
        XCTAssertFalse(FileManager.default.fileExists(atPath: path))
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: folder.path).filter { $0.hasPrefix("s.safetensors") }, [], "no partial file is left")
    }

    /// A file made of an 8-byte length, a header and `data` bytes.
    func makeFile(_ name: String, header: String, data: Int = 0, claimedLength: UInt64? = nil) throws -> String {
        var bytes = Data()
        withUnsafeBytes(of: (claimedLength ?? UInt64(header.utf8.count)).littleEndian) { bytes.append(contentsOf: $0) }
        bytes.append(Data(header.utf8))
        bytes.append(Data(repeating: 0, count: data))
        let path = folder.appendingPathComponent(name).path
        try bytes.write(to: URL(fileURLWithPath: path))
        return path
    }

    func assertFails(_ path: String, _ check: (ModelIOError) -> Bool, _ words: String, line: UInt = #line) {
        XCTAssertThrowsError(try SafetensorsFile(path: path), line: line) { error in
            guard let error = error as? ModelIOError else { return XCTFail("untyped error \(error)", line: line) }
            XCTAssert(check(error), "unexpected \(error)", line: line)
            XCTAssert(error.description.contains(path), "message must name the file: \(error)", line: line)
            XCTAssert(error.description.contains(words), "message should say '\(words)': \(error)", line: line)
        }
    }

    func testCorruptFilesGiveTypedErrorsNamingTheFile() throws {
        let good = #"{"w":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]}}"#
        let tiny = folder.appendingPathComponent("tiny.safetensors").path
        try Data([1, 2, 3]).write(to: URL(fileURLWithPath: tiny))
        assertFails(tiny, { if case .truncated = $0 { return true }; return false }, "shorter than the 8-byte header")
        assertFails(try makeFile("long.safetensors", header: good, data: 16, claimedLength: 1 << 20),
                    { if case .truncated = $0 { return true }; return false }, "header claims")
        assertFails(try makeFile("huge.safetensors", header: good, data: 16, claimedLength: UInt64.max),
                    { if case .invalidHeader = $0 { return true }; return false }, "implausible")
        assertFails(try makeFile("json.safetensors", header: "{not json", data: 16),
                    { if case .invalidHeader = $0 { return true }; return false }, "not valid JSON")
        assertFails(try makeFile("array.safetensors", header: "[1,2]", data: 16),
                    { if case .invalidHeader = $0 { return true }; return false }, "not a JSON object")
        assertFails(try makeFile("past.safetensors", header: #"{"w":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]}}"#, data: 8),
                    { if case .truncated = $0 { return true }; return false }, "ends at byte 16")
        assertFails(try makeFile("dtype.safetensors", header: #"{"w":{"dtype":"Q4","shape":[2],"data_offsets":[0,2]}}"#, data: 2),
                    { $0 == .badTensorEntry(file: self.folder.appendingPathComponent("dtype.safetensors").path, tensor: "w", detail: "unknown dtype Q4") }, "Q4")
        // A valid but non-float dtype (like BERT's I64 position_ids) opens; reading it as floats is the error.
        let int = try makeFile("int.safetensors", header: #"{"ids":{"dtype":"I64","shape":[2],"data_offsets":[0,16]},"w":{"dtype":"F32","shape":[2],"data_offsets":[16,24]}}"#, data: 24)
        let file = try SafetensorsFile(path: int)
        XCTAssertEqual(try file.tensor("w").scalars, [0, 0])
        XCTAssertThrowsError(try file.tensor("ids")) { error in
            XCTAssertEqual(error as? ModelIOError, .unsupportedDtype(file: int, tensor: "ids", dtype: "I64"))
            XCTAssert("\(error)".contains("supported are F32, F16 and BF16"))
        }
        assertFails(try makeFile("int-size.safetensors", header: #"{"w":{"dtype":"I64","shape":[2],"data_offsets":[0,8]}}"#, data: 16),
                    { if case .badTensorEntry = $0 { return true }; return false }, "needs 16 bytes")
        assertFails(try makeFile("shape.safetensors", header: #"{"w":{"dtype":"F32","shape":[3,2],"data_offsets":[0,16]}}"#, data: 16),
                    { if case .badTensorEntry = $0 { return true }; return false }, "needs 24 bytes")
        assertFails(try makeFile("order.safetensors", header: #"{"w":{"dtype":"F32","shape":[1],"data_offsets":[8,4]}}"#, data: 16),
                    { if case .badTensorEntry = $0 { return true }; return false }, "increasing")
        assertFails(try makeFile("neg.safetensors", header: #"{"w":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}}"#, data: 16),
                    { if case .badTensorEntry = $0 { return true }; return false }, "non-negative")
        assertFails(try makeFile("overflow.safetensors", header: #"{"w":{"dtype":"F32","shape":[4611686018427387904,4],"data_offsets":[0,16]}}"#, data: 16),
                    { if case .badTensorEntry = $0 { return true }; return false }, "shape")
        // Sizes whose byte count overflows only once multiplied by the element size once trapped in the error message.
        assertFails(try makeFile("bytes-overflow.safetensors", header: #"{"w":{"dtype":"F16","shape":[2147483648,2147483648,2],"data_offsets":[0,16]}}"#, data: 16),
                    { if case .badTensorEntry = $0 { return true }; return false }, "more bytes than a 64-bit size holds")
        assertFails(folder.appendingPathComponent("absent.safetensors").path,
                    { if case .cannotOpen = $0 { return true }; return false }, "No such file")
        assertFails(folder.path, { if case .cannotOpen = $0 { return true }; return false }, "not a regular file")

        // A real checkpoint cut in half.
        let real = try Data(contentsOf: Fixtures.url("tiny-gpt2/model.safetensors"))
        let cut = folder.appendingPathComponent("cut.safetensors").path
        try real.prefix(real.count / 2).write(to: URL(fileURLWithPath: cut))
        assertFails(cut, { if case .truncated = $0 { return true }; return false }, "data section")
    }
}

final class WeightStoreTests: XCTestCase {
    /// Every tensor of the tiny GPT-2 checkpoint (F16, written by transformers) loads
    /// with the shape and sum torch reports.
    func testLoadsHuggingFaceCheckpoint() throws {
        let store = try WeightStore(folder: Fixtures.url("tiny-gpt2"))
        let sums = try Fixtures.json("tiny-gpt2/tensor_sums.json") as! [String: Double]
        XCTAssertEqual(Set(store.names), Set(sums.keys))
        for (name, sum) in sums {
            let tensor = store.take(name, shape: store.shape(of: name)!)
            let got = tensor.scalars.reduce(0.0) { $0 + Double($1) }
            XCTAssertEqual(got, sum, accuracy: 1e-6 * max(1, abs(sum)), name)
        }
        XCTAssertNoThrow(try store.finish())
    }

    func testReportsMissingWrongShapeAndUnusedAtOnce() throws {
        let store = try WeightStore(folder: Fixtures.url("tiny-gpt2"))
        _ = store.take("transformer.wte.weight", shape: [50257, 32])
        let wrong = store.take("transformer.wpe.weight", shape: [1024, 32])
        XCTAssertEqual(wrong.shape, [1024, 32])
        _ = store.take("transformer.h.0.attn.c_attn.weight.missing", shape: [32, 96])
        XCTAssertThrowsError(try store.finish()) { error in
            let message = "\(error)"
            XCTAssert(message.contains("model.safetensors"), message)
            XCTAssert(message.contains("tensor 'transformer.wpe.weight' has shape [64, 32], expected [1024, 32]"), message)
            XCTAssert(message.contains("missing tensor 'transformer.h.0.attn.c_attn.weight.missing' (expected shape [32, 96])"), message)
            XCTAssert(message.contains("unused tensor 'transformer.ln_f.weight' (shape [32])"), message)
        }
        // Ignoring unused tensors does not hide the other problems.
        XCTAssertThrowsError(try store.finish(ignoreUnused: { _ in true })) { error in
            XCTAssertFalse("\(error)".contains("unused"), "\(error)")
        }
    }

    func testShardedIndexAndMissingFolder() throws {
        let folder = try Fixtures.temporaryFolder()
        defer { try? FileManager.default.removeItem(at: folder) }
        try writeSafetensors(["a": Tensor(shape: [2], scalars: [1, 2])], to: folder.appendingPathComponent("model-00001-of-00002.safetensors").path)
        try writeSafetensors(["b": Tensor(shape: [1], scalars: [3])], to: folder.appendingPathComponent("model-00002-of-00002.safetensors").path)
        let index = #"{"metadata": {}, "weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}"#
        try Data(index.utf8).write(to: folder.appendingPathComponent("model.safetensors.index.json"))
        let store = try WeightStore(folder: folder)
        XCTAssertEqual(store.take("b", shape: [1]).scalars, [3])
        XCTAssertEqual(store.take("a", shape: [2]).scalars, [1, 2])
        XCTAssertNoThrow(try store.finish())
        XCTAssertThrowsError(try WeightStore(folder: folder.appendingPathComponent("nothing"))) { error in
            XCTAssert("\(error)".contains("no weights in the folder (looked for model.safetensors, model.safetensors.index.json, pytorch_model.bin"), "\(error)")
        }
    }
}

final class ConfigTests: XCTestCase {
    struct TinyConfig: Decodable {
        let nEmbd: Int
        let nLayer: Int
        enum CodingKeys: String, CodingKey { case nEmbd = "n_embd", nLayer = "n_layer" }
    }

    func testDecodesAndNamesBadFields() throws {
        let config = try loadConfig(TinyConfig.self, from: Fixtures.url("tiny-gpt2/config.json"))
        XCTAssertEqual(config.nEmbd, 32)
        XCTAssertNoThrow(try ArchitectureHeader.require(["GPT2LMHeadModel", "gpt2"], in: Fixtures.url("tiny-gpt2/config.json")))

        let folder = try Fixtures.temporaryFolder()
        defer { try? FileManager.default.removeItem(at: folder) }
        let file = folder.appendingPathComponent("config.json")
        try Data(#"{"n_embd": "wide", "n_layer": 2}"#.utf8).write(to: file)
        XCTAssertThrowsError(try loadConfig(TinyConfig.self, from: file)) { error in
            XCTAssertEqual(error as? ModelIOError, .invalidConfig(file: file.path, field: "n_embd", detail: "expected Int"))
        }
        try Data(#"{"n_embd": 8}"#.utf8).write(to: file)
        XCTAssertThrowsError(try loadConfig(TinyConfig.self, from: file)) { error in
            XCTAssertEqual(error as? ModelIOError, .invalidConfig(file: file.path, field: "n_layer", detail: "required field is missing"))
        }
        try Data("{oops".utf8).write(to: file)
        XCTAssertThrowsError(try loadConfig(TinyConfig.self, from: file)) { error in
            XCTAssert("\(error)".contains(file.path) && "\(error)".contains("not valid JSON"), "\(error)")
        }
        try Data(#"{"architectures": ["LlamaForCausalLM"], "model_type": "llama"}"#.utf8).write(to: file)
        XCTAssertThrowsError(try ArchitectureHeader.require(["GPT2LMHeadModel", "gpt2"], in: file)) { error in
            XCTAssertEqual("\(error)", "\(file.path): architecture 'LlamaForCausalLM' is not supported here (expected one of GPT2LMHeadModel, gpt2)")
        }
    }
}
