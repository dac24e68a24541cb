import Files
import Foundation
import Jobs
import Store

/// Why an evaluation request was refused (the OpenAI routes map these to 400, 404, 409).
public enum EvalError: Error, Sendable, Equatable {
    case badRequest(String, param: String?)
    case notFound(String)
    case conflict(String)
    case storage(String)
}

/// An evaluation: its name, the shape of its items and its testing criteria.
public struct EvalDefinition: Sendable, Codable {
    public var id: String
    public var name: String
    public var createdAt: Date
    public var team: String?
    public var metadata: [String: String]
    public var itemSchema: JobJSON
    public var includeSampleSchema: Bool
    public var testingCriteria: [Grader]
}

/// The OpenAI Evals API on local models: evaluations (kept in the store, owned by a team) and
/// their runs (jobs of kind `eval_run`), with their output items.
public struct Evaluations: Sendable {
    public let store: any WorkStore
    public let engine: JobEngine
    public let files: FileLibrary?

    public init(store: any WorkStore, engine: JobEngine, files: FileLibrary?) {
        self.store = store
        self.engine = engine
        self.files = files
    }

    // MARK: Evaluations

    /// Creates an evaluation from a `POST /v1/evals` body.
    public func create(_ body: [String: Any], team: String?) async throws(EvalError) -> EvalDefinition {
        guard let config = body["data_source_config"] as? [String: Any] else { throw .badRequest("data_source_config is required", param: "data_source_config") }
        guard config["type"] as? String == "custom" else {
            throw .badRequest("data_source_config.type must be 'custom' (logs and stored completions are hosted-only)", param: "data_source_config.type")
        }
        guard let criteria = body["testing_criteria"] as? [Any], !criteria.isEmpty else {
            throw .badRequest("testing_criteria must be a non-empty list", param: "testing_criteria")
        }
        var graders: [Grader] = []
        for (i, c) in criteria.enumerated() {
            guard let object = c as? [String: Any] else { throw .badRequest("testing_criteria[\(i)] must be an object", param: "testing_criteria") }
            do { graders.append(try Grader(JobJSON(object) ?? .null, index: i)) } catch { throw .badRequest(error.message, param: "testing_criteria") }
        }
        let schema = (config["item_schema"]).flatMap(JobJSON.init) ?? .object(["type": .string("object")])
        let definition = EvalDefinition(
            id: "eval_" + Self.randomHex(12), name: body["name"] as? String ?? "", createdAt: Date(), team: team,
            metadata: try Self.metadata(body["metadata"]), itemSchema: schema, includeSampleSchema: config["include_sample_schema"] as? Bool ?? false,
            testingCriteria: graders)
        try await save(definition)
        return definition
    }

    public func eval(_ id: String, scope: TeamScope) async throws(EvalError) -> EvalDefinition {
        let data: Data?
        do { data = try await store.eval(id: id, scope: scope) } catch { throw .storage("\(error)") }
        guard let data else { throw .notFound("no evaluation '\(id)'") }
        return try Self.decode(EvalDefinition.self, data, what: "evaluation \(id)")
    }

    public func list(scope: TeamScope, after: String?, limit: Int, newestFirst: Bool) async throws(EvalError) -> (evals: [EvalDefinition], hasMore: Bool) {
        let page: [Data]
        do { page = try await store.evals(scope: scope, after: after, limit: limit + 1, newestFirst: newestFirst) } catch { throw .storage("\(error)") }
        var evals: [EvalDefinition] = []
        for data in page.prefix(limit) { evals.append(try Self.decode(EvalDefinition.self, data, what: "an evaluation")) }
        return (evals, page.count > limit)
    }

    /// `POST /v1/evals/{id}`: a new name and/or metadata.
    public func update(_ id: String, _ body: [String: Any], scope: TeamScope) async throws(EvalError) -> EvalDefinition {
        var definition = try await eval(id, scope: scope)
        if let name = body["name"] { guard let name = name as? String else { throw .badRequest("name must be a string", param: "name") }; definition.name = name }
        if body["metadata"] != nil { definition.metadata = try Self.metadata(body["metadata"]) }
        try await save(definition)
        return definition
    }

    /// Deletes an evaluation, its runs (running ones are cancelled first) and their output items.
    public func delete(_ id: String, scope: TeamScope) async throws(EvalError) {
        _ = try await eval(id, scope: scope)
        for run in try await allRuns(of: id) {
            try await deleteRun(run.id, evalID: id, scope: scope)
        }
        do { _ = try await store.deleteEval(id: id, scope: scope) } catch { throw .storage("\(error)") }
    }

