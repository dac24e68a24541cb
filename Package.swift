// swift-tools-version: 6.2
import PackageDescription

/// Settings shared by every target: Swift 6 language mode with strict concurrency, plus the
/// upcoming features the style guide asks for.
let swiftSettings: [SwiftSetting] = [
    // SE-0335: existential types are spelled `any P`.
    .enableUpcomingFeature("ExistentialAny"),
    // SE-0444: a file sees only the members of modules it imports itself.
    .enableUpcomingFeature("MemberImportVisibility"),
]

let package = Package(
    name: "corral",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "corral", targets: ["corral"])
    ],
    dependencies: [
        .package(url: "https://github.com/hummingbird-project/hummingbird", from: "2.28.1"),
        .package(url: "https://github.com/swift-server/async-http-client", from: "1.37.0"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.13.0"),
        .package(url: "https://github.com/groue/GRDB.swift", from: "7.10.0"),
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-nio", from: "2.101.2"),
        .package(url: "https://github.com/apple/swift-http-types", from: "1.8.0"),
        .package(url: "https://github.com/apple/swift-nio-ssl", from: "2.37.6"),
        .package(url: "https://github.com/apple/swift-crypto", "3.12.3"..<"5.0.0"),
        .package(url: "https://github.com/vapor/postgres-nio", from: "1.33.2"),
    ],
    targets: [
        // Reading GGUF headers, writing tiny test models, model facts and the memory estimator.
        .target(name: "GGUF", swiftSettings: swiftSettings),
        // fork/exec with a parent-death signal, from one long-lived thread (see CSpawn.h).
        .target(name: "CSpawn"),
        // Hardware, fit planning, process supervision, scheduling, llama.cpp tool discovery.
        .target(
            name: "Runtime",
            dependencies: [
                "GGUF", "CSpawn",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "Crypto", package: "swift-crypto"),
            ],
            swiftSettings: swiftSettings
        ),
        // SQLite: migrations, fit cache, teams, keys, the usage ledger and its rollups, jobs, files, evaluations.
        .target(
            name: "Store",
            dependencies: [.product(name: "GRDB", package: "GRDB.swift")],
            swiftSettings: swiftSettings
        ),
        // The shared store on PostgreSQL (one cluster of Corral nodes): the same records as `Store`
        // behind `AccountStore`, quota reservations with leases, the node registry, change notices.
        .target(
            name: "PostgresStore",
            dependencies: [
                "Store",
                .product(name: "PostgresNIO", package: "postgres-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            swiftSettings: swiftSettings
        ),
        // Teams, API keys, policies and admission (reservations against limits).
        .target(
            name: "Access",
            dependencies: ["Store", .product(name: "Crypto", package: "swift-crypto")],
            swiftSettings: swiftSettings
        ),
        // What each request cost and how it went: the record, request ids, the batched ledger writer.
        .target(
            name: "Usage",
            dependencies: [
                "Store",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            swiftSettings: swiftSettings
        ),
        // Corral's own measurements: Prometheus counters and histograms fed by request records,
        // and the dashboard's live sampler (rates and percentiles).
        .target(
            name: "Telemetry",
            dependencies: [
                "Runtime", "Usage",
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            swiftSettings: swiftSettings
        ),
        // Uploaded files (the OpenAI Files API) for evaluations and fine-tuning.
        .target(
            name: "Files",
            dependencies: ["Store", .product(name: "Crypto", package: "swift-crypto")],
            swiftSettings: swiftSettings
        ),
        // The durable job engine: typed states, event logs, cancel/pause/resume, restart rules,
        // memory claims through `MemoryClaims` (the scheduler, conformed in Serving). No HTTP, no Runtime.
        .target(
            name: "Jobs",
            dependencies: [
                "Store",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            swiftSettings: swiftSettings
        ),
        // The model library: catalog queries, compatibility, recommendations, sampling profiles.
        .target(
            name: "Library",
            dependencies: ["GGUF", "Runtime", "Store", "Jobs"],
            swiftSettings: swiftSettings
        ),
        // Work on models as jobs: benchmarks, perplexity, tuning, evaluations, fine-tuning and the quant
        // ladder, asking models through Serving's typed `ModelClient` (one ask-and-grade for runs and tuning).
        .target(
            name: "Lab",
            dependencies: [
                "Jobs", "Library", "Runtime", "GGUF", "Store", "Files", "Serving",
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
            ],
            swiftSettings: swiftSettings
        ),
        // Getting models: pulls from Ollama registries and the Hugging Face hub (resumable,
        // verified downloads as jobs) and a fit verdict from a remote GGUF's header.
        .target(
            name: "Acquisition",
            dependencies: [
                "Jobs", "GGUF", "Runtime",
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "Crypto", package: "swift-crypto"),
            ],
            swiftSettings: swiftSettings
        ),
        // The serving core below the HTTP layer (no Hummingbird): the request path (model resolved
        // once, admission, routing, transports, the one response pump, settlement into the ledger)
        // with its typed `ServingError`, the jobs' typed `ModelClient`, catalog refresh and reload,
        // the cluster node, the fleet as the jobs' memory claims, and Ollama's API as typed values.
        .target(
            name: "Serving",
            dependencies: [
                "Runtime", "Store", "Access", "Jobs", "Usage", "GGUF", "Library",
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "HTTPTypes", package: "swift-http-types"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "UnixSignals", package: "swift-service-lifecycle"),
            ],
            swiftSettings: swiftSettings
        ),
        // The one place that wires (no Hummingbird): builds the stores, access, the fleet, the job
        // engine, the request path, the library, the lab and the cluster node, and returns them
        // with the Services that run them. Gateway registers its routes over its products.
        .target(
            name: "CorralApp",
            dependencies: [
                "Serving", "Runtime", "Store", "PostgresStore", "GGUF", "Access", "Usage", "Telemetry", "Files", "Jobs", "Library", "Lab", "Acquisition",
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "UnixSignals", package: "swift-service-lifecycle"),
            ],
            swiftSettings: swiftSettings
        ),
        // The HTTP application over CorralApp's products: OpenAI, Anthropic, Ollama,
        // llama.cpp-native and admin routes, body checks, error shapes (one mapping), dashboard,
        // the fast lane and TLS. The only module that imports Hummingbird.
        .target(
            name: "Gateway",
            dependencies: [
                "CorralApp", "Serving", "Runtime", "Store", "GGUF", "Access", "Usage", "Telemetry", "Files", "Jobs", "Library", "Lab", "Acquisition",
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "HummingbirdTLS", package: "hummingbird"),
                .product(name: "HummingbirdCore", package: "hummingbird"),
                .product(name: "HummingbirdHTTP2", package: "hummingbird"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "HTTPTypes", package: "swift-http-types"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "UnixSignals", package: "swift-service-lifecycle"),
            ],
            // The dashboard's HTML, CSS and JavaScript, served from memory under /ui.
            resources: [.copy("Dashboard/ui")],
            swiftSettings: swiftSettings
        ),
        // The `corral` command: serve (runs CorralApp with Gateway's HTTP application), and the
        // CLI over the admin API and the stores (teams, keys, jobs, pulls, fit, doctor, store copy).
        .executableTarget(
            name: "corral",
            dependencies: [
                "CorralApp", "Gateway", "Serving", "Runtime", "Store", "GGUF", "Access", "Usage", "Telemetry", "Files", "Jobs", "Library", "Lab", "PostgresStore",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
            ],
            swiftSettings: swiftSettings
        ),
        .testTarget(name: "GGUFTests", dependencies: ["GGUF"], swiftSettings: swiftSettings),
        // The SQLite store on real files: migrations, the job log, pruning, team-owned rows.
        .testTarget(name: "StoreTests", dependencies: ["Store"], swiftSettings: swiftSettings),
        // Uploaded files and fine-tuning data: formats, per-purpose checks, scoping, digests.
        .testTarget(name: "FilesTests", dependencies: ["Files", "Store"], swiftSettings: swiftSettings),
        // The Prometheus exposition and the dashboard's live windows and quantiles.
        .testTarget(name: "TelemetryTests", dependencies: ["Telemetry", "Usage", "Runtime"], swiftSettings: swiftSettings),
        // The shared store on a real PostgreSQL server started by the test (Debian's binaries).
        .testTarget(
            name: "PostgresStoreTests",
            dependencies: ["PostgresStore", "Store", "Runtime", .product(name: "Logging", package: "swift-log")],
            swiftSettings: swiftSettings),
        // The library: the fit-plan cache in the store, sampling profiles, compatibility verdicts.
        .testTarget(
            name: "LibraryTests",
            dependencies: ["Library", "Runtime", "GGUF", "Store", "Jobs", .product(name: "GRDB", package: "GRDB.swift")],
            swiftSettings: swiftSettings),
        // The serving core's parsers and its pooled transport to local llama-servers.
        .testTarget(
            name: "ServingTests",
            dependencies: [
                "Serving", "GGUF",
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
            ],
            swiftSettings: swiftSettings),
        .testTarget(name: "LabTests", dependencies: ["Lab", "Jobs", "Serving", "Files", "Store"], swiftSettings: swiftSettings),
        .testTarget(name: "AcquisitionTests", dependencies: ["Acquisition"], swiftSettings: swiftSettings),
        .testTarget(name: "AccessTests", dependencies: ["Access", "Store"], swiftSettings: swiftSettings),
        // The usage ledger on SQLite: rollups against raw sums, retention, the bounded queue.
        .testTarget(
            name: "UsageTests",
            dependencies: ["Usage", "Store", .product(name: "Logging", package: "swift-log"), .product(name: "GRDB", package: "GRDB.swift")], swiftSettings: swiftSettings),
        .testTarget(
            name: "RuntimeTests",
            dependencies: ["Runtime", "GGUF", "Store", .product(name: "Logging", package: "swift-log")],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "JobsTests",
            dependencies: [
                "Jobs", "Serving", "Store", "Runtime", "GGUF",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
            ],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "GatewayTests",
            dependencies: [
                "Gateway", "CorralApp", "Serving", "Runtime", "GGUF", "Store", "Access", "Usage", "Telemetry", "Files", "Jobs", "Library", "Lab",
                .product(name: "GRDB", package: "GRDB.swift"),
                .product(name: "HummingbirdTesting", package: "hummingbird"),
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: swiftSettings
        ),
    ]
)
