import Acquisition
import Foundation
import GGUF
import Hummingbird
import Jobs
import Library

/// `/admin/downloads` (pulls as jobs: start, list, follow, pause, resume, cancel) and
/// `/admin/library/remote/compatibility` (a fit verdict from a remote file's header, before any
/// download). Decoding, the domain call, encoding.
struct DownloadRoutes: Sendable {
    let downloads: Downloads
    let library: ModelLibrary

    func register(on admin: AdminAPIGroup) {
        let id = ["id": "download id"]
        admin.post("downloads", .init(
            "Pull a model (Ollama's [host/][namespace/]model[:tag], or hf.co/org/repo[:quant]); a pull of a model already being pulled joins it",
            body: .object(["model": .string, "insecure": .boolean], required: ["model"]), status: 202, errors: [400])
        ) { request, context in
            let body = try await Relay.readJSON(request, context: context).1
            guard let model = body["model"] as? String, !model.isEmpty else { throw OpenAIError.badRequest("model is required", param: "model") }
            let started = try await mapped { try await downloads.start(model, insecure: body["insecure"] as? Bool ?? false) }
            guard let view = try await mapped({ try await downloads.download(started.job.id) }) else { throw OpenAIError(.notFound, "the download vanished", code: "not_found") }
            return try Wire.response(view, status: .accepted)
        }
        admin.get("downloads", .init("Downloads, newest first (kept across restarts)", errors: [])) { _, _ in
            try Wire.response(["downloads": try await mapped { try await downloads.list() }])
        }
        admin.get("downloads/{id}", .init("One download: state, bytes done and total, rate, time left, files, error", path: id)) { _, context in
            let downloadID = try context.parameters.require("id")
            guard let view = try await mapped({ try await downloads.download(downloadID) }) else {
                throw OpenAIError(.notFound, "no download '\(downloadID)'", code: "not_found")
            }
            return try Wire.response(view)
        }
        admin.get("downloads/{id}/events", .events(
            "The download's job events as server-sent events (`pull` events are Ollama's progress lines); replays from Last-Event-ID", path: id)
        ) { request, context in
            let downloadID = try context.parameters.require("id")
            guard try await mapped({ try await downloads.download(downloadID) }) != nil else {
                throw OpenAIError(.notFound, "no download '\(downloadID)'", code: "not_found")
            }
            return try await JobRoutes.events(of: downloadID, in: downloads.engine, request: request)
        }
        for action in ["pause", "resume"] {
            admin.post("downloads/{id}/\(action)", .init(action == "pause" ? "Pause a download between chunks" : "Go on with a paused download",
                                                          path: id, errors: [404, 409])) { _, context in
                let downloadID = try context.parameters.require("id")
                guard try await mapped({ try await downloads.download(downloadID) }) != nil else {
                    throw OpenAIError(.notFound, "no download '\(downloadID)'", code: "not_found")
                }
                _ = try await mapped { action == "pause" ? try await downloads.engine.pause(downloadID) : try await downloads.engine.resume(downloadID) }
                return try Wire.response(try await mapped { try await downloads.download(downloadID) })
            }
        }
        admin.delete("downloads/{id}", .init("Cancel a download and delete its partial files", path: id, errors: [404])) { _, context in
            let downloadID = try context.parameters.require("id")
            guard let view = try await mapped({ try await downloads.cancel(downloadID) }) else {
                throw OpenAIError(.notFound, "no download '\(downloadID)'", code: "not_found")
            }
            return try Wire.response(view)
        }
        admin.get("library/remote", .init(
            "Search the Hugging Face hub for GGUF models: each repository's files with quant and size, its categories (chat, code, embedding, vision), and with fit=true the verdict of its default quant from the file's header",
            query: [
                .init("q", .string, "search words", required: true), .init("source", .enumeration(["huggingface", "ollama"])),
                .init("fit", .boolean, "add each repository's fit verdict (reads one header per repository)"), .init("limit", .integer(minimum: 1, maximum: 50)),
            ], errors: [400, 502])
        ) { request, _ in
            let q = request.query
            guard let words = q["q"], !words.isEmpty else { throw OpenAIError.badRequest("q is required", param: "q") }
            guard (q["source"] ?? "huggingface") == "huggingface" else {
                throw OpenAIError.badRequest("Ollama registries have no search API: pull an Ollama model by its name", param: "source")
            }
            let limit = min(max(Int(q["limit"] ?? "") ?? 10, 1), 50)
            let found = try await mapped { try await downloads.sources.searchHub(words, limit: limit) }
            var results: [SearchResult] = []
            for repository in found {
                let quant = repository.files.first { $0.quant == "Q4_K_M" }?.quant ?? repository.files.first?.quant
                var result = SearchResult(repository: repository, defaultQuant: quant)
                if q["fit"] == "true" {
                    let name = repository.name + (quant.map { ":" + $0 } ?? "")
                    do {
                        let (facts, _) = try await RemoteHeader(sources: downloads.sources).facts(try ModelReference(name), insecure: false)
                        let verdict = try await library.compatibility(facts, name: name, query: [:])
                        result.fit = .init(model: name, verdict: verdict.verdict, largestContext: verdict.largestContext, estimatedTotalMiB: verdict.estimatedTotalMiB)
                    } catch {
                        result.fit = .init(model: name, error: "\(error)")
                    }
                }
                results.append(result)
            }
            return try Wire.response(["models": results])
        }
        admin.get("library/remote/compatibility", .init(
            "A fit verdict for a model not downloaded yet, from its GGUF header read with Range requests: the same answer as /admin/models/{id}/compatibility, plus what reading the header cost",
            query: [
                .init("model", .string, "an Ollama or hf.co name", required: true), .init("insecure", .boolean),
                .init("ctx", .integer(minimum: 0, maximum: 4_194_304)), .init("kv", .enumeration(MemoryEstimator.CacheType.allCases.map(\.rawValue))),
                .init("parallel", .integer(minimum: 1, maximum: 256)), .init("ubatch", .integer(minimum: 1, maximum: 65536)),
                .init("ngl", .integer(minimum: 0)), .init("fa", .enumeration(["on", "off"])),
            ], errors: [400, 404, 502])
        ) { request, _ in
            let q = request.query
            guard let name = q["model"], !name.isEmpty else { throw OpenAIError.badRequest("model is required", param: "model") }
            let (facts, cost) = try await mapped {
                try await RemoteHeader(sources: downloads.sources).facts(try ModelReference(name), insecure: q["insecure"] == "true")
            }
            let header = RemoteCompatibility.Header(bytesFetched: cost.bytesFetched, fileBytes: cost.fileBytes, requests: cost.requests)
            return try Wire.response(try await mapped { try await library.compatibility(facts, name: name, query: q, header: header) })
        }
    }
}

/// A hub search result: the repository, its default quant (null without one) and, with
/// `fit=true`, whether it fits here (or why that could not be told).
struct SearchResult: Encodable {
    struct Fit: Encodable {
        var model: String
        var verdict: String?
        var largestContext: Int?
        var estimatedTotalMiB: Int?
        var error: String?
    }
    var repository: ModelSources.HubRepository
    var defaultQuant: String?
    var fit: Fit?

    enum CodingKeys: String, CodingKey { case defaultQuant, fit }

    func encode(to encoder: any Encoder) throws {
        try repository.encode(to: encoder)
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(defaultQuant, forKey: .defaultQuant)
        try c.encodeIfPresent(fit, forKey: .fit)
    }
}
