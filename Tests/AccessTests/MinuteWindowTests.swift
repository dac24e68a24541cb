import Foundation
import Store
import Testing

@testable import Access

/// The constant-time minute window against an exact sliding window of timestamps.
struct MinuteWindowTests {
    @Test func anEntryLeavesExactlySixtySecondsLaterAndNeverEarlier() {
        var w = MinuteWindow()
        let t0 = 1_000_000.25
        w.expire(at: t0)
        w.add(at: t0, tokens: 5)
        w.expire(at: t0 + 59.99)
        #expect(w.requests == 1 && w.tokens == 5)
        w.expire(at: t0 + 60)
        #expect(w.requests == 0 && w.tokens == 0)
    }

    @Test func manyEntriesInOneSecondLeaveWithTheLatest() {
        var w = MinuteWindow()
        w.expire(at: 10.1)
        w.add(at: 10.1, tokens: 1)
        w.add(at: 10.9, tokens: 1)
        w.expire(at: 70.5)  // the first is 60.4 s old, the second 59.6 s: both still count
        #expect(w.requests == 2)
        w.expire(at: 70.9)
        #expect(w.requests == 0)
    }

    /// Random traffic: the window never counts less than the exact window (no overshoot), and
    /// never more than an exact window one second longer.
    @Test(arguments: [11, 12, 13] as [UInt64])
    func agreesWithAnExactWindowWithinOneSecond(seed: UInt64) {
        var rng = seed
        func next() -> Double {
            rng = rng &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
            return Double(rng >> 11) / Double(1 << 53)
        }
        var w = MinuteWindow()
        var exact: [(Double, Int)] = []
        var longer: [Double] = []
        var t = 5_000.0
        for _ in 0..<20_000 {
            t += next() * next() * 3
            w.expire(at: t)
            let n = Int(next() * 100)
            w.add(at: t, tokens: n)
            exact.append((t, n))
            exact.removeAll { $0.0 <= t - 60 }
            longer.append(t)
            longer.removeAll { $0 <= t - 61 }
            #expect(w.requests >= exact.count && w.tokens >= exact.reduce(0) { $0 + $1.1 })
            #expect(w.requests <= longer.count)
        }
    }

    @Test func settlementCorrectsTheSlotWhileItIsInTheWindow() {
        var w = MinuteWindow()
        w.expire(at: 100)
        w.add(at: 100, tokens: 50)
        w.adjust(admittedAt: 100, by: -30)
        #expect(w.tokens == 20)
        w.expire(at: 161)
        w.adjust(admittedAt: 100, by: 10)  // already gone: nothing to correct
        #expect(w.tokens == 0 && w.requests == 0)
    }

    @Test func memoryStaysConstantAfterHoursOfTraffic() {
        var w = MinuteWindow()
        for i in 0..<360_000 {
            let t = 1_000.0 + Double(i) * 0.05  // 20 requests a second for five hours
            w.expire(at: t)
            w.add(at: t, tokens: 1)
        }
        #expect(w.requests == 1200 || w.requests == 1201)
    }

    @Test func utcPeriodsAgreeWithTheCalendar() {
        var calendar = Calendar(identifier: .gregorian)
        calendar.timeZone = TimeZone(identifier: "UTC")!
        var t = -2_000_000_000.0
        while t < 5_000_000_000 {
            let d = Date(timeIntervalSince1970: t)
            let c = calendar.dateComponents([.year, .month], from: d)
            let (day, month) = UTCPeriods.periods(t)
            #expect(month == c.year! * 12 + c.month!, "\(d)")
            #expect(day == Int(calendar.startOfDay(for: d).timeIntervalSince1970 / 86_400), "\(d)")
            t += 86_399.7 * 13.3
        }
    }
}

