/// A binary heap ordered by `before` (the first to pop is one nothing is before).
public struct BinaryHeap<Element> {
    @usableFromInline var items: [Element] = []
    @usableFromInline let before: (Element, Element) -> Bool

    @inlinable public init(before: @escaping (Element, Element) -> Bool) { self.before = before }

    @inlinable public mutating func push(_ item: Element) {
        items.append(item)
        var child = items.count - 1
        while child > 0 {
            let parent = (child - 1) / 2
            guard before(items[child], items[parent]) else { break }
            items.swapAt(child, parent)
            child = parent
        }
    }

    @inlinable public mutating func pop() -> Element? {
        guard !items.isEmpty else { return nil }
        items.swapAt(0, items.count - 1)
        let top = items.removeLast()
        var parent = 0
        while true {
            let left = 2 * parent + 1, right = left + 1
            var first = parent
            if left < items.count, before(items[left], items[first]) { first = left }
            if right < items.count, before(items[right], items[first]) { first = right }
            guard first != parent else { return top }
            items.swapAt(parent, first)
            parent = first
        }
    }
}
