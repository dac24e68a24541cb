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
                defaultModel = (try? JSONSerialization.jsonObject(with: saved) as? [String: Any])?["model"] as? String
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
                guard let object = try? JSONSerialization.jsonObject(with: data) as? [String: Any], let model = object["model"] as? String,
                    let pinned = object["pinned"] as? Bool
                else { continue }
                try? await scheduler.setPinned(model, pinned)
            }
        } catch {
            logger.warning("the library state another node changed could not be read", metadata: ["error": "\(error)"])
        }
    }
}
