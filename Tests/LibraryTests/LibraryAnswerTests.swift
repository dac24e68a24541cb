import Foundation
import GGUF
import Jobs
import Runtime
import Testing

@testable import Library

/// The library's answers encode as the dictionaries they replaced did (captured from them): null
/// where a value is unknown, a key left out where it was left out.
@Suite struct LibraryAnswerTests {
    func encoded(_ value: some Encodable) throws -> NSDictionary {
        try #require(try JSONSerialization.jsonObject(with: JSONEncoder().encode(value)) as? NSDictionary)
    }
    func literal(_ text: String) throws -> NSDictionary {
        try #require(try JSONSerialization.jsonObject(with: Data(text.utf8)) as? NSDictionary)
    }

    @Test func aRemoteModelsEntryHasNoFactsAndNullsWhereNothingIsKnown() throws {
        let entry = LibraryEntry(
            id: "remote", aliases: ["r"], source: "upstream", pinned: false, sizeBytes: 0, remote: true, parent: nil, state: "unloaded", lastUsed: nil,
            facts: nil, capabilities: ["completion"], running: nil, usage: .init(requests: 2, promptTokens: 3, completionTokens: 4), benchmarks: [],
            perplexity: [], drafts: .empty)
        #expect(try encoded(entry) == (try literal(#"""
            {"id":"remote","aliases":["r"],"source":"upstream","pinned":false,"sizeBytes":0,"remote":true,"parent":null,"state":"unloaded",
             "lastUsed":null,"capabilities":["completion"],"usage":{"requests":2,"promptTokens":3,"completionTokens":4},"benchmarks":[],
             "perplexity":[],"draft":null,"draftCandidates":[],"canDraftFor":[]}
            """#)))
    }

    @Test func aLoadedModelsEntryShowsItsFactsFitAndInstance() throws {
        let fit = LibraryEntry.Fit(verdict: "fits_gpu", context: 4096, gpuLayers: 33, estimatedMiB: 900, largestContext: 32768)
        let facts = LibraryEntry.Facts(
            architecture: "llama", name: nil, parameters: 1_000_000, parameterSize: "1.0M", quantization: "Q4_K_M", bitsPerWeight: 4.5, contextLength: 8192,
            layers: 32, embeddingLength: nil, heads: 8, kvHeads: nil, vocabularySize: 32000, fit: fit, tensorBytes: 10, chatTemplate: nil, detailed: true)
        let running = LibraryEntry.Running(
            pid: 12, arguments: ["-c", "4096"], projectedMiB: nil, allocatedMiB: ["Host": 1.5], allocationSource: nil, planSource: "fit", contextSize: 4096)
        let entry = LibraryEntry(
            id: "m", aliases: [], source: "routes.json", pinned: true, sizeBytes: 123, remote: false, parent: "base", state: "loaded",
            lastUsed: "2026-01-01T00:00:00.000Z", facts: facts, capabilities: ["completion", "tools"], running: running,
            usage: .init(requests: 0, promptTokens: 0, completionTokens: 0), benchmarks: [.object(["id": .string("bench-1")])], perplexity: [])
        #expect(try encoded(entry) == (try literal(#"""
            {"id":"m","aliases":[],"source":"routes.json","pinned":true,"sizeBytes":123,"remote":false,"parent":"base","state":"loaded",
             "lastUsed":"2026-01-01T00:00:00.000Z","architecture":"llama","name":null,"parameters":1000000,"parameterSize":"1.0M",
             "quantization":"Q4_K_M","bitsPerWeight":4.5,"contextLength":8192,"layers":32,"embeddingLength":null,"heads":8,"kvHeads":null,
             "vocabularySize":32000,"capabilities":["completion","tools"],
             "fit":{"verdict":"fits_gpu","context":4096,"gpuLayers":33,"estimatedMiB":900,"largestContext":32768},
             "tensorBytes":10,"chatTemplate":null,
             "running":{"pid":12,"arguments":["-c","4096"],"projectedMiB":null,"allocatedMiB":{"Host":1.5},"allocationSource":null,
                        "planSource":"fit","contextSize":4096},
             "usage":{"requests":0,"promptTokens":0,"completionTokens":0},"benchmarks":[{"id":"bench-1"}],"perplexity":[]}
            """#)))
        #expect(entry.comparedField("embeddingLength") == .null && entry.comparedField("heads") == .number(8))
    }

    @Test func aTableRowNamesEachDevicesMemoryBesideItsSettings() throws {
        let row = Compatibility.TableRow(context: 2048, gpuLayers: 0, fits: true, deviceMiB: ["Host": 700])
        #expect(try encoded(row) == (try literal(#"{"context":2048,"gpuLayers":0,"fits":true,"HostMiB":700}"#)))
        #expect(try encoded(ExactProjection(error: "llama-fit-params not found")) == (try literal(#"{"error":"llama-fit-params not found"}"#)))
    }
}
