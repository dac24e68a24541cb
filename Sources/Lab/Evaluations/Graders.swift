import Foundation
import Jobs

/// Why a grader or a template cannot be used (a 400 for the request that named it).
public struct GraderError: Error, Sendable, Equatable, CustomStringConvertible {
    public var message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

/// `{{item.question}}`, `{{sample.output_text}}`, `{{sample.output_json.answer}}`: values from an
/// evaluation item and the model's sample, as the OpenAI Evals API writes them.
public enum EvalTemplate {
    /// The names a template refers to (`item.question`, …), in order.
    public static func references(_ template: String) -> [String] {
        var found: [String] = []
        var rest = Substring(template)
        while let open = rest.range(of: "{{") {
            guard let close = rest[open.upperBound...].range(of: "}}") else { break }
            found.append(rest[open.upperBound..<close.lowerBound].trimmingCharacters(in: .whitespaces))
            rest = rest[close.upperBound...]
        }
        return found
    }

    /// The template with every reference replaced by its value (strings as they are, other JSON
    /// values as JSON text). A reference to a missing field is an error that names it.
    public static func render(_ template: String, _ context: [String: Any]) throws(GraderError) -> String {
        var out = ""
        var rest = Substring(template)
        while let open = rest.range(of: "{{") {
            guard let close = rest[open.upperBound...].range(of: "}}") else { break }
            out += rest[..<open.lowerBound]
            let name = rest[open.upperBound..<close.lowerBound].trimmingCharacters(in: .whitespaces)
            guard let value = lookup(name, in: context) else { throw GraderError("the template names '\(name)', which the item does not have") }
            out += text(value)
            rest = rest[close.upperBound...]
        }
        return out + rest
    }

    /// The value at a dotted path (`item.a.b`, `item.list.0`).
    public static func lookup(_ path: String, in context: [String: Any]) -> Any? {
        var current: Any? = context
        for key in path.split(separator: ".") {
            switch current {
            case let object as [String: Any]: current = object[String(key)]
            case let list as [Any]: current = Int(key).flatMap { $0 >= 0 && $0 < list.count ? list[$0] : nil }
            default: return nil
            }
            if current == nil || current is NSNull { return current == nil ? nil : "" }
        }
        return current
    }

    static func text(_ value: Any) -> String {
        if let s = value as? String { return s }
        if let n = value as? NSNumber { return n.stringValue }
        if JSONSerialization.isValidJSONObject(value), let data = try? JSONSerialization.data(withJSONObject: value, options: [.sortedKeys]) {
            return String(decoding: data, as: UTF8.self)
        }
        return "\(value)"
    }
}

/// One testing criterion of an evaluation, checked when the evaluation is created and applied to
/// each item and sample: OpenAI's `string_check`, `text_similarity`, `label_model` and
/// `score_model` (judged by a model Corral serves), and Corral's `regex` and `json_schema`.
public struct Grader: Sendable, Codable, Equatable {
    public enum Kind: String, Sendable, Codable {
        case stringCheck = "string_check", textSimilarity = "text_similarity", regex, jsonSchema = "json_schema"
        case labelModel = "label_model", scoreModel = "score_model"

        /// Whether a model judges the sample (the grade needs a request).
        public var isJudged: Bool { self == .labelModel || self == .scoreModel }
    }
    public var type: Kind
    public var name: String
    /// Template for the text graded (usually `{{sample.output_text}}`).
    public var input: String
    /// Template for what it is compared with (`string_check`, `text_similarity`).
    public var reference: String?
    /// `string_check`: eq, ne, like, ilike.
    public var operation: String?
    /// `text_similarity`: fuzzy_match, bleu, rouge_1, rouge_l.
    public var evaluationMetric: String?
    public var passThreshold: Double?
    /// `regex`: the pattern the input must contain a match of.
    public var pattern: String?
    /// `json_schema`: the schema the input, parsed as JSON, must satisfy.
    public var schema: JobJSON?
    /// `label_model`, `score_model`: the judge, and the messages it is sent (templates).
    public var model: String?
    public var messages: [EvalTemplateMessage]?
    /// `label_model`: the labels the judge chooses from, and those that pass.
    public var labels: [String]?
    public var passingLabels: [String]?
    /// `score_model`: the score's range (default 0 to 1).
    public var range: [Double]?

    public static let operations = ["eq", "ne", "like", "ilike"]
    public static let metrics = ["fuzzy_match", "bleu", "rouge_1", "rouge_l"]

