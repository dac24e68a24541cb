import AsyncHTTPClient
import Foundation
import GGUF
import NIOCore
import NIOHTTP1

/// Reads a remote GGUF's header without downloading the file: fetches a prefix with `Range`,
/// parses it as the start of a file of the remote's size, and grows the prefix (fetching only
/// the missing bytes) until the tensor table is complete.
public struct RemoteHeader: Sendable {
    let sources: ModelSources

    public init(sources: ModelSources) { self.sources = sources }

    /// What reading the header cost.
    public struct Cost: Sendable, Codable, Equatable {
        public var bytesFetched: Int64
        public var fileBytes: Int64
        public var requests: Int
    }

    /// The facts of the model `reference` names (every part of a split model), before any pull.
    public func facts(_ reference: ModelReference, insecure: Bool) async throws -> (facts: ModelFacts, cost: Cost) {
        let insecure = sources.permitsPlainHTTP(reference, insecure: insecure)
        let plan = try await sources.plan(reference, insecure: insecure)
        // The hub: the model's parts (not its projector); Ollama: the model layer.
        let targets: [BlobTarget] = plan.hubRepository != nil
            ? plan.files.filter { !($0.snapshotName ?? "").lowercased().contains("mmproj") }.map(\.target)
            : plan.modelFile.map { [$0] } ?? []
        var parts: [GGUFFile] = []
        var cost = Cost(bytesFetched: 0, fileBytes: 0, requests: 0)
        for target in targets {
            let (file, partCost) = try await header(target, insecure: insecure)
            parts.append(file)
            cost.bytesFetched += partCost.bytesFetched
            cost.fileBytes += partCost.fileBytes
            cost.requests += partCost.requests
        }
        return (ModelFacts(parts: parts), cost)
    }

    /// One file's header: 1 MiB first, four times more each round, at most 256 MiB.
    func header(_ target: BlobTarget, insecure: Bool) async throws -> (GGUFFile, Cost) {
        let scratch = NSTemporaryDirectory() + "corral-header-\(UUID().uuidString)"
        FileManager.default.createFile(atPath: scratch, contents: nil)
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        guard let handle = FileHandle(forWritingAtPath: scratch) else { throw AcquisitionError.storage("cannot write \(scratch)") }
        defer { try? handle.close() }
        let downloader = BlobDownloader(client: sources.client)
        var have: Int64 = 0
        var want: Int64 = 1 << 20
        var total = target.size
        var requests = 0
        while true {
            let end = total.map { min(want, $0) } ?? want
            if have < end {
                let (response, _) = try await downloader.follow(
                    HTTPClientRequest(url: target.url), headers: target.headers.merging(["Range": "bytes=\(have)-\(end - 1)"]) { $1 }, insecure: insecure)
                requests += 1
                guard response.status.code == 206 || response.status.code == 200 else {
                    throw response.status.code == 404
                        ? AcquisitionError.notFound("\(target.url) was not found")
                        : AcquisitionError.upstream("\(target.url) answered \(response.status.code) to a range request")
                }
                if total == nil, let range = response.headers.first(name: "content-range"), let size = range.split(separator: "/").last.flatMap({ Int64($0) }) {
                    total = size
                }
                // A server that ignores ranges sends the whole file: keep only what was asked for.
                var received: Int64 = 0
                let limit = end - have
                for try await chunk in response.body {
                    let take = Int(min(Int64(chunk.readableBytes), limit - received))
                    if take > 0 { try handle.write(contentsOf: Data(chunk.readableBytesView.prefix(take))) }
                    received += Int64(take)
                    if received >= limit { break }
                }
                have += received
            }
            guard let size = total else { throw AcquisitionError.upstream("\(target.url) did not say its size") }
            do {
                let file = try GGUFFile.read(path: scratch, declaredSize: UInt64(size))
                return (file, Cost(bytesFetched: have, fileBytes: size, requests: requests))
            } catch let error where error.kind == .truncated && have < size && want < 256 << 20 {
                want *= 4
            } catch {
                throw AcquisitionError.upstream("the header of \((target.url as NSString).lastPathComponent) cannot be read: \(error)")
            }
        }
    }
}
