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

    /// Creates an evaluation from a `POST /v1/evals` request.
    public func create(_ request: EvalCreateRequest, team: String?) async throws(EvalError) -> EvalDefinition {
        let definition = EvalDefinition(
            id: "eval_" + Self.randomHex(12), name: request.name, createdAt: Date(), team: team, metadata: request.metadata,
            itemSchema: request.itemSchema, includeSampleSchema: request.includeSampleSchema, testingCriteria: request.testingCriteria)
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
    public func update(_ id: String, _ request: EvalUpdateRequest, scope: TeamScope) async throws(EvalError) -> EvalDefinition {
        var definition = try await eval(id, scope: scope)
        if let name = request.name { definition.name = name }
        if let metadata = request.metadata { definition.metadata = metadata }
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

    /// Starts a run from a `POST /v1/evals/{id}/runs` request; every template and criterion is
    /// checked against every item first, so a run never fails on a field an item lacks.
    public func startRun(_ evalID: String, _ request: EvalRunRequest, scope: TeamScope, team: String?, keyPrefix: String?) async throws(EvalError) -> JobRecord {
        let definition = try await eval(evalID, scope: scope)
        let items = try await items(request.items, scope: scope)
        var spec = EvalRunSpec(
            evalID: evalID, name: request.name, team: team, keyPrefix: keyPrefix, model: request.model, items: items, itemsDocument: nil,
            itemCount: items.count, repetitions: request.repetitions, template: request.template, turns: request.turns, sampling: request.sampling,
            criteria: definition.testingCriteria, concurrency: request.concurrency, dataSource: request.dataSource, metadata: request.metadata)
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
            let context = JobJSON.object(["item": entry["item"] ?? .object([:])])
            for name in itemReferences.sorted() where context.value(at: name) == nil {
                throw .badRequest("item \(i) has no '\(name)', which a template names", param: "data_source")
            }
            if spec.model == nil, entry["sample"]?.objectValue == nil {
                throw .badRequest("item \(i) has no sample: a jsonl source grades the samples its items carry", param: "data_source.source")
            }
        }
    }

    /// The items of a run: those of the request, or the lines of an uploaded `evals` file.
    func items(_ source: EvalRunRequest.Items, scope: TeamScope) async throws(EvalError) -> [JobJSON] {
        switch source {
        case .inline(let items):
            return items
        case .file(let id):
            guard let files else { throw .badRequest("data_source.source.id is required", param: "data_source.source") }
            let file: StoredFile
            let data: Data
            do { (file, data) = try await files.contents(id, scope: scope) } catch {
                if case .notFound = error { throw .badRequest("no file '\(id)'", param: "data_source.source.id") }
                throw .storage("\(error)")
            }
            guard file.purpose == "evals" else { throw .badRequest("file '\(id)' has purpose '\(file.purpose)', not 'evals'", param: "data_source.source.id") }
            // A line that is not a JSON object or array is skipped, as it always was.
            let entries = data.split(separator: UInt8(ascii: "\n")).compactMap { line -> JobJSON? in
                let value = try? JobCoding.decoder.decode(JobJSON.self, from: Data(line))
                return value?.objectValue != nil || value?.arrayValue != nil ? value : nil
            }
            return try EvalRunRequest.checked(entries)
        }
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

    /// A page of a run's output items (each as `EvalRunJob` stored it: the SDK's output item).
    public func outputItems(_ runID: String, evalID: String, scope: TeamScope, status: String?, after: String?, limit: Int, descending: Bool) async throws(EvalError) -> (items: [JobJSON], hasMore: Bool) {
        _ = try await run(runID, evalID: evalID, scope: scope)
        let page: [Data]
        do { page = try await store.evalOutputItems(run: runID, status: status, after: after, limit: limit + 1, descending: descending) } catch { throw .storage("\(error)") }
        var items: [JobJSON] = []
        for data in page.prefix(limit) { items.append(try Self.decode(JobJSON.self, data, what: "an output item of \(runID)")) }
        return (items, page.count > limit)
    }

    public func outputItem(_ itemID: String, runID: String, evalID: String, scope: TeamScope) async throws(EvalError) -> JobJSON {
        _ = try await run(runID, evalID: evalID, scope: scope)
        let data: Data?
        do { data = try await store.evalOutputItem(id: itemID, run: runID) } catch { throw .storage("\(error)") }
        guard let data else { throw .notFound("no output item '\(itemID)'") }
        return try Self.decode(JobJSON.self, data, what: "output item \(itemID)")
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

    // MARK: Helpers

    func save(_ definition: EvalDefinition) async throws(EvalError) {
        do {
            try await store.putEval(id: definition.id, team: definition.team, createdAt: definition.createdAt, body: try JobCoding.encoder.encode(definition))
        } catch {
            throw .storage("\(error)")
        }
    }

    /// A stored row decoded; one that cannot be is a storage error naming it, never skipped.
    static func decode<T: Decodable>(_ type: T.Type, _ data: Data, what: String) throws(EvalError) -> T {
        do { return try JobCoding.decoder.decode(T.self, from: data) } catch { throw .storage("\(what) cannot be read: \(error)") }
    }

    static func randomHex(_ bytes: Int) -> String {
        (0..<bytes).map { _ in String(format: "%02x", UInt8.random(in: 0...255)) }.joined()
    }
}