    /// A criterion from its JSON, checked; the message names what is wrong.
    public init(_ object: [String: Any], index: Int) throws(GraderError) {
        let at = "testing_criteria[\(index)]"
        guard let typeName = object["type"] as? String else { throw GraderError("\(at).type is required") }
        guard let type = Kind(rawValue: typeName) else {
            throw GraderError("\(at).type '\(typeName)' is not supported; use string_check, text_similarity, label_model, score_model, regex or json_schema")
        }
        self.type = type
        self.name = object["name"] as? String ?? "\(typeName)-\(index)"
        if type.isJudged {
            guard let model = object["model"] as? String, !model.isEmpty else { throw GraderError("\(at).model is required for \(typeName)") }
            guard let list = object["input"] as? [Any], !list.isEmpty else { throw GraderError("\(at).input must be a non-empty list of messages") }
            self.model = model
            self.messages = try list.enumerated().map { (i, m) throws(GraderError) in
                guard let m = m as? [String: Any], let role = m["role"] as? String else { throw GraderError("\(at).input[\(i)] needs a role and content") }
                switch m["content"] {
                case let text as String: return EvalTemplateMessage(role: role, content: text)
                case let c as [String: Any] where c["text"] is String: return EvalTemplateMessage(role: role, content: c["text"] as! String)
                default: throw GraderError("\(at).input[\(i)].content must be text")
                }
            }
            self.input = ""
        } else {
            guard let input = object["input"] as? String else { throw GraderError("\(at).input must be a template string") }
            self.input = input
        }
        reference = object["reference"] as? String
        operation = object["operation"] as? String
        evaluationMetric = object["evaluation_metric"] as? String
        passThreshold = (object["pass_threshold"] as? NSNumber)?.doubleValue
        pattern = object["pattern"] as? String
        switch type {
        case .stringCheck:
            guard reference != nil else { throw GraderError("\(at).reference is required for string_check") }
            guard let operation, Self.operations.contains(operation) else { throw GraderError("\(at).operation must be one of \(Self.operations.joined(separator: ", "))") }
        case .textSimilarity:
            guard reference != nil else { throw GraderError("\(at).reference is required for text_similarity") }
            guard let evaluationMetric, Self.metrics.contains(evaluationMetric) else {
                throw GraderError("\(at).evaluation_metric must be one of \(Self.metrics.joined(separator: ", "))")
            }
            guard let passThreshold, (0...1).contains(passThreshold) else { throw GraderError("\(at).pass_threshold must be a number from 0 to 1") }
        case .regex:
            guard let pattern, (try? NSRegularExpression(pattern: pattern)) != nil else { throw GraderError("\(at).pattern must be a valid regular expression") }
        case .jsonSchema:
            guard let raw = object["schema"] as? [String: Any], let value = JobJSON(raw) else { throw GraderError("\(at).schema must be a JSON schema object") }
            schema = value
        case .labelModel:
            guard let labels = object["labels"] as? [String], !labels.isEmpty else { throw GraderError("\(at).labels must be a non-empty list of strings") }
            guard let passing = object["passing_labels"] as? [String], !passing.isEmpty, Set(passing).isSubset(of: labels) else {
                throw GraderError("\(at).passing_labels must be a non-empty subset of labels")
            }
            self.labels = labels
            self.passingLabels = passing
        case .scoreModel:
            let range = (object["range"] as? [NSNumber])?.map(\.doubleValue) ?? [0, 1]
            guard range.count == 2, range[0] < range[1] else { throw GraderError("\(at).range must be [low, high] with low < high") }
            self.range = range
            if let t = passThreshold, !(range[0]...range[1]).contains(t) { throw GraderError("\(at).pass_threshold must lie within range") }
        }
    }

    /// Every template the criterion reads (to check items against before a run).
    public var templates: [String] { [input, reference ?? ""] + (messages ?? []).map(\.content) }

    /// The chat request that asks the judge of a `label_model` or `score_model` criterion, its
    /// answer constrained to `{"label": one of labels}` or `{"score": a number}` (so even a small
    /// judge answers in form).
    public func judgeRequest(_ context: [String: Any]) throws(GraderError) -> [String: Any] {
        var messages: [[String: String]] = []
        for m in self.messages ?? [] { messages.append(["role": m.role, "content": try EvalTemplate.render(m.content, context)]) }
        let schema: [String: Any] = type == .labelModel
            ? ["type": "object", "properties": ["label": ["type": "string", "enum": labels ?? []]], "required": ["label"]]
            : ["type": "object", "properties": ["score": ["type": "number"]], "required": ["score"]]
        messages.append(["role": "system", "content": type == .labelModel
            ? "Answer with JSON: {\"label\": one of \((labels ?? []).joined(separator: ", "))}."
            : "Answer with JSON: {\"score\": a number from \(range?[0] ?? 0) to \(range?[1] ?? 1)}."])
        return [
            "model": model ?? "", "messages": messages, "stream": false, "temperature": 0, "max_tokens": 64,
            "response_format": ["type": "json_schema", "json_schema": ["name": "grade", "schema": schema]],
        ]
    }

