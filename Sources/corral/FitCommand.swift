import ArgumentParser
import Foundation
import Runtime

/// `corral fit MODEL`: how llama-fit-params would run a configured model on this machine.
struct FitCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "fit", abstract: "Plan how a model runs on this machine.")

    @Argument(help: "Model name (as in /v1/models).")
    var model: String

    @Option(help: "Configuration file.")
    var config = "routes.json"

    func run() async throws {
        let cfg = try CorralConfig.load(path: config)
        let catalog = ModelCatalog.build(from: cfg)
        guard let spec = catalog.resolve(model) else {
            FileHandle.standardError.write(Data("corral: model '\(model)' not found\n".utf8))
            throw ExitCode(1)
        }
        let tools = LlamaTools.discover(configured: cfg.llama.toolPaths)
        let planner = FitPlanner(fitParamsPath: tools.fitParams?.path, marginMiB: cfg.scheduler.memoryMarginMiB)
        let plan = await planner.plan(model: spec, baseArguments: spec.fitInputArguments)
        let data = try JSONEncoder().encode(plan)
        print(String(decoding: data, as: UTF8.self))
    }
}