extension AccessControlTests {
    /// Minutes of sustained traffic at the limit: never more than `rpm` in any sliding minute,
    /// and no minute starved (at most the one-second grain of the window held back).
    @Test func requestsPerMinuteStaysExactOverManyMinutes() async throws {
        let clock = TestClock(Date(timeIntervalSince1970: 1_800_000_000.5))
        let (access, caller, _) = try await make(Policy(requestsPerMinute: 100, tokensPerMinute: 1000), clock: clock)
        var times: [Double] = []
        for minute in 0..<10 {
            var admitted = 0
            for _ in 0..<300 {
                if let r = try? access.admitLocally(caller, model: ["m"], tokens: 3) {
                    admitted += 1
                    times.append(clock.now.timeIntervalSince1970)
                    access.reconcile(r, actualTokens: 2)
                }
                clock.advance(0.2)
            }
            #expect(minute == 0 ? admitted == 100 : (95...100).contains(admitted), "minute \(minute): \(admitted)")
        }
        for (i, t) in times.enumerated() {
            #expect(times[i...].prefix { $0 < t + 60 }.count <= 100, "more than 100 within a minute from \(t)")
        }
    }

    /// Two teams admit concurrently on their own shards; neither overshoots.
    @Test func teamsAdmitIndependentlyAndExactly() async throws {
        let access = AccessControl(store: try Store.inMemory())
        var callers: [Caller] = []
        for name in ["one", "two", "three"] {
            _ = try await access.createTeam(name: name, policy: Policy(tokensPerMinute: 700))
            let (secret, _) = try await access.createKey(team: name, name: "k", expiresAt: nil, policy: Policy(maxParallel: 1000))
            callers.append(try access.authenticate(secret))
        }
        let admitted = await withTaskGroup(of: (Int, Bool).self) { group in
            for i in 0..<600 {
                let caller = callers[i % 3]
                group.addTask { (i % 3, (try? access.admitLocally(caller, model: ["m"], tokens: 7)) != nil) }
            }
            var counts = [0, 0, 0]
            for await (team, ok) in group where ok { counts[team] += 1 }
            return counts
        }
        #expect(admitted == [100, 100, 100])
    }
}

/// Look-ups of keys a cluster node has not heard of: misses remembered, a budget per second.
struct KeyLookupTests {
    @Test func aMissIsNotAskedAgainUntilItsMemoryEnds() {
        let lookups = KeyLookups()
        let t = ContinuousClock.now
        #expect(lookups.mayLookUp("ck-aaaaaaaa", at: t))
        lookups.remember("ck-aaaaaaaa", at: t)
        #expect(!lookups.mayLookUp("ck-aaaaaaaa", at: t + .seconds(1)))
        #expect(lookups.mayLookUp("ck-bbbbbbbb", at: t + .seconds(1)))
        #expect(lookups.mayLookUp("ck-aaaaaaaa", at: t + AccessControl.missMemory + .milliseconds(1)))
    }

    @Test func randomKeysCannotFloodTheStore() {
        let lookups = KeyLookups()
        let t = ContinuousClock.now
        let allowed = (0..<1000).filter { lookups.mayLookUp("ck-\($0)", at: t + .milliseconds($0 / 10)) }.count
        #expect(allowed == AccessControl.lookupsPerSecond)
        #expect(lookups.mayLookUp("ck-next", at: t + .seconds(1)))
        // Remembered misses stay bounded however many random prefixes come.
        for i in 0..<(AccessControl.missCapacity * 3) { lookups.remember("ck-\(i)", at: t) }
        #expect(lookups.missCount <= AccessControl.missCapacity)
    }
}

struct PresentedKeyTests {
    @Test func bearerOrXAPIKeyTrimmedAndCaseInsensitive() {
        #expect(AccessControl.presentedKey(authorization: "Bearer ck-abc", apiKey: nil) == "ck-abc")
        #expect(AccessControl.presentedKey(authorization: "  bEaReR \t ck-abc  ", apiKey: nil) == "ck-abc")
        #expect(AccessControl.presentedKey(authorization: "Bearer   ", apiKey: " k ") == "k")
        #expect(AccessControl.presentedKey(authorization: "Basic dXNlcg==", apiKey: nil) == nil)
        #expect(AccessControl.presentedKey(authorization: "Bear", apiKey: "") == nil)
        #expect(AccessControl.presentedKey(authorization: nil, apiKey: "x-key") == "x-key")
        #expect(AccessControl.presentedKey(authorization: "Bearer clé-ü", apiKey: nil) == "clé-ü")
    }
}
