import Foundation

/// RAM as the kernel reports it in `/proc/meminfo`.
public enum HostMemory {
    /// `MemTotal` and `MemAvailable` in MiB (0 when unreadable).
    public static func read() -> (totalMiB: Int, availableMiB: Int) {
        guard let text = try? String(contentsOfFile: "/proc/meminfo", encoding: .utf8) else { return (0, 0) }
        func value(_ key: String) -> Int {
            guard let line = text.split(separator: "\n").first(where: { $0.hasPrefix(key + ":") }) else { return 0 }
            return (Int(line.split(separator: " ")[1]) ?? 0) / 1024
        }
        return (value("MemTotal"), value("MemAvailable"))
    }

    /// Identifies the machine for cache keys: CPU model, core count, RAM and llama.cpp's devices.
    public static func fingerprint(devices: [Device]) -> String {
        let cpu = (try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8))?
            .split(separator: "\n").first { $0.hasPrefix("model name") }.map(String.init) ?? "cpu"
        let gpus = devices.map { "\($0.name):\($0.description):\($0.totalMiB)" }.joined(separator: ",")
        return "\(cpu)|\(ProcessInfo.processInfo.processorCount)|\(read().totalMiB)|\(gpus)"
    }
}
