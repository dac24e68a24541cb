import ArgumentParser
import CorralApp
import Foundation
import Gateway
import Logging
import NIOCore
import Runtime

/// `corral serve`: run the gateway.
struct ServeCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "serve", abstract: "Run the gateway.")

    @Option(help: "Configuration file.")
    var config = "routes.json"

    @Option(help: "Override the listen port.")
    var port: Int?

    @Option(help: "Override the listen host.")
    var host: String?

    @Option(help: "Log level: trace, debug, info, notice, warning, error.")
    var logLevel = "info"

    @Flag(help: "Serve without API keys while no team exists, even beyond loopback.")
    var allowOpen = false

    /// Benchmarks only: no authentication, admission or usage ledger at all.
    @Flag(help: .hidden)
    var benchmarkWithoutAccounts = false

    func run() async throws {
        var logger = Logger(label: "corral")
        logger.logLevel = Logger.Level(rawValue: logLevel) ?? .info
        var cfg: CorralConfig
        do {
            cfg = try CorralConfig.load(path: config)
        } catch {
            throw Self.failure("\(error)")
        }
        if let port { cfg.listen.port = port }
        if let host { cfg.listen.host = host }
        let options = ServeOptions(
            configPath: config, allowOpen: allowOpen, withoutAccounts: benchmarkWithoutAccounts, version: Corral.version,
            showAdminToken: { token, path in
                // Shown once (on stdout, never through the logger); also kept in a 0600 file.
                FileHandle.standardOutput.write(Data("corral: admin token (shown once; also written to \(path)):\n  \(token)\n".utf8))
            })
        let corral: CorralServices
        do {
            corral = try await CorralServices.build(cfg, options: options, logger: logger)
        } catch let refusal as StartupRefusal {
            throw Self.failure(refusal.description)
        }
        do {
            try await corral.run(http: try buildApplication(corral))
        } catch let error as IOError where error.errnoCode == EADDRINUSE {
            throw Self.failure("cannot listen on \(cfg.listen.host):\(cfg.listen.port): the address is already in use (another Corral or Ollama?); set listen.port or pass --port")
        }
    }

    /// Says why on stderr; thrown, it exits with status 2.
    static func failure(_ why: String) -> ExitCode {
        FileHandle.standardError.write(Data("corral: \(why)\n".utf8))
        return ExitCode(2)
    }
}
