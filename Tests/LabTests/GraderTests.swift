import Foundation
import Jobs
import Lab
import Serving
import Testing

/// The evaluation graders on fixed strings, and the templates they read.
@Suite struct GraderTests {
    let context: [String: Any] = [
        "item": ["question": "Capital of France?", "answer": "Paris", "n": 3, "tags": ["geo", "eu"]],
        "sample": ["output_text": "The capital is Paris."],
    ]

    func grader(_ object: [String: Any]) throws -> Grader { try Grader(object, index: 0) }

    @Test func templatesRenderItemAndSampleAndNameWhatIsMissing() throws {
        #expect(try EvalTemplate.render("Q: {{item.question}} ({{ item.n }}, {{item.tags.1}})", context) == "Q: Capital of France? (3, eu)")
        #expect(try EvalTemplate.render("{{item.tags}}", context) == #"["geo","eu"]"#)
        #expect(EvalTemplate.references("{{item.a}} and {{sample.output_text}}") == ["item.a", "sample.output_text"])
        #expect(throws: GraderError("the template names 'item.city', which the item does not have")) {
            try EvalTemplate.render("{{item.city}}", context)
        }
    }

    @Test func stringCheckOperations() throws {
        let cases: [(String, String, Bool)] = [
            ("eq", "{{item.answer}}", false), ("ne", "{{item.answer}}", true), ("like", "{{item.answer}}", true),
            ("like", "paris", false), ("ilike", "paris", true), ("eq", "The capital is Paris.", true),
        ]
        for (operation, reference, passes) in cases {
            let g = try grader(["type": "string_check", "name": "s", "input": "{{sample.output_text}}", "reference": reference, "operation": operation])
            let grade = try g.grade(context)
            #expect(grade.passed == passes, "\(operation) \(reference)")
            #expect(grade.score == (passes ? 1 : 0))
        }
    }

    @Test func textSimilarityMetrics() {
        #expect(abs(TextSimilarity.fuzzyRatio("kitten", "sitting") - 8.0 / 13) < 1e-9)  // rapidfuzz ratio 61.54
        #expect(TextSimilarity.fuzzyRatio("same", "same") == 1)
        #expect(abs(TextSimilarity.rouge1(candidate: "the cat sat", reference: "the cat sat on the mat") - 2.0 / 3) < 1e-9)
        #expect(abs(TextSimilarity.rougeL(candidate: "the cat on mat", reference: "the cat sat on the mat") - 0.8) < 1e-9)
        #expect(abs(TextSimilarity.bleu(candidate: "the cat sat on the mat", reference: "the cat sat on the mat") - 1) < 1e-9)
        #expect(TextSimilarity.bleu(candidate: "dog", reference: "the cat sat on the mat") == 0)
        let partial = TextSimilarity.bleu(candidate: "the cat sat on a mat", reference: "the cat sat on the mat")
        #expect(partial > 0.3 && partial < 1)
        #expect(TextSimilarity.rougeL(candidate: "", reference: "x") == 0)
    }

    @Test func textSimilarityGraderUsesItsThreshold() throws {
        let g = try grader(["type": "text_similarity", "name": "t", "input": "{{sample.output_text}}", "reference": "the capital is paris",
                            "evaluation_metric": "rouge_1", "pass_threshold": 0.9])
        let grade = try g.grade(context)
        #expect(grade.score == 1 && grade.passed)  // words, lowercased, punctuation dropped
        let strict = try grader(["type": "text_similarity", "name": "t", "input": "{{sample.output_text}}", "reference": "Paris",
                                 "evaluation_metric": "fuzzy_match", "pass_threshold": 0.5])
        #expect(try strict.grade(context).passed == false)
    }

    @Test func regexAndJSONSchema() throws {
        let regex = try grader(["type": "regex", "name": "r", "input": "{{sample.output_text}}", "pattern": "\\bParis\\b"])
        #expect(try regex.grade(context).passed)
        let schema: [String: Any] = ["type": "object", "required": ["answer"], "properties": ["answer": ["type": "string", "enum": ["Paris", "Lyon"]]]]
        let json = try grader(["type": "json_schema", "name": "j", "input": "{{sample.output_text}}", "schema": schema])
        #expect(try json.grade(["sample": ["output_text": #"{"answer": "Paris"}"#]]).passed)
        #expect(try json.grade(["sample": ["output_text": #"{"answer": "Rome"}"#]]).passed == false)
        #expect(try json.grade(["sample": ["output_text": "not json"]]).passed == false)
    }

    @Test func badCriteriaAreRefusedWithTheirPlace() {
        #expect(throws: GraderError("testing_criteria[0].type 'python' is not supported; use string_check, text_similarity, label_model, score_model, regex or json_schema")) {
            try grader(["type": "python", "input": "x"])
        }
        #expect(throws: GraderError("testing_criteria[0].operation must be one of eq, ne, like, ilike")) {
            try grader(["type": "string_check", "input": "x", "reference": "y", "operation": "similar"])
        }
        #expect(throws: GraderError("testing_criteria[0].pass_threshold must be a number from 0 to 1")) {
            try grader(["type": "text_similarity", "input": "x", "reference": "y", "evaluation_metric": "bleu"])
        }
        #expect(throws: GraderError("testing_criteria[0].pattern must be a valid regular expression")) {
            try grader(["type": "regex", "input": "x", "pattern": "("])
        }
    }
}

