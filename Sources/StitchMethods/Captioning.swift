import Foundation
import StitchImaging
import StitchModels

extension ImageCaptioner {
    /// A caption of `image`: the decoder, conditioned on it, continues the start token (and `prompt`, when given) by `strategy`.
    /// The text is up to the end token, trimmed, as transformers' batch_decode(skip_special_tokens) and strip(); a prompt
    /// begins it, as BLIP's processor decodes the whole sequence ("a picture of two cats").
    public func caption(_ image: RGBImage, prompt: String? = nil, options: DecodingOptions = .captioner) throws -> (tokens: [Int], text: String) {
        let conditioned = try decoder(for: image)
        let start = try prompt.map { try startTokens(prompt: $0) } ?? startTokens
        let tokens = try decode(conditioned, prompt: start, options: options)
        let stop = options.stopConditions
        let promptTokens = Array(start.dropFirst(startTokens.count))
        guard !promptTokens.isEmpty else { return (tokens, try stop.text(of: tokens, model: conditioned).trimmingCharacters(in: .whitespacesAndNewlines)) }
        // Decoded together, so that a piece continuing the prompt's last word joins it; stop strings apply after the prompt.
        let whole = try conditioned.decode(promptTokens + tokens.prefix { $0 != conditioned.endTokenID })
        let promptText = try conditioned.decode(promptTokens)
        let text = whole.hasPrefix(promptText) ? promptText + stop.cut(String(whole.dropFirst(promptText.count))) : stop.cut(whole)
        return (tokens, text.trimmingCharacters(in: .whitespacesAndNewlines))
    }
}
