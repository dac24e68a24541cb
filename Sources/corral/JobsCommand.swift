import ArgumentParser
import AsyncHTTPClient
import Foundation
import NIOCore
import NIOHTTP1
import Runtime

/// `corral jobs`: every kind of long-running work in one place (benchmarks, tuning, …).
struct JobsCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "jobs", abstract: "Long-running work of every kind: list, show, follow with a progress bar, cancel, pause, resume.",
        subcommands: [List.self, Show.self, Follow.self, Cancel.self, Pause.self, Resume.self])

    struct List: AsyncParsableCommand {
        @OptionGroup var connection: AdminConnection
        @Option(help: "Only this kind (benchmark, tuning, …).") var kind: String?
        @Option(help: "Only these states, comma-separated (queued, running, paused, succeeded, failed, cancelled, interrupted).") var state: String?
        @Option(help: "Only jobs on this model.") var model: String?
        @Option(help: "Jobs per page.") var limit = 50
        @Option(help: "The `next` of the previous page.") var after: String?
        func run() async throws {
            var query = ["limit=\(limit)"]
            if let kind { query.append("kind=\(escapedQuery(kind))") }
            if let state { query.append("state=\(escapedQuery(state))") }
            if let model { query.append("model=\(escapedQuery(model))") }
            if let after { query.append("after=\(escapedQuery(after))") }
            connection.print(try await connection.call("GET", "/admin/jobs?" + query.joined(separator: "&")))
        }
    }

    struct Show: AsyncParsableCommand {
        @OptionGroup var connection: AdminConnection
        @Argument(help: "Job id.") var id: String
        func run() async throws { connection.print(try await connection.call("GET", "/admin/jobs/\(escaped(id))")) }
    }

    struct Follow: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Follow a job until it ends (progress on stderr), then print it.")
        @OptionGroup var connection: AdminConnection
        @Argument(help: "Job id.") var id: String
        func run() async throws { connection.print(try await connection.follow(id)) }
    }

    struct Cancel: JobAction { static let action = "cancel"
        static let configuration = CommandConfiguration(abstract: "Cancel a job (cooperatively, then forced after its grace).")
        @OptionGroup var connection: AdminConnection
        @Argument(help: "Job id.") var id: String
    }

    struct Pause: JobAction { static let action = "pause"
        static let configuration = CommandConfiguration(abstract: "Pause a job whose kind supports it.")
        @OptionGroup var connection: AdminConnection
        @Argument(help: "Job id.") var id: String
    }

    struct Resume: JobAction { static let action = "resume"
        static let configuration = CommandConfiguration(abstract: "Resume a paused job.")
        @OptionGroup var connection: AdminConnection
        @Argument(help: "Job id.") var id: String
    }
}

/// A `POST /admin/jobs/{id}/<action>` command: the three differ only in the action word.
protocol JobAction: AsyncParsableCommand {
    static var action: String { get }
    var connection: AdminConnection { get }
    var id: String { get }
}

extension JobAction {
    func run() async throws {
        connection.print(try await connection.call("POST", "/admin/jobs/\(escaped(id))/\(Self.action)"))
    }
}

extension AdminConnection {
    /// Follows a job's event stream until it ends, drawing its progress on stderr (when stderr
    /// is a terminal), and returns the final job. A dropped stream is reopened with the last
    /// event id, so nothing is missed or shown twice.
    func follow(_ id: String) async throws -> [String: Any] {
        let (base, token) = try endpoint()
        var lastEventID: Int64 = 0
        var bar = ProgressBar()
        var attempts = 0
        streaming: while attempts < 20 {
            attempts += 1
            var request = HTTPClientRequest(url: base + "/admin/jobs/\(escaped(id))/events")
            request.headers.add(name: "authorization", value: "Bearer \(token)")
            if lastEventID > 0 { request.headers.add(name: "last-event-id", value: String(lastEventID)) }
            let response: HTTPClientResponse
            do { response = try await HTTPClient.shared.execute(request, timeout: .hours(24 * 7)) } catch {
                try await Task.sleep(for: .milliseconds(500))
                continue
            }
            guard response.status == .ok else {
                let body = try await response.body.collect(upTo: 1 << 20)
                throw ValidationError("HTTP \(response.status.code): \(String(buffer: body))")
            }
            var events = SSEEvents()
            do {
                for try await chunk in response.body {
                    for payload in events.feed(chunk) {
                        guard let event = (try? JSONSerialization.jsonObject(with: Data(payload.utf8))) as? [String: Any] else { continue }
                        lastEventID = (event["id"] as? NSNumber)?.int64Value ?? lastEventID
                        let data = event["data"] as? [String: Any] ?? [:]
                        switch event["type"] as? String {
                        case "progress": bar.draw(data)
                        case "state":
                            if let state = data["state"] as? String, ["succeeded", "failed", "cancelled", "interrupted"].contains(state) {
                                bar.finish(state)
                                break streaming
                            }
                        default: break
                        }
                    }
                }
            } catch {
                continue  // the stream broke: reopen after the last event seen
            }
            // The stream ended without a final state: the job was already final, or Corral stopped.
            break
        }
        return try await call("GET", "/admin/jobs/\(escaped(id))") as? [String: Any] ?? [:]
    }
}

/// `[#######-------]  50%  3/6 requests`, redrawn in place on a terminal.
struct ProgressBar {
    let isTerminal = isatty(STDERR_FILENO) == 1
    var drawn = false
    /// When and at how many bytes the first draw was (for a download's rate).
    var start: (at: Date, bytes: Double)?

    mutating func draw(_ progress: [String: Any]) {
        guard isTerminal else { return }
        let done = (progress["completed"] as? NSNumber)?.doubleValue ?? 0
        let total = (progress["total"] as? NSNumber)?.doubleValue
        let unit = progress["unit"] as? String ?? ""
        var line: String
        if let total, total > 0 {
            let fraction = min(1, done / total)
            let filled = Int(fraction * 30)
            line = "[" + String(repeating: "#", count: filled) + String(repeating: "-", count: 30 - filled) + "] "
            if unit == "bytes" {
                // Downloads: MiB, the rate since the first draw, and the time left at that rate.
                let now = Date()
                if start == nil { start = (now, done) }
                line += String(format: "%3.0f%%  %.1f/%.1f MiB", fraction * 100, done / 1_048_576, total / 1_048_576)
                if let start, now.timeIntervalSince(start.at) > 0.5 {
                    let rate = (done - start.bytes) / now.timeIntervalSince(start.at)
                    line += String(format: "  %.1f MiB/s", rate / 1_048_576)
                    if rate > 0 { line += String(format: "  ETA %.0f s", (total - done) / rate) }
                }
            } else {
                line += String(format: "%3.0f%%  %.0f/%.0f %@", fraction * 100, done, total, unit)
            }
        } else {
            line = String(format: "%.0f %@", done, unit)
        }
        if let message = progress["message"] as? String { line += "  " + message }
        FileHandle.standardError.write(Data(("\r\u{1B}[K" + line).utf8))
        drawn = true
    }

    mutating func finish(_ state: String) {
        guard isTerminal else { return }
        FileHandle.standardError.write(Data(((drawn ? "\n" : "") + state + "\n").utf8))
    }
}
