import Foundation
import Library
import Runtime

extension SamplingProfiles {
    /// Fills in the fields of the named (or default) profile that `body` does not set itself,
    /// and removes the `profile` field. Unknown names are a 400. Returns whether `body` changed.
    /// Here, at the HTTP edge, because a relayed body stays a dictionary (unknown fields pass
    /// through to llama-server untouched).
    @discardableResult
    func apply(to body: inout [String: Any], named: String?, modelDefault: String?) throws(LibraryError) -> Bool {
        var name = named
        var changed = false
        if let p = body.removeValue(forKey: "profile") {
            changed = true
            if !(p is NSNull) {
                guard let s = p as? String else { throw LibraryError.badRequest("profile must be a string", param: "profile") }
                name = s
            }
        }
        let request = body
        let added = try fields(named: name, modelDefault: modelDefault) { request[$0] != nil }
        for (key, value) in added { body[key] = value.any }
        return changed || !added.isEmpty
    }
}
