import Foundation
import Hummingbird
import Library
import Runtime

/// `/admin/profiles`: list, read, create or replace, delete.
struct ProfileRoutes: Sendable {
    let profiles: SamplingProfiles

    /// The fields a profile may set.
    static let fields = JSONSchema.object(
        Dictionary(uniqueKeysWithValues: SamplingFields.numeric.map { ($0, JSONSchema.number) }).merging(["stop": .array(.string)]) { a, _ in a },
        closed: true)

    func register(on admin: AdminAPIGroup) {
        admin.get("profiles", .init("Sampling profiles (builtin, config, admin)", errors: [])) { _, _ in
            try Wire.response(["profiles": profiles.all().sorted { $0.key < $1.key }.map { Profile(name: $0.key, source: $0.value.source, fields: $0.value.fields) }])
        }
        admin.get("profiles/{name}", .init("One sampling profile", path: ["name": "profile name"])) { _, context in
            let name = try context.parameters.require("name")
            guard let e = profiles.get(name) else { throw OpenAIError(.notFound, "no profile '\(name)'", code: "not_found") }
            return try Wire.response(Profile(name: name, source: e.source, fields: e.fields))
        }
        admin.put("profiles/{name}", .init("Create or replace a profile", path: ["name": "letters, digits, - and _"], body: Self.fields)) { request, context in
            let name = try context.parameters.require("name")
            guard !name.isEmpty, name.count <= 64, name.allSatisfy({ $0.isLetter || $0.isNumber || $0 == "-" || $0 == "_" }) else {
                throw OpenAIError.badRequest("profile names use letters, digits, - and _ (at most 64)", param: "name")
            }
            let body = try await Relay.readJSON(request, context: context).1
            let fields: [String: SendableJSON]
            switch Result(catching: { () throws(SamplingFields.Invalid) in try SamplingFields.validate(body) }) {
            case .success(let f): fields = f
            case .failure(let e): throw OpenAIError.badRequest("\(e.field) \(e.problem)", param: e.field)
            }
            try await profiles.put(name, fields: fields)
            return try Wire.response(Profile(name: name, source: "admin", fields: fields))
        }
        admin.delete("profiles/{name}", .init("Delete an admin-defined profile", path: ["name": "profile name"], status: 204, errors: [404, 409])) { _, context in
            let name = try context.parameters.require("name")
            guard let e = profiles.get(name) else { throw OpenAIError(.notFound, "no profile '\(name)'", code: "not_found") }
            guard try await profiles.delete(name) else {
                throw OpenAIError(.conflict, "profile '\(name)' comes from \(e.source == "config" ? "routes.json" : "Corral's built-ins") and cannot be deleted here", code: "conflict")
            }
            return Response(status: .noContent)
        }
    }

    /// A profile as the admin API shows it.
    struct Profile: Encodable {
        var name: String
        var source: String
        var fields: [String: SendableJSON]
    }
}
