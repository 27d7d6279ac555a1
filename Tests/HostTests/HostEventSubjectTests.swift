import DiskImage
import Foundation
import Testing
import VireoAPI
import VireoSupport
import VireoTestSupport
#if canImport(Glibc)
import Glibc
#endif

/// Events name what they are about (subject_kind + subject), failures are events, and the
/// inventory's old event rows survive the schema migration that added subjects.
@Suite(.serialized, .timeLimit(.minutes(2)), .enabled(if: VireoBinary.path != nil))
struct HostEventSubjectTests {
    func vireo(_ d: TestDaemon, _ args: [String]) throws -> (status: Int32, stdout: String, stderr: String) {
        try ChildProcessRunner.run([VireoBinary.path ?? "vireo", "--socket", d.socket] + args)
    }

    /// Before: created, starting, and nothing about the failure.
    @Test(.enabled(if: VireoBinary.hasKVM)) func aStartThatFailsAtOnceLogsAFailedEvent() throws {
        let d = try TestDaemon()
        defer { d.shutdown() }
        let path = d.dir + "/disk.raw"
        #expect(FileManager.default.createFile(atPath: path, contents: Data(repeating: 0, count: 1 << 20)))
        #expect(try d.req("POST", "/v1/vms", json: #"{"name":"v","probe":"dirty","memory_mib":32,"disks":[{"path":"\#(path)"}]}"#).status == 201)
        // The file becomes a qcow2 image after create: the VMM refuses it at once.
        unlink(path)
        try Qcow2Image.create(path: path, size: 1 << 20)
        let r = try d.action("v", "start")
        #expect(r.status == 422, "\(r.text)")
        let events = try d.client.call("GET", "/v1/events?subject_kind=vm&subject=v", as: EventList.self).events
        #expect(events.map(\.type).suffix(2) == ["starting", "failed"], "\(events)")
        let failed = events.last { $0.type == "failed" }
        #expect(failed?.message.contains("qcow2") == true && failed?.subjectKind == "vm", "\(String(describing: failed))")
    }

    @Test func eventsNameTheirSubjectAndItsKind() throws {
        let d = try TestDaemon()
        defer { d.shutdown() }
        let kernel = d.dir + "/vmlinuz"
        #expect(FileManager.default.createFile(atPath: kernel, contents: Data(repeating: 0, count: 4096)))
        #expect(try d.req("POST", "/v1/templates", json: #"{"name":"same","kernel":"\#(kernel)"}"#).status == 201)
        #expect(try d.req("POST", "/v1/images", json: #"{"name":"same","size_bytes":\#(8 << 20)}"#).status == 201)
        _ = try d.createProbe("same")
        let all = try d.client.call("GET", "/v1/events", as: EventList.self).events
        #expect(all.map(\.subjectKind) == ["template", "image", "image", "vm"], "\(all)")
        #expect(all.allSatisfy { $0.subject == "same" && $0.vm == "same" }, "the first API's vm field stays: \(all)")
        let images = try d.client.call("GET", "/v1/events?subject_kind=image&subject=same", as: EventList.self).events
        #expect(images.map(\.type) == ["image-create-started", "image-created"], "\(images)")
        #expect(try d.client.call("GET", "/v1/events?vm=same", as: EventList.self).events.count == 4, "vm= filters by name as it did")
        let bad = try d.req("GET", "/v1/events?subject_kind=disk")
        #expect(bad.status == 400 && bad.text.contains("vm, template, image"), "\(bad.text)")
        // The CLI names the kind, and filters by it.
        let cli = try vireo(d, ["events", "--image", "same"])
        #expect(cli.status == 0 && cli.stdout.split(separator: "\n").count == 2 && cli.stdout.contains("  image same  image-created"), "\(cli)")
        let vms = try vireo(d, ["events", "--vm", "same"])
        #expect(vms.stdout.split(separator: "\n").count == 1 && vms.stdout.contains("  same  created"), "\(vms)")
    }

    /// An inventory from before subjects (schema 3, a column `vm`) keeps its rows; their kind is
    /// read from their type.
    @Test func theMigrationKeepsOldEventRows() throws {
        let d = try TestDaemon()
        defer { d.shutdown() }
        d.kill9()
        let db = d.dataDir + "/inventory.db"
        for suffix in ["", "-wal", "-shm"] { unlink(db + suffix) }
        let schema3 = """
            CREATE TABLE schema_version (version INTEGER NOT NULL); INSERT INTO schema_version VALUES (3);
            CREATE TABLE vms (name TEXT PRIMARY KEY NOT NULL, definition TEXT NOT NULL, state TEXT NOT NULL, reason TEXT, pid INTEGER,
                pid_start_time INTEGER, exit_status INTEGER, restart_count INTEGER NOT NULL DEFAULT 0, created_at TEXT NOT NULL);
            CREATE TABLE events (seq INTEGER PRIMARY KEY AUTOINCREMENT, time TEXT NOT NULL, vm TEXT NOT NULL, type TEXT NOT NULL, message TEXT NOT NULL);
            CREATE TABLE templates (name TEXT PRIMARY KEY NOT NULL, definition TEXT NOT NULL);
            INSERT INTO events (time, vm, type, message) VALUES ('t1', 'web', 'created', '1 vCPUs, 64 MiB');
            INSERT INTO events (time, vm, type, message) VALUES ('t2', 'disk1', 'image-import', '40% raw /x');
            INSERT INTO events (time, vm, type, message) VALUES ('t3', 'deb', 'template-created', '');
            """
        let sql = d.dir + "/schema3.sql"
        #expect(FileManager.default.createFile(atPath: sql, contents: Data(schema3.utf8)))
        #expect(system("sqlite3 \(db) < \(sql)") == 0)
        try d.start()
        let events = try d.client.call("GET", "/v1/events", as: EventList.self).events
        #expect(events.map(\.seq) == [1, 2, 3], "\(events)")
        #expect(events.map(\.subject) == ["web", "disk1", "deb"])
        #expect(events.map(\.subjectKind) == ["vm", "image", "template"], "\(events)")
        // New events continue the sequence.
        _ = try d.createProbe("web2")
        #expect(try d.client.call("GET", "/v1/events?since=3", as: EventList.self).events.first?.seq == 4)
        let version = try ChildProcessRunner.run(["/usr/bin/sqlite3", db, "SELECT version FROM schema_version"])
        #expect(version.stdout.trimmingCharacters(in: .whitespacesAndNewlines) == "5", "every migration ran (5: networks and settings)")
    }
}