    /// The grade from the judge's answer text.
    public func judged(_ answer: String) -> (score: Double, passed: Bool) {
        let object = (try? JSONSerialization.jsonObject(with: Data(answer.utf8))) as? [String: Any]
        if type == .labelModel {
            guard let label = object?["label"] as? String else { return (0, false) }
            let passed = passingLabels?.contains(label) == true
            return (passed ? 1 : 0, passed)
        }
        guard let raw = (object?["score"] as? NSNumber)?.doubleValue else { return (0, false) }
        let low = range?[0] ?? 0, high = range?[1] ?? 1
        let score = min(max(raw, low), high)
        return (score, score >= (passThreshold ?? (low + high) / 2))
    }

    /// The grade of one item and sample: a score from 0 to 1 and whether it passes.
    public func grade(_ context: [String: Any]) throws(GraderError) -> (score: Double, passed: Bool) {
        guard !type.isJudged else { throw GraderError("\(name) is judged by a model: ask it with judgeRequest") }
        let text = try EvalTemplate.render(input, context)
        switch type {
        case .stringCheck:
            let ref = try EvalTemplate.render(reference ?? "", context)
            let passed = switch operation {
            case "eq": text == ref
            case "ne": text != ref
            case "like": text.contains(ref)
            default: text.lowercased().contains(ref.lowercased())
            }
            return (passed ? 1 : 0, passed)
        case .textSimilarity:
            let ref = try EvalTemplate.render(reference ?? "", context)
            let score = switch evaluationMetric {
            case "fuzzy_match": TextSimilarity.fuzzyRatio(text, ref)
            case "bleu": TextSimilarity.bleu(candidate: text, reference: ref)
            case "rouge_1": TextSimilarity.rouge1(candidate: text, reference: ref)
            default: TextSimilarity.rougeL(candidate: text, reference: ref)
            }
            return (score, score >= (passThreshold ?? 1))
        case .regex:
            let expression = try? NSRegularExpression(pattern: pattern ?? "")
            let matched = expression?.firstMatch(in: text, range: NSRange(text.startIndex..., in: text)) != nil
            return (matched ? 1 : 0, matched)
        case .jsonSchema:
            guard let data = text.data(using: .utf8), let parsed = try? JSONSerialization.jsonObject(with: data, options: [.fragmentsAllowed]),
                  let value = JobJSON(parsed), let schema else { return (0, false) }
            let valid = JSONSchemaCheck.validates(value, schema)
            return (valid ? 1 : 0, valid)
        case .labelModel, .scoreModel:
            return (0, false)
        }
    }

    enum CodingKeys: String, CodingKey {
        case type, name, input, reference, operation, pattern, schema, model, messages, labels, range
        case evaluationMetric = "evaluation_metric", passThreshold = "pass_threshold", passingLabels = "passing_labels"
    }
}

/// Text similarity as the Evals API's `text_similarity` grader scores it, from 0 to 1.
public enum TextSimilarity {
    /// Lowercased words (letters and digits).
    static func words(_ s: String) -> [String] {
        s.lowercased().split(whereSeparator: { !$0.isLetter && !$0.isNumber }).map(String.init)
    }

    /// 1 − the insert/delete edit distance over the total length (rapidfuzz's `ratio` / 100).
    public static func fuzzyRatio(_ a: String, _ b: String) -> Double {
        let x = Array(a), y = Array(b)
        guard !x.isEmpty || !y.isEmpty else { return 1 }
        let common = lcs(x, y)
        return Double(2 * common) / Double(x.count + y.count)
    }

    /// Sentence BLEU-4 with add-one smoothing of the higher n-gram precisions and the brevity
    /// penalty.
    public static func bleu(candidate: String, reference: String) -> Double {
        let c = words(candidate), r = words(reference)
        guard !c.isEmpty, !r.isEmpty else { return c.isEmpty && r.isEmpty ? 1 : 0 }
        var logSum = 0.0
        for n in 1...4 {
            let cg = ngrams(c, n), rg = ngrams(r, n)
            let total = max(c.count - n + 1, 0)
            let matched = cg.reduce(0) { $0 + min($1.value, rg[$1.key] ?? 0) }
            let precision = n == 1 ? Double(matched) / Double(max(total, 1)) : Double(matched + 1) / Double(total + 1)
            guard precision > 0 else { return 0 }
            logSum += log(precision) / 4
        }
        let penalty = c.count >= r.count ? 1 : exp(1 - Double(r.count) / Double(c.count))
        return penalty * exp(logSum)
    }

