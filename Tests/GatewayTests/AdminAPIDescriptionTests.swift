import Access
import CorralApp
import Foundation
@testable import Gateway
import Hummingbird
import Jobs
import Logging
import Runtime
import Store
import Testing

/// `/admin/openapi.json` is built from the routes as they are registered; these tests hold the
/// two together: a route added without its description (or a description without its route)
/// fails here.
@Suite struct AdminAPIDescriptionTests {
    func build() throws -> (Router<GatewayRequestContext>, AdminAPITable) {
        let store = try Store.inMemory()
        let config = CorralConfig()
        let scheduler = Scheduler(catalog: ModelCatalog.build(from: config), limits: .init(from: config.scheduler, hostTotalMiB: 1024),
                                  tools: LlamaTools(), client: sharedClient, logger: Logger(label: "test"))
        let deps = GatewayDependencies(config: config, scheduler: scheduler, client: sharedClient, logger: Logger(label: "test"), store: store,
                                       access: AccessControl(store: store))
        let (router, _, table, _) = buildRouterAndRoutes(deps)
        return (router, table)
    }

    static func rooted(_ path: String) -> String { path.hasPrefix("/") ? path : "/" + path }

    @Test func everyAdminRouteIsDescribedAndEveryDescriptionIsARoute() throws {
        let (router, table) = try build()
        let registered = Set(router.routes.map { "\($0.method) \(Self.rooted("\($0.path)"))" }.filter { $0.contains(" /admin/") })
        let described = Set(table.all.map { "\($0.method) \($0.route)" })
        #expect(registered.subtracting(described).isEmpty, "registered but not described: \(registered.subtracting(described).sorted())")
        #expect(described.subtracting(registered).isEmpty, "described but not registered: \(described.subtracting(registered).sorted())")
        #expect(registered.count > 30)
        // Each described operation appears once in the document, under its own path and method.
        let document = table.document()
        guard case .object(let paths)? = document["paths"] else {
            Issue.record("the document has no paths")
            return
        }
        let operations = paths.flatMap { path, item -> [String] in
            guard case .object(let methods) = item else { return [] }
            return methods.keys.map { "\($0.uppercased()) \(path)" }
        }
        #expect(Set(operations) == Set(table.all.map { "\($0.method) \($0.path)" }))
        #expect(operations.count == table.all.count)
        for route in ["GET /admin/jobs", "GET /admin/jobs/{id}", "GET /admin/jobs/{id}/events", "POST /admin/jobs/{id}/cancel",
                      "POST /admin/jobs/{id}/pause", "POST /admin/jobs/{id}/resume", "GET /admin/tuning/{id}/events", "POST /admin/models/{id}/load"] {
            #expect(operations.contains(route), "\(route) is not described")
        }
    }

    @Test func pathParametersAreDeclaredForEveryTemplate() throws {
        let (_, table) = try build()
        guard case .object(let paths)? = table.document()["paths"] else { return }
        for (path, item) in paths {
            guard case .object(let methods) = item else { continue }
            for (method, operation) in methods {
                guard case .array(let parameters)? = operation["parameters"] else {
                    Issue.record("\(method) \(path) has no parameter list")
                    continue
                }
                let declared = Set(parameters.compactMap { p -> String? in
                    guard p["in"] == .string("path"), case .string(let name)? = p["name"] else { return nil }
                    return name
                })
                #expect(declared == Set(AdminAPITable.pathParameterNames(path)), "\(method) \(path)")
            }
        }
    }
}
