import Foundation
import Jobs
import Store
import Testing

@testable import Lab

/// The Evals and fine-tuning APIs' request values (each refusal with the message and `param` the
/// API always gave) and response values (the JSON the dictionaries wrote, captured from them).
@Suite struct WireValueTests {
    func json(_ text: String) throws -> JobJSON { try JSONDecoder().decode(JobJSON.self, from: Data(text.utf8)) }
    func encoded(_ value: some Encodable) throws -> JobJSON { try JSONDecoder().decode(JobJSON.self, from: JSONEncoder().encode(value)) }
    func body(_ text: String) throws -> [String: JobJSON] { try #require(try json(text).objectValue) }

    let criteria = #"[{"type":"string_check","name":"s","input":"{{sample.output_text}}","reference":"{{item.a}}","operation":"eq"}]"#

    // MARK: Requests

    @Test func anEvaluationRequestIsCheckedFieldByField() throws {
        let cases: [(String, EvalError)] = [
            ("{}", .badRequest("data_source_config is required", param: "data_source_config")),
            (#"{"data_source_config":{"type":"logs"}}"#,
             .badRequest("data_source_config.type must be 'custom' (logs and stored completions are hosted-only)", param: "data_source_config.type")),
            (#"{"data_source_config":{"type":"custom"},"testing_criteria":[]}"#, .badRequest("testing_criteria must be a non-empty list", param: "testing_criteria")),
            (#"{"data_source_config":{"type":"custom"},"testing_criteria":[3]}"#, .badRequest("testing_criteria[0] must be an object", param: "testing_criteria")),
            (#"{"data_source_config":{"type":"custom"},"testing_criteria":[{"type":"string_check","input":"x","reference":"y","operation":"eq"}],"metadata":{"a":1}}"#,
             .badRequest("metadata must be an object of at most 16 string values", param: "metadata")),
        ]
        for (text, error) in cases {
            #expect(throws: error) { try EvalCreateRequest(try body(text)) }
            // The same refusal comes through JSONDecoder, for `mapped` to give it its status.
            #expect(throws: error) { try JSONDecoder().decode(EvalCreateRequest.self, from: Data(text.utf8)) }
        }
        let grader = #"{"data_source_config":{"type":"custom"},"testing_criteria":[{"type":"nope"}]}"#
        #expect(throws: EvalError.self) { try EvalCreateRequest(try body(grader)) }

        let request = try EvalCreateRequest(try body(#"{"name":"n","data_source_config":{"type":"custom","include_sample_schema":true},"testing_criteria":\#(criteria)}"#))
        #expect(request.name == "n" && request.includeSampleSchema && request.testingCriteria.map(\.name) == ["s"])
        #expect(request.itemSchema == .object(["type": .string("object")]))
        #expect(try EvalUpdateRequest(try body(#"{"metadata":null}"#)).metadata == [:])
        #expect(try EvalUpdateRequest(try body("{}")).name == nil)
        #expect(throws: EvalError.badRequest("name must be a string", param: "name")) { try EvalUpdateRequest(try body(#"{"name":3}"#)) }
    }

    @Test func aRunRequestIsCheckedFieldByField() throws {
        let items = #""source":{"type":"file_content","content":[{"item":{"a":"x"}}]}"#
        let template = #""input_messages":{"type":"template","template":[{"role":"user","content":"{{item.a}}"}]}"#
        let cases: [(String, EvalError)] = [
            ("{}", .badRequest("data_source with a type is required", param: "data_source")),
            (#"{"data_source":{"type":"logs"}}"#, .badRequest("data_source.type must be 'completions' or 'jsonl'", param: "data_source.type")),
            (#"{"data_source":{"type":"jsonl"}}"#, .badRequest("data_source.source is required", param: "data_source.source")),
            (#"{"data_source":{"type":"jsonl","source":{"type":"file_content","content":[{"x":1}]}}}"#,
             .badRequest("item 0 must be an object with an 'item' object", param: "data_source.source")),
            (#"{"data_source":{"type":"jsonl","source":{"type":"file_content","content":[]}}}"#, .badRequest("the source has no items", param: "data_source.source")),
            (#"{"data_source":{"type":"jsonl",\#(items)},"concurrency":0}"#, .badRequest("concurrency must be an integer from 1 to 64", param: "concurrency")),
            (#"{"data_source":{"type":"jsonl",\#(items)},"repetitions":1.5}"#, .badRequest("repetitions must be an integer from 1 to 100", param: "repetitions")),
            (#"{"data_source":{"type":"completions",\#(items)}}"#, .badRequest("data_source.model is required", param: "data_source.model")),
            (#"{"data_source":{"type":"completions","model":"m",\#(items)}}"#, .badRequest("data_source.input_messages is required", param: "data_source.input_messages")),
            (#"{"data_source":{"type":"completions","model":"m",\#(items),"input_messages":{"type":"sequence","turns":[]}}}"#,
             .badRequest("data_source.input_messages.turns must be a non-empty list of templates", param: "data_source.input_messages")),
            (#"{"data_source":{"type":"completions","model":"m",\#(items),"input_messages":{"type":"template","template":[{"role":"user","content":3}]}}}"#,
             .badRequest("input_messages.template[0].content must be text", param: "data_source.input_messages")),
        ]
        for (text, error) in cases { #expect(throws: error) { try EvalRunRequest(try body(text)) } }

        let run = try EvalRunRequest(try body(
            #"{"name":"r","concurrency":null,"data_source":{"type":"completions","model":"m",\#(items),\#(template),"sampling_params":{"temperature":0.5,"max_completion_tokens":16}}}"#))
        #expect(run.model == "m" && run.concurrency == 4 && run.repetitions == 1 && run.name == "r")
        #expect(run.template == [EvalTemplateMessage(role: "user", content: "{{item.a}}")])
        #expect(run.sampling == EvalSampling(temperature: 0.5, topP: nil, maxCompletionTokens: 16, seed: nil))
        #expect(run.items == .inline([.object(["item": .object(["a": .string("x")])])]))
        #expect(run.dataSource["model"] == .string("m"))
        let file = try EvalRunRequest(try body(#"{"data_source":{"type":"jsonl","source":{"type":"file_id","id":"file-1"}}}"#))
        #expect(file.items == .file("file-1") && file.model == nil)
    }

    @Test func aFineTuningRequestIsCheckedFieldByField() throws {
        let base = #""model":"chat","training_file":"file-1""#
        let cases: [(String, FineTuningError)] = [
            ("{}", .badRequest("model is required", param: "model")),
            (#"{"model":"chat"}"#, .badRequest("training_file is required", param: "training_file")),
            (#"{\#(base),"validation_file":""}"#, .badRequest("validation_file must be a file id", param: "validation_file")),
            (#"{\#(base),"method":null}"#, .badRequest("method must be an object with a type", param: "method")),
            (#"{\#(base),"method":{"type":"dpo"}}"#,
             .badRequest("method.type 'dpo' is not supported: llama-finetune does supervised fine-tuning only", param: "method.type")),
            (#"{\#(base),"integrations":[{"type":"wandb"}]}"#,
             .badRequest("integrations are not supported (metrics are in the job's events and result file)", param: "integrations")),
            (#"{\#(base),"preset":"turbo"}"#, .badRequest("preset must be one of balanced, efficient, high-quality", param: "preset")),
            (#"{\#(base),"suffix":"bad suffix!"}"#, .badRequest("suffix must be 1 to 64 letters, digits, '-', '_' or '.'", param: "suffix")),
            (#"{\#(base),"seed":-1}"#, .badRequest("seed must be an integer from 0 to 2147483647", param: "seed")),
            (#"{\#(base),"metadata":{"k":1}}"#,
             .badRequest("metadata must be at most 16 string values (keys up to 64 characters, values up to 512)", param: "metadata")),
        ]
        for (text, error) in cases { #expect(throws: error) { try FineTuningCreateRequest(try body(text)) } }

        let request = try FineTuningCreateRequest(try body(
            #"{\#(base),"suffix":"My-Run","hyperparameters":{"n_epochs":2,"batch_size":4},"method":{"type":"supervised","supervised":{"hyperparameters":{"n_epochs":3}}}}"#))
        #expect(request.suffix == "my-run" && request.seed == nil && request.preset.name == "balanced" && !request.presetNamed)
        #expect(request.hyperparameters == ["n_epochs": .number(3), "batch_size": .number(4)])
        let h = try FineTuning.hyperparameters(request.hyperparameters, preset: request.preset, named: false, modelContext: 4096)
        #expect(h.nEpochs == 3 && h.batchSize == 4 && h.contextSize == 512)
        #expect(throws: FineTuningError.badRequest("hyperparameters.n_epochs must be 'auto' or an integer from 1 to 50", param: "hyperparameters.n_epochs")) {
            try FineTuning.hyperparameters(["n_epochs": .number(0)], preset: request.preset, named: false, modelContext: nil)
        }
        #expect(try FineTuning.hyperparameters(["n_epochs": .string("auto")], preset: request.preset, named: false, modelContext: nil).nEpochs == 3)
    }

    // MARK: Responses

    @Test func anEvaluationEncodesAsTheSDKsEvalObject() throws {
        let label = try json(#"{"type":"label_model","name":"j","model":"m","input":[{"role":"user","content":{"type":"input_text","text":"x"}}],"labels":["a","b"],"passing_labels":["a"]}"#)
        let definition = EvalDefinition(
            id: "eval_1", name: "n", createdAt: Date(timeIntervalSince1970: 1_700_000_000), team: nil, metadata: ["k": "v"],
            itemSchema: try json(#"{"type":"object","properties":{"a":{"type":"string"}}}"#), includeSampleSchema: true,
            testingCriteria: [try Grader(try json(criteria).arrayValue![0], index: 0), try Grader(label, index: 1)])
        // As `Evaluations.object` wrote it.
        let before = try json(#"""
            {"id":"eval_1","object":"eval","name":"n","created_at":1700000000,"metadata":{"k":"v"},
             "data_source_config":{"type":"custom","schema":{"type":"object","required":["item","sample"],"properties":{
               "item":{"type":"object","properties":{"a":{"type":"string"}}},
               "sample":{"type":"object","properties":{"output_text":{"type":"string"}}}}}},
             "testing_criteria":[
               {"type":"string_check","name":"s","input":"{{sample.output_text}}","reference":"{{item.a}}","operation":"eq"},
               {"type":"label_model","name":"j","input":[{"role":"user","content":"x"}],"model":"m","labels":["a","b"],"passing_labels":["a"]}]}
            """#)
        #expect(try encoded(EvalObject(definition)) == before)
    }

    @Test func aRunEncodesAsTheSDKsRunObject() throws {
        let grader = try Grader(try json(criteria).arrayValue![0], index: 0)
        let spec = EvalRunSpec(
            evalID: "eval_1", name: "r", team: nil, keyPrefix: nil, model: "m", items: [], itemsDocument: "items-1", itemCount: 2, template: [],
            sampling: EvalSampling(), criteria: [grader], concurrency: 4, dataSource: .object(["type": .string("completions")]), metadata: [:])
        var job = JobRecord(id: "evalrun_1", kind: EvalRunJob.name, model: "m", spec: try JobJSON(encoding: spec), at: Date(timeIntervalSince1970: 1_700_000_000))
        // As `Evaluations.runObject` wrote a queued run.
        let queued = try json(#"""
            {"id":"evalrun_1","object":"eval.run","eval_id":"eval_1","name":"r","model":"m","status":"queued","created_at":1700000000,
             "metadata":{},"data_source":{"type":"completions"},"report_url":"","error":{"code":"","message":""},
             "result_counts":{"total":2,"passed":0,"failed":0,"errored":0},
             "per_testing_criteria_results":[{"testing_criteria":"s","passed":0,"failed":0}],"per_model_usage":[],
             "corral":{"concurrency":4,"repetitions":1}}
            """#)
        #expect(try encoded(EvalRunObject(job, spec)) == queued)

        var state = EvalRunState(criteria: [.init(name: "s", passed: 1, failed: 1)])
        (state.next, state.passed, state.failed) = (2, 1, 1)
        state.usage = ["m": .init(invocations: 2, promptTokens: 10, completionTokens: 5, cachedTokens: 3)]
        job.result = try JobJSON(encoding: state)
        job.state = .succeeded
        let done = try encoded(EvalRunObject(job, spec))
        let interval = Wilson.interval(successes: 1, trials: 2)!
        #expect(done["status"] == .string("completed"))
        #expect(done["per_model_usage"] == (try json(
            #"[{"model_name":"m","invocation_count":2,"prompt_tokens":10,"completion_tokens":5,"total_tokens":15,"cached_tokens":3}]"#)))
        #expect(done["corral"] == .object([
            "concurrency": .number(4), "repetitions": .number(1), "pass_rate": .number(0.5),
            "pass_rate_interval": .array([.number(interval.low), .number(interval.high)]),
        ]))
    }

    @Test func aFineTuningJobEncodesEveryOpenAIFieldWithNulls() throws {
        let hyper = FineTuneHyperparameters(
            preset: nil, nEpochs: 3, batchSize: 1, learningRateMultiplier: 1, learningRate: 1e-5, learningRateMin: 2.5e-6, contextSize: 512,
            validationSplit: 0.05, optimizer: "adamw", weightDecay: 0)
        let spec = FineTuneSpec(
            base: "base", basePath: "/m.gguf", suffix: nil, team: nil, keyPrefix: nil, trainingFile: "file-1", validationFile: nil, hyperparameters: hyper,
            seed: 42, metadata: nil, method: nil, estimatedDeviceMiB: [:], toolArguments: [], directory: "/tmp", chatTemplate: nil, baseContextLength: nil)
        var job = JobRecord(id: "ftjob-abc", kind: FineTuneJob.name, model: "base", spec: try JobJSON(encoding: spec), at: Date(timeIntervalSince1970: 1_700_000_000))
        // As `FineTuning.object` wrote a job that is validating its files.
        let before = try json(#"""
            {"id":"ftjob-abc","object":"fine_tuning.job","created_at":1700000000,"model":"base","organization_id":"corral",
             "training_file":"file-1","validation_file":null,"status":"validating_files",
             "hyperparameters":{"n_epochs":3,"batch_size":1,"learning_rate_multiplier":1},"seed":42,"fine_tuned_model":null,
             "finished_at":null,"trained_tokens":null,"result_files":[],"integrations":[],"metadata":null,
             "method":{"type":"supervised","supervised":{"hyperparameters":{"n_epochs":3,"batch_size":1,"learning_rate_multiplier":1}}},
             "estimated_finish":null,"error":null,"suffix":null,"epochs_done":0,
             "settings":{"preset":null,"context_size":512,"learning_rate":1e-05,"learning_rate_min":2.5e-06,"validation_split":0.05,
                         "optimizer":"adamw","weight_decay":0},
             "quality":{"validation_source":null}}
            """#)
        #expect(try encoded(FineTuningJobObject(job, spec)) == before)

        job.state = .failed
        job.error = JobError("invalid_file", "file-1 line 3: not JSON")
        let failed = try encoded(FineTuningJobObject(job, spec))
        #expect(failed["status"] == .string("failed"))
        #expect(failed["error"] == (try json(#"{"code":"invalid_file","message":"file-1 line 3: not JSON","param":"training_file"}"#)))
        #expect(failed["trained_tokens"] == .null)
    }

    @Test func fineTuningEventsAreOpenAIsEvents() throws {
        let metrics = StoredJobEvent(sequence: 7, job: "ftjob-abc", at: Date(timeIntervalSince1970: 1_700_000_000), type: "metrics",
                                     data: Data(#"{"step":4,"total_steps":8,"train_loss":1.23456,"valid_loss":2}"#.utf8))
        let event = try #require(FineTuning.event("ftjob-abc", metrics, try json(String(decoding: metrics.data, as: UTF8.self))))
        #expect(try encoded(event) == (try json(#"""
            {"id":"ftevent-7","object":"fine_tuning.job.event","created_at":1700000000,"level":"info",
             "message":"Step 4/8: training loss=1.2346, validation loss=2.0000","type":"metrics",
             "data":{"step":4,"total_steps":8,"train_loss":1.23456,"valid_loss":2}}
            """#)))
        let progress = StoredJobEvent(sequence: 8, job: "ftjob-abc", at: Date(), type: "progress", data: Data("{}".utf8))
        #expect(FineTuning.event("ftjob-abc", progress, .object([:])) == nil)
    }
}
