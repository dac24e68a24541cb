import Foundation

/// A fresh temporary directory for one test.
func makeTempDirectory(_ label: String = "gguf") throws -> String {
    let path = NSTemporaryDirectory() + "corral-\(label)-\(UUID().uuidString)"
    try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    return path
}

/// The llama.cpp source tree the install script unpacked, when present.
func llamaSourceTree() -> String? {
    let env = ProcessInfo.processInfo.environment
    let root = env["CORRAL_LLAMA_CACHE"] ?? (NSHomeDirectory() + "/.cache/corral/llama.cpp")
    let path = root + "/" + (env["LLAMA_CPP_VERSION"] ?? "11434.0.0") + "/src/llama.cpp"
    return FileManager.default.fileExists(atPath: path + "/gguf-py") ? path : nil
}

var isCI: Bool { ProcessInfo.processInfo.environment["CI"] == "true" }
