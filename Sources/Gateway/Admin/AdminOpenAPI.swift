/// The OpenAPI 3.1 description of `/admin/*`, served at `/admin/openapi.json`.
enum AdminOpenAPI {
    static let document = #"{"openapi":"3.1.0","info":{"title":"Corral admin API","version":"1"},"paths":{}}"#
}
