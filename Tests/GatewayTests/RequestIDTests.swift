import Foundation
import Testing

@testable import Gateway
import Usage

struct RequestIDTests {
    /// IDs keep the UUID text form clients and the ledger expect, and never repeat.
    @Test func uuidShapedAndUnique() {
        let ids = (0..<20_000).map { _ in RequestIDs.next() }
        #expect(Set(ids).count == ids.count)
        for id in ids.prefix(100) {
            #expect(UUID(uuidString: id) != nil, "\(id)")
            #expect(id == id.lowercased())
        }
        // Consecutive IDs share no obvious prefix.
        #expect(Set(ids.prefix(100).map { $0.prefix(4) }).count > 50)
    }
}
