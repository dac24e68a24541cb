import Foundation
import GRDB

/// Which teams' rows (files, evaluations) a query may see.
public enum TeamScope: Sendable, Equatable {
    /// Every team's (the admin).
    case all
    /// One team's; `nil` is what was made without a team (open mode).
    case team(String?)

    /// The SQL condition on a `team` column, and its arguments.
    var condition: (sql: String, arguments: StatementArguments) {
        switch self {
        case .all: ("1 = 1", [])
        case .team(let team?): ("team = ?", [team])
        case .team(nil): ("team IS NULL", [])
        }
    }
}

/// Reading, paging and deleting the rows of a table whose rows belong to a team (columns `id`,
/// `team`, `createdAt`): one implementation for files and evaluations.
extension Store {
    /// The row `id` of `table` if `scope` may see it.
    func teamOwnedRow(_ db: Database, _ table: String, id: String, scope: TeamScope) throws -> Row? {
        let (condition, arguments) = scope.condition
        return try Row.fetchOne(db, sql: "SELECT * FROM \(table) WHERE id = ? AND \(condition)", arguments: [id] + arguments)
    }

    /// Rows of `table` that `scope` may see and that match `filters` (column = value), by
    /// creation time, after the row `after` (the paging cursor).
    func teamOwnedPage(
        _ db: Database, _ table: String, scope: TeamScope, filters: [(column: String, value: String)] = [], after: String?, limit: Int, newestFirst: Bool
    ) throws -> [Row] {
        var (sql, arguments) = scope.condition
        for filter in filters {
            sql += " AND \(filter.column) = ?"
            arguments += [filter.value]
        }
        if let after {
            sql += " AND (createdAt, id) \(newestFirst ? "<" : ">") (SELECT createdAt, id FROM \(table) WHERE id = ?)"
            arguments += [after]
        }
        let direction = newestFirst ? "DESC" : "ASC"
        arguments += [limit]
        return try Row.fetchAll(db, sql: "SELECT * FROM \(table) WHERE \(sql) ORDER BY createdAt \(direction), id \(direction) LIMIT ?", arguments: arguments)
    }

    /// Deletes the row `id` of `table` if `scope` may see it; whether it did.
    func deleteTeamOwned(_ db: Database, _ table: String, id: String, scope: TeamScope) throws -> Bool {
        let (condition, arguments) = scope.condition
        try db.execute(sql: "DELETE FROM \(table) WHERE id = ? AND \(condition)", arguments: [id] + arguments)
        return db.changesCount > 0
    }
}
