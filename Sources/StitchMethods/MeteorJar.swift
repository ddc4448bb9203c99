import Foundation

/// METEOR 1.5 exactly as pycocoevalcap computes it: the official jar, run as `java -jar -Xmx2G meteor-1.5.jar - - -stdio
/// -l en -norm` in the jar's folder (which holds data/paraphrase-en.gz), scores each image's tokenized candidate against
/// its references ("SCORE ||| ref ||| ... ||| hyp" gives the image's statistics), then one "EVAL" line of every image's
/// statistics gives each image's score and the corpus score.
public struct MeteorJar: Sendable {
    public let jar: URL

    /// `jar`: meteor-1.5.jar with its data/ folder beside it, as pycocoevalcap ships it.
    public init(jar: URL) throws {
        guard FileManager.default.fileExists(atPath: jar.path) else { throw MethodError.unreadableFile(jar.path, "no such METEOR jar") }
        guard FileManager.default.fileExists(atPath: jar.deletingLastPathComponent().appendingPathComponent("data/paraphrase-en.gz").path) else {
            throw MethodError.unreadableFile(jar.path, "data/paraphrase-en.gz is not beside the jar (use the folder pycocoevalcap installs)")
        }
        self.jar = jar
    }

    /// The jar of an installed pycocoevalcap (pip's site-packages of this user, the system, pyenv, a virtualenv or
    /// conda environment), if there is one and java is on the PATH to run it.
    public static func installed(environment: [String: String] = ProcessInfo.processInfo.environment) -> URL? {
        guard (environment["PATH"] ?? "").split(separator: ":").contains(where: { FileManager.default.isExecutableFile(atPath: "\($0)/java") }) else {
            return nil
        }
        let home = FileManager.default.homeDirectoryForCurrentUser.path
        var libraries = ["\(home)/.local/lib", "/usr/local/lib", "/usr/lib"]
        libraries += ["VIRTUAL_ENV", "CONDA_PREFIX"].compactMap { environment[$0].map { "\($0)/lib" } }
        let pyenv = "\(environment["PYENV_ROOT"] ?? "\(home)/.pyenv")/versions"
        libraries += ((try? FileManager.default.contentsOfDirectory(atPath: pyenv)) ?? []).sorted().map { "\(pyenv)/\($0)/lib" }
        for library in libraries {
            for python in ((try? FileManager.default.contentsOfDirectory(atPath: library)) ?? []).sorted() where python.hasPrefix("python3") {
                for packages in ["site-packages", "dist-packages"] {
                    let jar = URL(fileURLWithPath: "\(library)/\(python)/\(packages)/pycocoevalcap/meteor/meteor-1.5.jar")
                    if FileManager.default.fileExists(atPath: jar.path) { return jar }
                }
            }
        }
        return nil
    }

    /// The corpus METEOR and each image's, of tokenized `candidates[i]` against `references[i]`.
    public func score(candidates: [String], references: [[String]]) throws -> (corpus: Double, perImage: [Double]) {
        precondition(candidates.count == references.count, "one group of references per candidate")
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = ["java", "-jar", "-Xmx2G", jar.lastPathComponent, "-", "-", "-stdio", "-l", "en", "-norm"]
        process.currentDirectoryURL = jar.deletingLastPathComponent()
        let input = Pipe(), output = Pipe(), errors = Pipe()
        (process.standardInput, process.standardOutput, process.standardError) = (input, output, errors)
        do {
            try process.run()
        } catch {
            throw MethodError.invalidInput("cannot run java for METEOR (\(jar.path)): \(error)")
        }
        defer {
            try? input.fileHandleForWriting.close()
            process.waitUntilExit()
        }
        let lines = LineReader(output.fileHandleForReading)
        func exchange(_ line: String, answers: Int) throws -> [String] {
            input.fileHandleForWriting.write(Data((line + "\n").utf8))
            return try (0..<answers).map { _ in
                guard let answer = lines.next() else {
                    let detail = String(decoding: errors.fileHandleForReading.availableData, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
                    throw MethodError.invalidInput("METEOR (\(jar.path)) stopped answering\(detail.isEmpty ? "" : ": \(detail)")")
                }
                return answer
            }
        }
        var statistics: [String] = []
        for (candidate, refs) in zip(candidates, references) {
            let hypothesis = candidate.replacingOccurrences(of: "|||", with: "").replacingOccurrences(of: "  ", with: " ")
            statistics += try exchange((["SCORE"] + refs + [hypothesis]).joined(separator: " ||| "), answers: 1)
        }
        let scores = try exchange((["EVAL"] + statistics).joined(separator: " ||| "), answers: candidates.count + 1).map { line in
            guard let value = Double(line.trimmingCharacters(in: .whitespaces)) else {
                throw MethodError.invalidInput("METEOR (\(jar.path)) answered '\(line)', not a score")
            }
            return value
        }
        return (scores.last!, Array(scores.dropLast()))
    }
}

/// Lines of a pipe, read as they arrive.
private final class LineReader {
    private let handle: FileHandle
    private var buffer = Data()

    init(_ handle: FileHandle) { self.handle = handle }

    func next() -> String? {
        while true {
            if let end = buffer.firstIndex(of: UInt8(ascii: "\n")) {
                defer { buffer = Data(buffer[(end + 1)...]) }
                return String(decoding: buffer[..<end], as: UTF8.self)
            }
            let chunk = handle.availableData
            guard !chunk.isEmpty else { return nil }
            buffer += chunk
        }
    }
}
