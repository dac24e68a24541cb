import Crypto
import Foundation

/// Generating, hashing and comparing secrets. Keys are stored only as SHA-256; comparisons take
/// the same time whatever the input.
public enum Secrets {
    /// `count` random bytes from the system's CSPRNG, base64url without padding.
    public static func random(bytes count: Int = 32) -> String {
        var generator = SystemRandomNumberGenerator()
        let bytes = (0..<count).map { _ in UInt8.random(in: .min ... .max, using: &generator) }
        return Data(bytes).base64EncodedString().replacingOccurrences(of: "+", with: "-")
            .replacingOccurrences(of: "/", with: "_").replacingOccurrences(of: "=", with: "")
    }

    /// SHA-256 of a secret, lowercase hex.
    public static func sha256(_ secret: String) -> String {
        // By table: `String(format:)` per byte cost more than the hash itself on the request path.
        let digest = SHA256.hash(data: Array(secret.utf8))
        var out = [UInt8]()
        out.reserveCapacity(64)
        for byte in digest {
            out.append(hexDigits[Int(byte >> 4)])
            out.append(hexDigits[Int(byte & 0x0F)])
        }
        return String(decoding: out, as: UTF8.self)
    }

    private static let hexDigits = Array("0123456789abcdef".utf8)

    /// Compares two strings in time that depends only on their lengths.
    public static func constantTimeEqual(_ a: String, _ b: String) -> Bool {
        let x = Array(a.utf8)
        let y = Array(b.utf8)
        var difference = UInt8(x.count == y.count ? 0 : 1)
        for i in 0..<max(x.count, y.count) {
            difference |= (i < x.count ? x[i] : 0) ^ (i < y.count ? y[i] : 0)
        }
        return difference == 0
    }

    /// A new team API key: `ck-` + 8 visible prefix characters + `-` + 256 random bits.
    public static func newKey() -> (key: String, prefix: String) {
        let prefix = "ck-" + String(random(bytes: 6).prefix(8)).lowercased().replacingOccurrences(of: "_", with: "x").replacingOccurrences(of: "-", with: "y")
        return (prefix + "-" + random(bytes: 32), prefix)
    }

    /// The visible prefix of a key in Corral's format, nil for anything else.
    public static func prefix(of key: String) -> String? {
        guard key.hasPrefix("ck-"), key.utf8.count == 3 + 8 + 1 + 43 else { return nil }
        let p = String(key.prefix(11))
        guard key.dropFirst(11).first == "-" else { return nil }
        return p
    }

    /// A new admin token (never valid as a team key: different prefix).
    public static func newAdminToken() -> String { "corral-admin-" + random(bytes: 32) }
}
