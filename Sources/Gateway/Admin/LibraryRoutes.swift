import Foundation
import HTTPTypes
import Hummingbird
import Library
import Runtime

/// `/admin/hardware`, `/admin/models` (list, detail, compare, compatibility) and
/// `/admin/recommendations`: decoding and encoding around ``ModelLibrary``.
struct LibraryRoutes: Sendable {
    let library: ModelLibrary
    /// Rebuilds the catalog from `routes.json` (incrementally) and returns what it did.
    let rescan: @Sendable () async throws -> [String: Any]

    var hardware: HardwareCache { library.hardware }

    func register(on admin: AdminAPIGroup) {
        admin.get("hardware", .init("CPU, RAM, accelerators, NVIDIA details, llama.cpp build and backend",
                                    query: [.init("refresh", .boolean, "read again instead of the cached answer")], errors: [])) { request, _ in
            let info = await library.hardware.get(refresh: request.uri.queryParameters.get("refresh") == "true")
            return try Wire.response(info)
        }
        admin.get("models", .init("The model library with filters and sorting", query: [
            .init("q", .string, "text in id, name, aliases, architecture, quantization"), .init("architecture", .string), .init("quantization", .string),
            .init("capability", .enumeration(["completion", "embedding", "tools", "thinking", "insert", "vision"])),
            .init("minParams", .string, "e.g. 1B"), .init("maxParams", .string), .init("minSize", .string, "bytes, or 4GiB"), .init("maxSize", .string),
            .init("fits", .enumeration(["true", "false"])), .init("sort", .enumeration(["name", "size", "params", "lastUsed", "context"])),
            .init("order", .enumeration(["asc", "desc"])),
        ], errors: [400])) { request, _ in
            try Wire.response(try await mapped { try await library.list(query: request.query) })
        }
        admin.get("recommendations", .init("Models that fit, ranked for a task, with a reason each", query: [
            .init("task", .enumeration(["chat", "code", "embedding", "vision"])), .init("min_ctx", .integer(minimum: 1)),
        ], errors: [400])) { request, _ in
            try Wire.response(try await mapped { try await library.recommendations(query: request.query) })
        }
    }

    func detail(_ id: String) async throws -> Response {
        try Wire.response(try await mapped { try await library.detail(id) })
    }

    func compare(_ request: Request) async throws -> Response {
        try Wire.response(try await mapped { try await library.compare(ids: request.uri.queryParameters.get("ids")) })
    }

    func compatibility(_ id: String, _ request: Request) async throws -> Response {
        try Wire.response(try await mapped { try await library.compatibility(id, query: request.query) })
    }
}

extension Request {
    /// The query's name/value pairs (the last value of a repeated name).
    var query: [String: String] {
        var q: [String: String] = [:]
        for (k, v) in uri.queryParameters { q[String(k)] = String(v) }
        return q
    }
}
