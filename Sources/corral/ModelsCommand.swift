import ArgumentParser
import Foundation
import GGUF

/// `corral models …`: model files.
struct ModelsCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "models", abstract: "Work with model files.", subcommands: [MakeTest.self])

    /// `corral models make-test`: writes a tiny random-weight llama GGUF.
    struct MakeTest: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "make-test",
            abstract: "Generate a tiny random-weight llama GGUF for tests and demos.")

        @Option(help: "Output directory.")
        var out: String

        @Option(help: "File name without extension.")
        var name = "corral-test"

        @Option(help: "Shape: embd=64,layers=2,heads=4,kv=2,ff=128,vocab=352,ctx=2048,type=f32|f16|q8_0,embedding=true,fim=true")
        var shape = ""

        @Flag(help: "Write only the header and leave tensor data as a sparse hole.")
        var sparse = false

        @Flag(help: "Write a LoRA adapter for a model of this shape instead of a model.")
        var lora = false

        func run() async throws {
            var shape = try TestModelShape(spec: self.shape)
            if !self.shape.contains("name=") { shape.name = name }
            try FileManager.default.createDirectory(atPath: out, withIntermediateDirectories: true)
            let path = out + "/" + name + ".gguf"
            if lora {
                try TestModel.loraWriter(shape: shape).write(to: path, sparse: false)
            } else {
                try TestModel.write(shape: shape, to: path, sparse: sparse)
            }
            print(path)
        }
    }
}
