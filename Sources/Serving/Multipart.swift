import Foundation
import NIOCore

/// Enough of `multipart/form-data` to route an upload by one of its text fields (the `model`
/// of an audio transcription) and to read a file upload (`/v1/files`).
public enum Multipart {
    /// One part: its form name, its file name when it is a file, and its bytes.
    public struct Part: Sendable {
        public let name: String
        public let filename: String?
        public let body: ArraySlice<UInt8>

        public var text: String { String(decoding: body, as: UTF8.self) }
    }

    /// The boundary a `multipart/form-data; boundary=…` content type declares.
    public static func boundary(_ contentType: String) -> String? {
        let parts = contentType.split(separator: ";").map { $0.trimmingCharacters(in: .whitespaces) }
        guard parts.first?.lowercased() == "multipart/form-data" else { return nil }
        for part in parts.dropFirst() where part.lowercased().hasPrefix("boundary=") {
            let value = part.dropFirst("boundary=".count)
            let unquoted = value.hasPrefix("\"") && value.hasSuffix("\"") && value.count >= 2 ? value.dropFirst().dropLast() : value
            return unquoted.isEmpty ? nil : String(unquoted)
        }
        return nil
    }

    /// The text of the form field `name` (a part without a file name), if present.
    public static func field(_ name: String, in body: ByteBuffer, boundary: String) -> String? {
        parts(in: Array(body.readableBytesView), boundary: boundary).first { $0.name == name && $0.filename == nil }?.text
    }

    /// Every part of a body, in order (a part without a `name` is skipped).
    public static func parts(in bytes: [UInt8], boundary: String) -> [Part] {
        let delimiter = Array("--\(boundary)".utf8)
        let next = Array("\r\n--\(boundary)".utf8)
        let headerEnd = Array("\r\n\r\n".utf8)
        var found: [Part] = []
        var start = 0
        while let at = find(delimiter, in: bytes, from: start) {
            let partStart = at + delimiter.count
            guard let headersEnd = find(headerEnd, in: bytes, from: partStart) else { break }
            let headers = String(decoding: bytes[partStart..<headersEnd], as: UTF8.self)
            let contentStart = headersEnd + headerEnd.count
            let end = find(next, in: bytes, from: contentStart) ?? bytes.count
            if let disposition = headers.split(separator: "\r\n").first(where: { $0.lowercased().hasPrefix("content-disposition:") }) {
                let parameters = Self.parameters(String(disposition.dropFirst("content-disposition:".count)))
                if let name = parameters["name"] {
                    found.append(Part(name: name, filename: parameters["filename"], body: bytes[contentStart..<end]))
                }
            }
            start = end
        }
        return found
    }

    /// `form-data; name="file"; filename="a.jsonl"` → `["name": "file", "filename": "a.jsonl"]`.
    static func parameters(_ disposition: String) -> [String: String] {
        var out: [String: String] = [:]
        for item in disposition.split(separator: ";").dropFirst() {
            let pair = item.split(separator: "=", maxSplits: 1).map { $0.trimmingCharacters(in: .whitespaces) }
            guard pair.count == 2 else { continue }
            var value = pair[1]
            if value.hasPrefix("\""), value.hasSuffix("\""), value.count >= 2 { value = String(value.dropFirst().dropLast()) }
            out[pair[0].lowercased()] = value
        }
        return out
    }

    private static func find(_ needle: [UInt8], in haystack: [UInt8], from: Int) -> Int? {
        guard !needle.isEmpty, haystack.count >= needle.count, from <= haystack.count - needle.count else { return nil }
        var i = from
        while i <= haystack.count - needle.count {
            if haystack[i] == needle[0] && haystack[i..<(i + needle.count)].elementsEqual(needle) { return i }
            i += 1
        }
        return nil
    }
}
