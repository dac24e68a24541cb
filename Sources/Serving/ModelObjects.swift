import GGUF
import Runtime

/// A model as OpenAI's `/v1/models` lists it, with Corral's facts about it under `meta`
/// (source, aliases, fallbacks, GGUF facts, file size); `meta.default` marks the model requests
/// that name none go to.
public struct ModelObject: Sendable, Encodable {
    /// The id listed: the model's, or one of its listed aliases.
    public var id: String
    public var spec: ModelSpec
    public var isDefault: Bool

    public init(_ spec: ModelSpec, id: String? = nil, isDefault: Bool = false) {
        (self.id, self.spec, self.isDefault) = (id ?? spec.id, spec, isDefault)
    }

    enum CodingKeys: String, CodingKey { case id, object, created, ownedBy = "owned_by", meta }
    enum MetaKeys: String, CodingKey {
        case source, aliases, `default`, fallbacks, architecture, parameters, quantization, contextLength = "context_length", capabilities, size
    }

    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(id, forKey: .id)
        try c.encode("model", forKey: .object)
        try c.encode(0, forKey: .created)
        try c.encode("corral", forKey: .ownedBy)
        var meta = c.nestedContainer(keyedBy: MetaKeys.self, forKey: .meta)
        try meta.encode(spec.source, forKey: .source)
        try meta.encode(spec.aliases, forKey: .aliases)
        if isDefault { try meta.encode(true, forKey: .default) }
        if !spec.fallbacks.isEmpty { try meta.encode(spec.fallbacks, forKey: .fallbacks) }
        if let f = spec.facts {
            try meta.encode(f.architecture, forKey: .architecture)
            try meta.encode(f.parameterCount, forKey: .parameters)
            try meta.encode(f.quantization, forKey: .quantization)
            try meta.encode(f.contextLength ?? 0, forKey: .contextLength)
            try meta.encode(f.capabilities.names, forKey: .capabilities)
        }
        try meta.encodeIfPresent(spec.fileSize, forKey: .size)
    }
}

/// OpenAI's model list, `{"object":"list","data":[…]}`.
public struct ModelList: Sendable, Encodable {
    public var data: [ModelObject]

    enum CodingKeys: String, CodingKey { case object, data }

    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode("list", forKey: .object)
        try c.encode(data, forKey: .data)
    }
}

extension ModelCatalog {
    /// The models `visible` lets a caller see, each followed by its listed aliases (the default
    /// model marked).
    public func modelList(visible: (ModelSpec) -> Bool) -> ModelList {
        var data: [ModelObject] = []
        for spec in models where visible(spec) {
            data.append(ModelObject(spec, isDefault: spec.id == defaultModel))
            data += spec.listedAliases.map { ModelObject(spec, id: $0) }
        }
        return ModelList(data: data)
    }
}
