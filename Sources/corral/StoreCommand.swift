import Access
import ArgumentParser
import CorralApp
import Files
import Foundation
import Jobs
import Logging
import PostgresStore
import Runtime
import Store
import Usage

/// `corral store migrate` and `corral store copy`: the schema of a store, and moving a node's
/// records (accounts, ledger, library state, jobs, files, evaluations) into a cluster's shared
/// store.
struct StoreCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "store", abstract: "Migrate a store, or copy one node's accounts and ledger into another store.",
        subcommands: [Migrate.self, Copy.self, RebuildRollups.self, StoreBenchCommand.self])

    struct Migrate: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Apply the store's migrations (as `serve` does at start) and list them.")

        @OptionGroup var store: StoreOptions

        func run() async throws {
            let cfg = (try? CorralConfig.load(path: store.config)) ?? CorralConfig()
            let location = try StoreCommand.location(store.url ?? cfg.storeURL, cfg: cfg)
            let passwordEnv = store.passwordEnv
            switch location {
            case .sqlite(let path):
                _ = try Store.open(path: path)
                print("sqlite:\(path): migrated")
            case .postgres(let pg):
                let (store, client) = try await OpenedStores.openPostgres(pg, passwordEnv: passwordEnv ?? cfg.storePasswordEnv, logger: StoreCommand.logger, migrate: true)
                defer { client.cancel() }
                print("\(pg): migrated (\(try await store.appliedMigrations().joined(separator: ", ")))")
            }
        }
    }

    struct RebuildRollups: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "rebuild-rollups",
            abstract: "Recount the usage rollups from the ledger rows kept (rollups older than the oldest row stay).",
            discussion: "For rows written into the usage table by other means than Corral; `serve` keeps rollups current by itself.")

        @OptionGroup var store: StoreOptions

        func run() async throws {
            let cfg = try CorralConfig.load(path: store.config)
            let location = try StoreCommand.location(store.url ?? cfg.storeURL, cfg: cfg)
            let (accounts, stop) = try await StoreCommand.accounts(location, passwordEnv: store.passwordEnv ?? cfg.storePasswordEnv, mustExist: true)
            defer { stop() }
            let started = ContinuousClock.now
            try await accounts.rebuildUsageRollups()
            print("\(location): usage rollups rebuilt in \(ContinuousClock.now - started)")
        }
    }

    struct Copy: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Copy the admin token, teams, keys, usage ledger, library state, jobs, uploaded files and evaluations from one store into another (rows already there are kept).",
            discussion: """
                Stop the node first. Example: corral store copy --from sqlite:data/corral.sqlite --to postgres://corral@db:5432/corral --password-env PGPASSWORD --node gpu-a
                Jobs not finished are copied only with --node (the name the node has in the cluster), which then resumes them as its own.
                """)

        @Option(help: "The store to read: sqlite:PATH or postgres://…")
        var from: String

        @Option(help: "The store to write: postgres://… or sqlite:PATH")
        var to: String

        @Option(help: "The environment variable holding the PostgreSQL password (for either side).")
        var passwordEnv: String?

        @Flag(help: "Replace the destination's admin token with the source's (default: keep the destination's when it has one).")
        var replaceAdminToken = false

        @Option(help: "The moved node's cluster.nodeName: its unfinished jobs are copied as its own (without it only finished jobs are copied).")
        var node: String?

        @Option(help: "The source node's files directory (default: files/ beside a SQLite source).")
        var filesDirectory: String?

        func run() async throws {
            let cfg = CorralConfig()
            let sourceLocation = try StoreCommand.location(from, cfg: cfg)
            let (source, stopSource) = try await StoreCommand.accounts(sourceLocation, passwordEnv: passwordEnv, mustExist: true)
            defer { stopSource() }
            let (target, stopTarget) = try await StoreCommand.accounts(try StoreCommand.location(to, cfg: cfg), passwordEnv: passwordEnv, mustExist: false)
            defer { stopTarget() }
            var copied: [String: Int] = [:]
            if let hash = try await source.adminTokenHash() {
                if replaceAdminToken { try await target.saveAdminTokenHash(hash) } else { _ = try await target.saveAdminTokenHashIfAbsent(hash) }
                copied["adminToken"] = 1
            }
            let existingTeams = Set(try await target.teams().map(\.name))
            var teams = 0
            for team in try await source.teams() where !existingTeams.contains(team.name) {
                try await target.save(team)
                teams += 1
            }
            copied["teams"] = teams
            let teamIDs = Set(try await target.teams().map(\.id))
            let existingKeys = Set(try await target.keys().map(\.prefix))
            var keys = 0
            for key in try await source.keys() where teamIDs.contains(key.teamID) && !existingKeys.contains(key.prefix) {
                try await target.save(key)
                keys += 1
            }
            copied["keys"] = keys
            // The whole ledger, oldest first, in batches (a row already there is kept).
            let rows = try await source.usageRows(from: .distantPast, to: .distantFuture, team: nil, model: nil, limit: Int(Int32.max))
            var index = 0
            let ordered = Array(rows.reversed())
            while index < ordered.count {
                let batch = Array(ordered[index..<min(ordered.count, index + 5000)])
                try await target.appendUsage(batch)
                index += batch.count
            }
            copied["ledgerRows"] = ordered.count
            var skipped: [String] = []
            try await StoreCommand.copyLibraryState(from: source, to: target, copied: &copied)
            var files: String?
            if case .sqlite(let path) = sourceLocation { files = (path as NSString).deletingLastPathComponent + "/files" }
            try await StoreCommand.copyFiles(from: source, to: target, directory: filesDirectory ?? files, copied: &copied, skipped: &skipped)
            try await StoreCommand.copyWork(from: source, to: target, node: node, copied: &copied, skipped: &skipped)
            let data = try JSONSerialization.data(withJSONObject: ["from": from, "to": to, "copied": copied, "skipped": skipped],
                                                  options: [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes])
            print(String(decoding: data, as: UTF8.self))
        }
    }

    static let logger = Logger(label: "corral-store")

    /// The library state every node shares: sampling profiles, settings (the default model),
    /// pins, evaluation items, runtime aliases. (Runtime profiles stay with their node's
    /// hardware; learned allocations and fit plans are made again where they are needed.)
    static func copyLibraryState(from source: any WorkStore, to target: any WorkStore, copied: inout [String: Int]) async throws {
        var documents = 0
        for kind in ["sampling-profile", "setting", "pin", "eval-items"] {
            let there = Set(try await target.storedDocuments(kind: kind).map(\.id))
            for d in try await source.storedDocuments(kind: kind) where !there.contains(d.id) {
                try await target.putDocument(kind: d.kind, id: d.id, model: d.model, body: d.body, createdAt: d.createdAt)
                documents += 1
            }
        }
        copied["documents"] = documents
        let aliases = try await target.modelAliases()
        var added = 0
        for (alias, model) in try await source.modelAliases().sorted(by: { $0.key < $1.key }) where aliases[alias] == nil {
            try await target.saveModelAlias(alias, target: model)
            added += 1
        }
        copied["aliases"] = added
    }

    /// Uploaded files with their bytes (read from `directory`, or from a shared source), each
    /// copied only when the bytes match the SHA-256 recorded at upload.
    static func copyFiles(from source: any WorkStore, to target: any WorkStore, directory: String?, copied: inout [String: Int], skipped: inout [String]) async throws {
        var n = 0
        var after: String?
        while true {
            let page = try await source.files(scope: .all, purpose: nil, after: after, limit: 500, newestFirst: false)
            for file in page where try await target.file(id: file.id, scope: .all) == nil {
                var bytes = directory.flatMap { FileManager.default.contents(atPath: $0 + "/" + file.id) }
                if bytes == nil { bytes = try await source.fileContents(id: file.id) }
                guard let bytes else { skipped.append("file \(file.id): its bytes are not in \(directory ?? "the source")"); continue }
                guard FileLibrary.sha256(bytes) == file.sha256 else {
                    skipped.append("file \(file.id): its bytes do not match the SHA-256 recorded at upload")
                    continue
                }
                try await target.putFile(file, contents: bytes)
                n += 1
            }
            guard page.count == 500 else { break }
            after = page.last?.id
        }
        copied["files"] = n
    }

    /// Evaluations, then jobs oldest first with their event logs and (for evaluation runs) graded
    /// items. A job not finished is copied only when `node` names its node in the cluster.
    static func copyWork(from source: any WorkStore, to target: any WorkStore, node: String?, copied: inout [String: Int], skipped: inout [String]) async throws {
        var evals = 0
        for e in try await source.storedEvals() where try await target.eval(id: e.id, scope: .all) == nil {
            try await target.putEval(id: e.id, team: e.team, createdAt: e.createdAt, body: e.body)
            evals += 1
        }
        copied["evals"] = evals
        var jobs = 0, events = 0, items = 0
        for var job in try await source.jobs(kind: nil, states: nil, model: nil, after: nil, limit: Int(Int32.max)).reversed() {
            guard try await target.job(id: job.id) == nil else { continue }
            let finished = JobState(rawValue: job.state)?.isFinal ?? true
            guard finished || node != nil else {
                skipped.append("job \(job.id): \(job.state), not finished (pass --node to copy it as that node's)")
                continue
            }
            if let node, job.node == nil {
                // The row and the record both name the node that will run (or resume) it.
                job.node = node
                if var record = try? JobCoding.decoder.decode(JobRecord.self, from: job.body) {
                    record.node = node
                    job.body = try JobCoding.encoder.encode(record)
                }
            }
            try await target.putJob(job)
            jobs += 1
            var last: Int64 = 0
            while true {
                let page = try await source.jobEvents(job: job.id, after: last, limit: 1000)
                for e in page { try await target.appendJobEvent(sequence: e.sequence, job: e.job, type: e.type, data: e.data, at: e.at) }
                events += page.count
                guard let end = page.last?.sequence, page.count == 1000 else { break }
                last = end
            }
            let graded = try await source.storedEvalOutputItems(run: job.id)
            try await target.putEvalOutputItems(graded, run: job.id)
            items += graded.count
        }
        copied["jobs"] = jobs
        copied["jobEvents"] = events
        copied["evalOutputItems"] = items
    }

    static func location(_ url: String, cfg: CorralConfig) throws -> StoreLocation {
        do { return try StoreLocation.parse(url, defaultSQLitePath: cfg.dataDirectory + "/corral.sqlite") } catch { throw ValidationError("\(error)") }
    }

    /// A store's accounts; `mustExist`: a SQLite file that is not there is an error (a source),
    /// not a new empty database.
    static func accounts(_ location: StoreLocation, passwordEnv: String?, mustExist: Bool) async throws -> (any AccountStore & WorkStore, @Sendable () -> Void) {
        switch location {
        case .sqlite(let path):
            guard !mustExist || FileManager.default.fileExists(atPath: path) else { throw ValidationError("no SQLite file at \(path)") }
            return (try Store.open(path: path), {})
        case .postgres(let pg):
            let (store, client) = try await OpenedStores.openPostgres(pg, passwordEnv: passwordEnv, logger: logger, migrate: true)
            return (store, { client.cancel() })
        }
    }
}

