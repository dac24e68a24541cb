/// Requests and tokens of the last 60 seconds, in constant time and memory.
///
/// The window is 61 one-second slots in a ring. Each slot remembers the earliest and latest
/// moment it received something, and a slot leaves the window only when its *latest* entry is
/// 60 seconds old — so nothing ever leaves earlier than it would in an exact sliding window (a
/// limit never overshoots), and a slot holding one entry leaves exactly when that entry would.
/// Sixty-one slots because an entry at second `s` can still count during second `s + 60`.
///
/// Admission, settlement and expiry are O(1) (amortised: each slot expires once per lap);
/// computing a `Retry-After` after a refusal walks at most 61 slots.
struct MinuteWindow {
    struct Slot {
        /// The whole second this slot holds; `Int.min` when empty.
        var second = Int.min
        var requests = 0
        var tokens = 0
        var earliest = 0.0
        var latest = 0.0
    }

    static let span = 60.0
    static let slotCount = 61

    private var slots = [Slot](repeating: Slot(), count: slotCount)
    /// Requests and tokens in the window.
    private(set) var requests = 0
    private(set) var tokens = 0
    /// The oldest second that may still hold entries.
    private var oldest = Int.min
    /// The newest second that received an entry.
    private var newest = Int.min
    /// The latest moment seen: the clock is taken as never going back (a step back counts as now).
    private var clock = -Double.infinity

    private static func index(_ second: Int) -> Int {
        let i = second % slotCount
        return i < 0 ? i + slotCount : i
    }

    /// Drops what is 60 seconds old at `t`; returns `t` made monotonic.
    @discardableResult
    mutating func expire(at time: Double) -> Double {
        let t = max(time, clock)
        clock = t
        let now = Int(t.rounded(.down))
        if newest == Int.min || now - newest > Self.slotCount {
            // Nothing added for longer than a lap: everything is gone.
            if requests != 0 || tokens != 0 { self = MinuteWindow(); clock = t }
            oldest = now
            return t
        }
        while oldest <= now {
            let i = Self.index(oldest)
            if slots[i].second == oldest {
                guard slots[i].latest <= t - Self.span else { break }
                requests -= slots[i].requests
                tokens -= slots[i].tokens
                slots[i] = Slot()
            }
            oldest += 1
        }
        return t
    }

    /// Counts one request of `n` tokens at `t` (already passed through ``expire(at:)``).
    mutating func add(at t: Double, tokens n: Int) {
        let second = Int(t.rounded(.down))
        let i = Self.index(second)
        if slots[i].second != second {
            // A slot a lap old was expired by `expire`; one from a clock that went back is merged.
            slots[i] = Slot(second: second, requests: 0, tokens: 0, earliest: t, latest: t)
        }
        slots[i].requests += 1
        slots[i].tokens += n
        slots[i].earliest = min(slots[i].earliest, t)
        slots[i].latest = max(slots[i].latest, t)
        requests += 1
        tokens += n
        oldest = oldest == Int.min ? second : min(oldest, second)
        newest = max(newest, second)
    }

    /// Changes the tokens counted for a request admitted at `t` by `delta` (its reservation
    /// replaced by real usage), if that request is still in the window.
    mutating func adjust(admittedAt t: Double, by delta: Int) {
        let second = Int(t.rounded(.down))
        let i = Self.index(second)
        guard slots[i].second == second, second >= oldest else { return }
        slots[i].tokens += delta
        tokens += delta
    }

    /// Seconds from `t` until the window holds fewer than `limit` requests.
    func secondsUntilRequests(below limit: Int, at t: Double) -> Double {
        secondsUntil(at: t) { freedRequests, _ in requests - freedRequests < limit }
    }

    /// Seconds from `t` until `needed` more tokens fit under `limit`.
    func secondsUntilTokens(fit needed: Int, under limit: Int, at t: Double) -> Double {
        secondsUntil(at: t) { _, freedTokens in tokens - freedTokens + needed <= limit }
    }

    /// Seconds until the oldest entry leaves (the `x-ratelimit-reset-*` value); 0 when empty.
    func secondsUntilOldestLeaves(at t: Double) -> Double {
        guard requests > 0 else { return 0 }
        for second in oldestSeconds(at: t) {
            let slot = slots[Self.index(second)]
            if slot.second == second && slot.requests > 0 { return slot.earliest + Self.span - t }
        }
        return 0
    }

    private func oldestSeconds(at t: Double) -> ClosedRange<Int> {
        let now = Int(t.rounded(.down))
        let from = oldest == Int.min ? now : min(oldest, now)
        return max(from, now - Self.slotCount)...now
    }

    /// Walks slots oldest first until `enough(freedRequests, freedTokens)`; the moment the slot
    /// that made it enough leaves, from `t`. A full window's span when nothing is enough.
    private func secondsUntil(at t: Double, _ enough: (Int, Int) -> Bool) -> Double {
        var freedRequests = 0
        var freedTokens = 0
        for second in oldestSeconds(at: t) {
            let slot = slots[Self.index(second)]
            guard slot.second == second else { continue }
            freedRequests += slot.requests
            freedTokens += slot.tokens
            if enough(freedRequests, freedTokens) { return slot.latest + Self.span - t }
        }
        return Self.span
    }
}

/// Day and month numbers in UTC by arithmetic (no `Calendar` on the request path): budgets reset
/// exactly at 00:00 UTC and on the 1st.
enum UTCPeriods {
    /// Days since 1970-01-01 and `year * 12 + month` for a Unix time.
    static func periods(_ t: Double) -> (day: Int, month: Int) {
        let day = Int((t / 86_400).rounded(.down))
        let (year, month) = civil(day)
        return (day, year * 12 + month)
    }

    /// The proleptic Gregorian year and month (1–12) of a day number (days since 1970-01-01),
    /// after Howard Hinnant's `civil_from_days`.
    static func civil(_ days: Int) -> (year: Int, month: Int) {
        let z = days + 719_468
        let era = (z >= 0 ? z : z - 146_096) / 146_097
        let dayOfEra = z - era * 146_097
        let yearOfEra = (dayOfEra - dayOfEra / 1460 + dayOfEra / 36_524 - dayOfEra / 146_096) / 365
        let dayOfYear = dayOfEra - (365 * yearOfEra + yearOfEra / 4 - yearOfEra / 100)
        let mp = (5 * dayOfYear + 2) / 153
        let month = mp < 10 ? mp + 3 : mp - 9
        return (yearOfEra + era * 400 + (month <= 2 ? 1 : 0), month)
    }
}
