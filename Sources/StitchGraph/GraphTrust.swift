import Foundation
import StitchRemote

/// What a graph file may reach beyond itself. A graph is treated as untrusted input: it reads prompt files only
/// inside its own folder, and a server URL it names receives the user's API key only when it is the server the
/// user configured (STITCH_LM_BASE_URL, else OPENAI_BASE_URL) or one the user allowed. Anything more is the user's
/// choice, made on the command line (`--allow-path`, `--allow-url`), never the graph's.
public struct GraphTrust: Sendable {
    /// Folders, besides the graph's own, whose files may be read as prompts.
    public var readableFolders: [String]
    /// Server URLs, besides the configured one, that may receive the API key.
    public var keyedURLs: [String]
    let environment: [String: String]

    public init(readableFolders: [String] = [], keyedURLs: [String] = [], environment: [String: String] = ProcessInfo.processInfo.environment) {
        self.readableFolders = readableFolders
        self.keyedURLs = keyedURLs
        self.environment = environment
    }

    /// Whether the file at `path` (symbolic links resolved) lies inside an allowed folder or `folder` (a graph's own).
    public func mayRead(_ path: String, besides folder: String? = nil) -> Bool {
        let file = Self.resolved(path)
        return ([folder].compactMap { $0 } + readableFolders).contains { folder in
            let root = Self.resolved(folder)
            return file.hasPrefix(root.hasSuffix("/") ? root : root + "/")
        }
    }

    /// The server the user configured in the environment, if any.
    var configuredURL: String? { OpenAICompletionClient.configuredBaseURL(in: environment) }

    /// Whether a server at `url` (nil: the configured one) may be sent the API key.
    func mayReceiveKey(_ url: String?) -> Bool {
        guard let url else { return true }
        return ([configuredURL].compactMap { $0 } + keyedURLs).contains { OpenAICompletionClient.sameServer($0, url) }
    }

    /// The API key from the environment for a server at `url`, or nil when that server may not have it.
    func apiKey(for url: String?) -> String? {
        mayReceiveKey(url) ? OpenAICompletionClient.configuredAPIKey(in: environment) : nil
    }

    private static func resolved(_ path: String) -> String {
        URL(fileURLWithPath: path).standardizedFileURL.resolvingSymlinksInPath().path
    }
}