/// Where a store command finds its store: routes.json's `store.url`, or one given.
struct StoreOptions: ParsableArguments {
    @Option(help: "Configuration file (store.url and store.passwordEnv).")
    var config = "routes.json"

    @Option(help: "A store URL instead of routes.json's: sqlite:PATH or postgres://USER@HOST:PORT/DATABASE.")
    var url: String?

    @Option(help: "The environment variable holding the PostgreSQL password.")
    var passwordEnv: String?
}

/// `corral drain`: the node stops taking work, finishes what it has, leaves the cluster and exits.
struct DrainCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "drain", abstract: "Drain a cluster node: out of routing now, in-flight requests finish, then it leaves the registry and exits.")

    @OptionGroup var connection: AdminConnection

    func run() async throws {
        connection.print(try await connection.call("POST", "/admin/drain"))
    }
}

/// `corral store bench`: the accounts path alone, in this process, on one backend: `concurrency`
/// callers admitting, settling and recording requests against one team and key (limits set,
/// never reached) for `seconds`. Prints admissions per second and admission latency percentiles
/// as JSON, for `scripts/bench_cluster.py`.
struct StoreBenchCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "bench", abstract: "Benchmark the accounts path on a store (JSON out).", shouldDisplay: false)

    @Option(help: "sqlite:PATH or postgres://…")
    var url: String

    @Option(help: "The environment variable holding the PostgreSQL password.")
    var passwordEnv: String?

    @Option var concurrency = 64
    @Option var seconds = 5.0

    func run() async throws {
        var cfg = CorralConfig()
        cfg.dataDirectory = NSTemporaryDirectory() + "corral-store-bench-\(getpid())"
        try FileManager.default.createDirectory(atPath: cfg.dataDirectory, withIntermediateDirectories: true)
        let location = try StoreCommand.location(url, cfg: cfg)
        let accounts: any AccountStore
        var shared: SharedQuota?
        var stop: @Sendable () -> Void = {}
        switch location {
        case .sqlite(let path):
            accounts = try Store.open(path: path)
        case .postgres(let pg):
            let (store, client) = try await OpenedStores.openPostgres(pg, passwordEnv: passwordEnv, logger: StoreCommand.logger, migrate: true)
            accounts = store
            shared = SharedQuota(store: store, node: "bench-\(getpid())")
            stop = { client.cancel() }
        }
        defer { stop() }
        let access = AccessControl(store: accounts, shared: shared)
        try await access.load()
        let team = try await access.createTeam(name: "bench-\(getpid())-\(Int.random(in: 0..<1_000_000))", policy: Policy(tokensPerMinute: 1_000_000_000, tokensPerDay: 1_000_000_000))
        let (key, _) = try await access.createKey(team: team.id, name: "bench", expiresAt: nil, policy: Policy())
        let caller = try access.authenticate(key)
        let ledger = UsageLedger(store: accounts, logger: StoreCommand.logger, node: shared?.node)
        let ledgerTask = Task { try? await ledger.run() }
        let deadline = ContinuousClock.now + .seconds(seconds)
        let started = ContinuousClock.now
        let latencies = await withTaskGroup(of: [Double].self) { group in
            for _ in 0..<concurrency {
                group.addTask {
                    var own: [Double] = []
                    while ContinuousClock.now < deadline {
                        let t0 = ContinuousClock.now
                        guard let reservation = try? await access.admit(caller, model: ["chat"], tokens: 20, requestID: RequestIDs.next(), route: "/bench") else { continue }
                        let d = ContinuousClock.now - t0
                        own.append(Double(d.components.seconds) * 1000 + Double(d.components.attoseconds) / 1e15)
                        access.reconcile(reservation, actualTokens: 12)
                        var record = RequestRecord(requestID: RequestIDs.next(), route: "/bench", model: "chat", status: 200, errorKind: nil, queueMs: 0, loadMs: 0,
                                                   timeToFirstByteMs: 1, totalMs: 1, clientDisconnected: false)
                        record.team = caller.teamID
                        record.keyPrefix = caller.keyPrefix
                        ledger.record(record)
                    }
                    return own
                }
            }
            var all: [Double] = []
            for await part in group { all += part }
            return all.sorted()
        }
        let elapsed = ContinuousClock.now - started
        let wall = Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
        await ledger.flush()
        ledgerTask.cancel()
        func pct(_ p: Double) -> Double { latencies.isEmpty ? 0 : latencies[min(latencies.count - 1, Int(Double(latencies.count) * p))] }
        let out: [String: Any] = [
            "backend": location.description.hasPrefix("postgres") ? "postgres" : "sqlite", "concurrency": concurrency, "seconds": wall,
            "admissions": latencies.count, "admissionsPerSecond": Double(latencies.count) / wall,
            "admissionP50Ms": pct(0.5), "admissionP99Ms": pct(0.99), "ledgerPending": ledger.pendingCount,
        ]
        let data = try JSONSerialization.data(withJSONObject: out, options: [.sortedKeys])
        print(String(decoding: data, as: UTF8.self))
    }
}
