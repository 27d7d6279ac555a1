#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
import VireoAPI
import VireoSupport

/// One VM's row: its definition (stored as JSON, so new definition fields need no migration)
/// and its runtime state.
struct VMRecord: Sendable, Equatable {
    var definition: VMDefinition
    var state: VMState
    var reason: String?
    var pid: Int32?
    /// /proc/PID/stat field 22 of the VMM when it was started: tells a re-used pid apart.
    var pidStartTime: UInt64?
    var exitStatus: Int?
    var restartCount: Int
    var createdAt: String
    var name: String { definition.name }
}

/// The daemon's SQLite inventory. Migrations are numbered; `schema_version` holds the last applied.
final class Inventory: @unchecked Sendable {
    private let db: SQLiteDatabase
    /// Every VM row, in memory: the daemon is the database's only writer, so a write-through
    /// cache stays exact and reads (list, show, metrics) never touch SQLite.
    private var cache: [String: VMRecord] = [:]

    static let migrations: [String] = [
        // 1: VMs.
        """
        CREATE TABLE vms (
            name TEXT PRIMARY KEY NOT NULL,
            definition TEXT NOT NULL,
            state TEXT NOT NULL,
            reason TEXT,
            pid INTEGER,
            pid_start_time INTEGER,
            exit_status INTEGER,
            restart_count INTEGER NOT NULL DEFAULT 0,
            created_at TEXT NOT NULL
        );
        """,
        // 2: the event log (GET /v1/events).
        """
        CREATE TABLE events (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            time TEXT NOT NULL,
            vm TEXT NOT NULL,
            type TEXT NOT NULL,
            message TEXT NOT NULL
        );
        """,
        // 3: templates (the definition as JSON, like VMs).
        """
        CREATE TABLE templates (
            name TEXT PRIMARY KEY NOT NULL,
            definition TEXT NOT NULL
        );
        """,
        // 4: events name their subject and its kind (the column `vm` held templates' and images'
        // names too). Old rows are kept; their kind is read from their type.
        """
        ALTER TABLE events RENAME COLUMN vm TO subject;
        ALTER TABLE events ADD COLUMN subject_kind TEXT NOT NULL DEFAULT 'vm';
        UPDATE events SET subject_kind = 'image' WHERE type LIKE 'image-%';
        UPDATE events SET subject_kind = 'template' WHERE type LIKE 'template-%';
        CREATE INDEX events_subject ON events (subject, seq);
        """,
        // 5: networks (their create request as JSON), and the daemon's own settings: the
        // `default` network is made at the first start that finds 'pending'.
        """
        CREATE TABLE networks (
            name TEXT PRIMARY KEY NOT NULL,
            definition TEXT NOT NULL,
            created_at TEXT NOT NULL
        );
        CREATE TABLE settings (
            key TEXT PRIMARY KEY NOT NULL,
            value TEXT NOT NULL
        );
        INSERT INTO settings (key, value) VALUES ('default_network', 'pending');
        """,
    ]

    init(path: String) throws {
        db = try SQLiteDatabase(path: path)
        try migrate()
        for r in try loadAll() { cache[r.name] = r }
    }

    var schemaVersion: Int {
        (try? db.query("SELECT version FROM schema_version").first?.first?.int).flatMap { $0.map(Int.init) } ?? 0
    }

    private func migrate() throws {
        try db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        if try db.query("SELECT version FROM schema_version").isEmpty {
            try db.execute("INSERT INTO schema_version (version) VALUES (0)")
        }
        let current = schemaVersion
        guard current <= Self.migrations.count else {
            throw VireoError(.unsupported, "the inventory at \(db.path) has schema version \(current), newer than this vireo (\(Self.migrations.count))",
                             hint: "run a newer vireo, or use another --data-dir")
        }
        for (i, sql) in Self.migrations.enumerated() where i + 1 > current {
            try db.transaction {
                try db.execute(sql)
                try db.execute("UPDATE schema_version SET version = ?", [.int(Int64(i + 1))])
            }
        }
    }

    // MARK: VMs

    func all() throws -> [VMRecord] {
        cache.values.sorted { $0.name < $1.name }
    }

    func get(_ name: String) throws -> VMRecord? { cache[name] }

    private func loadAll() throws -> [VMRecord] {
        try db.query("SELECT name, definition, state, reason, pid, pid_start_time, exit_status, restart_count, created_at FROM vms ORDER BY name")
            .compactMap(Self.record)
    }


    func insert(_ r: VMRecord) throws {
        try db.query("INSERT INTO vms (name, definition, state, reason, pid, pid_start_time, exit_status, restart_count, created_at) VALUES (?,?,?,?,?,?,?,?,?)",
                     Self.values(r))
        cache[r.name] = r
    }

    func update(_ r: VMRecord) throws {
        var v = Self.values(r)
        let name = v.removeFirst()
        try db.query("UPDATE vms SET definition=?, state=?, reason=?, pid=?, pid_start_time=?, exit_status=?, restart_count=?, created_at=? WHERE name=?", v + [name])
        cache[r.name] = r
    }

    func delete(_ name: String) throws {
        try db.query("DELETE FROM vms WHERE name = ?", [.text(name)])
        cache[name] = nil
    }

