import Foundation
import StitchImaging
import StitchModels

extension ImageCaptioner {
    /// A caption of `image`: the decoder, conditioned on it, continues the start token by `strategy`.
    /// The text is up to the end token, trimmed, as transformers' batch_decode(skip_special_tokens) and strip().
    public func caption(_ image: RGBImage, options: DecodingOptions = .captioner) throws -> (tokens: [Int], text: String) {
        let conditioned = try decoder(for: image)
        let tokens = try decode(conditioned, prompt: startTokens, options: options)
        return (tokens, try options.stopConditions.text(of: tokens, model: conditioned).trimmingCharacters(in: .whitespacesAndNewlines))
    }
}