    /// ROUGE-1 F1: unigram overlap.
    public static func rouge1(candidate: String, reference: String) -> Double {
        let c = words(candidate), r = words(reference)
        guard !c.isEmpty, !r.isEmpty else { return c.isEmpty && r.isEmpty ? 1 : 0 }
        let cg = ngrams(c, 1), rg = ngrams(r, 1)
        let overlap = cg.reduce(0) { $0 + min($1.value, rg[$1.key] ?? 0) }
        return f1(overlap: overlap, candidate: c.count, reference: r.count)
    }

    /// ROUGE-L F1: the longest common subsequence of words.
    public static func rougeL(candidate: String, reference: String) -> Double {
        let c = words(candidate), r = words(reference)
        guard !c.isEmpty, !r.isEmpty else { return c.isEmpty && r.isEmpty ? 1 : 0 }
        return f1(overlap: lcs(c, r), candidate: c.count, reference: r.count)
    }

    static func f1(overlap: Int, candidate: Int, reference: Int) -> Double {
        guard overlap > 0 else { return 0 }
        let p = Double(overlap) / Double(candidate), r = Double(overlap) / Double(reference)
        return 2 * p * r / (p + r)
    }

    static func ngrams(_ w: [String], _ n: Int) -> [String: Int] {
        guard w.count >= n else { return [:] }
        var counts: [String: Int] = [:]
        for i in 0...(w.count - n) { counts[w[i..<(i + n)].joined(separator: " "), default: 0] += 1 }
        return counts
    }

    static func lcs<T: Equatable>(_ a: [T], _ b: [T]) -> Int {
        guard !a.isEmpty, !b.isEmpty else { return 0 }
        var previous = [Int](repeating: 0, count: b.count + 1)
        for x in a {
            var current = [Int](repeating: 0, count: b.count + 1)
            for (j, y) in b.enumerated() { current[j + 1] = x == y ? previous[j] + 1 : max(previous[j + 1], current[j]) }
            previous = current
        }
        return previous[b.count]
    }
}

/// The part of JSON Schema an answer format needs: `type`, `properties`, `required`, `items`,
/// `enum`, `minimum`/`maximum`, `minLength`/`maxLength`.
enum JSONSchemaCheck {
    static func validates(_ value: JobJSON, _ schema: JobJSON) -> Bool {
        guard case .object(let s) = schema else { return true }
        if case .array(let allowed)? = s["enum"], !allowed.contains(value) { return false }
        if case .string(let type)? = s["type"], !matches(value, type) { return false }
        if case .array(let types)? = s["type"], !types.contains(where: { if case .string(let t) = $0 { return matches(value, t) } else { return false } }) { return false }
        switch value {
        case .object(let members):
            if case .array(let required)? = s["required"] {
                for case .string(let key) in required where members[key] == nil { return false }
            }
            if case .object(let properties)? = s["properties"] {
                for (key, sub) in properties { if let member = members[key], !validates(member, sub) { return false } }
            }
        case .array(let items):
            if let sub = s["items"] { for item in items where !validates(item, sub) { return false } }
        case .number(let n):
            if case .number(let min)? = s["minimum"], n < min { return false }
            if case .number(let max)? = s["maximum"], n > max { return false }
        case .string(let text):
            if case .number(let min)? = s["minLength"], Double(text.count) < min { return false }
            if case .number(let max)? = s["maxLength"], Double(text.count) > max { return false }
        default: break
        }
        return true
    }

    static func matches(_ value: JobJSON, _ type: String) -> Bool {
        switch (type, value) {
        case ("object", .object), ("array", .array), ("string", .string), ("boolean", .bool), ("null", .null), ("number", .number): true
        case ("integer", .number(let n)): n == n.rounded()
        default: false
        }
    }
}

extension Grader {
    /// A criterion from a request's JSON value: the object read as `init(_:index:)` reads
    /// Foundation's (the same checks and messages).
    public init(_ json: JobJSON, index: Int) throws(GraderError) {
        let data: Data
        do { data = try JobCoding.encoder.encode(json) } catch { throw GraderError("testing_criteria[\(index)] must be an object") }
        guard let object = (try? JSONSerialization.jsonObject(with: data)) as? [String: Any] else { throw GraderError("testing_criteria[\(index)] must be an object") }
        try self.init(object, index: index)
    }
}
