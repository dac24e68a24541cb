import Foundation
import GGUF
import Testing

@testable import Runtime

/// Warm swaps' folder of saved KV caches: named by everything that shapes a cache, and kept
/// under its disk bound by dropping the least recently used files first.
@Suite struct WarmSwapTests {
    let root = NSTemporaryDirectory() + "corral-kv-\(UUID().uuidString)"

    func file(_ path: String, bytes: Int, usedSecondsAgo: Double) throws {
        try FileManager.default.createDirectory(atPath: (path as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
        try Data(count: bytes).write(to: URL(fileURLWithPath: path))
        try FileManager.default.setAttributes([.modificationDate: Date().addingTimeInterval(-usedSecondsAgo)], ofItemAtPath: path)
    }

    @Test func aFullCacheFolderDropsTheLeastRecentlyUsedFirst() throws {
        defer { try? FileManager.default.removeItem(atPath: root) }
        let store = WarmSwapStore(root: root, maxBytes: 250, saveTimeout: .seconds(1))
        try file(root + "/a/slot-0.bin", bytes: 100, usedSecondsAgo: 300)
        try file(root + "/a/slot-1.bin", bytes: 100, usedSecondsAgo: 10)
        try file(root + "/b/slot-0.bin", bytes: 100, usedSecondsAgo: 200)
        #expect(store.trim() == [root + "/a/slot-0.bin"])
        #expect(store.trim().isEmpty)
        #expect(FileManager.default.fileExists(atPath: root + "/a/slot-1.bin"))
        #expect(FileManager.default.fileExists(atPath: root + "/b/slot-0.bin"))
        // A bound of nothing empties it.
        #expect(WarmSwapStore(root: root, maxBytes: 0, saveTimeout: .seconds(1)).trim().count == 2)
    }

    @Test func theFolderChangesWithAnythingThatShapesTheCache() throws {
        defer { try? FileManager.default.removeItem(atPath: root) }
        try FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: true)
        try TestModel.write(shape: TestModelShape(), to: root + "/m.gguf")
        try Data("server".utf8).write(to: URL(fileURLWithPath: root + "/llama-server"))
        let store = WarmSwapStore(root: root + "/kv", maxBytes: 1 << 20, saveTimeout: .seconds(1))
        let args = ["--alias", "m", "-c", "2048", "-np", "2"]
        let base = try #require(store.folder(modelPath: root + "/m.gguf", arguments: args, serverPath: root + "/llama-server"))
        #expect(base.hasPrefix(root + "/kv/"))
        #expect(store.folder(modelPath: root + "/m.gguf", arguments: args, serverPath: root + "/llama-server") == base)
        #expect(store.folder(modelPath: root + "/m.gguf", arguments: ["--alias", "m", "-c", "4096", "-np", "2"], serverPath: root + "/llama-server") != base)
        #expect(store.folder(modelPath: root + "/m.gguf", arguments: args + ["-ctk", "q8_0"], serverPath: root + "/llama-server") != base)
        // Another llama-server build, or the model file changed: another folder.
        try FileManager.default.setAttributes([.modificationDate: Date().addingTimeInterval(60)], ofItemAtPath: root + "/llama-server")
        let rebuilt = try #require(store.folder(modelPath: root + "/m.gguf", arguments: args, serverPath: root + "/llama-server"))
        #expect(rebuilt != base)
        try FileManager.default.setAttributes([.modificationDate: Date().addingTimeInterval(60)], ofItemAtPath: root + "/m.gguf")
        #expect(store.folder(modelPath: root + "/m.gguf", arguments: args, serverPath: root + "/llama-server") != rebuilt)
        #expect(store.folder(modelPath: root + "/missing.gguf", arguments: args, serverPath: root + "/llama-server") == nil)
    }
}
