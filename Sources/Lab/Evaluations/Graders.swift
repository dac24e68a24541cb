import Foundation
import Jobs
import Serving

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
    public static func render(_ template: String, _ context: JobJSON) throws(GraderError) -> String {
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

    /// The value at a dotted path (`item.a.b`, `item.list.0`); a null on the way reads as "".
    public static func lookup(_ path: String, in context: JobJSON) -> JobJSON? {
        var current: JobJSON? = context
        for key in path.split(separator: ".") {
            switch current {
            case .object(let object)?: current = object[String(key)]
            case .array(let list)?: current = Int(key).flatMap { $0 >= 0 && $0 < list.count ? list[$0] : nil }
            default: return nil
            }
            if current == .null { return .string("") }
        }
        return current
    }

    /// A value as a template writes it: a string as it is, a number as written (whole numbers
    /// without a fraction), a boolean as 1 or 0, anything else as JSON text with sorted keys.
    static func text(_ value: JobJSON) -> String {
        switch value {
        case .string(let s): s
        case .number(let n): n == n.rounded() && abs(n) < 1e15 ? String(Int(n)) : "\(n)"
        case .bool(let b): b ? "1" : "0"
        case .null: ""
        case .array, .object: json(value)
        }
    }

    /// JSON text with sorted keys and whole numbers written as integers.
    static func json(_ value: JobJSON) -> String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        return (try? encoder.encode(value)).map { String(decoding: $0, as: UTF8.self) } ?? ""
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
    public init(_ criterion: JobJSON, index: Int) throws(GraderError) {
        let at = "testing_criteria[\(index)]"
        let object = criterion.objectValue ?? [:]
        guard let typeName = object["type"]?.stringValue else { throw GraderError("\(at).type is required") }
        guard let type = Kind(rawValue: typeName) else {
            throw GraderError("\(at).type '\(typeName)' is not supported; use string_check, text_similarity, label_model, score_model, regex or json_schema")
        }
        self.type = type
        self.name = object["name"]?.stringValue ?? "\(typeName)-\(index)"
        if type.isJudged {
            guard let model = object["model"]?.stringValue, !model.isEmpty else { throw GraderError("\(at).model is required for \(typeName)") }
            guard case .array(let list)? = object["input"], !list.isEmpty else { throw GraderError("\(at).input must be a non-empty list of messages") }
            self.model = model
            self.messages = try list.enumerated().map { (i, m) throws(GraderError) in
                guard let role = m["role"]?.stringValue else { throw GraderError("\(at).input[\(i)] needs a role and content") }
                if let text = m["content"]?.stringValue ?? m["content"]?["text"]?.stringValue { return EvalTemplateMessage(role: role, content: text) }
                throw GraderError("\(at).input[\(i)].content must be text")
            }
            self.input = ""
        } else {
            guard let input = object["input"]?.stringValue else { throw GraderError("\(at).input must be a template string") }
            self.input = input
        }
        reference = object["reference"]?.stringValue
        operation = object["operation"]?.stringValue
        evaluationMetric = object["evaluation_metric"]?.stringValue
        passThreshold = object["pass_threshold"]?.doubleValue
        pattern = object["pattern"]?.stringValue
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
            guard case .object? = object["schema"] else { throw GraderError("\(at).schema must be a JSON schema object") }
            schema = object["schema"]
        case .labelModel:
            guard let labels = object["labels"]?.stringsValue, !labels.isEmpty else { throw GraderError("\(at).labels must be a non-empty list of strings") }
            guard let passing = object["passing_labels"]?.stringsValue, !passing.isEmpty, Set(passing).isSubset(of: labels) else {
                throw GraderError("\(at).passing_labels must be a non-empty subset of labels")
            }
            self.labels = labels
            self.passingLabels = passing
        case .scoreModel:
            let range = object["range"]?.numbersValue ?? [0, 1]
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
    public func judgeRequest(_ context: JobJSON, origin: ModelCallOrigin) throws(GraderError) -> ModelRequest {
        var messages: [ModelMessage] = []
        for m in self.messages ?? [] { messages.append(ModelMessage(role: m.role, content: try EvalTemplate.render(m.content, context))) }
        let (field, kind): (String, JobJSON) = type == .labelModel
            ? ("label", .object(["type": .string("string"), "enum": .array((labels ?? []).map(JobJSON.string))]))
            : ("score", .object(["type": .string("number")]))
        let schema = JobJSON.object(["type": .string("object"), "properties": .object([field: kind]), "required": .array([.string(field)])])
        messages.append(ModelMessage(role: "system", content: type == .labelModel
            ? "Answer with JSON: {\"label\": one of \((labels ?? []).joined(separator: ", "))}."
            : "Answer with JSON: {\"score\": a number from \(Self.number(range?[0] ?? 0)) to \(Self.number(range?[1] ?? 1))}."))
        return ModelRequest(
            model: model ?? "", input: .messages(messages), sampling: ["temperature": 0], maxTokens: 64,
            responseFormat: .object(["type": .string("json_schema"), "json_schema": .object(["name": .string("grade"), "schema": schema])]), origin: origin)
    }

    /// A number as the judge's instruction writes it.
    static func number(_ value: Double) -> String { "\(value)" }

    /// The grade from the judge's answer text.
    public func judged(_ answer: String) -> (score: Double, passed: Bool) {
        let object = try? JSONDecoder().decode(JobJSON.self, from: Data(answer.utf8))
        if type == .labelModel {
            guard let label = object?["label"]?.stringValue else { return (0, false) }
            let passed = passingLabels?.contains(label) == true
            return (passed ? 1 : 0, passed)
        }
        guard let raw = object?["score"]?.doubleValue else { return (0, false) }
        let low = range?[0] ?? 0, high = range?[1] ?? 1
        let score = min(max(raw, low), high)
        return (score, score >= (passThreshold ?? (low + high) / 2))
    }

    /// The grade of one item and sample: a score from 0 to 1 and whether it passes.
    public func grade(_ context: JobJSON) throws(GraderError) -> (score: Double, passed: Bool) {
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
            guard let value = try? JSONDecoder().decode(JobJSON.self, from: Data(text.utf8)), let schema else { return (0, false) }
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
