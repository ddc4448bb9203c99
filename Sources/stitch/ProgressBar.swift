import Foundation

/// A one-line progress bar on standard error, drawn only when standard error is a terminal,
/// so pipes and logs stay clean.
final class ProgressBar {
    let total: Int
    let label: String
    private let visible: Bool
    private let start = Date()
    private var done = 0
    private let resumedAt: Int

    /// `done` items may already be finished (a resumed job).
    init(total: Int, label: String, done: Int = 0, visible: Bool = isatty(2) == 1) {
        self.total = total
        self.label = label
        self.done = done
        resumedAt = done
        self.visible = visible && total > 1
    }

    func advance() { advance(to: done + 1) }

    func advance(to finished: Int) {
        done = finished
        guard visible, done > 0 else { return }
        let width = 30, filled = width * done / max(total, 1)
        let elapsed = Date().timeIntervalSince(start)
        let remaining = done < total && done > resumedAt ? elapsed / Double(done - resumedAt) * Double(total - done) : 0
        let bar = String(repeating: "#", count: filled) + String(repeating: "-", count: width - filled)
        FileHandle.standardError.write(Data(String(format: "\r%@ [%@] %d/%d  %.1fs left ", label, bar, done, total, remaining).utf8))
        if done == total { FileHandle.standardError.write(Data("\n".utf8)) }
    }
}