/// The model-judged criteria: their checks, the constrained request, and reading the answer.
@Suite struct JudgedGraderTests {
    let label: [String: Any] = [
        "type": "label_model", "name": "tone", "model": "judge", "labels": ["good", "bad"], "passing_labels": ["good"],
        "input": [["role": "user", "content": "Rate '{{sample.output_text}}' for {{item.question}}"]],
    ]

    @Test func aLabelJudgeIsAskedForOneOfItsLabels() throws {
        let g = try Grader(label, index: 0)
        #expect(g.type.isJudged && g.model == "judge")
        let request = try g.judgeRequest(["item": ["question": "q1"], "sample": ["output_text": "hi"]])
        guard case .messages(let messages) = request.input else { Issue.record("a judge is sent messages"); return }
        #expect(messages.first?.content == "Rate 'hi' for q1")
        #expect(request.model == "judge" && request.sampling == ["temperature": 0] && request.maxTokens == 64 && !request.stream)
        #expect(request.responseFormat?["json_schema"]?["schema"]?["properties"]?["label"]?["enum"] == .array([.string("good"), .string("bad")]))
        #expect(g.judged(#"{"label": "good"}"#) == (1, true))
        #expect(g.judged(#"{"label": "bad"}"#) == (0, false))
        #expect(g.judged("nonsense") == (0, false))
        #expect(g.templates.contains("Rate '{{sample.output_text}}' for {{item.question}}"))
    }

    @Test func aScoreJudgeIsClampedToItsRangeAndThreshold() throws {
        var score = label
        score["type"] = "score_model"
        score["range"] = [0, 10]
        score["pass_threshold"] = 7
        let g = try Grader(score, index: 1)
        #expect(g.judged(#"{"score": 8}"#) == (8, true))
        #expect(g.judged(#"{"score": 42}"#) == (10, true))
        #expect(g.judged(#"{"score": 3.5}"#) == (3.5, false))
    }

    @Test func judgedCriteriaAreChecked() {
        var noModel = label
        noModel["model"] = nil
        #expect(throws: GraderError("testing_criteria[0].model is required for label_model")) { try Grader(noModel, index: 0) }
        var badPassing = label
        badPassing["passing_labels"] = ["great"]
        #expect(throws: GraderError("testing_criteria[0].passing_labels must be a non-empty subset of labels")) { try Grader(badPassing, index: 0) }
        var textInput = label
        textInput["input"] = "not a list"
        #expect(throws: GraderError("testing_criteria[0].input must be a non-empty list of messages")) { try Grader(textInput, index: 0) }
    }
}

/// McNemar's exact test on the discordant pairs of two runs.
@Suite struct McNemarTests {
    @Test func pValues() {
        #expect(McNemar.pValue(onlyA: 0, onlyB: 0) == 1)
        #expect(abs(McNemar.pValue(onlyA: 5, onlyB: 0) - 0.0625) < 1e-12)  // 2 × 0.5⁵
        #expect(abs(McNemar.pValue(onlyA: 0, onlyB: 10) - 2.0 / 1024) < 1e-12)
        #expect(McNemar.pValue(onlyA: 3, onlyB: 3) == 1)
        #expect(abs(McNemar.pValue(onlyA: 1, onlyB: 4) - 0.375) < 1e-12)  // 2 × (1 + 5) / 32
    }

    @Test func wilsonIntervals() throws {
        #expect(Wilson.interval(successes: 0, trials: 0) == nil)
        let half = try #require(Wilson.interval(successes: 5, trials: 10))
        #expect(abs(half.low - 0.2366) < 1e-4 && abs(half.high - 0.7634) < 1e-4)
        let all = try #require(Wilson.interval(successes: 10, trials: 10))
        #expect(abs(all.low - 0.7225) < 1e-4 && abs(all.high - 1) < 1e-9)
        let none = try #require(Wilson.interval(successes: 0, trials: 10))
        #expect(none.low == 0 && abs(none.high - 0.2775) < 1e-4)
    }
}

/// The sample evaluation runs and tuning's quality probes grade.
@Suite struct EvalSampleTests {
    @Test func theLastAnswerIsTheTextAndParsedWhenItIsJSON() throws {
        let one = EvalSample(answers: [#"{"city": "Paris", "n": 2}"#])
        #expect(one.outputText == #"{"city": "Paris", "n": 2}"# && one.turns == nil)
        #expect(one.outputJSON == .object(["city": .string("Paris"), "n": .number(2)]))
        #expect(EvalSample(answers: ["42"]).outputJSON == .number(42))
        #expect(EvalSample(answers: [#""x""#]).outputJSON == .string("x"))
        #expect(EvalSample(answers: ["The capital is Paris."]).outputJSON == nil)
        let turns = EvalSample(answers: ["first", "second"])
        #expect(turns.outputText == "second" && turns.turns == ["first", "second"])
        // The graders read it as they read an evaluation run's sample.
        let grader = try Grader(["type": "string_check", "name": "s", "input": "{{sample.output_json.city}}", "reference": "Paris", "operation": "eq"], index: 0)
        #expect(try grader.grade(.object(["item": .object([:]), "sample": one.json])).passed)
    }
}
