import Foundation
import GGUF
import Serving
import Testing


/// `JSONMembers.members` reads `usage` and `timings` out of an answer by skipping over everything else;
/// it must agree with a full parse wherever the text is valid, and refuse what is not an object.
struct JSONMembersTests {
    func members(_ names: Set<String>, _ text: String) -> [String: NumericObject]? {
        Array(text.utf8).withUnsafeBytes { JSONMembers.members(names, of: $0) }
    }

    /// A typed object as the tree a full parse gives (numbers as `Int` when whole).
    static func tree(_ object: NumericObject) -> [String: Any] {
        var out: [String: Any] = object.objects.mapValues(tree)
        for (key, value) in object.numbers { out[key] = object.int(key).map { $0 as Any } ?? value }
        return out
    }

    @Test func findsUsageAfterContentThatLooksLikeIt() throws {
        let text = #"""
            {"choices":[{"message":{"content":"say \"usage\":{\"prompt_tokens\":99} and ] } [ {"}}],
             "object":"chat.completion", "n": -1.5e3, "ok": true, "none": null,
             "usage" : {"prompt_tokens":5,"completion_tokens":1,"total_tokens":6},
             "timings":{"predicted_per_token_ms":0.25}}
            """#
        let found = try #require(members(["usage", "timings"], text))
        let usage = try #require(found["usage"])
        #expect(usage.int("prompt_tokens") == 5)
        #expect(usage.int("completion_tokens") == 1)
        #expect(found["timings"]?.double("predicted_per_token_ms") == 0.25)
        #expect(found.count == 2)
    }

    @Test func refusesWhatIsNotACompleteObject() {
        for text in ["", "[]", "\"usage\"", "{\"usage\":{\"a\":1}", "{\"usage\" {}}", "{\"a\":\"unterminated}", "{\"a\":1,}", "{\"a\":}"] {
            #expect(members(["usage"], text) == nil, "\(text)")
        }
        #expect(members(["usage"], "{}")?.isEmpty == true)
        #expect(members(["usage"], " {\"other\":[1,{\"usage\":2}]} ")?.isEmpty == true)
    }

    /// Random answers: each wanted member found holds the numbers a full parse holds, nested
    /// objects included, and nothing else.
    @Test func agreesWithAFullParse() throws {
        var rng = SplitMix64(seed: 7)
        func junk(_ depth: Int) -> Any {
            switch rng.next() % (depth > 2 ? 4 : 6) {
            case 0: return Int(rng.next() % 2000) - 1000
            case 1: return ["a", "b\"q\"", "c\\d", "}{][,:", "é ✓", ""][Int(rng.next() % 6)]
            case 2: return rng.next() % 2 == 0
            case 3: return NSNull()
            case 4: return (0..<Int(rng.next() % 4)).map { _ in junk(depth + 1) }
            default: return Dictionary(uniqueKeysWithValues: (0..<Int(rng.next() % 4)).map { ("j\($0)", junk(depth + 1)) })
            }
        }
        /// A usage-like object: numbers, nested objects and some junk.
        func numbers(_ depth: Int) -> [String: Any] {
            Dictionary(uniqueKeysWithValues: (0..<Int(rng.next() % 5)).map { i -> (String, Any) in
                switch rng.next() % 5 {
                case 0: return ("n\(i)", Int(rng.next() % 100_000))
                case 1: return ("n\(i)", Double(rng.next() % 10_000) / 64 - 50)
                case 2 where depth < 2: return ("n\(i)", numbers(depth + 1))
                default: return ("n\(i)", junk(2))
                }
            })
        }
        /// What `members` must keep of an object: its numbers and nested objects, recursively.
        func kept(_ object: [String: Any]) -> [String: Any] {
            object.compactMapValues { value -> Any? in
                if value is Bool { return nil }
                if value is Int || value is Double { return value }
                return (value as? [String: Any]).map(kept)
            }
        }
        func canonical(_ object: Any) throws -> String {
            String(decoding: try JSONSerialization.data(withJSONObject: object, options: [.sortedKeys]), as: UTF8.self)
        }
        for _ in 0..<500 {
            var answer = Dictionary(uniqueKeysWithValues: (0..<Int(rng.next() % 5)).map { ("k\($0)", junk(0)) })
            var expected: [String: Any] = [:]
            for name in ["usage", "timings"] where rng.next() % 3 != 0 {
                let object = numbers(0)
                answer[name] = object
                expected[name] = kept(object)
            }
            if rng.next() % 4 == 0 { answer["usage"] = junk(3) as? [Any] ?? 7; expected["usage"] = nil }
            let data = try JSONSerialization.data(withJSONObject: answer)
            let found = try #require(data.withUnsafeBytes { JSONMembers.members(["usage", "timings"], of: $0) })
            #expect(try canonical(found.mapValues(Self.tree)) == canonical(expected), "\(String(decoding: data, as: UTF8.self))")
        }
    }
}

@Suite struct JSONValueRangeTests {
    @Test func theRangesOfTopLevelValuesAreFoundWithoutBuildingThem() {
        let text = #"{"model":"m","messages":[{"role":"user","content":"a \"quoted\" [x]"}],"user":"u-1","nested":{"prompt":"no"},"prompt":"p"}"#
        let ranges = Array(text.utf8).withUnsafeBytes { bytes in
            JSONMembers.valueRanges(["messages", "user", "prompt", "absent"], of: bytes).map { found in
                found.mapValues { String(decoding: UnsafeRawBufferPointer(rebasing: bytes[$0]), as: UTF8.self) }
            }
        }
        #expect(ranges?["messages"] == #"[{"role":"user","content":"a \"quoted\" [x]"}]"#)
        #expect(ranges?["user"] == #""u-1""#)
        // Only the top level: the nested object's "prompt" is not the request's.
        #expect(ranges?["prompt"] == #""p""#)
        #expect(ranges?["absent"] == nil)
        #expect(Array(#"{"messages":[1,2"#.utf8).withUnsafeBytes { JSONMembers.valueRanges(["messages"], of: $0) } == nil)
    }
}
