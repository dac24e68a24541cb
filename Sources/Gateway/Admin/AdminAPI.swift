import Foundation
import HTTPTypes
import Hummingbird
import Jobs
import Synchronization

/// A JSON Schema, as the admin API's description uses them.
struct JSONSchema: Sendable {
    var json: JobJSON

    static let string = JSONSchema(json: .object(["type": .string("string")]))
    static let boolean = JSONSchema(json: .object(["type": .string("boolean")]))
    static let number = JSONSchema(json: .object(["type": .string("number")]))
    static let object = JSONSchema(json: .object(["type": .string("object")]))
    static let dateTime = JSONSchema(json: .object(["type": .string("string"), "format": .string("date-time")]))
    static let nullableDateTime = JSONSchema(json: .object(["type": .array([.string("string"), .string("null")]), "format": .string("date-time")]))
    static let nullableCount = JSONSchema(json: .object(["type": .array([.string("integer"), .string("null")]), "minimum": .number(0)]))
    static let nullableStrings = JSONSchema(json: .object(["type": .array([.string("array"), .string("null")]), "items": string.json]))

    static func integer(minimum: Int? = nil, maximum: Int? = nil) -> JSONSchema {
        var o: [String: JobJSON] = ["type": .string("integer")]
        if let minimum { o["minimum"] = .number(Double(minimum)) }
        if let maximum { o["maximum"] = .number(Double(maximum)) }
        return JSONSchema(json: .object(o))
    }

    static var integer: JSONSchema { integer() }

    static func enumeration(_ values: [String]) -> JSONSchema {
        JSONSchema(json: .object(["type": .string("string"), "enum": .array(values.map(JobJSON.string))]))
    }

    static func array(_ items: JSONSchema) -> JSONSchema { JSONSchema(json: .object(["type": .string("array"), "items": items.json])) }

    static func object(_ properties: [String: JSONSchema], required: [String] = [], closed: Bool = false) -> JSONSchema {
        var o: [String: JobJSON] = ["type": .string("object"), "properties": .object(properties.mapValues(\.json))]
        if !required.isEmpty { o["required"] = .array(required.map(JobJSON.string)) }
        if closed { o["additionalProperties"] = .bool(false) }
        return JSONSchema(json: .object(o))
    }
}

/// The description of one admin operation, given where the route is registered.
struct AdminOperation: Sendable {
    struct Parameter: Sendable {
        var name: String
        var schema: JSONSchema
        var description: String
        var required: Bool

        init(_ name: String, _ schema: JSONSchema, _ description: String = "", required: Bool = false) {
            (self.name, self.schema, self.description, self.required) = (name, schema, description, required)
        }
    }

    var summary: String
    var query: [Parameter]
    /// Descriptions of the path's `{name}` parameters.
    var pathParameters: [String: String]
    var body: JSONSchema?
    var status: Int
    var responseSchema: JSONSchema
    var contentType: String
    /// Error statuses besides 401 (which every admin route may answer).
    var errors: [Int]

    init(_ summary: String, path: [String: String] = [:], query: [Parameter] = [], body: JSONSchema? = nil, status: Int = 200,
         response: JSONSchema = .object, contentType: String = "application/json", errors: [Int] = [400, 404]) {
        self.summary = summary
        self.query = query
        self.pathParameters = path
        self.body = body
        self.status = status
        self.responseSchema = response
        self.contentType = contentType
        self.errors = errors
    }

    /// An operation answering server-sent events.
    static func events(_ summary: String, path: [String: String] = [:], query: [Parameter] = [], errors: [Int] = [400, 404]) -> AdminOperation {
        AdminOperation(summary, path: path, query: query, response: .string, contentType: "text/event-stream", errors: errors)
    }
}

/// Every documented admin operation, filled in as the routes are registered: the one
/// description of the admin API, from which `/admin/openapi.json` is built.
final class AdminAPITable: Sendable {
    struct Entry: Sendable {
        var method: HTTPRequest.Method
        /// The OpenAPI path, e.g. `/admin/jobs/{id}`.
        var path: String
        /// The registered route that serves it, as the router describes it (`/admin/models/**`).
        var route: String
        var operation: AdminOperation
    }

    private let entries = Mutex<[Entry]>([])

    var all: [Entry] { entries.withLock { $0 } }

    func add(_ entry: Entry) { entries.withLock { $0.append(entry) } }

