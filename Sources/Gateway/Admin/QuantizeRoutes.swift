import Acquisition
import Foundation
import Hummingbird
import Jobs
import Runtime

/// `/admin/quantize`: a quantization as a job (the result is a model of the downloads folder that
/// names its parent). Decoding, the plan, submitting; `/admin/jobs/{id}` follows it.
struct QuantizeRoutes: Sendable {
    let scheduler: Scheduler
    let engine: JobEngine
    /// The downloads folder, where quantized models are written.
    let downloads: String

    func register(on admin: AdminAPIGroup) {
        admin.post("quantize", .init(
            "Quantize a local model with llama-quantize (a job of kind quantize): `type` is Ollama's or llama.cpp's name (q4_K_M, Q8_0, …); from F32, F16 or BF16, or from a quantized model only with `allowRequantize`; the result is served as `name` (default SOURCE:TYPE) and records its parent",
            body: .object(["model": .string, "type": .enumeration(QuantType.all.map(\.name)), "name": .string, "allowRequantize": .boolean], required: ["model", "type"]),
            status: 202, errors: [400, 404, 409])
        ) { request, context in
            let body = try await Relay.readJSON(request, context: context).1
            guard let model = body["model"] as? String, !model.isEmpty else { throw OpenAIError.badRequest("model is required", param: "model") }
            guard let source = await scheduler.catalog.resolve(model) else { throw OpenAIError.modelNotFound(model) }
            guard let typeName = body["type"] as? String, let type = QuantType(typeName) else {
                throw OpenAIError.badRequest("type must be one of \(QuantType.all.map(\.name).joined(separator: ", "))", param: "type")
            }
            let name = body["name"] as? String
            let spec = try await mapped {
                try QuantizeSpec.plan(source: source, type: type, name: name, allowRequantize: body["allowRequantize"] as? Bool ?? false)
            }
            try await Self.checkName(spec, scheduler: scheduler, downloads: downloads)
            let job = try await mapped { try await engine.submit(QuantizeJob.self, spec) }
            return try Wire.response(job, status: .accepted)
        }
    }

    /// Refuses a name that would hide or replace a model that is not a quantization's to
    /// replace: the source itself, or a model from routes.json or another source (a created
    /// model of the downloads folder is replaced, as Ollama's create does).
    static func checkName(_ spec: QuantizeSpec, scheduler: Scheduler, downloads: String) async throws {
        guard let existing = await scheduler.catalog.resolve(spec.name) else { return }
        let inDownloads = existing.path.map { OllamaRoutes.isInside($0, directory: downloads) } ?? false
        if existing.id == ModelCatalog.normalize(spec.source) || !inDownloads {
            throw OpenAIError(.conflict, "'\(spec.name)' is already \(existing.id == ModelCatalog.normalize(spec.source) ? "the source model" : "a model from \(existing.source)"): choose another name", code: "name_taken")
        }
    }
}
