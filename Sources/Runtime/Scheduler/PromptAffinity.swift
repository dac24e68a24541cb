/// What a request's prompt starts with, as chained hashes of its leading blocks, and the session
/// it says it belongs to: enough to send it to the instance whose cache most likely holds it.
///
/// The blocks are cut from the prompt as the request carries it (a chat's `messages` array as
/// the client serialized it, a completion's `prompt`), not from the rendered template: each turn
/// of a conversation repeats the previous turn's bytes, so its leading blocks are the previous
/// prompt's, which is what a prefix match needs. Hashes come from Swift's `Hasher` (seeded per
/// process): they are compared only within this process.
public struct PromptAffinity: Sendable, Equatable {
    /// Bytes per block.
    public static let blockBytes = 256
    /// Blocks hashed at most (64 KiB of prompt); longer prompts match on their first 64 KiB.
    public static let maxBlocks = 256

    /// Hash of the blocks 0...i, for each whole leading block.
    public var blocks: [Int]
    /// The request's session (OpenAI's `user`, or the `x-session-id` header).
    public var session: String?

    public init(blocks: [Int], session: String? = nil) {
        self.blocks = blocks
        self.session = session
    }

    /// The chained hashes of `prompt`'s whole leading blocks (a last partial block is left out:
    /// the next turn's prompt continues it).
    public init(prompt: UnsafeRawBufferPointer, session: String?) {
        var blocks: [Int] = []
        let count = min(prompt.count / Self.blockBytes, Self.maxBlocks)
        blocks.reserveCapacity(count)
        var previous = 0
        for i in 0..<count {
            var hasher = Hasher()
            hasher.combine(previous)
            hasher.combine(bytes: UnsafeRawBufferPointer(rebasing: prompt[(i * Self.blockBytes)..<((i + 1) * Self.blockBytes)]))
            previous = hasher.finalize()
            blocks.append(previous)
        }
        self.init(blocks: blocks, session: session)
    }

    public var isEmpty: Bool { blocks.isEmpty && session == nil }
}

/// Which instances of a model hold which prompt prefixes (a block is held by every instance
/// that served a prompt starting with it) and each session's last instance, bounded in size. A
/// value: the scheduler keeps one per model.
public struct AffinityTable: Sendable {
    private struct Entry {
        /// Bit r: replica r holds it (replicas 0...63; higher ones are not tracked).
        var holders: UInt64
        var stamp: UInt64
    }

    private var blocks: [Int: Entry] = [:]
    private var sessions: [String: (replica: Int, stamp: UInt64)] = [:]
    private var clock: UInt64 = 0
    /// Entries kept (blocks and sessions each); past it the older half is dropped.
    public let capacity: Int

    public init(capacity: Int = 65_536) { self.capacity = max(2, capacity) }

    /// Remembers that `replica` now holds `affinity`'s prefix (every leading block) and session.
    public mutating func record(_ affinity: PromptAffinity, replica: Int) {
        clock += 1
        let bit: UInt64 = replica < 64 ? 1 << UInt64(replica) : 0
        for block in affinity.blocks { blocks[block] = Entry(holders: (blocks[block]?.holders ?? 0) | bit, stamp: clock) }
        if let session = affinity.session { sessions[session] = (replica, clock) }
        if blocks.count > capacity {
            let cut = Self.median(blocks.values.map(\.stamp))
            blocks = blocks.filter { $0.value.stamp >= cut }
        }
        if sessions.count > capacity {
            let cut = Self.median(sessions.values.map(\.stamp))
            sessions = sessions.filter { $0.value.stamp >= cut }
        }
    }

    private static func median(_ stamps: [UInt64]) -> UInt64 { stamps.sorted()[stamps.count / 2] }

    /// Forgets what `replica` held (it stopped: its cache is gone).
    public mutating func forget(replica: Int) {
        let keep: UInt64 = replica < 64 ? ~(1 << UInt64(replica)) : ~0
        blocks = blocks.compactMapValues { entry in
            let holders = entry.holders & keep
            return holders == 0 ? nil : Entry(holders: holders, stamp: entry.stamp)
        }
        sessions = sessions.filter { $0.value.replica != replica }
    }

