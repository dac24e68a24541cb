import Foundation
import Jobs
import Runtime
import Testing

@testable import Lab

/// The bodies of `/admin/benchmarks`, `/admin/quant-ladder` and `/admin/tuning`: each refusal with
/// the message and `param` the admin API always gave, through `JSONDecoder` as `Wire.decode` reads
/// them.
@Suite struct LabRequestTests {
    func decode<T: Decodable>(_ type: T.Type, _ text: String) throws -> T { try JSONDecoder().decode(T.self, from: Data(text.utf8)) }

    @Test func aBenchmarkRequestIsCheckedFieldByField() throws {
        let cases: [(String, LabError)] = [
            ("{}", .badRequest("model is required", param: "model")),
            (#"{"model":""}"#, .badRequest("model is required", param: "model")),
            (#"{"model":"m","kind":"other"}"#, .badRequest("kind must be speed or perplexity", param: "kind")),
            (#"{"model":"m","requests":0}"#, .badRequest("requests must be an integer from 1 to 10000", param: "requests")),
            (#"{"model":"m","concurrency":true}"#, .badRequest("concurrency must be an integer from 1 to 256", param: "concurrency")),
            (#"{"model":"m","maxTokens":1.5}"#, .badRequest("maxTokens must be an integer from 1 to 32768", param: "maxTokens")),
            (#"{"model":"m","kind":"perplexity"}"#, .badRequest("give the text as `text` or as an uploaded file's `file_id` (one of them)", param: "text")),
            (#"{"model":"m","kind":"perplexity","text":"t","file_id":"f"}"#,
             .badRequest("give the text as `text` or as an uploaded file's `file_id` (one of them)", param: "text")),
            (#"{"model":"m","kind":"perplexity","text":"t","contextSize":8}"#, .badRequest("contextSize must be an integer from 16 to 131072", param: "contextSize")),
            (#"{"model":"m","kind":"perplexity","text":"t","chunks":0}"#, .badRequest("chunks must be an integer from 1 to 1000000", param: "chunks")),
        ]
        for (text, error) in cases {
            #expect(throws: error) { try decode(BenchmarkRequest.self, text) }
        }
        let speed = try decode(BenchmarkRequest.self, #"{"model":"m","requests":5,"maxTokens":null}"#)
        #expect(speed.model == "m" && speed.kind == .speed(BenchmarkParameters(requests: 5, concurrency: 1, promptWords: 32, maxTokens: 64)))
        // A kind of another type is the default, as it always was.
        #expect(try decode(BenchmarkRequest.self, #"{"model":"m","kind":3}"#).kind == .speed(BenchmarkParameters(requests: 20, concurrency: 1, promptWords: 32, maxTokens: 64)))
        #expect(try decode(BenchmarkRequest.self, #"{"model":"m","kind":"perplexity","file_id":"file-1","chunks":null}"#).kind
            == .perplexity(PerplexityRequest(text: .file("file-1"), contextSize: 512, chunks: 1)))
        #expect(throws: DecodingError.self) { try decode(BenchmarkRequest.self, "[1]") }
    }

    @Test func aQuantLadderRequestIsCheckedFieldByField() throws {
        let quants = "quants must be a list of \(QuantType.all.map(\.name).joined(separator: ", "))"
        let cases: [(String, LabError)] = [
            (#"{"text":"t"}"#, .badRequest("model is required", param: "model")),
            (#"{"model":"m","text":"t","quants":["Q4_K_M","nope"]}"#, .badRequest(quants, param: "quants")),
            (#"{"model":"m","text":"t","quants":null}"#, .badRequest(quants, param: "quants")),
            (#"{"model":"m","text":"t","maxKLD":true}"#, .badRequest("maxKLD must be a number", param: "maxKLD")),
            (#"{"model":"m"}"#, .badRequest("give the text as `text` or as an uploaded file's `file_id` (one of them)", param: "text")),
        ]
        for (text, error) in cases {
            #expect(throws: error) { try decode(QuantLadderRequest.self, text) }
        }
        let request = try decode(QuantLadderRequest.self, #"{"model":"m","text":"t","quants":["Q8_0"],"maxKLD":0.1,"allowRequantize":true}"#)
        #expect(request.quants.map(\.name) == ["Q8_0"] && request.maxKLD == 0.1 && request.allowRequantize)
        #expect(request.measure == PerplexityRequest(text: .inline("t")))
        #expect(try decode(QuantLadderRequest.self, #"{"model":"m","text":"t"}"#).quants == QuantLadderSpec.defaultQuants)
    }

    @Test func aTuningRequestIsCheckedFieldByField() throws {
        let cases: [(String, LabError)] = [
            ("{}", .badRequest("model is required", param: "model")),
            (#"{"model":"m","objective":"nope"}"#, .badRequest("objective must be one of \(TuningJob.objectives.joined(separator: ", "))", param: "objective")),
            (#"{"model":"m","strategy":"nope"}"#, .badRequest("strategy must be one of \(TuningJob.strategies.joined(separator: ", "))", param: "strategy")),
            (#"{"model":"m","space":{"ubatch":[0]}}"#, .badRequest("space.ubatch values must be from 1 to 65536", param: "space")),
            (#"{"model":"m","space":{"threads":[1,2,3,4,5,6,7,8],"ubatch":[1,2,3,4,5,6,7,8],"parallel":[1,2,3,4,5,6,7,8],"gpuLayers":[1,2,3,4,5,6,7,8,9]}}"#,
             .badRequest("the space has 4608 combinations; at most 4096 (use strategy random with fewer values)", param: "space")),
            (#"{"model":"m","constraints":[]}"#, .badRequest("constraints must be an object", param: "constraints")),
            (#"{"model":"m","constraints":{"ttftP95Ms":-1}}"#, .badRequest("constraints.ttftP95Ms must be a non-negative number", param: "constraints")),
            (#"{"model":"m","constraints":{"speed":1}}"#, .badRequest("constraints are ttftP95Ms, memoryMiB and generationTPS; not speed", param: "constraints")),
            (#"{"model":"m","weights":{}}"#, .badRequest("weights must be an object of measure → weight", param: "weights")),
            (#"{"model":"m","weights":{"speed":1}}"#,
             .badRequest("weights are \(TuningJob.weightedMeasures.joined(separator: ", ")); not speed", param: "weights")),
            (#"{"model":"m","weights":{"ttftMs":"x"}}"#, .badRequest("weights.ttftMs must be a non-negative number", param: "weights")),
            (#"{"model":"m","objective":"weighted"}"#,
             .badRequest("the weighted objective needs weights (\(TuningJob.weightedMeasures.joined(separator: ", ")))", param: "weights")),
            (#"{"model":"m","maxSeconds":0}"#, .badRequest("maxSeconds must be a positive number", param: "maxSeconds")),
            (#"{"model":"m","maxTrials":0}"#, .badRequest("maxTrials must be an integer from 1 to 512", param: "maxTrials")),
            (#"{"model":"m","seed":-1}"#, .badRequest("seed must be an integer from 0 to \(Int.max)", param: "seed")),
            (#"{"model":"m","quality":"x"}"#, .badRequest("quality must be an object", param: "quality")),
        ]
        for (text, error) in cases {
            #expect(throws: error) { try decode(TuningRequest.self, text) }
        }
        let spaceProblem = try #require(throws: LabError.self) { try decode(TuningRequest.self, #"{"model":"m","space":{"ubatch":[1.5]}}"#) }
        guard case .badRequest(_, "space") = spaceProblem else { Issue.record("\(spaceProblem)"); return }

        let request = try decode(TuningRequest.self, #"""
            {"model":"m","space":{"ubatch":[256,512],"num_ctx":[2048]},"constraints":{"memoryMiB":100},"weights":{"quality":1},
             "maxCandidates":5,"quality":{"evalRun":"run-1","maxItems":"x"},"patience":null}
            """#)
        #expect(request.model == "m" && request.session.objective == .maxGenerationTPS && request.session.strategy == .halving)
        #expect(request.session.space.ubatch == [256, 512] && request.session.space.contextSize == [2048])
        #expect(request.session.constraints == TuningSession.Constraints(memoryMiB: 100) && request.session.weights == ["quality": 1])
        #expect(request.session.maxCandidates == 5 && request.session.seed == 42 && request.session.patience == 0)
        // Quality members of another type read as absent, as they always did.
        #expect(request.quality == TuningQualityRequest(evalRun: "run-1"))
    }

    @Test func anApplyRequestReadsAProfileNameLeniently() throws {
        #expect(try decode(TuningApplyRequest.self, #"{"profile":"fast"}"#).profile == "fast")
        #expect(try decode(TuningApplyRequest.self, #"{"profile":3}"#).profile == nil)
    }
}