    // MARK: Runs

    /// Starts a run from a `POST /v1/evals/{id}/runs` body: its items, and for a `completions`
    /// source the model, template and sampling; every template and criterion is checked against
    /// every item first, so a run never fails on a field an item lacks.
    public func startRun(_ evalID: String, _ body: [String: Any], scope: TeamScope, team: String?, keyPrefix: String?) async throws(EvalError) -> JobRecord {
        let definition = try await eval(evalID, scope: scope)
        guard let source = body["data_source"] as? [String: Any], let type = source["type"] as? String else {
            throw .badRequest("data_source with a type is required", param: "data_source")
        }
        guard type == "completions" || type == "jsonl" else {
            throw .badRequest("data_source.type must be 'completions' or 'jsonl'", param: "data_source.type")
        }
        let items = try await items(source["source"], scope: scope)
        var spec = EvalRunSpec(
            evalID: evalID, name: body["name"] as? String ?? "", team: team, keyPrefix: keyPrefix, model: nil, items: items, itemsDocument: nil,
            itemCount: items.count, template: [], sampling: EvalSampling(),
            criteria: definition.testingCriteria, concurrency: try Self.bounded(body["concurrency"], "concurrency", default: 4, 1...64), dataSource: JobJSON(source) ?? .null,
            metadata: try Self.metadata(body["metadata"]))
        if type == "completions" {
            guard let model = source["model"] as? String, !model.isEmpty else { throw .badRequest("data_source.model is required", param: "data_source.model") }
            spec.model = model
            guard let messages = source["input_messages"] as? [String: Any] else {
                throw .badRequest("data_source.input_messages is required", param: "data_source.input_messages")
            }
            let template = messages["template"] as? [Any] ?? []
            if messages["type"] as? String == "sequence" {
                // Corral's prompt sequences: `turns` (user turns, templates), after an optional
                // `template` (a system message, say).
                guard let turns = messages["turns"] as? [String], !turns.isEmpty else {
                    throw .badRequest("data_source.input_messages.turns must be a non-empty list of templates", param: "data_source.input_messages")
                }
                spec.turns = turns
            } else {
                guard messages["type"] as? String == "template", !template.isEmpty else {
                    throw .badRequest("data_source.input_messages must be a non-empty template (or Corral's sequence)", param: "data_source.input_messages")
                }
            }
            spec.template = try template.enumerated().map { (i, m) throws(EvalError) in
                guard let m = m as? [String: Any], let role = m["role"] as? String else {
                    throw .badRequest("input_messages.template[\(i)] needs a role and content", param: "data_source.input_messages")
                }
                let content: String
                switch m["content"] {
                case let s as String: content = s
                case let c as [String: Any] where c["text"] is String: content = c["text"] as! String
                default: throw .badRequest("input_messages.template[\(i)].content must be text", param: "data_source.input_messages")
                }
                return EvalTemplateMessage(role: role, content: content)
            }
            let sampling = source["sampling_params"] as? [String: Any] ?? [:]
            spec.sampling = EvalSampling(
                temperature: (sampling["temperature"] as? NSNumber)?.doubleValue, topP: (sampling["top_p"] as? NSNumber)?.doubleValue,
                maxCompletionTokens: sampling["max_completion_tokens"] as? Int, seed: sampling["seed"] as? Int)
        }
        spec.repetitions = try Self.bounded(body["repetitions"], "repetitions", default: 1, 1...100)
        try Self.check(spec)
        do {
            // The items go to the store once; the job record, saved at every checkpoint, names them.
            let document = "items-" + Self.randomHex(12)
            try await store.putDocument(kind: "eval-items", id: document, model: spec.model, body: try JobCoding.encoder.encode(spec.items))
            spec.itemsDocument = document
            spec.items = []
            return try await engine.submit(EvalRunJob.self, spec)
        } catch {
            throw .storage("\(error)")
        }
    }

