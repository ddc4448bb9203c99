import Foundation
import StitchTensor

/// Socratic-model captioning (Zeng et al. 2022) as the published image-captioning notebook does it is a graph,
/// Examples/socratic_caption.yaml: CLIP ranks image types ("This is a {t}."), whether there are people and then how
/// many ("There are {p} in this photo.", "There {p} in this photo."), Places365 places and Tencent ML-Images objects
/// ("Photo of a {x}.") zero-shot by cosine similarity (`clip_top_k`); the best fill the five-line prompt; a language
/// model samples candidate captions (10 at temperature 0.9, at most 64 tokens, no stop); CLIP re-ranks them.
public enum Socratic {
    /// Label indices best first by the cosine similarity of their unit embeddings [n, d] to a unit image embedding [d],
    /// ties by index, as the notebook ranks every list.
    public static func rank(labels embeddings: Tensor, image: Tensor) -> [Int] {
        indicesByDescendingValue(matmul(embeddings, image.reshaped([image.count, 1])).scalars)   // [n, 1]
    }
}
