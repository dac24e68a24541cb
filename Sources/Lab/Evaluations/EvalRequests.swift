import Foundation
import Jobs

// The Evals API's request bodies as values. Each decodes from the body's JSON object and checks
// it field by field, refusing with the message and `param` the API has always given (a field of
// the wrong type is refused, or ignored where it always was).

/// A `POST /v1/evals` body.
public struct EvalCreateRequest: Sendable, Decodable {
    public var name: String
    public var metadata: [String: String]
    /// The schema of an item (`data_source_config.item_schema`).
    public var itemSchema: JobJSON
    public var includeSampleSchema: Bool
    public var testingCriteria: [Grader]

    public init(from decoder: any Decoder) throws {
        try self.init(try [String: JobJSON](from: decoder))
    }

    public init(_ body: [String: JobJSON]) throws(EvalError) {
        guard let config = body["data_source_config"]?.objectValue else { throw .badRequest("data_source_config is required", param: "data_source_config") }
        guard config["type"]?.stringValue == "custom" else {
            throw .badRequest("data_source_config.type must be 'custom' (logs and stored completions are hosted-only)", param: "data_source_config.type")
        }
        guard let criteria = body["testing_criteria"]?.arrayValue, !criteria.isEmpty else {
            throw .badRequest("testing_criteria must be a non-empty list", param: "testing_criteria")
        }
        var graders: [Grader] = []
        for (i, criterion) in criteria.enumerated() {
            guard criterion.objectValue != nil else { throw .badRequest("testing_criteria[\(i)] must be an object", param: "testing_criteria") }
            do { graders.append(try Grader(criterion, index: i)) } catch { throw .badRequest(error.message, param: "testing_criteria") }
        }
        itemSchema = config["item_schema"] ?? .object(["type": .string("object")])
        includeSampleSchema = config["include_sample_schema"]?.boolValue ?? false
        testingCriteria = graders
        name = body["name"]?.stringValue ?? ""
        metadata = try Self.metadata(body["metadata"])
    }

    /// Up to 16 string values; absent or null is none.
    static func metadata(_ raw: JobJSON?) throws(EvalError) -> [String: String] {
        guard let raw, !raw.isNull else { return [:] }
        guard let object = raw.objectValue, object.count <= 16 else { throw metadataError }
        var metadata: [String: String] = [:]
        for (key, value) in object {
            guard let text = value.stringValue else { throw metadataError }
            metadata[key] = text
        }
        return metadata
    }

    static let metadataError = EvalError.badRequest("metadata must be an object of at most 16 string values", param: "metadata")
}

/// A `POST /v1/evals/{id}` body: a new name and/or metadata (nil: unchanged).
public struct EvalUpdateRequest: Sendable, Decodable {
    public var name: String?
    public var metadata: [String: String]?

    public init(from decoder: any Decoder) throws {
        try self.init(try [String: JobJSON](from: decoder))
    }

    public init(_ body: [String: JobJSON]) throws(EvalError) {
        if let raw = body["name"] {
            guard let name = raw.stringValue else { throw .badRequest("name must be a string", param: "name") }
            self.name = name
        }
        if let raw = body["metadata"] { metadata = try EvalCreateRequest.metadata(raw) }
    }
}

/// A `POST /v1/evals/{id}/runs` body: its items (inline or an uploaded file), and for a
/// `completions` source the model, template (or Corral's prompt sequence) and sampling.
public struct EvalRunRequest: Sendable, Decodable {
    /// Where a run's items are: in the request (`file_content`) or in an uploaded file (`file_id`).
    public enum Items: Sendable, Equatable {
        case inline([JobJSON])
        case file(String)
    }

    public var name: String
    /// The `data_source` as sent (the run object echoes it).
    public var dataSource: JobJSON
    public var items: Items
    /// The model asked (a `completions` source); nil for `jsonl`, whose items carry samples.
    public var model: String?
    public var template: [EvalTemplateMessage] = []
    public var turns: [String] = []
    public var sampling = EvalSampling()
    public var concurrency: Int
    public var repetitions: Int
    public var metadata: [String: String]

    public init(from decoder: any Decoder) throws {
        try self.init(try [String: JobJSON](from: decoder))
    }

