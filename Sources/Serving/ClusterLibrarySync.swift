import Foundation
import Logging
import Runtime
import Store

/// Applies the library state another node changed to this node's scheduler: the default model,
/// runtime aliases and pins (sampling profiles reload themselves).
public enum ClusterLibrarySync {
    public static func apply(_ state: any LibraryStateStore, to scheduler: Scheduler, logger: Logger) async {
        do {
            var defaultModel: String?
            if let saved = try await state.document(kind: "setting", id: "defaultModel") {
                defaultModel = (try? JSONDecoder().decode(DefaultModelSetting.self, from: saved))?.model
            }
            if scheduler.currentCatalog.defaultModel != defaultModel, let defaultModel {
                _ = try? await scheduler.setDefaultModel(defaultModel)
            } else if defaultModel == nil {
                _ = try? await scheduler.setDefaultModel(nil)
            }
            let aliases = try await state.modelAliases()
            for (alias, target) in aliases { _ = try? await scheduler.addRuntimeAlias(alias, for: target) }
            // An alias another node deleted goes here too.
            for alias in await scheduler.runtimeAliases.keys where aliases[alias] == nil { _ = await scheduler.removeRuntimeAlias(alias) }
            for data in try await state.documents(kind: "pin", model: nil, limit: 10_000) {
                guard let pin = try? JSONDecoder().decode(Pin.self, from: data) else { continue }
                try? await scheduler.setPinned(pin.model, pin.pinned)
            }
        } catch {
            logger.warning("the library state another node changed could not be read", metadata: ["error": "\(error)"])
        }
    }

    /// The saved `defaultModel` setting.
    struct DefaultModelSetting: Decodable {
        var model: String?
    }

    /// A saved pin.
    struct Pin: Decodable {
        var model: String
        var pinned: Bool
    }
}
