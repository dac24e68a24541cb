import Foundation
import Hummingbird
import HummingbirdTesting
import Lab
import NIOCore
import Testing

@testable import Gateway

/// A typed request body is refused as a dictionary body was (empty, not JSON, not an object),
/// its own checks answer with their message and param, and a cursor page has null ids when empty.
@Suite struct WireTests {
    @Test func bodiesAreRefusedAsTheDictionaryBodiesWere() async throws {
        let router = Router(context: GatewayRequestContext.self)
        router.post("/v1/evals") { request, context in
            let body = try await mapped { try await Wire.decode(EvalCreateRequest.self, request, context: context) }
            return try Wire.response(["name": body.name])
        }
        let cases: [(body: String, status: Int, message: String, param: String?)] = [
            ("", 400, "request body is empty; expected a JSON object", nil),
            ("{not json", 400, "request body is not valid JSON", nil),
            ("5", 400, "request body is not valid JSON", nil),
            ("[1,2]", 400, "request body must be a JSON object", nil),
            ("{}", 400, "data_source_config is required", "data_source_config"),
            (#"{"name":"n","data_source_config":{"type":"custom"},"testing_criteria":[{"type":"regex","input":"x","pattern":"x"}]}"#, 200, "", nil),
        ]
        try await Application(router: router).test(.router) { client in
            for c in cases {
                try await client.execute(uri: "/v1/evals", method: .post, body: ByteBuffer(string: c.body)) { response in
                    #expect(Int(response.status.code) == c.status, "\(c.body)")
                    let json = try JSONSerialization.jsonObject(with: Data(String(buffer: response.body).utf8)) as? [String: Any]
                    if c.status == 200 {
                        #expect(json?["name"] as? String == "n")
                    } else {
                        let error = json?["error"] as? [String: Any]
                        #expect(error?["message"] as? String == c.message, "\(c.body)")
                        #expect(error?["param"] as? String == c.param, "\(c.body)")
                        #expect(error?["code"] as? String == "invalid_request", "\(c.body)")
                    }
                }
            }
        }
    }

    @Test func anEmptyPageHasNullIds() throws {
        let encoder = JSONEncoder()
        encoder.outputFormatting = .sortedKeys
        let empty = String(decoding: try encoder.encode(ListPage([String](), hasMore: false) { $0 }), as: UTF8.self)
        #expect(empty == #"{"data":[],"first_id":null,"has_more":false,"last_id":null,"object":"list"}"#)
        let page = String(decoding: try encoder.encode(ListPage(["a", "b"], hasMore: true) { $0 }), as: UTF8.self)
        #expect(page == #"{"data":["a","b"],"first_id":"a","has_more":true,"last_id":"b","object":"list"}"#)
    }
}
