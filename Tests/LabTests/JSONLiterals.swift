import Foundation
import Jobs
import Lab
import Serving

/// Tests write criteria, items and contexts as dictionary literals; Lab reads them as `JobJSON`.
func json(_ object: [String: Any]) -> JobJSON {
    // Test input: a literal that is not JSON is a mistake in the test itself.
    try! JSONDecoder().decode(JobJSON.self, from: try! JSONSerialization.data(withJSONObject: object))
}

extension Grader {
    init(_ object: [String: Any], index: Int) throws(GraderError) { try self.init(json(object), index: index) }
    func grade(_ context: [String: Any]) throws(GraderError) -> (score: Double, passed: Bool) { try grade(json(context)) }
    func judgeRequest(_ context: [String: Any]) throws(GraderError) -> ModelRequest {
        try judgeRequest(json(context), origin: ModelCallOrigin(route: "/v1/evals"))
    }
}

extension EvalTemplate {
    static func render(_ template: String, _ context: [String: Any]) throws(GraderError) -> String { try render(template, json(context)) }
}