    public init(_ body: [String: JobJSON]) throws(EvalError) {
        guard let source = body["data_source"]?.objectValue, let type = source["type"]?.stringValue else {
            throw .badRequest("data_source with a type is required", param: "data_source")
        }
        guard type == "completions" || type == "jsonl" else {
            throw .badRequest("data_source.type must be 'completions' or 'jsonl'", param: "data_source.type")
        }
        items = try Self.items(source["source"])
        name = body["name"]?.stringValue ?? ""
        concurrency = try Self.bounded(body["concurrency"], "concurrency", default: 4, 1...64)
        dataSource = .object(source)
        metadata = try EvalCreateRequest.metadata(body["metadata"])
        if type == "completions" {
            guard let model = source["model"]?.stringValue, !model.isEmpty else { throw .badRequest("data_source.model is required", param: "data_source.model") }
            self.model = model
            guard let messages = source["input_messages"]?.objectValue else {
                throw .badRequest("data_source.input_messages is required", param: "data_source.input_messages")
            }
            let template = messages["template"]?.arrayValue ?? []
            if messages["type"]?.stringValue == "sequence" {
                // Corral's prompt sequences: `turns` (user turns, templates), after an optional
                // `template` (a system message, say).
                guard let turns = messages["turns"]?.arrayValue?.compactMap(\.stringValue), turns.count == messages["turns"]?.arrayValue?.count, !turns.isEmpty
                else {
                    throw .badRequest("data_source.input_messages.turns must be a non-empty list of templates", param: "data_source.input_messages")
                }
                self.turns = turns
            } else {
                guard messages["type"]?.stringValue == "template", !template.isEmpty else {
                    throw .badRequest("data_source.input_messages must be a non-empty template (or Corral's sequence)", param: "data_source.input_messages")
                }
            }
            self.template = try template.enumerated().map { (i, message) throws(EvalError) in
                guard let role = message["role"]?.stringValue else {
                    throw .badRequest("input_messages.template[\(i)] needs a role and content", param: "data_source.input_messages")
                }
                guard let content = message["content"]?.stringValue ?? message["content"]?["text"]?.stringValue else {
                    throw .badRequest("input_messages.template[\(i)].content must be text", param: "data_source.input_messages")
                }
                return EvalTemplateMessage(role: role, content: content)
            }
            let sampling = source["sampling_params"]?.objectValue ?? [:]
            self.sampling = EvalSampling(
                temperature: sampling["temperature"]?.doubleValue, topP: sampling["top_p"]?.doubleValue,
                maxCompletionTokens: sampling["max_completion_tokens"]?.intValue, seed: sampling["seed"]?.intValue)
        }
        repetitions = try Self.bounded(body["repetitions"], "repetitions", default: 1, 1...100)
    }

    /// `data_source.source`: `file_content` (its items checked here) or `file_id`.
    static func items(_ raw: JobJSON?) throws(EvalError) -> Items {
        guard let source = raw?.objectValue else { throw .badRequest("data_source.source is required", param: "data_source.source") }
        switch source["type"]?.stringValue {
        case "file_content":
            guard let content = source["content"]?.arrayValue else { throw .badRequest("data_source.source.content must be a list", param: "data_source.source") }
            return .inline(try checked(content))
        case "file_id":
            guard let id = source["id"]?.stringValue else { throw .badRequest("data_source.source.id is required", param: "data_source.source") }
            return .file(id)
        default:
            throw .badRequest("data_source.source.type must be 'file_content' or 'file_id'", param: "data_source.source.type")
        }
    }

    /// Items are objects with an `item` object; there is at least one.
    static func checked(_ entries: [JobJSON]) throws(EvalError) -> [JobJSON] {
        for (i, entry) in entries.enumerated() where entry["item"]?.objectValue == nil {
            throw .badRequest("item \(i) must be an object with an 'item' object", param: "data_source.source")
        }
        guard !entries.isEmpty else { throw .badRequest("the source has no items", param: "data_source.source") }
        return entries
    }

    /// One of Corral's integer fields on a run request (`concurrency` 1–64, default 4;
    /// `repetitions` 1–100, default 1).
    static func bounded(_ raw: JobJSON?, _ name: String, default value: Int, _ range: ClosedRange<Int>) throws(EvalError) -> Int {
        guard let raw, !raw.isNull else { return value }
        guard let n = raw.intValue, range.contains(n) else {
            throw .badRequest("\(name) must be an integer from \(range.lowerBound) to \(range.upperBound)", param: name)
        }
        return n
    }
}
