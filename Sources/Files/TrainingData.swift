import Foundation

/// A problem in a training or validation file, named by file and line as the job reports it.
public struct TrainingDataError: Error, Sendable, Equatable, CustomStringConvertible {
    /// The file's id (and name), e.g. `file-abc (train.jsonl)`.
    public var file: String
    /// 1-based line of the problem; nil for the file as a whole.
    public var line: Int?
    public var message: String

    public init(file: String, line: Int?, _ message: String) {
        (self.file, self.line, self.message) = (file, line, message)
    }

    public var description: String {
        line.map { "\(file) line \($0): \(message)" } ?? "\(file): \(message)"
    }
}

/// One message of a chat-shaped example.
public struct TrainingMessage: Sendable, Equatable, Codable {
    public var role: String
    public var content: String

    public init(role: String, content: String) { (self.role, self.content) = (role, content) }
}

/// One example, as read from any accepted format.
public enum TrainingExample: Sendable, Equatable {
    /// Chat messages (OpenAI `messages`, ShareGPT `conversations`): rendered with the base
    /// model's own chat template.
    case chat([TrainingMessage], line: Int)
    /// Text trained on as it is (plain text, `text` fields, a prompt followed by its completion).
    case text(String, line: Int)

    public var line: Int {
        switch self {
        case .chat(_, let line), .text(_, let line): line
        }
    }
}

/// The formats a fine-tuning file may have.
public enum TrainingFormat: String, Sendable, Codable {
    /// One JSON object per line: `messages`, `prompt` + `completion`, `conversations`
    /// (ShareGPT's `from`/`value`) or `text`.
    case jsonl
    /// A header line, then `prompt,completion` or `text` columns (RFC 4180 quoting).
    case csv
    /// Any other UTF-8 text: trained on as it is, blank-line-separated paragraphs as examples.
    case text

    /// The format by the file's name (`.jsonl`/`.json`, `.csv`), else by its first character.
    public static func detect(filename: String, contents: Data) -> TrainingFormat {
        let lower = filename.lowercased()
        if lower.hasSuffix(".jsonl") || lower.hasSuffix(".json") { return .jsonl }
        if lower.hasSuffix(".csv") { return .csv }
        if lower.hasSuffix(".txt") || lower.hasSuffix(".md") { return .text }
        let first = contents.first { ![0x20, 0x09, 0x0a, 0x0d].contains($0) }
        return first == UInt8(ascii: "{") ? .jsonl : .text
    }
}

/// Reads fine-tuning data in every accepted format into examples, naming the file and line of
/// each problem. Nothing here renders or tokenizes: the job does that with the base model.
public enum TrainingData {
    /// Roles a chat example may use (ShareGPT's `human`/`gpt` are read as `user`/`assistant`).
    static let roles: Set<String> = ["system", "user", "assistant", "developer"]

    /// The examples of `contents`, read as `format`; `name` is how errors name the file.
    public static func read(_ contents: Data, format: TrainingFormat, name: String) throws(TrainingDataError) -> [TrainingExample] {
        guard let text = String(data: contents, encoding: .utf8) else { throw TrainingDataError(file: name, line: nil, "the file is not UTF-8 text") }
        let examples: [TrainingExample]
        switch format {
        case .jsonl: examples = try jsonLines(text, name: name)
        case .csv: examples = try csv(text, name: name)
        case .text: examples = paragraphs(text)
        }
        guard !examples.isEmpty else { throw TrainingDataError(file: name, line: nil, "the file has no examples") }
        return examples
    }

    /// The light check an upload gets: a `.jsonl` file must be one JSON object per line (the
    /// first that is not is named); other files must be UTF-8 text. Shapes are checked when a
    /// job validates its files, where every format's problems are named.
    public static func checkUpload(_ contents: Data, filename: String) throws(TrainingDataError) {
        guard String(data: contents, encoding: .utf8) != nil else { throw TrainingDataError(file: filename, line: nil, "the file is not UTF-8 text") }
        guard TrainingFormat.detect(filename: filename, contents: contents) == .jsonl else { return }
        var any = false
        for (number, line) in lines(contents) {
            guard (try? JSONSerialization.jsonObject(with: Data(line))) is [String: Any] else {
                throw TrainingDataError(file: filename, line: number, "not a JSON object")
            }
            any = true
        }
        if !any { throw TrainingDataError(file: filename, line: nil, "the file has no JSON lines") }
    }