    /// Every `{{item.…}}` of the template and the criteria exists in every item; a `jsonl`
    /// source's items carry samples.
    static func check(_ spec: EvalRunSpec) throws(EvalError) {
        let templates = spec.template.map(\.content) + spec.turns + spec.criteria.flatMap(\.templates)
        let itemReferences = Set(templates.flatMap(EvalTemplate.references).filter { $0.hasPrefix("item.") })
        for (i, entry) in spec.items.enumerated() {
            let object = entry.any as? [String: Any] ?? [:]
            for name in itemReferences.sorted() where EvalTemplate.lookup(name, in: .object(["item": JobJSON(object["item"] ?? [:]) ?? .null])) == nil {
                throw .badRequest("item \(i) has no '\(name)', which a template names", param: "data_source")
            }
            if spec.model == nil, !(object["sample"] is [String: Any]) {
                throw .badRequest("item \(i) has no sample: a jsonl source grades the samples its items carry", param: "data_source.source")
            }
        }
    }

    /// The items of a source: `file_content` (inline) or `file_id` (an uploaded `evals` file).
    func items(_ raw: Any?, scope: TeamScope) async throws(EvalError) -> [JobJSON] {
        guard let source = raw as? [String: Any] else { throw .badRequest("data_source.source is required", param: "data_source.source") }
        var entries: [Any] = []
        switch source["type"] as? String {
        case "file_content":
            guard let content = source["content"] as? [Any] else { throw .badRequest("data_source.source.content must be a list", param: "data_source.source") }
            entries = content
        case "file_id":
            guard let id = source["id"] as? String, let files else { throw .badRequest("data_source.source.id is required", param: "data_source.source") }
            let file: StoredFile
            let data: Data
            do { (file, data) = try await files.contents(id, scope: scope) } catch {
                if case .notFound = error { throw .badRequest("no file '\(id)'", param: "data_source.source.id") }
                throw .storage("\(error)")
            }
            guard file.purpose == "evals" else { throw .badRequest("file '\(id)' has purpose '\(file.purpose)', not 'evals'", param: "data_source.source.id") }
            for line in data.split(separator: UInt8(ascii: "\n")) {
                if let object = try? JSONSerialization.jsonObject(with: Data(line)) { entries.append(object) }
            }
        default:
            throw .badRequest("data_source.source.type must be 'file_content' or 'file_id'", param: "data_source.source.type")
        }
        var items: [JobJSON] = []
        for (i, entry) in entries.enumerated() {
            guard let object = entry as? [String: Any], object["item"] is [String: Any], let value = JobJSON(object) else {
                throw .badRequest("item \(i) must be an object with an 'item' object", param: "data_source.source")
            }
            items.append(value)
        }
        guard !items.isEmpty else { throw .badRequest("the source has no items", param: "data_source.source") }
        return items
    }

    /// The run `runID` of evaluation `evalID`, if `scope` may see the evaluation.
    public func run(_ runID: String, evalID: String, scope: TeamScope) async throws(EvalError) -> (JobRecord, EvalRunSpec) {
        _ = try await eval(evalID, scope: scope)
        let job: JobRecord?
        do { job = try await engine.get(runID) } catch { throw .storage("\(error)") }
        guard let job, job.kind == EvalRunJob.name, let spec = try? job.spec.decode(EvalRunSpec.self), spec.evalID == evalID else {
            throw .notFound("no run '\(runID)' of evaluation '\(evalID)'")
        }
        return (job, spec)
    }

    /// The runs of an evaluation, newest first.
    func allRuns(of evalID: String) async throws(EvalError) -> [JobRecord] {
        var runs: [JobRecord] = []
        var after: String?
        repeat {
            let page: JobPage
            do { page = try await engine.list(kind: EvalRunJob.name, after: after, limit: 500) } catch { throw .storage("\(error)") }
            runs += page.jobs.filter { (try? $0.spec.decode(EvalRunSpec.self))?.evalID == evalID }
            after = page.next
        } while after != nil
        return runs
    }

    public func runs(_ evalID: String, scope: TeamScope, status: String?, after: String?, limit: Int, newestFirst: Bool) async throws(EvalError) -> (runs: [JobRecord], hasMore: Bool) {
        _ = try await eval(evalID, scope: scope)
        var all = try await allRuns(of: evalID)
        if !newestFirst { all.reverse() }
        if let status { all = all.filter { Self.status($0.state) == status } }
        if let after, let i = all.firstIndex(where: { $0.id == after }) { all = Array(all[(i + 1)...]) }
        return (Array(all.prefix(limit)), all.count > limit)
    }

