import Foundation
import StitchImaging
import StitchModelIO
import StitchModels
import StitchTensor
import StitchTokenizers
import StitchTestSupport
import XCTest
@testable import StitchMethods

/// Every registered model type loaded by hub id (from a loopback hub serving pickled weights, as published
/// repositories do) gives the same outputs as the same files in a local folder: the listing brings every
/// tokenizer and processor file the loader reads, such as MAGiC's added_tokens.json.
final class HubLoadingTests: XCTestCase {
    var server: LocalHubServer!
    var root: URL!
    var locator: ModelLocator!
    let image = Fixtures.url("images/rgb.jpg")

    override func setUpWithError() throws {
        server = try LocalHubServer()
        root = try Fixtures.temporaryFolder()
        var downloader = HubDownloader(endpoint: server.baseURL)
        downloader.showProgress = false
        locator = ModelLocator(cacheRoot: root.appendingPathComponent("hub"), offline: false, downloader: downloader)
    }

    override func tearDownWithError() throws {
        server.stop()
        try? FileManager.default.removeItem(at: root)
    }

    /// `files` served as `repo`, and the same files linked into a local folder.
    func publish(_ repo: String, _ files: [String: URL]) throws -> (hubID: String, folder: URL) {
        let folder = root.appendingPathComponent(repo.replacingOccurrences(of: "/", with: "--"))
        for (name, source) in files {
            let link = folder.appendingPathComponent(name)
            try FileManager.default.createDirectory(at: link.deletingLastPathComponent(), withIntermediateDirectories: true)
            try FileManager.default.createSymbolicLink(at: link, withDestinationURL: source)
        }
        try server.addFolder(folder, repo: repo)
        return (repo, folder)
    }

    func folderFiles(_ relative: String) -> [String: URL] {
        let folder = Fixtures.url(relative)
        return Dictionary(uniqueKeysWithValues: (FileManager.default.subpaths(atPath: folder.path) ?? [])
            .filter { !$0.hasPrefix("golden") && $0 != "tensor_sums.json" && !$0.hasSuffix("/") }
            .map { ($0, folder.appendingPathComponent($0)) }
            .filter { (try? $0.1.resourceValues(forKeys: [.isDirectoryKey]).isDirectory) != true })
    }

    func gpt2Tokenizer() throws -> [String: URL] {
        let vocabulary = Fixtures.tokenizerFile("gpt2-vocab.json")
        let merges = Fixtures.tokenizerFile("gpt2-merges.txt")
        return ["vocab.json": vocabulary, "merges.txt": merges]
    }

