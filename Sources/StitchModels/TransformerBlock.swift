import StitchModelIO
import StitchTensor

/// A pre-layer-norm transformer block, as GPT-2's blocks and CLIP's encoder layers are:
/// x + out(attention(qkv(layerNorm1 x))), then + fc2(activation(fc1(layerNorm2 ·))).
/// Each model file builds it from its own weight names; the attention varies by use.
/// A decoder block (GPT-2 with add_cross_attention) also attends to an encoder's states
/// between the two: + crossOut(attention(query(crossLayerNorm ·), memory)).
struct TransformerBlock {
    let layerNorm1, layerNorm2: LayerNorm
    /// Queries, keys and values fused along the outputs, so one product serves all three.
    let qkv: Linear
    let out, fc1, fc2: Linear
    let heads: Int
    let activation: Activation
    var cross: CrossAttention? = nil

    /// The last layer for one pooled position per sequence: keys and values for every token,
    /// but queries, output projection and MLP only for `positions` (one per batch row).
    /// x [batch, t, d] -> [batch, 1, d]; the same values those rows get from the full layer.
    func pooled(_ x: Tensor, positions: [Int], causal: Bool) -> Tensor {
        let (batch, t, d) = (x.shape[0], x.shape[1], x.shape[2])
        let normalized = layerNorm1(x)
        let selected = gatherRows(normalized, positions)
        // The fused nn.Linear weight [3d, d] holds q, k, v projections as row blocks: the outputs of each.
        let query = qkv(selected, outputs: 0..<d)
        let keysAndValues = splitLastDimension(qkv(normalized, outputs: d..<3 * d), parts: 2)
        // A causal row at position p sees keys 0...p only.
        let mask = causal ? Tensor(shape: [batch, t], scalars: positions.flatMap { p in (0..<t).map { $0 <= p ? 1 : 0 } }) : nil
        let attended = multiHeadAttention(query: query, key: keysAndValues[0], value: keysAndValues[1], heads: heads, causal: false, keyMask: mask,
                                          precision: qkv.precision)
        var hidden = gatherRows(x, positions)
        addInPlace(&hidden, out(attended))
        addFeedForward(&hidden)
        return hidden
    }

    /// hidden [batch, t, d] through the layer, in place (a copy of the residual stream only if the caller keeps one).
    func callAsFunction(_ hidden: inout Tensor, causal: Bool) {
        addInPlace(&hidden, out(fusedSelfAttention(qkv(layerNorm1(hidden)), heads: heads, causal: causal, precision: qkv.precision)))
        addFeedForward(&hidden)
    }

    /// The causal layer for positions after those in `cache`, whose keys and values it appends;
    /// a decoder block also attends to `memory`. hidden [batch, t, d], in place.
    func callAsFunction(_ hidden: inout Tensor, cache: inout KVCache, memory: CrossMemory? = nil) {
        let parts = splitLastDimension(qkv(layerNorm1(hidden)), parts: 3)
        addInPlace(&hidden, out(cachedSelfAttention(query: parts[0], key: parts[1], value: parts[2], heads: heads, cache: &cache,
                                                    precision: qkv.precision)))
        addCrossAttention(&hidden, memory)
        addFeedForward(&hidden)
    }

    /// The causal layer over packed sequences that continue a shared prefix, which they read in
    /// place (`packedPrefixAttention`). hidden [total, d], in place; returns the fused q/k/v
    /// projections [total, 3d], whose key and value thirds a cache can take later.
    @discardableResult
    func callAsFunction(packed hidden: inout Tensor, segments: [PackedSegment], prefix: KVCache, memory: CrossMemory? = nil) -> Tensor {
        let projections = qkv(layerNorm1(hidden))
        addInPlace(&hidden, out(packedPrefixAttention(projections, segments: segments, prefix: prefix, heads: heads, precision: qkv.precision)))
        if memory != nil {
            // Packed rows attend to the memory independently: one batch row of `total` queries.
            var rows = hidden.reshaped([1, hidden.shape[0], hidden.shape[1]])
            addCrossAttention(&rows, memory)
            hidden = rows.reshaped(hidden.shape)
        }
        addFeedForward(&hidden)
        return projections
    }

    /// hidden [batch, t, d] += crossOut(attention(query(crossLayerNorm hidden), memory)), when the block has one.
    private func addCrossAttention(_ hidden: inout Tensor, _ memory: CrossMemory?) {
        guard let cross else { return }
        guard let memory else { preconditionFailure("a cross-attention block needs the encoder's memory") }
        let queries = cross.query(cross.layerNorm(hidden))
        addInPlace(&hidden, cross.out(multiHeadAttention(query: queries, key: memory.keys, value: memory.values, heads: heads, causal: false,
                                                         precision: cross.query.precision)))
    }

    /// The residual MLP block: hidden += fc2(activation(fc1(layerNorm2(hidden)))).
    private func addFeedForward(_ hidden: inout Tensor) {
        addInPlace(&hidden, fc2(fc1(layerNorm2(hidden), activation: activation)))
    }
}

/// Row `positions[b]` of each sequence b of x [batch, t, d], as [batch, 1, d].
func gatherRows(_ x: Tensor, _ positions: [Int]) -> Tensor {
    let (t, d) = (x.shape[1], x.shape[2])
    return concatenate(positions.enumerated().map { b, p in
        precondition(p >= 0 && p < t, "position \(p) outside 0..<\(t)")
        return x.row(b).row(p).reshaped([1, 1, d])
    }, axis: 0)
}

/// A decoder block's attention to an encoder: layer norm, query projection, fused key/value
/// projection of the encoder's states, output projection.
struct CrossAttention {
    let layerNorm: LayerNorm
    let query, keyValue, out: Linear

    /// Keys and values of encoder states [1, t, d], computed once per image.
    func memory(_ states: Tensor) -> CrossMemory {
        let parts = splitLastDimension(keyValue(states), parts: 2)
        return CrossMemory(keys: parts[0], values: parts[1])
    }
}

/// One decoder layer's keys and values of the encoder's states [1, t, d], shared by every
/// sequence decoded for that input.
public struct CrossMemory: Sendable {
    let keys, values: Tensor
}
