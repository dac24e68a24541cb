import Foundation
import NIOCore
import Serving
import Testing

@testable import Gateway

/// A streamed request without `stream_options` gets `include_usage` spliced into its bytes.
struct UsageInjectionTests {
    @Test func splicesIntoTheClientsBytes() throws {
        for text in [#"{"model":"m","stream":true,"messages":[{"role":"user","content":"{\"x\":1}"}]}"#, " \n{ \"a\" : [1,2] }"] {
            let spliced = try #require(Relay.askingForUsage(ByteBuffer(string: text)))
            let object = try #require(JSONSerialization.jsonObject(with: Data(spliced.readableBytesView)) as? [String: Any])
            let original = try #require(JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any])
            #expect((object["stream_options"] as? [String: Any])?["include_usage"] as? Bool == true)
            #expect(object.count == original.count + 1)
            #expect(String(buffer: spliced).hasSuffix(text.drop { $0 != "{" }.dropFirst()))
        }
    }

    @Test func leavesWhatItCannotSpliceToTheParser() {
        for text in ["{}", " { } ", "[1]", "", "\u{FEFF}{\"a\":1}"] {
            #expect(Relay.askingForUsage(ByteBuffer(string: text)) == nil, "\(text)")
        }
    }
}
