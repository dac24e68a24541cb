import Foundation
import GGUF
import Jobs
import Runtime
import Store

/// `PUT /admin/default-model`'s body: a model name, or null for routes.json's default.
public struct DefaultModelRequest: Sendable, Decodable {
    public var model: String?

    public init(model: String?) { self.model = model }

    public init(from decoder: any Decoder) throws {
        let body = try [String: JobJSON](from: decoder)
        switch body["model"] {
        case .string(let name)? where !name.isEmpty: model = name
        case .null?: model = nil
        default: throw LibraryError.badRequest("model must be a model name, or null for routes.json's default", param: "model")
        }
    }
}

extension ModelLibrary {
    /// Chooses the model requests that name none go to (nil: back to routes.json's), kept in
    /// `store` across restarts; returns the default model now.
    public func setDefaultModel(_ name: String?, store: (any LibraryStateStore)?) async throws -> String? {
        let now = try await scheduler.setDefaultModel(name)
        if let store {
            if let name { try await store.putDocument(kind: "setting", id: "defaultModel", model: nil, body: try JobCoding.encoder.encode(["model": name])) }
            else { _ = try await store.deleteDocument(kind: "setting", id: "defaultModel") }
        }
        return now
    }

    /// Pins or unpins a model. On a cluster (`shared`: its store), every node pins it too, from
    /// its next change notice.
    public func setPinned(_ model: String, _ pinned: Bool, shared: (any LibraryStateStore)?) async throws {
        try await scheduler.setPinned(model, pinned)
        if let shared, let id = scheduler.currentCatalog.resolve(model)?.id {
            try await shared.putDocument(kind: "pin", id: id, model: id, body: try JobCoding.encoder.encode(Pin(model: id, pinned: pinned)))
        }
    }

    /// A pin as the cluster's store keeps it.
    struct Pin: Encodable {
        var model: String
        var pinned: Bool
    }

    /// The verdict for a file not downloaded yet, from its GGUF header read with Range requests
    /// (see ``compatibility(_:name:query:)``), with what reading the header cost.
    public func compatibility(_ facts: ModelFacts, name: String, query q: [String: String], header: RemoteCompatibility.Header) async throws(LibraryError)
        -> RemoteCompatibility
    {
        RemoteCompatibility(
            answer: try await compatibility(facts, name: name, query: q), header: header,
            facts: .init(architecture: facts.architecture, parameters: facts.parameterCount, quantization: facts.quantization,
                         contextLength: facts.contextLength ?? 0, sizeBytes: header.fileBytes))
    }
}

/// A remote file's compatibility: the library's answer, what reading its header cost, and the
/// header's facts.
public struct RemoteCompatibility: Sendable, Encodable {
    public struct Header: Sendable, Encodable {
        public var bytesFetched: Int64
        public var fileBytes: Int64
        public var requests: Int
        public var fraction: Double

        public init(bytesFetched: Int64, fileBytes: Int64, requests: Int) {
            (self.bytesFetched, self.fileBytes, self.requests) = (bytesFetched, fileBytes, requests)
            fraction = fileBytes > 0 ? Double(bytesFetched) / Double(fileBytes) : 0
        }
    }
    public struct Facts: Sendable, Encodable {
        public var architecture: String
        public var parameters: UInt64
        public var quantization: String
        public var contextLength: Int
        public var sizeBytes: Int64
    }
    public var answer: CompatibilityAnswer
    public var header: Header
    public var facts: Facts

    enum CodingKeys: String, CodingKey { case header, facts }

    public func encode(to encoder: any Encoder) throws {
        try answer.encode(to: encoder)
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(header, forKey: .header)
        try c.encode(facts, forKey: .facts)
    }
}
