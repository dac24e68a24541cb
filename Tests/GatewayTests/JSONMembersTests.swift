import Foundation
import GGUF
import Testing

@testable import Gateway

/// `JSON.members` reads `usage` and `timings` out of an answer by skipping over everything else;
/// it must agree with a full parse wherever the text is valid, and refuse what is not an object.
struct JSONMembersTests {
    func members(_ names: Set<String>, _ text: String) -> [String: Any]? {
        Array(text.utf8).withUnsafeBytes { JSON.members(names, of: $0) }
    }

    @Test func findsUsageAfterContentThatLooksLikeIt() throws {
        let text = #"""
            {"choices":[{"message":{"content":"say \"usage\":{\"prompt_tokens\":99} and ] } [ {"}}],
             "object":"chat.completion", "n": -1.5e3, "ok": true, "none": null,
             "usage" : {"prompt_tokens":5,"completion_tokens":1,"total_tokens":6},
             "timings":{"predicted_per_token_ms":0.25}}
            """#
        let found = try #require(members(["usage", "timings"], text))
        let usage = try #require(found["usage"] as? [String: Any])
        #expect(usage["prompt_tokens"] as? Int == 5)
        #expect(usage["completion_tokens"] as? Int == 1)
        #expect((found["timings"] as? [String: Any])?["predicted_per_token_ms"] as? Double == 0.25)
        #expect(found.count == 2)
    }

    @Test func refusesWhatIsNotACompleteObject() {
        for text in ["", "[]", "\"usage\"", "{\"usage\":{\"a\":1}", "{\"usage\" {}}", "{\"a\":\"unterminated}", "{\"a\":1,}", "{\"a\":}"] {
            #expect(members(["usage"], text) == nil, "\(text)")
        }
        #expect(members(["usage"], "{}")?.isEmpty == true)
        #expect(members(["usage"], " {\"other\":[1,{\"usage\":2}]} ")?.isEmpty == true)
    }

    /// Random objects: every member found agrees with JSONSerialization's parse of the whole.
    @Test func agreesWithAFullParse() throws {
        var rng = SplitMix64(seed: 7)
        func value(_ depth: Int) -> Any {
            switch rng.next() % (depth > 3 ? 4 : 6) {
            case 0: return Int(rng.next() % 2000) - 1000
            case 1: return ["a", "b\"q\"", "c\\d", "}{][,:", "é ✓", ""][Int(rng.next() % 6)]
            case 2: return rng.next() % 2 == 0
            case 3: return NSNull()
            case 4: return (0..<Int(rng.next() % 4)).map { _ in value(depth + 1) }
            default: return Dictionary(uniqueKeysWithValues: (0..<Int(rng.next() % 4)).map { ("k\($0)", value(depth + 1)) })
            }
        }
        for _ in 0..<500 {
            let object = Dictionary(uniqueKeysWithValues: (0..<Int(rng.next() % 6)).map { ("k\($0)", value(0)) })
            let data = try JSONSerialization.data(withJSONObject: object)
            let full = try #require(JSONSerialization.jsonObject(with: data) as? [String: Any])
            let found = try #require(data.withUnsafeBytes { JSON.members(Set(full.keys), of: $0) })
            // Compared as canonical text: Foundation's booleans differ in type between a whole
            // parse and a fragment parse, never in value.
            func canonical(_ object: [String: Any]) throws -> String {
                String(decoding: try JSONSerialization.data(withJSONObject: object, options: [.sortedKeys]), as: UTF8.self)
            }
            #expect(try canonical(found) == canonical(full), "\(String(decoding: data, as: UTF8.self))")
        }
    }
}
