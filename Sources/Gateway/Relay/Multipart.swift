import Foundation
import NIOCore

/// Just enough of `multipart/form-data` to route an upload by one of its text fields (the
/// `model` of an audio transcription); the body itself is passed on untouched.
enum Multipart {
    /// The boundary a `multipart/form-data; boundary=…` content type declares.
    static func boundary(_ contentType: String) -> String? {
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
    static func field(_ name: String, in body: ByteBuffer, boundary: String) -> String? {
        let bytes = Array(body.readableBytesView)
        let delimiter = Array("--\(boundary)".utf8)
        let headerEnd = Array("\r\n\r\n".utf8)
        var start = 0
        while let at = find(delimiter, in: bytes, from: start) {
            let partStart = at + delimiter.count
            guard let headersEnd = find(headerEnd, in: bytes, from: partStart) else { return nil }
            let headers = String(decoding: bytes[partStart..<headersEnd], as: UTF8.self).lowercased()
            let contentStart = headersEnd + headerEnd.count
            let next = find(Array("\r\n--\(boundary)".utf8), in: bytes, from: contentStart) ?? bytes.count
            if headers.contains("name=\"\(name.lowercased())\""), !headers.contains("filename=") {
                return String(decoding: bytes[contentStart..<next], as: UTF8.self)
            }
            start = next
        }
        return nil
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