    /// The OpenAPI 3.1 document of everything registered.
    func document() -> JobJSON {
        var paths: [String: [String: JobJSON]] = [:]
        let error: JobJSON = .object(["description": .string("error"), "content": .object(["application/json": .object(["schema": .object(["$ref": .string("#/components/schemas/Error")])])])])
        for e in all {
            let o = e.operation
            var parameters: [JobJSON] = []
            for name in Self.pathParameterNames(e.path) {
                parameters.append(.object([
                    "name": .string(name), "in": .string("path"), "required": .bool(true),
                    "schema": .object(["type": .string("string"), "minLength": .number(1)]), "description": .string(o.pathParameters[name] ?? ""),
                ]))
            }
            for q in o.query {
                parameters.append(.object(["name": .string(q.name), "in": .string("query"), "required": .bool(q.required), "schema": q.schema.json,
                                           "description": .string(q.description)]))
            }
            var responses: [String: JobJSON] = ["401": error]
            for status in o.errors { responses[String(status)] = error }
            responses[String(o.status)] = o.status == 204
                ? .object(["description": .string("done")])
                : .object(["description": .string("success"), "content": .object([o.contentType: .object(["schema": o.responseSchema.json])])])
            var operation: [String: JobJSON] = ["summary": .string(o.summary), "parameters": .array(parameters), "responses": .object(responses)]
            if let body = o.body {
                operation["requestBody"] = .object(["required": .bool(true), "content": .object(["application/json": .object(["schema": body.json])])])
            }
            paths[e.path, default: [:]][e.method.rawValue.lowercased()] = .object(operation)
        }
        let errorSchema = JSONSchema.object(["error": .object([
            "message": .string, "type": .string,
            "code": JSONSchema(json: .object(["type": .array([.string("string"), .string("null")])])),
            "param": JSONSchema(json: .object(["type": .array([.string("string"), .string("null")])])),
        ])], required: ["error"])
        return .object([
            "openapi": .string("3.1.0"),
            "info": .object(["title": .string("Corral admin API"), "version": .string("1"),
                             "description": .string("Operator routes. Every route needs the admin token (Authorization: Bearer TOKEN).")]),
            "servers": .array([.object(["url": .string("/")])]),
            "security": .array([.object(["adminToken": .array([])])]),
            "components": .object([
                "securitySchemes": .object(["adminToken": .object(["type": .string("http"), "scheme": .string("bearer")])]),
                "schemas": .object(["Error": errorSchema.json]),
            ]),
            "paths": .object(paths.mapValues { .object($0) }),
        ])
    }

    static func pathParameterNames(_ path: String) -> [String] {
        path.split(separator: "/").compactMap { part in
            part.hasPrefix("{") && part.hasSuffix("}") ? String(part.dropFirst().dropLast()) : nil
        }
    }
}

/// The `/admin` route group: each route is registered together with its description.
struct AdminAPIGroup {
    let group: RouterGroup<GatewayRequestContext>
    let table: AdminAPITable
    /// `/admin`, as routes are described.
    let prefix = "/admin"

    typealias Handler = @Sendable (Request, GatewayRequestContext) async throws -> Response

    /// Registers `path` (relative, `{name}` for a parameter) for `method`, described by `operation`.
    func on(_ method: HTTPRequest.Method, _ path: String, _ operation: AdminOperation, use handler: @escaping Handler) {
        group.on(RouterPath(path), method: method, use: handler)
        table.add(.init(method: method, path: prefix + "/" + path, route: prefix + "/" + path, operation: operation))
    }

    /// Registers one route that serves several documented paths (model ids contain '/', so
    /// `/admin/models/**` takes the rest of the path and dispatches on it).
    func on(_ method: HTTPRequest.Method, route: String, serving operations: [(path: String, operation: AdminOperation)], use handler: @escaping Handler) {
        group.on(RouterPath(route), method: method, use: handler)
        for (path, operation) in operations {
            table.add(.init(method: method, path: prefix + "/" + path, route: prefix + "/" + route, operation: operation))
        }
    }

    func get(_ path: String, _ operation: AdminOperation, use handler: @escaping Handler) { on(.get, path, operation, use: handler) }
    func post(_ path: String, _ operation: AdminOperation, use handler: @escaping Handler) { on(.post, path, operation, use: handler) }
    func put(_ path: String, _ operation: AdminOperation, use handler: @escaping Handler) { on(.put, path, operation, use: handler) }
    func patch(_ path: String, _ operation: AdminOperation, use handler: @escaping Handler) { on(.patch, path, operation, use: handler) }
    func delete(_ path: String, _ operation: AdminOperation, use handler: @escaping Handler) { on(.delete, path, operation, use: handler) }
}
