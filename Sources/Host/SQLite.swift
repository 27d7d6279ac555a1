import CSQLite
import VireoSupport

/// A thin binding to the system libsqlite3: one connection, prepared statements, typed binds.
/// Not thread-safe on its own: the `Inventory` that owns it is used from one actor.
final class SQLiteDatabase: @unchecked Sendable {
    private var db: OpaquePointer?
    let path: String

    init(path: String) throws {
        self.path = path
        let flags = SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_FULLMUTEX
        let rc = sqlite3_open_v2(path, &db, flags, nil)
        guard rc == SQLITE_OK, db != nil else {
            let msg = db.map { String(cString: sqlite3_errmsg($0)) } ?? "out of memory"
            sqlite3_close(db)
            throw VireoError(.io, "cannot open the inventory database \(path): \(msg)")
        }
        sqlite3_busy_timeout(db, 5000)
        try execute("PRAGMA journal_mode=WAL")
        try execute("PRAGMA synchronous=NORMAL")
        try execute("PRAGMA foreign_keys=ON")
    }

    deinit { sqlite3_close(db) }

    enum Value: Sendable, Equatable {
        case null, int(Int64), text(String)
    }

    /// Runs SQL with no result rows (several statements allowed when there are no arguments).
    func execute(_ sql: String, _ args: [Value] = []) throws {
        if args.isEmpty {
            var err: UnsafeMutablePointer<CChar>?
            let rc = sqlite3_exec(db, sql, nil, nil, &err)
            if rc != SQLITE_OK {
                let msg = err.map { String(cString: $0) } ?? "error \(rc)"
                sqlite3_free(err)
                throw VireoError(.io, "inventory: \(msg)")
            }
            return
        }
        _ = try query(sql, args)
    }

    /// Runs one statement; returns its rows as arrays of values.
    @discardableResult
    func query(_ sql: String, _ args: [Value] = []) throws -> [[Value]] {
        var stmt: OpaquePointer?
        guard sqlite3_prepare_v2(db, sql, -1, &stmt, nil) == SQLITE_OK, let stmt else {
            throw VireoError(.io, "inventory: cannot prepare statement: \(lastError)")
        }
        defer { sqlite3_finalize(stmt) }
        for (i, a) in args.enumerated() {
            let idx = Int32(i + 1)
            let rc: Int32
            switch a {
            case .null: rc = sqlite3_bind_null(stmt, idx)
            case let .int(v): rc = sqlite3_bind_int64(stmt, idx, v)
            case let .text(s):
                // SQLITE_TRANSIENT: sqlite copies the bytes before this call returns.
                rc = sqlite3_bind_text(stmt, idx, s, -1, unsafeBitCast(-1, to: sqlite3_destructor_type.self))
            }
            guard rc == SQLITE_OK else { throw VireoError(.io, "inventory: bind failed: \(lastError)") }
        }
        var rows: [[Value]] = []
        while true {
            let rc = sqlite3_step(stmt)
            if rc == SQLITE_DONE { break }
            guard rc == SQLITE_ROW else { throw VireoError(.io, "inventory: \(lastError)") }
            var row: [Value] = []
            for c in 0..<sqlite3_column_count(stmt) {
                switch sqlite3_column_type(stmt, c) {
                case SQLITE_NULL: row.append(.null)
                case SQLITE_INTEGER: row.append(.int(sqlite3_column_int64(stmt, c)))
                default:
                    if let p = sqlite3_column_text(stmt, c) { row.append(.text(String(cString: p))) } else { row.append(.null) }
                }
            }
            rows.append(row)
        }
        return rows
    }

    func transaction(_ body: () throws -> Void) throws {
        try execute("BEGIN IMMEDIATE")
        do { try body(); try execute("COMMIT") } catch { try? execute("ROLLBACK"); throw error }
    }

    private var lastError: String { db.map { String(cString: sqlite3_errmsg($0)) } ?? "no database" }
}

extension SQLiteDatabase.Value {
    var int: Int64? { if case let .int(v) = self { return v }; return nil }
    var text: String? { if case let .text(s) = self { return s }; return nil }
}