    /// How many leading blocks of the prompt each instance holds (instances holding none are
    /// left out).
    public func matches(_ affinity: PromptAffinity) -> [Int: Int] {
        var matched: [Int: Int] = [:]
        var still: UInt64 = ~0
        for (i, block) in affinity.blocks.enumerated() {
            still &= blocks[block]?.holders ?? 0
            if still == 0 { break }
            var bits = still
            while bits != 0 {
                let r = bits.trailingZeroBitCount
                matched[r] = i + 1
                bits &= bits - 1
            }
        }
        return matched
    }

    /// The instance most likely to hold the prompt where one stands out: the session's last
    /// one, else the one holding strictly more of its leading blocks than any other, with the
    /// number of blocks it holds. Nil when nothing matches or the best are tied (a prefix every
    /// instance holds, like a shared system prompt, prefers none).
    public func preferred(_ affinity: PromptAffinity) -> (replica: Int, matchedBlocks: Int)? {
        if let session = affinity.session, let entry = sessions[session] { return (entry.replica, affinity.blocks.count) }
        let ranked = matches(affinity).sorted { ($0.value, -$0.key) > ($1.value, -$1.key) }
        guard let best = ranked.first, ranked.count == 1 || ranked[1].value < best.value else { return nil }
        return (best.key, best.value)
    }

    public var blockCount: Int { blocks.count }
}

/// How a request picks one of a model's ready instances: a pure function of their load.
public enum ReplicaChoice {
    /// An instance's load as routing sees it.
    public struct Candidate: Sendable, Equatable {
        public var replica: Int
        public var inFlight: Int
        public var slots: Int
        /// Queued requests waiting for this instance in particular (their prefix points at it).
        public var waiting: Int

        public init(replica: Int, inFlight: Int, slots: Int, waiting: Int = 0) {
            self.replica = replica
            self.inFlight = inFlight
            self.slots = slots
            self.waiting = waiting
        }

        var hasFreeSlot: Bool { inFlight < slots }
        var load: Int { inFlight + waiting }
    }

    /// Where a request goes.
    public enum Decision: Sendable, Equatable {
        /// To this instance now.
        case instance(Int)
        /// Into the model's queue, waiting for this instance (nil: for whichever frees first).
        case queue(preferring: Int?)
    }

    /// How far above the average load the preferred instance may be and still take a request
    /// (bounded-load consistent hashing's c): one hot prefix cannot take more than its share.
    public static let loadBound = 1.25

    /// The decision for a request.
    /// - prefix affinity: the `preferred` instance when its load (in flight and waiting for it),
    ///   counting this request, is at most `loadBound` × the average load over the instances
    ///   (in flight and queued), rounded up: now when it has a free slot, else queued for it
    ///   unless another instance is idle, since recomputing a long prompt elsewhere costs more
    ///   than a short wait. Past the bound, or with no preference, the next instance with a free
    ///   slot after `after`, as round-robin does, else the queue. Not the least busy one:
    ///   closed-loop clients whose requests finish together go back together to the instance
    ///   that just freed their slots, and process their prompts side by side every time
    ///   (bench-cache measured 1.5–1.8 × round-robin's time to first token for requests with no
    ///   shared prefix; 1.08 with alternation).
    /// - round robin: the first instance with a free slot after `after` (the last one given),
    ///   else the queue.
    public static func decide(among candidates: [Candidate], preferred: Int?, routing: ReplicaPolicy.Routing, after: Int,
                              queued: Int = 0) -> Decision {
        let free = candidates.filter(\.hasFreeSlot).sorted { $0.replica < $1.replica }
        switch routing {
        case .roundRobin:
            guard !free.isEmpty else { return .queue(preferring: nil) }
            return .instance((free.first { $0.replica > after } ?? free[0]).replica)
        case .prefixAffinity:
            if let preferred, let candidate = candidates.first(where: { $0.replica == preferred }) {
                let total = candidates.reduce(0) { $0 + $1.inFlight } + queued + 1
                let bound = (loadBound * Double(total) / Double(candidates.count)).rounded(.up)
                if Double(candidate.load + 1) <= bound {
                    if candidate.hasFreeSlot { return .instance(preferred) }
                    // Wait for it only while every instance is working: an idle one takes it now.
                    if !candidates.contains(where: { $0.inFlight == 0 }) { return .queue(preferring: preferred) }
                }
            }
            guard !free.isEmpty else { return .queue(preferring: nil) }
            return .instance((free.first { $0.replica > after } ?? free[0]).replica)
        }
    }
}
