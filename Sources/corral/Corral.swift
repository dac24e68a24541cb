import ArgumentParser

/// `corral`: the gateway and its operator tools.
@main
struct Corral: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "corral",
        abstract: "A gateway that runs local llama.cpp models behind the OpenAI and Ollama APIs.",
        version: Corral.version,
        subcommands: [ServeCommand.self, InspectCommand.self, ModelsCommand.self, DoctorCommand.self, FitCommand.self, TeamsCommand.self, KeysCommand.self, LibraryCommand.self, ProfilesCommand.self, BenchCommand.self, TuneCommand.self, FineTuneCommand.self, JobsCommand.self, DefaultModelCommand.self, PullCommand.self, QuantizeCommand.self, QuantLadderCommand.self, StoreCommand.self, DrainCommand.self],
        defaultSubcommand: ServeCommand.self
    )

    /// Corral's own version (`corral --version`; each node's entry in the cluster registry).
    static let version = "0.2.0"
}
