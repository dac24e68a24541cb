import Foundation
import Logging
import PostgresNIO

/// The registry of cluster RPC workers and the memory nodes reserved on them. A reservation is
/// made in one transaction that locks the workers' rows (in name order, so two nodes reserving
/// at once queue rather than deadlock), sums the live reservations and inserts all parts or
/// none: a worker's reservations never exceed what it offers. Reservations live for
/// ``rpcReservationLease`` seconds unless their node renews them (every heartbeat), so a node that
/// dies frees its workers' memory.
extension PostgresStore {
    /// Seconds a reservation lives without renewal.
    public static let rpcReservationLease = 15.0

    static let rpcMigration: (String, [String]) = ("pg7-rpc-workers", [
        """
        CREATE TABLE rpc_worker (node TEXT PRIMARY KEY, endpoint TEXT NOT NULL, devices TEXT NOT NULL, memory_mib INT NOT NULL,
          heartbeat DOUBLE PRECISION NOT NULL)
        """,
        """
        CREATE TABLE rpc_reservation (worker TEXT NOT NULL, holder TEXT NOT NULL, instance TEXT NOT NULL, mib INT NOT NULL,
          renewed DOUBLE PRECISION NOT NULL, PRIMARY KEY (worker, holder, instance))
        """,
    ])

    /// Registers or refreshes `node`'s worker with the store's clock as its heartbeat.
    public func offerRPCWorker(node: String, endpoint: String, devices: [String], memoryMiB: Int) async throws {
        let joined = devices.joined(separator: ",")
        try await client.query("""
            INSERT INTO rpc_worker (node, endpoint, devices, memory_mib, heartbeat)
            VALUES (\(node), \(endpoint), \(joined), \(memoryMiB), EXTRACT(EPOCH FROM clock_timestamp()))
            ON CONFLICT (node) DO UPDATE SET endpoint = EXCLUDED.endpoint, devices = EXCLUDED.devices, memory_mib = EXCLUDED.memory_mib,
              heartbeat = EXCLUDED.heartbeat
            """, logger: logger)
    }

    /// Takes `node`'s worker out of the registry.
    public func withdrawRPCWorker(node: String) async throws {
        try await client.query("DELETE FROM rpc_worker WHERE node = \(node)", logger: logger)
    }

    /// Every registered worker (its node, gate, devices and the MiB it offers) with the MiB its
    /// live reservations hold and the seconds since its heartbeat, by the store's clock.
    public func rpcWorkerRows() async throws -> [(node: String, endpoint: String, devices: [String], memoryMiB: Int, reservedMiB: Int, age: Double)] {
        let lease = Self.rpcReservationLease
        let rows = try await client.query("""
            SELECT w.node, w.endpoint, w.devices, w.memory_mib, EXTRACT(EPOCH FROM clock_timestamp())::FLOAT8 - w.heartbeat,
              COALESCE((SELECT SUM(r.mib) FROM rpc_reservation r
                        WHERE r.worker = w.node AND r.renewed > EXTRACT(EPOCH FROM clock_timestamp()) - \(lease)), 0)::INT
            FROM rpc_worker w ORDER BY w.node
            """, logger: logger)
        var out: [(node: String, endpoint: String, devices: [String], memoryMiB: Int, reservedMiB: Int, age: Double)] = []
        for try await (node, endpoint, devices, memory, age, reserved) in rows.decode((String, String, String, Int, Double, Int).self) {
            out.append((node, endpoint, devices.split(separator: ",").map(String.init), memory, reserved, age))
        }
        return out
    }

    /// Reserves `parts` (worker → MiB) for `holder`'s `instance`, all or none, on workers whose
    /// heartbeat is younger than `liveWithin` seconds. Returns the first worker (by name) that
    /// lacks the room or is gone; nil when reserved.
    public func reserveRPCWorkers(holder: String, instance: String, parts: [String: Int], liveWithin: Double) async throws -> String? {
        let names = parts.keys.sorted()
        guard !names.isEmpty else { return nil }
        let lease = Self.rpcReservationLease
        var refused: String?
        try await client.withTransaction(logger: logger) { tx in
            var offered: [String: (memory: Int, age: Double)] = [:]
            let locked = try await tx.query("""
                SELECT node, memory_mib, EXTRACT(EPOCH FROM clock_timestamp())::FLOAT8 - heartbeat FROM rpc_worker
                WHERE node = ANY(\(names)) ORDER BY node FOR UPDATE
                """, logger: logger)
            for try await (node, memory, age) in locked.decode((String, Int, Double).self) { offered[node] = (memory, age) }
            var held: [String: Int] = [:]
            let sums = try await tx.query("""
                SELECT worker, SUM(mib)::INT FROM rpc_reservation
                WHERE worker = ANY(\(names)) AND renewed > EXTRACT(EPOCH FROM clock_timestamp()) - \(lease) GROUP BY worker
                """, logger: logger)
            for try await (worker, mib) in sums.decode((String, Int).self) { held[worker] = mib }
            for name in names {
                guard let worker = offered[name], worker.age < liveWithin, held[name, default: 0] + parts[name]! <= worker.memory else {
                    refused = name
                    return
                }
            }
            for name in names {
                let mib = parts[name]!
                try await tx.query("""
                    INSERT INTO rpc_reservation (worker, holder, instance, mib, renewed)
                    VALUES (\(name), \(holder), \(instance), \(mib), EXTRACT(EPOCH FROM clock_timestamp()))
                    ON CONFLICT (worker, holder, instance) DO UPDATE SET mib = EXCLUDED.mib, renewed = EXCLUDED.renewed
                    """, logger: logger)
            }
        }
        return refused
    }

    /// Gives back `holder`'s reservation for `instance` on every worker.
    public func releaseRPCWorkers(holder: String, instance: String) async throws {
        try await client.query("DELETE FROM rpc_reservation WHERE holder = \(holder) AND instance = \(instance)", logger: logger)
    }

    /// Keeps `holder`'s reservations alive and drops every reservation past its lease.
    public func renewRPCReservations(holder: String) async throws {
        let lease = Self.rpcReservationLease
        try await client.query("UPDATE rpc_reservation SET renewed = EXTRACT(EPOCH FROM clock_timestamp()) WHERE holder = \(holder)", logger: logger)
        try await client.query("DELETE FROM rpc_reservation WHERE renewed < EXTRACT(EPOCH FROM clock_timestamp()) - \(lease) * 4", logger: logger)
    }
}