    // MARK: Templates

    func templates() throws -> [Template] {
        try db.query("SELECT definition FROM templates ORDER BY name").compactMap { row in
            row.first?.text.flatMap { try? JSONDecoder().decode(Template.self, from: Data($0.utf8)) }
        }
    }

    func template(_ name: String) throws -> Template? {
        try db.query("SELECT definition FROM templates WHERE name = ?", [.text(name)]).first?.first?.text
            .flatMap { try? JSONDecoder().decode(Template.self, from: Data($0.utf8)) }
    }

    func insertTemplate(_ t: Template) throws {
        try db.query("INSERT INTO templates (name, definition) VALUES (?, ?)", [.text(t.name), .text(String(decoding: APIJSON.encode(t), as: UTF8.self))])
    }

    func deleteTemplate(_ name: String) throws {
        try db.query("DELETE FROM templates WHERE name = ?", [.text(name)])
    }

    // MARK: Networks

    func networks() throws -> [(spec: NetworkCreate, createdAt: String)] {
        try db.query("SELECT definition, created_at FROM networks ORDER BY name").compactMap { row in
            guard row.count == 2, let text = row[0].text,
                  let spec = try? JSONDecoder().decode(NetworkCreate.self, from: Data(text.utf8)) else { return nil }
            return (spec, row[1].text ?? "")
        }
    }

    func insertNetwork(_ n: NetworkCreate, createdAt: String) throws {
        try db.query("INSERT INTO networks (name, definition, created_at) VALUES (?, ?, ?)",
                     [.text(n.name), .text(String(decoding: APIJSON.encode(n), as: UTF8.self)), .text(createdAt)])
    }

    func deleteNetwork(_ name: String) throws {
        try db.query("DELETE FROM networks WHERE name = ?", [.text(name)])
    }

    func setting(_ key: String) throws -> String? {
        try db.query("SELECT value FROM settings WHERE key = ?", [.text(key)]).first?.first?.text
    }

    func setSetting(_ key: String, _ value: String) throws {
        try db.query("INSERT INTO settings (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                     [.text(key), .text(value)])
    }

    // MARK: Events

    /// Appends an event; returns its seq.
    @discardableResult
    func addEvent(kind: EventSubjectKind, subject: String, type: String, message: String, time: String) throws -> Int {
        try db.query("INSERT INTO events (time, subject_kind, subject, type, message) VALUES (?,?,?,?,?)",
                     [.text(time), .text(kind.rawValue), .text(subject), .text(type), .text(message)])
        let seq = try db.query("SELECT last_insert_rowid()").first?.first?.int.map { Int($0) } ?? 0
        // Keep the log bounded.
        try db.query("DELETE FROM events WHERE seq <= (SELECT MAX(seq) FROM events) - 10000")
        return seq
    }

    func events(since: Int, filter: EventFilter, limit: Int) throws -> [Event] {
        var sql = "SELECT seq, time, subject_kind, subject, type, message FROM events WHERE seq > ?"
        var args: [SQLiteDatabase.Value] = [.int(Int64(since))]
        if let subject = filter.subject { sql += " AND subject = ?"; args.append(.text(subject)) }
        if let kind = filter.kind { sql += " AND subject_kind = ?"; args.append(.text(kind.rawValue)) }
        sql += " ORDER BY seq LIMIT ?"
        args.append(.int(Int64(limit)))
        return try db.query(sql, args).compactMap { r in
            guard r.count == 6, let seq = r[0].int, let t = r[1].text, let k = r[2].text, let subject = r[3].text,
                  let ty = r[4].text, let m = r[5].text else { return nil }
            var e = Event(seq: Int(seq), time: t, subjectKind: .vm, subject: subject, type: ty, message: m)
            e.subjectKind = k
            return e
        }
    }

    // MARK: Rows

    private static func values(_ r: VMRecord) -> [SQLiteDatabase.Value] {
        let def = String(decoding: APIJSON.encode(r.definition), as: UTF8.self)
        return [.text(r.name), .text(def), .text(r.state.rawValue), r.reason.map { .text($0) } ?? .null,
                r.pid.map { .int(Int64($0)) } ?? .null, r.pidStartTime.map { .int(Int64(bitPattern: $0)) } ?? .null,
                r.exitStatus.map { .int(Int64($0)) } ?? .null, .int(Int64(r.restartCount)), .text(r.createdAt)]
    }

    private static func record(_ row: [SQLiteDatabase.Value]) -> VMRecord? {
        guard row.count == 9, let defText = row[1].text,
              let def = try? JSONDecoder().decode(VMDefinition.self, from: Data(defText.utf8)),
              let state = row[2].text.flatMap(VMState.init(rawValue:)) else { return nil }
        return VMRecord(definition: def, state: state, reason: row[3].text, pid: row[4].int.map { Int32(truncatingIfNeeded: $0) },
                        pidStartTime: row[5].int.map { UInt64(bitPattern: $0) }, exitStatus: row[6].int.map { Int($0) },
                        restartCount: Int(row[7].int ?? 0), createdAt: row[8].text ?? "")
    }
}