    public func cancelRun(_ runID: String, evalID: String, scope: TeamScope) async throws(EvalError) -> JobRecord {
        let (job, _) = try await run(runID, evalID: evalID, scope: scope)
        guard !job.state.isFinal else { return job }
        do { _ = try await engine.cancel(runID) } catch { throw .conflict("\(error)") }
        do { return try await engine.finished(runID) } catch { throw .storage("\(error)") }
    }

    public func deleteRun(_ runID: String, evalID: String, scope: TeamScope) async throws(EvalError) {
        let (job, _) = try await run(runID, evalID: evalID, scope: scope)
        if !job.state.isFinal { _ = try await cancelRun(runID, evalID: evalID, scope: scope) }
        do {
            try await engine.delete(runID)
            try await store.deleteEvalOutputItems(run: runID)
            if let document = (try? job.spec.decode(EvalRunSpec.self))?.itemsDocument { _ = try await store.deleteDocument(kind: "eval-items", id: document) }
        } catch { throw .storage("\(error)") }
    }

    public func outputItems(_ runID: String, evalID: String, scope: TeamScope, status: String?, after: String?, limit: Int, descending: Bool) async throws(EvalError) -> (items: [[String: Any]], hasMore: Bool) {
        _ = try await run(runID, evalID: evalID, scope: scope)
        let page: [Data]
        do { page = try await store.evalOutputItems(run: runID, status: status, after: after, limit: limit + 1, descending: descending) } catch { throw .storage("\(error)") }
        var items: [[String: Any]] = []
        for data in page.prefix(limit) { items.append(try Self.object(data, what: "an output item of \(runID)")) }
        return (items, page.count > limit)
    }

    public func outputItem(_ itemID: String, runID: String, evalID: String, scope: TeamScope) async throws(EvalError) -> [String: Any] {
        _ = try await run(runID, evalID: evalID, scope: scope)
        let data: Data?
        do { data = try await store.evalOutputItem(id: itemID, run: runID) } catch { throw .storage("\(error)") }
        guard let data else { throw .notFound("no output item '\(itemID)'") }
        return try Self.object(data, what: "output item \(itemID)")
    }

    // MARK: Shapes

    /// The run's status as the Evals API names it.
    public static func status(_ state: JobState) -> String {
        switch state {
        case .queued: "queued"
        case .running, .paused: "in_progress"
        case .succeeded: "completed"
        case .cancelled: "canceled"
        case .failed, .interrupted: "failed"
        }
    }

    /// The SDK's `Eval` object.
    public static func object(_ e: EvalDefinition) -> [String: Any] {
        var schema: [String: Any] = ["type": "object", "properties": ["item": e.itemSchema.any], "required": ["item"]]
        if e.includeSampleSchema {
            schema["properties"] = ["item": e.itemSchema.any, "sample": ["type": "object", "properties": ["output_text": ["type": "string"]]]]
            schema["required"] = ["item", "sample"]
        }
        let criteria: [[String: Any]] = e.testingCriteria.map { g in
            var c: [String: Any] = ["type": g.type.rawValue, "name": g.name, "input": g.input]
            if let r = g.reference { c["reference"] = r }
            if let o = g.operation { c["operation"] = o }
            if let m = g.evaluationMetric { c["evaluation_metric"] = m }
            if let t = g.passThreshold { c["pass_threshold"] = t }
            if let p = g.pattern { c["pattern"] = p }
            if let s = g.schema { c["schema"] = s.any }
            if let m = g.model { c["model"] = m }
            if let messages = g.messages { c["input"] = messages.map { ["role": $0.role, "content": $0.content] } }
            if let l = g.labels { c["labels"] = l }
            if let p = g.passingLabels { c["passing_labels"] = p }
            if let r = g.range { c["range"] = r }
            return c
        }
        return ["id": e.id, "object": "eval", "name": e.name, "created_at": Int(e.createdAt.timeIntervalSince1970), "metadata": e.metadata,
                "data_source_config": ["type": "custom", "schema": schema], "testing_criteria": criteria]
    }

