import VireoSupport

extension Machine {
    /// Reclaims up to `bytes` of cold guest pages (MemoryReclaimer), pausing the vCPUs and
    /// quiescing the virtio back ends for each batch.
    func reclaimMemory(bytes: UInt64) throws -> MemoryReclaimer.Result {
        guard !migration.isActive else {
            throw VireoError(.conflict, "a live migration is running; reclaim after it ended (migrate-status)")
        }
        // Ages from the active-memory sampler, once it has finished a window; without a sampler
        // every resident page is a candidate (address order).
        var ages: [[UInt8]]?
        if let sampler = activeMemory {
            ages = sampler.ages.current
            if sampler.ages.windows.load(ordering: .relaxed) == 0 { ages = ages.map { $0.map { [UInt8](repeating: 0, count: $0.count) } } }
        }
        return try reclaimer.reclaim(bytes: bytes, ages: ages) { body in
            let wasPaused = pauseGate.isPaused
            if !wasPaused {
                guard pauseGate.pause(vcpus: vcpus, stop: stop) else {
                    pauseGate.resume()
                    throw VireoError(.conflict, "the vCPUs did not stop within 2 s")
                }
            }
            defer { if !wasPaused { pauseGate.resume() } }
            try whileVirtioQuiesced(body)
        }
    }
}

extension ControlServer {
    /// `reclaim BYTES` (bytes, or with a K/M/G suffix): compresses or swaps up to BYTES of the
    /// coldest guest pages and releases them; `reclaim 0` only reports. One line of key=value
    /// pairs: `ok=true released_bytes=N compressed_bytes=N stored_bytes=N swapped_bytes=N ...`,
    /// or `ok=false error=WHY` (WHY runs to the end of the line).
    static func reclaim(_ args: [String], machine: Machine) -> String {
        guard args.count == 1, let bytes = ByteSize.parse(args[0]) else {
            return "ok=false error=reclaim takes one size: bytes, or with a K, M or G suffix (reclaim 256M); reclaim 0 reports only"
        }
        var result = MemoryReclaimer.Result()
        if bytes > 0 {
            do { result = try machine.reclaimMemory(bytes: min(bytes, machine.memory.totalSize)) } catch {
                return "ok=false error=" + "\(error)".replacingNewlines
            }
        }
        let s = machine.reclaimer.stats
        var out = "ok=true released_bytes=\(result.releasedBytes) compressed_bytes=\(s.compressedBytes) stored_bytes=\(s.storedBytes)"
        out += " swapped_bytes=\(s.swappedBytes) zero_bytes=\(s.zeroBytes) kept_bytes=\(result.keptBytes) candidate_bytes=\(result.candidateBytes)"
        out += " store_max_bytes=\(s.storeMaxBytes) swap_errors=\(s.swapErrors) faultin_count=\(s.faultinCount) ms=\(result.ms)"
        return out
    }

    /// `probe-verify`: asks a `pattern` probe guest to check every page it filled (the result
    /// appears in `status` under `probe`).
    static func probeVerify(machine: Machine) -> String {
        guard let probe = machine.devices as? ProbeDevices, probe.patternWorkload else {
            return #"{"ok":false,"error":"probe-verify needs a probe guest running the pattern workload (vireo run --probe pattern:MODE)"}"#
        }
        let n = probe.verifyRequests.add(1, ordering: .acquiringAndReleasing).newValue
        return #"{"ok":true,"verify_requested":\#(n)}"#
    }

    /// The pattern probe's counters for `status` (empty for other guests).
    static func probeFields(_ machine: Machine) -> String {
        guard let p = machine.devices as? ProbeDevices, p.patternWorkload else { return "" }
        return #","probe":{"filled":\#(p.patternFilled.load(ordering: .acquiring)),"hot_passes":\#(p.hotPasses.load(ordering: .relaxed)),"verify_requests":\#(p.verifyRequests.load(ordering: .acquiring)),"verify_passes":\#(p.verifyPasses.load(ordering: .acquiring)),"bad_pages":\#(p.badPages.load(ordering: .acquiring)),"last_verify_us":\#(p.lastVerifyMicros.load(ordering: .acquiring))}"#
    }
}

extension String {
    /// One line: newlines become spaces (key=value replies end at the line's end).
    var replacingNewlines: String { String(map { $0 == "\n" || $0 == "\r" ? " " : $0 }) }
}

extension Machine {
    /// In-process callers (tests, benchmarks): the control command `reclaim BYTES`; returns
    /// the bytes released.
    public func reclaim(bytes: UInt64) throws -> UInt64 { try reclaimMemory(bytes: bytes).releasedBytes }

    /// Released pages brought back so far (by any thread: vCPUs through KVM, the VMM, the kernel).
    public var reclaimFaultins: UInt64 { reclaimer.stats.faultinCount }

    /// For the pattern probe workload: whether the guest has filled its RAM.
    public var probePatternFilled: Bool {
        (devices as? ProbeDevices)?.patternFilled.load(ordering: .acquiring) ?? false
    }
}