    func testEveryModelTypeLoadsTheSameFromTheHubAsFromAFolder() throws {
        let photo = try RGBImage(contentsOf: image.path)
        var checked: Set<String> = []
        let registry = ModelRegistry.standard

        // GPT-2 as cambridgeltl/magic_mscoco publishes it: the MAGiC start token comes from added_tokens.json.
        let magic = try publish("org/magic", folderFiles("checkpoints/tiny-magic").merging(try gpt2Tokenizer()) { a, _ in a })
        let (magicFolder, magicKind) = try registry.resolve(magic.hubID, locator: locator)
        XCTAssertEqual(magicKind.name, "gpt2")
        let fromHub = try GPT2(folder: magicFolder), fromFolder = try GPT2(folder: magic.folder)
        XCTAssertEqual(try fromHub.magicPrompt(title: nil), [50257], "<-start_of_text->, not <|endoftext|>")
        XCTAssertEqual(try fromHub.magicPrompt(title: nil), try fromFolder.magicPrompt(title: nil))
        let stop = StopConditions(maxTokens: 10)
        XCTAssertEqual(try decode(fromHub, prompt: [50257], strategy: .greedy, stop: stop), try decode(fromFolder, prompt: [50257], strategy: .greedy, stop: stop))
        checked.insert(magicKind.name)

        // CLIP with OpenAI's tokenizer file, weights as torch's zip format.
        let bpe = Fixtures.tokenizerFile("bpe_simple_vocab_16e6.txt.gz")
        var clipFiles = folderFiles("checkpoints/tiny-clip/zip")
        clipFiles[CLIPTokenizer.openAIVocabularyFile] = bpe
        let clip = try publish("org/clip", clipFiles)
        let (clipFolder, clipKind) = try registry.resolve(clip.hubID, locator: locator)
        let clipHub = try CLIP(folder: clipFolder), clipLocal = try CLIP(folder: clip.folder)
        XCTAssertEqual(try clipHub.textEmbeddings(["a photo of a dog"]).scalars, try clipLocal.textEmbeddings(["a photo of a dog"]).scalars)
        XCTAssertEqual(try clipHub.imageEmbeddings([photo]).scalars, try clipLocal.imageEmbeddings([photo]).scalars)
        checked.insert(clipKind.name)

        // OWL-ViT reads preprocessor_config.json and the tokenizer too.
        var owlvitFiles = folderFiles("tiny-owlvit")
        owlvitFiles[CLIPTokenizer.openAIVocabularyFile] = bpe
        let owlvit = try publish("org/owlvit", owlvitFiles)
        let (owlvitFolder, owlvitKind) = try registry.resolve(owlvit.hubID, locator: locator)
        XCTAssertEqual(try OWLViT(folder: owlvitFolder).detect(photo, queries: ["a cat", "a cup"], threshold: 0.5, nmsThreshold: nil),
                       try OWLViT(folder: owlvit.folder).detect(photo, queries: ["a cat", "a cup"], threshold: 0.5, nmsThreshold: nil))
        checked.insert(owlvitKind.name)

        // The captioner reads preprocessor_config.json, which the hub must bring along.
        let captioner = try publish("org/captioner", folderFiles("checkpoints/tiny-vit-gpt2/legacy").merging(try gpt2Tokenizer()) { a, _ in a })
        let (captionerFolder, captionerKind) = try registry.resolve(captioner.hubID, locator: locator)
        checked.insert(captionerKind.name)
        XCTAssert(FileManager.default.fileExists(atPath: captionerFolder.appendingPathComponent("preprocessor_config.json").path))
        XCTAssertEqual(try VisionEncoderDecoder(folder: captionerFolder).caption(photo, options: DecodingOptions(strategy: .beam, maxTokens: 10, beam: BeamSettings(beams: 3))).tokens,
                       try VisionEncoderDecoder(folder: captioner.folder).caption(photo, options: DecodingOptions(strategy: .beam, maxTokens: 10, beam: BeamSettings(beams: 3))).tokens)

        // A sentence encoder in two shards, with its pooling folder.
        let bert = try publish("org/bert", folderFiles("checkpoints/tiny-bert/sharded"))
        let (bertFolder, bertKind) = try registry.resolve(bert.hubID, locator: locator)
        XCTAssertEqual(try SentenceEncoder(folder: bertFolder).encode(["the dog was in the house"]).scalars,
                       try SentenceEncoder(folder: bert.folder).encode(["the dog was in the house"]).scalars)
        checked.insert(bertKind.name)

        // EfficientNet-Lite0's real weights (the legacy-format .pth its package ships).
        let efficientnet = try Fixtures.realModel("efficientnet-lite0")
        let net = try publish("org/efficientnet", ["config.json": efficientnet.appendingPathComponent("config.json"),
                                                   "pytorch_model.bin": efficientnet.appendingPathComponent("pytorch_model.bin")])
        let (netFolder, netKind) = try registry.resolve(net.hubID, locator: locator)
        XCTAssertEqual(try EfficientNetLite(folder: netFolder).features(of: photo).scalars, try EfficientNetLite(folder: net.folder).features(of: photo).scalars)
        checked.insert(netKind.name)

        // A Llama with its SentencePiece tokenizer.model and tokenizer_config.json, and the same with tokenizer.json.
        for (name, tokenizerFiles) in [("llama-sp", ["tokenizer.model": Fixtures.url("tiny-llama3/tokenizer.model"),
                                                     "tokenizer_config.json": Fixtures.url("tiny-llama3/tokenizer_config.json")]),
                                       ("llama-json", ["tokenizer.json": Fixtures.url("tokenizer-json/llama2.json")])] {
            let llama = try publish("org/\(name)", ["config.json": Fixtures.url("tiny-llama3/config.json"),
                                                    "model.safetensors": Fixtures.url("tiny-llama3/model.safetensors")].merging(tokenizerFiles) { a, _ in a })
            let (llamaFolder, llamaKind) = try registry.resolve(llama.hubID, locator: locator)
            let (hub, local) = (try Llama(folder: llamaFolder), try Llama(folder: llama.folder))
            XCTAssertNotNil(hub.tokenizer, "\(name): the hub brought the tokenizer")
            let prompt = try hub.encode("a photo of the city")
            XCTAssertEqual(prompt, try local.encode("a photo of the city"))
            XCTAssertEqual(try decode(hub, prompt: prompt, strategy: .greedy, stop: stop), try decode(local, prompt: prompt, strategy: .greedy, stop: stop))
            checked.insert(llamaKind.name)
        }

        // SigLIP with its spiece.model, tokenizer_config.json and preprocessor_config.json.
        var siglipFiles = folderFiles("tiny-siglip")
        siglipFiles["spiece.model"] = Fixtures.url("sentencepiece/siglip.model")
        let siglip = try publish("org/siglip", siglipFiles)
        let (siglipFolder, siglipKind) = try registry.resolve(siglip.hubID, locator: locator)
        let (siglipHub, siglipLocal) = (try SigLIP(folder: siglipFolder), try SigLIP(folder: siglip.folder))
        XCTAssertEqual(siglipHub.preprocessor, siglipLocal.preprocessor)
        XCTAssertEqual(try siglipHub.classify([photo], labels: ["cat", "cup"]).scalars, try siglipLocal.classify([photo], labels: ["cat", "cup"]).scalars)
        checked.insert(siglipKind.name)

        // BLIP with vocab.txt and preprocessor_config.json.
        let blip = try publish("org/blip", folderFiles("tiny-blip"))
        let (blipFolder, blipKind) = try registry.resolve(blip.hubID, locator: locator)
        let blipOptions = DecodingOptions(strategy: .greedy, maxTokens: 8)
        XCTAssertEqual(try BLIPCaptioner(folder: blipFolder).caption(photo, prompt: "a picture of", options: blipOptions).text,
                       try BLIPCaptioner(folder: blip.folder).caption(photo, prompt: "a picture of", options: blipOptions).text)
        checked.insert(blipKind.name)

        // Every type the hub can serve (all but those recognised by their files, such as the ONNX detector).
        XCTAssertEqual(checked, Set(registry.types.filter { $0.recognizes == nil }.map(\.name)), "every registered model type is covered")
    }
}
