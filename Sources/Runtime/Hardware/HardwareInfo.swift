import Foundation

/// What this machine offers for inference: CPU, RAM, accelerators as llama.cpp sees them,
/// NVIDIA details when `nvidia-smi` exists, and the llama.cpp build.
public struct HardwareInfo: Sendable, Codable, Equatable {
    public struct NvidiaGPU: Sendable, Codable, Equatable {
        public var index: Int
        public var name: String
        public var memoryTotalMiB: Int
        public var memoryFreeMiB: Int
        public var driverVersion: String
        public var computeCapability: String
        public var utilizationPercent: Int?
    }

    public var cpuModel: String
    public var logicalCores: Int
    public var physicalCores: Int?
    /// Instruction-set extensions that matter to llama.cpp's CPU kernels.
    public var cpuFlags: [String]
    public var ramTotalMiB: Int
    public var ramAvailableMiB: Int
    public var devices: [Device]
    public var nvidia: [NvidiaGPU]
    public var llamaBuild: String?
    /// `CUDA`, `ROCm`, `Metal`, `Vulkan` … from the device names; `CPU` when there is none.
    public var backend: String
    public var readAt: Date

    /// The flags llama.cpp's CPU backend can use, in the order they are reported.
    static let interestingFlags = ["sse3", "ssse3", "sse4_1", "sse4_2", "avx", "f16c", "fma", "avx2", "avx_vnni", "avx512f", "avx512bw",
                                   "avx512vl", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16", "asimd", "sve", "i8mm", "dotprod"]

    /// Reads everything (runs `--list-devices` and `nvidia-smi` when present).
    public static func read(tools: LlamaTools) async -> HardwareInfo {
        let cpuinfo = (try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8)) ?? ""
        let (model, flags, physical) = parseCPUInfo(cpuinfo)
        let memory = HostMemory.read()
        let devices = await tools.devices()
        var nvidia: [NvidiaGPU] = []
        if let smi = LlamaTools.which("nvidia-smi"),
            let out = try? await LlamaTools.run(smi, ["--query-gpu=index,name,memory.total,memory.free,driver_version,compute_cap,utilization.gpu", "--format=csv,noheader,nounits"]) {
            nvidia = parseNvidiaCSV(out.lines)
        }
        let prefixes = [("CUDA", "CUDA"), ("ROCm", "ROCm"), ("HIP", "ROCm"), ("Metal", "Metal"), ("MTL", "Metal"), ("Vulkan", "Vulkan"), ("SYCL", "SYCL")]
        let backend = prefixes.first { p in devices.contains { $0.name.hasPrefix(p.0) } }?.1 ?? "CPU"
        return HardwareInfo(
            cpuModel: model, logicalCores: ProcessInfo.processInfo.processorCount, physicalCores: physical, cpuFlags: flags,
            ramTotalMiB: memory.totalMiB, ramAvailableMiB: memory.availableMiB, devices: devices, nvidia: nvidia,
            llamaBuild: await tools.serverBuild(), backend: backend, readAt: Date())
    }

    /// Model name, the interesting flags and the physical core count from `/proc/cpuinfo`.
    static func parseCPUInfo(_ text: String) -> (model: String, flags: [String], physicalCores: Int?) {
        var model = "unknown"
        var flags: Set<String> = []
        var cores: Set<String> = []
        var physicalID = "0"
        for line in text.split(separator: "\n") {
            let parts = line.split(separator: ":", maxSplits: 1).map { $0.trimmingCharacters(in: .whitespaces) }
            guard parts.count == 2 else { continue }
            switch parts[0] {
            case "model name", "Model", "cpu model": if model == "unknown" { model = parts[1] }
            case "flags", "Features": flags.formUnion(parts[1].split(separator: " ").map(String.init))
            case "physical id": physicalID = parts[1]
            case "core id": cores.insert(physicalID + ":" + parts[1])
            default: break
            }
        }
        return (model, interestingFlags.filter(flags.contains), cores.isEmpty ? nil : cores.count)
    }

    /// Parses `nvidia-smi --query-gpu=index,name,memory.total,memory.free,driver_version,compute_cap,utilization.gpu --format=csv,noheader,nounits`.
    public static func parseNvidiaCSV(_ lines: [String]) -> [NvidiaGPU] {
        lines.compactMap { line in
            let f = line.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }
            guard f.count >= 6, let index = Int(f[0]), let total = Int(f[2]), let free = Int(f[3]) else { return nil }
            return NvidiaGPU(index: index, name: f[1], memoryTotalMiB: total, memoryFreeMiB: free, driverVersion: f[4],
                             computeCapability: f[5], utilizationPercent: f.count > 6 ? Int(f[6]) : nil)
        }
    }
}