    /// Non-blank lines with their 1-based numbers (a trailing `\r` dropped).
    static func lines(_ contents: Data) -> [(Int, Data.SubSequence)] {
        var found: [(Int, Data.SubSequence)] = []
        for (index, line) in contents.split(separator: UInt8(ascii: "\n"), omittingEmptySubsequences: false).enumerated() {
            let text = line.last == UInt8(ascii: "\r") ? line.dropLast() : line[...]
            guard text.contains(where: { $0 != 0x20 && $0 != 0x09 }) else { continue }
            found.append((index + 1, text))
        }
        return found
    }

    static func jsonLines(_ text: String, name: String) throws(TrainingDataError) -> [TrainingExample] {
        var examples: [TrainingExample] = []
        for (number, line) in lines(Data(text.utf8)) {
            guard let object = (try? JSONSerialization.jsonObject(with: Data(line))) as? [String: Any] else {
                throw TrainingDataError(file: name, line: number, "not a JSON object")
            }
            examples.append(try example(object, line: number, name: name))
        }
        return examples
    }

    /// One JSON line as an example: whichever of the four shapes it has.
    static func example(_ object: [String: Any], line: Int, name: String) throws(TrainingDataError) -> TrainingExample {
        func fail(_ message: String) -> TrainingDataError { TrainingDataError(file: name, line: line, message) }
        if let raw = object["messages"] {
            guard let list = raw as? [Any], !list.isEmpty else { throw fail("\"messages\" must be a non-empty list") }
            var messages: [TrainingMessage] = []
            for (i, m) in list.enumerated() {
                guard let m = m as? [String: Any], let role = m["role"] as? String else { throw fail("messages[\(i)] has no \"role\"") }
                guard roles.contains(role) else { throw fail("messages[\(i)].role '\(role)' is not one of system, user, assistant") }
                guard let content = text(of: m["content"]) else { throw fail("messages[\(i)].content must be a string or a list of text parts") }
                messages.append(TrainingMessage(role: role == "developer" ? "system" : role, content: content))
            }
            return try checkedChat(messages, line: line, fail: fail)
        }
        if let raw = object["conversations"] {
            guard let list = raw as? [Any], !list.isEmpty else { throw fail("\"conversations\" must be a non-empty list") }
            var messages: [TrainingMessage] = []
            for (i, m) in list.enumerated() {
                guard let m = m as? [String: Any], let from = m["from"] as? String else { throw fail("conversations[\(i)] has no \"from\"") }
                guard let value = m["value"] as? String else { throw fail("conversations[\(i)].value must be a string") }
                let role: String
                switch from.lowercased() {
                case "human", "user": role = "user"
                case "gpt", "assistant", "model", "chatgpt", "bing", "bard": role = "assistant"
                case "system": role = "system"
                default: throw fail("conversations[\(i)].from '\(from)' is not one of system, human, gpt")
                }
                messages.append(TrainingMessage(role: role, content: value))
            }
            return try checkedChat(messages, line: line, fail: fail)
        }
        if object["prompt"] != nil || object["completion"] != nil {
            guard let prompt = object["prompt"] as? String else { throw fail("\"prompt\" must be a string") }
            guard let completion = object["completion"] as? String, !completion.isEmpty else { throw fail("\"completion\" must be a non-empty string") }
            return .text(prompt + completion, line: line)
        }
        if let raw = object["text"] {
            guard let text = raw as? String, !text.isEmpty else { throw fail("\"text\" must be a non-empty string") }
            return .text(text, line: line)
        }
        throw fail("has none of \"messages\", \"prompt\" and \"completion\", \"conversations\", \"text\"")
    }

    /// A chat example must end its turns with something to learn: at least one assistant answer.
    static func checkedChat(_ messages: [TrainingMessage], line: Int, fail: (String) -> TrainingDataError) throws(TrainingDataError) -> TrainingExample {
        guard messages.contains(where: { $0.role == "assistant" && !$0.content.isEmpty }) else {
            throw fail("the conversation has no assistant message to train on")
        }
        return .chat(messages, line: line)
    }

