import Foundation
import Hummingbird
import Jobs
import Lab
import Store

/// `/admin/fine-tuning`: what the dashboard's Fine-tuning page draws besides the OpenAI objects:
/// a job's training curve and its quality before and after.
struct FineTuningAdminRoutes: Sendable {
    let fineTuning: FineTuning

    func register(on admin: AdminAPIGroup) {
        admin.get("fine-tuning/{id}/curve", .init(
            "A fine-tuning job's training curve, oldest first (each `metrics` event's step, epoch, total_steps, train_loss, train_mean_token_accuracy, valid_loss at epoch ends), with the job as GET /v1/fine_tuning/jobs/{id} shows it (status, checkpoints done, validation perplexity before and after in `quality`)",
            path: ["id": "fine-tuning job id"], errors: [404])
        ) { _, context in
            let id = try context.parameters.require("id")
            let (job, spec) = try await mapped { try await fineTuning.job(id, scope: .all) }
            let points = try await mapped { try await fineTuning.series(id, scope: .all) }
            return try Wire.response(Curve(job: FineTuningJobObject(job, spec), points: points))
        }
    }

    /// A job and its training curve.
    struct Curve: Encodable {
        var job: FineTuningJobObject
        var points: [JobJSON]
    }
}
