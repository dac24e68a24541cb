import Foundation
import Runtime
import Testing

@testable import Runtime

/// Parsers for `/proc/cpuinfo` and `nvidia-smi` CSV, and sampling profiles in `routes.json`.
struct HardwareAndProfileTests {
    @Test func parsesNvidiaSmiCSV() {
        // nvidia-smi --query-gpu=index,name,memory.total,memory.free,driver_version,compute_cap,utilization.gpu --format=csv,noheader,nounits
        let gpus = HardwareInfo.parseNvidiaCSV([
            "0, NVIDIA H100 80GB HBM3, 81559, 80987, 550.54.15, 9.0, 3",
            "1, NVIDIA GeForce RTX 4090, 24564, 1024, 550.54.15, 8.9, [N/A]",
            "garbage",
        ])
        #expect(gpus.count == 2)
        #expect(gpus[0] == .init(index: 0, name: "NVIDIA H100 80GB HBM3", memoryTotalMiB: 81559, memoryFreeMiB: 80987, driverVersion: "550.54.15",
                                 computeCapability: "9.0", utilizationPercent: 3))
        #expect(gpus[1].utilizationPercent == nil && gpus[1].memoryFreeMiB == 1024)
    }

    @Test func parsesCPUInfo() {
        let text = """
            processor\t: 0
            model name\t: Intel(R) Xeon(R) Platinum 8480+
            physical id\t: 0
            core id\t\t: 0
            flags\t\t: fpu sse4_2 avx avx2 fma f16c avx512f avx512_bf16 amx_tile
            processor\t: 1
            physical id\t: 0
            core id\t\t: 0
            processor\t: 2
            physical id\t: 0
            core id\t\t: 1
            """
        let (model, flags, cores) = HardwareInfo.parseCPUInfo(text)
        #expect(model == "Intel(R) Xeon(R) Platinum 8480+")
        #expect(flags == ["sse4_2", "avx", "f16c", "fma", "avx2", "avx512f", "avx512_bf16", "amx_tile"])
        #expect(cores == 2)
    }

    @Test func profilesInRoutesJSON() throws {
        let ok = #"{"profiles":{"terse":{"temperature":0.1,"max_tokens":64,"stop":"END"}},"models":[{"name":"m","path":"/x.gguf","profile":"terse"},{"name":"n","path":"/y.gguf","profile":"code"}]}"#
        let config = try CorralConfig.parse(Data(ok.utf8), baseDirectory: "/")
        #expect(config.profiles["terse"]?["stop"] == .strings(["END"]))
        #expect(config.models.map(\.profile) == ["terse", "code"])
        for (bad, key) in [
            (#"{"profiles":{"x":{"temperature":"hot"}}}"#, "profiles.x.temperature"),
            (#"{"profiles":{"x":{"colour":1}}}"#, "profiles.x.colour"),
            (#"{"models":[{"name":"m","path":"/x.gguf","profile":"nope"}]}"#, "models[m].profile"),
        ] {
            #expect(throws: ConfigError.self) { try CorralConfig.parse(Data(bad.utf8), baseDirectory: "/") }
            do { _ = try CorralConfig.parse(Data(bad.utf8), baseDirectory: "/") } catch let e as ConfigError { #expect(e.key == key) }
        }
    }
}