    /// The SDK's `RunCreateResponse` (and retrieve, list, cancel).
    public static func runObject(_ job: JobRecord, _ spec: EvalRunSpec) -> [String: Any] {
        let state = (try? (job.result ?? job.checkpoint)?.decode(EvalRunState.self)) ?? EvalRunState(criteria: spec.criteria.map { .init(name: $0.name) })
        let usage: [[String: Any]] = state.usage.sorted { $0.key < $1.key }.map { model, u in
            [
                "model_name": model, "invocation_count": u.invocations, "prompt_tokens": u.promptTokens, "completion_tokens": u.completionTokens,
                "total_tokens": u.promptTokens + u.completionTokens, "cached_tokens": u.cachedTokens,
            ]
        }
        return [
            "id": job.id, "object": "eval.run", "eval_id": spec.evalID, "name": spec.name, "model": spec.model ?? "",
            "status": status(job.state), "created_at": Int(job.createdAt.timeIntervalSince1970), "metadata": spec.metadata,
            "data_source": spec.dataSource.any, "report_url": "",
            "error": ["code": job.error?.code ?? "", "message": job.error?.message ?? ""],
            "result_counts": ["total": spec.unitCount, "passed": state.passed, "failed": state.failed, "errored": state.errored],
            "per_testing_criteria_results": state.criteria.map { ["testing_criteria": $0.name, "passed": $0.passed, "failed": $0.failed] },
            "per_model_usage": usage,
            "corral": corralExtension(state, spec),
        ]
    }

    /// What Corral adds to a run object: concurrency and repetitions, the pass rate with its
    /// Wilson 95 % interval, and with repetitions each item's pass rate and interval.
    static func corralExtension(_ state: EvalRunState, _ spec: EvalRunSpec) -> [String: Any] {
        let graded = state.passed + state.failed + state.errored
        var out: [String: Any] = ["concurrency": spec.concurrency, "repetitions": max(1, spec.repetitions)]
        if let environment = state.environment, let data = try? JobCoding.encoder.encode(environment),
           let object = try? JSONSerialization.jsonObject(with: data) {
            out["environment"] = object
        }
        if let overall = Wilson.interval(successes: state.passed, trials: graded) {
            out["pass_rate"] = Double(state.passed) / Double(graded)
            out["pass_rate_interval"] = [overall.low, overall.high]
        }
        if spec.repetitions > 1, state.next == spec.unitCount {
            out["items"] = (0..<spec.itemCount).map { index -> [String: Any] in
                let passes = state.itemPasses[index] ?? 0
                let interval = Wilson.interval(successes: passes, trials: spec.repetitions)!
                return ["index": index, "passes": passes, "runs": spec.repetitions, "pass_rate": Double(passes) / Double(spec.repetitions),
                        "interval": [interval.low, interval.high]]
            }
        }
        return out
    }

    // MARK: Helpers

    func save(_ definition: EvalDefinition) async throws(EvalError) {
        do {
            try await store.putEval(id: definition.id, team: definition.team, createdAt: definition.createdAt, body: try JobCoding.encoder.encode(definition))
        } catch {
            throw .storage("\(error)")
        }
    }

    /// One of Corral's integer fields on a run request (`concurrency` 1–64, default 4;
    /// `repetitions` 1–100, default 1).
    static func bounded(_ raw: Any?, _ name: String, default value: Int, _ range: ClosedRange<Int>) throws(EvalError) -> Int {
        guard let raw, !(raw is NSNull) else { return value }
        guard let n = raw as? Int, range.contains(n) else {
            throw .badRequest("\(name) must be an integer from \(range.lowerBound) to \(range.upperBound)", param: name)
        }
        return n
    }

    /// A stored row decoded; one that cannot be is a storage error naming it, never skipped.
    static func decode<T: Decodable>(_ type: T.Type, _ data: Data, what: String) throws(EvalError) -> T {
        do { return try JobCoding.decoder.decode(T.self, from: data) } catch { throw .storage("\(what) cannot be read: \(error)") }
    }

    static func object(_ data: Data, what: String) throws(EvalError) -> [String: Any] {
        guard let object = (try? JSONSerialization.jsonObject(with: data)) as? [String: Any] else { throw .storage("\(what) cannot be read") }
        return object
    }

    static func metadata(_ raw: Any?) throws(EvalError) -> [String: String] {
        guard let raw, !(raw is NSNull) else { return [:] }
        guard let object = raw as? [String: Any], object.count <= 16, object.values.allSatisfy({ $0 is String }) else {
            throw .badRequest("metadata must be an object of at most 16 string values", param: "metadata")
        }
        return object as! [String: String]
    }

    static func randomHex(_ bytes: Int) -> String {
        (0..<bytes).map { _ in String(format: "%02x", UInt8.random(in: 0...255)) }.joined()
    }
}
