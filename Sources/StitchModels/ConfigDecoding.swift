/// Hugging Face configs omit fields that equal the library's defaults; these
/// helpers decode a field or fall back to transformers' default for it.
struct AnyKey: CodingKey {
    let stringValue: String
    var intValue: Int? { nil }
    init(_ string: String) { stringValue = string }
    init?(stringValue: String) { self.stringValue = stringValue }
    init?(intValue: Int) { return nil }
}

extension KeyedDecodingContainer where Key == AnyKey {
    func value<T: Decodable>(_ key: String, default fallback: T) throws -> T {
        try decodeIfPresent(T.self, forKey: AnyKey(key)) ?? fallback
    }

    func value<T: Decodable>(_ key: String) throws -> T {
        try decode(T.self, forKey: AnyKey(key))
    }
}

/// The sizes a config may give: generous for every published model, small enough that nothing built from
/// them can ask for unbounded memory or time. A config outside them is refused before anything is allocated.
enum ConfigLimits {
    static let vocabulary = 1...(1 << 21)
    static let width = 1...16384
    static let layers = 1...256
    static let heads = 1...512
    static let positions = 1...(1 << 20)
    static let inner = 1...(1 << 17)
    static let imageSize = 1...4096
}

/// Runs `body`, which decodes the nested config under `key` (text_config), with its checks' field errors named under `key`.
func within<T>(_ key: String, _ body: () throws -> T) throws -> T {
    do {
        return try body()
    } catch let DecodingError.dataCorrupted(context) where context.codingPath.first?.stringValue != key {
        throw DecodingError.dataCorrupted(.init(codingPath: [AnyKey(key)] + context.codingPath, debugDescription: context.debugDescription))
    }
}

/// `value` of the config field at `path` must lie in `range`.
func checkSize(_ value: Int, _ path: String..., in range: ClosedRange<Int>) throws {
    guard range.contains(value) else {
        throw DecodingError.dataCorrupted(.init(codingPath: path.map(AnyKey.init), debugDescription: "\(value) is not in \(range.lowerBound)...\(range.upperBound)"))
    }
}

/// A transformer's sizes: width, depth, heads dividing the width, feed-forward size.
func checkTransformer(width: Int, layers: Int, heads: Int, inner: Int, names: (width: String, layers: String, heads: String, inner: String),
                      within prefix: [String] = []) throws {
    func path(_ name: String) -> [AnyKey] { (prefix + [name]).map(AnyKey.init) }
    for (value, name, range) in [(width, names.width, ConfigLimits.width), (layers, names.layers, ConfigLimits.layers),
                                 (heads, names.heads, ConfigLimits.heads), (inner, names.inner, ConfigLimits.inner)] where !range.contains(value) {
        throw DecodingError.dataCorrupted(.init(codingPath: path(name), debugDescription: "\(value) is not in \(range.lowerBound)...\(range.upperBound)"))
    }
    guard width % heads == 0 else {
        throw DecodingError.dataCorrupted(.init(codingPath: path(names.heads), debugDescription: "\(heads) heads do not divide the width \(width)"))
    }
}