    /// A message content: a string, or OpenAI's list of `{"type":"text","text":…}` parts.
    static func text(of content: Any?) -> String? {
        if let s = content as? String { return s }
        guard let parts = content as? [Any] else { return nil }
        var joined = ""
        for part in parts {
            guard let part = part as? [String: Any], part["type"] as? String == "text", let t = part["text"] as? String else { return nil }
            joined += t
        }
        return joined
    }

    /// Blank-line-separated paragraphs; line numbers are where each starts.
    static func paragraphs(_ text: String) -> [TrainingExample] {
        var examples: [TrainingExample] = []
        var current: [Substring] = []
        var start = 0
        for (i, line) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            if line.allSatisfy({ $0 == " " || $0 == "\t" || $0 == "\r" }) {
                if !current.isEmpty { examples.append(.text(current.joined(separator: "\n"), line: start)) }
                current = []
            } else {
                if current.isEmpty { start = i + 1 }
                current.append(line.hasSuffix("\r") ? line.dropLast() : line)
            }
        }
        if !current.isEmpty { examples.append(.text(current.joined(separator: "\n"), line: start)) }
        return examples
    }

    /// CSV with a header naming `prompt` and `completion`, or `text`; quoted fields may hold
    /// commas, doubled quotes and line breaks. Each record is named by the line it starts on.
    static func csv(_ text: String, name: String) throws(TrainingDataError) -> [TrainingExample] {
        let records = try csvRecords(text, name: name)
        guard let (_, header) = records.first else { throw TrainingDataError(file: name, line: nil, "the file is empty") }
        let columns = header.map { $0.trimmingCharacters(in: .whitespaces).lowercased() }
        let prompt = columns.firstIndex(of: "prompt"), completion = columns.firstIndex(of: "completion"), textColumn = columns.firstIndex(of: "text")
        guard (prompt != nil && completion != nil) || textColumn != nil else {
            throw TrainingDataError(file: name, line: 1, "the header must name 'prompt' and 'completion' columns, or a 'text' column (found: \(header.joined(separator: ",")))")
        }
        var examples: [TrainingExample] = []
        for (line, fields) in records.dropFirst() {
            if fields.count == 1 && fields[0].isEmpty { continue }
            guard fields.count == columns.count else {
                throw TrainingDataError(file: name, line: line, "has \(fields.count) fields; the header has \(columns.count)")
            }
            if let prompt, let completion {
                guard !fields[completion].isEmpty else { throw TrainingDataError(file: name, line: line, "the completion is empty") }
                examples.append(.text(fields[prompt] + fields[completion], line: line))
            } else if let textColumn {
                guard !fields[textColumn].isEmpty else { throw TrainingDataError(file: name, line: line, "the text is empty") }
                examples.append(.text(fields[textColumn], line: line))
            }
        }
        return examples
    }

    /// RFC 4180 records with the line each starts on.
    static func csvRecords(_ text: String, name: String) throws(TrainingDataError) -> [(Int, [String])] {
        var records: [(Int, [String])] = []
        var fields: [String] = []
        var field = ""
        var quoted = false
        var line = 1, recordStart = 1
        var chars = Array(text.unicodeScalars)[...]
        if chars.first == "\u{FEFF}" { chars = chars.dropFirst() }
        var i = chars.startIndex
        while i < chars.endIndex {
            let c = chars[i]
            if quoted {
                if c == "\"" {
                    if i + 1 < chars.endIndex && chars[i + 1] == "\"" { field.unicodeScalars.append("\""); i += 1 } else { quoted = false }
                } else {
                    if c == "\n" { line += 1 }
                    field.unicodeScalars.append(c)
                }
            } else {
                switch c {
                case "\"" where field.isEmpty: quoted = true
                case ",": fields.append(field); field = ""
                case "\r": break
                case "\n":
                    fields.append(field)
                    records.append((recordStart, fields))
                    fields = []
                    field = ""
                    line += 1
                    recordStart = line
                default: field.unicodeScalars.append(c)
                }
            }
            i += 1
        }
        if quoted { throw TrainingDataError(file: name, line: recordStart, "a quoted field is not closed") }
        if !field.isEmpty || !fields.isEmpty {
            fields.append(field)
            records.append((recordStart, fields))
        }
        return records
    }
}
