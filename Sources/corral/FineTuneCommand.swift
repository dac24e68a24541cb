import ArgumentParser
import Foundation

/// `corral finetune`: fine-tuning jobs through the running gateway's OpenAI fine-tuning API.
struct FineTuneCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "finetune", abstract: "Fine-tune a local F32 model with llama-finetune (talks to the running gateway).",
        subcommands: [Create.self, List.self, Show.self, Cancel.self, Events.self])

    struct Create: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Upload the data (a path) or use a file id, start a job, follow its progress until it ends, and print it.")
        @OptionGroup var connection: AdminConnection
        @Option(help: "Base model (a local F32 GGUF).") var model: String
        @Option(help: "Training data: a path (JSONL, CSV or text; uploaded) or a file id.") var trainingFile: String
        @Option(help: "Validation data: a path or a file id (default: the last 10% of the training data).") var validationFile: String?
        @Option(help: "efficient, balanced or high-quality.") var preset: String?
        @Option(help: "Epochs (default: the preset's).") var epochs: Int?
        @Option(help: "Learning-rate multiplier (of 1e-5).") var lrMultiplier: Double?
        @Option(help: "Tokens per training window, a multiple of 256 (default: the preset's).") var contextSize: Int?
        @Option(help: "Suffix of the fine-tuned model's name.") var suffix: String?
        @Option(help: "Seed.") var seed: Int?
        @Flag(help: "Print the job at once instead of following it.") var detach = false

        func run() async throws {
            let training = try await connection.fineTuneFile(trainingFile)
            var hyperparameters: [String: Any] = [:]
            hyperparameters["n_epochs"] = epochs
            hyperparameters["learning_rate_multiplier"] = lrMultiplier
            hyperparameters["context_size"] = contextSize
            var body: [String: Any] = ["model": model, "training_file": training, "hyperparameters": hyperparameters]
            if let validationFile { body["validation_file"] = try await connection.fineTuneFile(validationFile) }
            body["preset"] = preset
            body["suffix"] = suffix
            body["seed"] = seed
            let job = try await connection.call("POST", "/v1/fine_tuning/jobs", body: body) as? [String: Any] ?? [:]
            guard let id = job["id"] as? String else { throw ValidationError("unexpected answer: \(job)") }
            if detach { return connection.print(job) }
            _ = try await connection.follow(id)
            let done = try await connection.call("GET", "/v1/fine_tuning/jobs/\(escaped(id))") as? [String: Any] ?? [:]
            connection.print(done)
            if done["status"] as? String != "succeeded" { throw ExitCode(1) }
        }
    }

    struct List: AsyncParsableCommand {
        @OptionGroup var connection: AdminConnection
        @Option(help: "Jobs per page.") var limit = 20
        @Option(help: "The last job id of the previous page.") var after: String?
        func run() async throws {
            var path = "/v1/fine_tuning/jobs?limit=\(limit)"
            if let after { path += "&after=\(escapedQuery(after))" }
            connection.print(try await connection.call("GET", path))
        }
    }

    struct Show: AsyncParsableCommand {
        @OptionGroup var connection: AdminConnection
        @Argument(help: "Job id.") var id: String
        func run() async throws {
            var job = try await connection.call("GET", "/v1/fine_tuning/jobs/\(escaped(id))") as? [String: Any] ?? [:]
            job["checkpoints"] = (try await connection.call("GET", "/v1/fine_tuning/jobs/\(escaped(id))/checkpoints?limit=100") as? [String: Any])?["data"]
            connection.print(job)
        }
    }

    struct Cancel: AsyncParsableCommand {
        @OptionGroup var connection: AdminConnection
        @Argument(help: "Job id.") var id: String
        func run() async throws { connection.print(try await connection.call("POST", "/v1/fine_tuning/jobs/\(escaped(id))/cancel")) }
    }

    struct Events: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "A job's events, oldest first, one line each.")
        @OptionGroup var connection: AdminConnection
        @Argument(help: "Job id.") var id: String
        @Option(help: "The newest events to show.") var limit = 100
        func run() async throws {
            let page = try await connection.call("GET", "/v1/fine_tuning/jobs/\(escaped(id))/events?limit=\(min(100, max(1, limit)))") as? [String: Any] ?? [:]
            let formatter = ISO8601DateFormatter()
            for event in ((page["data"] as? [[String: Any]]) ?? []).reversed() {
                let at = formatter.string(from: Date(timeIntervalSince1970: Double(event["created_at"] as? Int ?? 0)))
                Swift.print("\(at) \(event["level"] as? String ?? "info") \(event["message"] as? String ?? "")")
            }
        }
    }
}

extension AdminConnection {
    /// A file id as it is, or a path uploaded with purpose `fine-tune` (its id).
    func fineTuneFile(_ pathOrID: String) async throws -> String {
        if pathOrID.hasPrefix("file-") && !FileManager.default.fileExists(atPath: pathOrID) { return pathOrID }
        guard let contents = FileManager.default.contents(atPath: pathOrID) else { throw ValidationError("cannot read \(pathOrID)") }
        let boundary = "corral-" + UUID().uuidString
        let name = (pathOrID as NSString).lastPathComponent.replacingOccurrences(of: "\"", with: "")
        var body = Data("--\(boundary)\r\ncontent-disposition: form-data; name=\"purpose\"\r\n\r\nfine-tune\r\n".utf8)
        body += Data("--\(boundary)\r\ncontent-disposition: form-data; name=\"file\"; filename=\"\(name)\"\r\ncontent-type: application/octet-stream\r\n\r\n".utf8)
        body += contents + Data("\r\n--\(boundary)--\r\n".utf8)
        let file = try await call("POST", "/v1/files", raw: body, contentType: "multipart/form-data; boundary=\(boundary)") as? [String: Any] ?? [:]
        guard let id = file["id"] as? String else { throw ValidationError("unexpected answer: \(file)") }
        return id
    }
}
