# Generates openapi/vireo.json (the API contract) and Sources/VireoAPI/OpenAPIDocument.swift
# (the same bytes, served at GET /openapi.json). Edit this file, then: python3 openapi/gen.py
import json, os

def ref(n): return {"$ref": f"#/components/schemas/{n}"}
def err(desc): return {"description": desc, "content": {"application/json": {"schema": ref("Error")}}}
def ok(desc, schema): return {"description": desc, "content": {"application/json": {"schema": schema}}}
name_param = {"name": "name", "in": "path", "required": True, "schema": {"type": "string", "pattern": "^[a-z0-9][a-z0-9-]{0,62}$"}}

def vm_action(verb, summary, extra):
    codes = {"200": ok("the VM after the action", ref("VM")), "404": err("no such VM"), "409": err(extra)}
    if verb == "start":
        codes["422"] = err("the definition's files vanished; insufficient-memory: the VM does not fit beside the running ones (memory admission); kvm-cannot-boot-kernels: a Linux VM on a PVM host; or the VMM failed at once (reason in message)")
    codes["401"] = err("missing or wrong bearer token (TCP listener only)")
    codes["500"] = err("the VMM did not respond")
    op = {"operationId": f"{verb}VM", "summary": summary, "parameters": [name_param], "responses": codes}
    if verb == "stop":
        op["description"] = ("Unless force=true, a running guest's ACPI power button is pressed and the guest gets `timeout` "
            "seconds to power itself off (the reply's reason says which happened). A guest without ACPI (the probe guest) or a "
            "paused VM is stopped by its VMM at once. Either way the VMM exits cleanly (disks flushed); kill sends SIGKILL.")
        op["parameters"] = [name_param,
            {"name": "force", "in": "query", "description": "skip the ACPI shutdown request and stop at once", "schema": {"type": "boolean", "default": False}},
            {"name": "timeout", "in": "query", "description": "seconds the guest gets to power off after the ACPI request", "schema": {"type": "integer", "minimum": 0, "maximum": 3600, "default": 30}}]
        codes["400"] = err("a query parameter is malformed")
    return {"post": op}

unauth = {"401": err("missing or wrong bearer token (TCP listener only)")}
# VM configuration fields beyond the first API's (VireoConfig's VMConfig): the same in VMCreate and VM.
config_extra = {
    "hugepages": {"type": "boolean", "description": "guest RAM on transparent huge pages (default: on for a kernel)"},
    "balloon_stats": {"type": "boolean", "description": "the balloon's statistics queue (default on)"},
    "balloon_deflate_on_oom": {"type": "boolean"}, "balloon_free_page_reporting": {"type": "boolean"},
    "virtio_console": {"type": "boolean", "description": "a virtio console (hvc0), its output in the VM's hvc0.log"},
    "generation_id": {"type": "string", "pattern": "^[0-9a-fA-F-]{32,36}$",
                      "description": "the VM generation ID (ACPI vmgenid, 16 bytes as 32 hex digits); new on clone and revert; chosen when left out"}}
# Shares, reservations, limits and page sharing (docs/memory.md). A create gives 1 and up; a PATCH's 0 removes a limit or a reservation.
def resource_fields(patch):
    lo = 0 if patch else 1
    return {
        "cpu_shares": {"type": "integer", "minimum": 1, "maximum": 10000, "description": "CPU weight under contention (cgroup cpu.weight units; default 100)"},
        "cpu_limit_pct": {"type": "integer", "minimum": lo, "maximum": 25400, "description": "the most CPU the VM gets, percent of one core (150 = 1.5 cores); at most vcpus x 100" + ("; 0 removes it" if patch else "")},
        "cpu_reservation_pct": {"type": "integer", "minimum": lo, "maximum": 25400, "description": "CPU reserved at admission, percent of one core; at most cpu_limit_pct and the host's CPUs x 100" + ("; 0 removes it" if patch else "")},
        "memory_reservation_mib": {"type": "integer", "minimum": lo, "maximum": 67108864, "description": "memory never reclaimed (balloon, VMM reclaim) below; cgroup memory.min (v2) or soft limit (v1); at most memory_limit_mib" + ("; 0 removes it" if patch else "")},
        "memory_limit_mib": {"type": "integer", "minimum": lo, "maximum": 67108864, "description": "the most host memory the guest gets (cgroup memory.max / limit_in_bytes, plus 64 MiB for the VMM itself); at most memory_mib" + ("; 0 removes it" if patch else "")},
        "memory_shares": {"type": "integer", "minimum": 1, "maximum": 10000, "description": "under memory pressure, VMs with fewer shares per MiB are reclaimed from first (default 100)"},
        "shareable": {"type": "boolean", "description": "guest RAM mergeable by KSM (default off: shared pages are a side channel between tenants); changes at the next start"}}
config_extra.update(resource_fields(False))
doc = {
  "openapi": "3.0.3",
  "info": {"title": "Vireo host API", "version": "0.1.0",
           "description": "The REST API of `vireo host`: VMs on one server. Every 4xx/5xx body is an Error. On the TCP listener every request needs `Authorization: Bearer TOKEN`, or the session cookie of a web console login (/ui/login), with `X-Vireo-CSRF: 1` on requests that change things (403 without it)."},
  "paths": {
    "/openapi.json": {"get": {"operationId": "getOpenAPI", "summary": "This document", "responses": {"200": ok("the OpenAPI document", {"type": "object"}), **unauth}}},
    "/metrics": {"get": {"operationId": "getMetrics", "summary": "Prometheus text metrics for the host and every VM",
                         "responses": {"200": {"description": "Prometheus text exposition 0.0.4", "content": {"text/plain": {"schema": {"type": "string"}}}}, **unauth}}},
    "/v1/host": {"get": {"operationId": "getHost", "summary": "Host facts and capacity", "responses": {"200": ok("host facts", ref("HostInfo")), **unauth}}},
    "/v1/events": {"get": {"operationId": "listEvents", "summary": "What happened to VMs, templates and images, oldest first; follow=true streams new ones",
        "parameters": [{"name": "follow", "in": "query", "schema": {"type": "boolean"},
                        "description": "keep the response open: the backlog after since, then each new event as it happens, one JSON Event per line (application/x-ndjson, chunked); limit does not apply. A client that falls 1024 events behind gets a last line of type stream-dropped and the stream ends."},
                       {"name": "since", "in": "query", "schema": {"type": "integer", "minimum": 0, "maximum": 2147483647}, "description": "only events with seq greater than this"},
                       {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 10000}},
                       {"name": "subject", "in": "query", "schema": {"type": "string"}, "description": "only events about the VM, template or image of this name"},
                       {"name": "vm", "in": "query", "schema": {"type": "string"}, "description": "the first API's name for subject (the same filter, any kind)"},
                       {"name": "subject_kind", "in": "query", "schema": {"type": "string", "enum": ["vm", "template", "image", "network", "host"]}, "description": "only events about VMs, templates, images, networks or the host (memory states, KSM)"}],
        "responses": {"200": {"description": "events (with follow=true: a stream of Event lines)",
                              "content": {"application/json": {"schema": ref("EventList")}, "application/x-ndjson": {"schema": ref("Event")}}},
                      "400": err("bad query parameter"), **unauth}}},
    "/v1/vms": {
      "get": {"operationId": "listVMs", "summary": "All VMs", "responses": {"200": ok("the VMs, by name", ref("VMList")), **unauth}},
      "post": {"operationId": "createVM", "summary": "Define a VM (it starts stopped)",
               "requestBody": {"required": True, "content": {"application/json": {"schema": ref("VMCreate")}}},
               "responses": {"201": ok("the new VM", ref("VM")), "400": err("malformed JSON, unknown field, wrong type, invalid name"),
                             "404": err("the named template or image does not exist"), "409": err("a VM with that name exists, or a named image is still being written"), "413": err("body larger than 1 MiB"),
                             "422": err("a value out of range, a missing file, conflicting boot sources"), **unauth}}},
    "/v1/vms/{name}": {
      "get": {"operationId": "getVM", "summary": "One VM", "parameters": [name_param], "responses": {"200": ok("the VM", ref("VM")), "404": err("no such VM"), **unauth}},
      "patch": {"operationId": "updateVM", "summary": "Change a VM's definition: vcpus, memory_mib, cmdline, balloon_mib and shareable while it is stopped; restart_policy, shares, reservations and limits any time (a running VM's cgroup changes at once)", "parameters": [name_param],
                "requestBody": {"required": True, "content": {"application/json": {"schema": ref("VMUpdate")}}},
                "responses": {"200": ok("the VM", ref("VM")), "400": err("malformed JSON or unknown field"), "404": err("no such VM"),
                              "409": err("the VM is running and the change needs its VMM restarted"), "422": err("a value out of range, or more memory than the host admits"), **unauth}},
      "delete": {"operationId": "deleteVM", "summary": "Delete a stopped VM and its logs", "parameters": [name_param],
                 "responses": {"204": {"description": "deleted"}, "404": err("no such VM"), "409": err("the VM is running"), **unauth}}},
    "/v1/vms/{name}/start": vm_action("start", "Start the VM's VMM process", "the VM is already running"),
    "/v1/vms/{name}/stop": vm_action("stop", "Stop the VM: ACPI shutdown request, then its VMM ends it (no restart)", "the VM is not running"),
    "/v1/vms/{name}/kill": vm_action("kill", "SIGKILL the VM's VMM", "the VM is not running"),
    "/v1/vms/{name}/pause": vm_action("pause", "Park every vCPU outside the guest", "the VM is not running"),
    "/v1/vms/{name}/resume": vm_action("resume", "Let a paused VM run again", "the VM is not paused"),
    "/v1/vms/{name}/reboot": vm_action("reboot", "Stop and start the VM's VMM", "the VM is not running"),
    "/v1/vms/{name}/console": {"get": {"operationId": "getConsole", "summary": "The guest's serial output (console.log) from an offset",
        "parameters": [name_param, {"name": "offset", "in": "query", "schema": {"type": "integer", "minimum": 0, "maximum": 4611686018427387903}},
                       {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 1048576}}],
        "responses": {"200": {"description": "bytes of the log; header X-Vireo-Next-Offset is where to continue",
                              "headers": {"X-Vireo-Next-Offset": {"schema": {"type": "integer"}}},
                              "content": {"text/plain": {"schema": {"type": "string"}}}},
                      "400": err("bad query parameter"), "404": err("no such VM"), **unauth}}},
    "/v1/vms/{name}/console/attach": {"get": {"operationId": "attachConsole",
        "summary": "Interactive serial console: a websocket (RFC 6455) proxied to the VMM's console socket",
        "description": "Send `Connection: Upgrade`, `Upgrade: websocket`, `Sec-WebSocket-Version: 13` and a `Sec-WebSocket-Key`. "
                       "Binary (or text) frames from the client are typed into the guest's COM1; the guest's output comes back as binary frames. "
                       "Pings are answered; the server pings every 25 s. When the VM stops the server sends a close frame 1001 with the reason; "
                       "a client that falls more than 64 KiB behind the guest's output gets a close frame 1011. "
                       "A refused upgrade is answered as plain HTTP (JSON error) and the connection closed.",
        "parameters": [name_param],
        "responses": {"101": {"description": "switched to the websocket protocol"},
                      "404": err("no such VM"), "409": err("the VM is not running (stopped, failed, starting)"),
                      "426": err("the request is not a websocket upgrade"), **unauth}}},
    "/v1/vms/{name}/balloon": {
        "get": {"operationId": "getVMBalloon", "summary": "A running VM's balloon: the target and what the guest holds now",
                "parameters": [name_param],
                "responses": {"200": ok("the balloon", ref("BalloonState")), "404": err("no such VM"),
                              "409": err("the VM has no VMM, or no balloon device"), "500": err("the VMM did not answer"), **unauth}},
        "post": {"operationId": "setVMBalloon", "summary": "Set a running VM's balloon target (ballooning: memory the guest gives back to the host)",
                 "description": "The guest driver inflates or deflates towards the target on its own time; GET shows its progress. The definition's balloon_mib (the size the VM starts with) is not changed.",
                 "parameters": [name_param],
                 "requestBody": {"required": True, "content": {"application/json": {"schema": ref("BalloonRequest")}}},
                 "responses": {"200": ok("the balloon after the request", ref("BalloonState")), "400": err("malformed body"),
                               "404": err("no such VM"), "409": err("the VM has no VMM, or no balloon device"),
                               "422": err("target_mib is out of range"), "500": err("the VMM did not answer"), **unauth}}},
    "/v1/vms/{name}/snapshots": {
      "get": {"operationId": "listSnapshots", "summary": "The VM's snapshots of its running state", "parameters": [name_param],
              "responses": {"200": ok("the snapshots, by name", ref("SnapshotList")), "404": err("no such VM"), **unauth}},
      "post": {"operationId": "createSnapshot", "summary": "Save the running or paused VM's state (CPU, devices, RAM); it goes on as it was",
               "parameters": [name_param], "requestBody": {"required": True, "content": {"application/json": {"schema": ref("SnapshotCreate")}}},
               "responses": {"201": ok("the snapshot", ref("Snapshot")), "400": err("malformed body or invalid name"), "404": err("no such VM"),
                             "409": err("the VM is not running, the name is taken, or the VM has devices whose state is not saved yet"),
                             "500": err("the VMM did not answer"), **unauth}}},
    "/v1/vms/{name}/snapshots/{snapshot}": {"delete": {"operationId": "deleteSnapshot", "summary": "Delete a snapshot",
        "parameters": [name_param, {"name": "snapshot", "in": "path", "required": True, "schema": {"type": "string", "pattern": "^[a-z0-9][a-z0-9-]{0,62}$"}}],
        "responses": {"204": {"description": "deleted"}, "404": err("no such VM or snapshot"), **unauth}}},
    "/v1/vms/{name}/snapshots/{snapshot}/revert": {"post": {"operationId": "revertSnapshot",
        "summary": "End the VM's VMM (if any) and run a new one restored from the snapshot (paused if it was taken paused)",
        "parameters": [name_param, {"name": "snapshot", "in": "path", "required": True, "schema": {"type": "string", "pattern": "^[a-z0-9][a-z0-9-]{0,62}$"}}],
        "responses": {"200": ok("the VM after the revert", ref("VM")), "404": err("no such VM or snapshot"), "409": err("the VM is busy"),
                      "422": err("the restored VMM failed at once (reason in message)"), "500": err("the VMM did not respond"), **unauth}}},
    "/v1/vms/{name}/suspend": {"post": {"operationId": "suspendVM", "parameters": [name_param],
        "summary": "Save the VM's state to disk and end its VMM (host memory freed); start resumes it where it was",
        "responses": {"200": ok("the VM, stopped and suspended", ref("VM")), "404": err("no such VM"),
                      "409": err("the VM is not running, or has devices whose state is not saved yet"), "500": err("the VMM did not answer"), **unauth}}},
    "/v1/vms/{name}/clone": {"post": {"operationId": "cloneVM", "parameters": [name_param],
        "summary": "A new VM from this one: from a snapshot it runs on from the snapshot's state on overlays of its disks; without, the stopped VM's disks are copied. New MACs, vsock CID and generation ID",
        "requestBody": {"required": True, "content": {"application/json": {"schema": ref("VMClone")}}},
        "responses": {"201": ok("the clone (started if start was true)", ref("VM")), "400": err("malformed body or invalid name"),
                      "404": err("no such VM or snapshot"), "409": err("the name is taken, the VM is not stopped (without a snapshot), a TAP is in use, or a disk could not be copied"),
                      "422": err("a TAP per NIC is missing, or the clone failed to start"), "500": err("the VMM did not answer, or a file could not be made"), **unauth}}},
    "/v1/vms/{name}/config": {"get": {"operationId": "getVMConfig", "parameters": [name_param],
        "summary": "The VM's configuration as stored and, while its VMM runs, as the VMM runs it",
        "responses": {"200": ok("stored, running (while a VMM runs) and in_sync", ref("VMConfigReport")), "404": err("no such VM"),
                      "500": err("the VMM did not answer"), **unauth}}},
    "/v1/vms/{name}/stats": {"get": {"operationId": "getVMStats",
        "summary": "A running VM's memory (provisioned, consumed, active, guest-reported), per-vCPU CPU and ready time, disk and NIC counters",
        "parameters": [name_param],
        "responses": {"200": ok("the VM's figures", ref("VMStats")), "404": err("no such VM"),
                      "409": err("the VM has no VMM (stopped or failed)"), "500": err("the VMM did not answer"), **unauth}}},
    "/v1/templates": {
      "get": {"operationId": "listTemplates", "summary": "All templates", "responses": {"200": ok("the templates, by name", ref("TemplateList")), **unauth}},
      "post": {"operationId": "createTemplate", "summary": "Define a template: kernel, initrd, cmdline and an optional base disk for linked clones",
               "requestBody": {"required": True, "content": {"application/json": {"schema": ref("TemplateCreate")}}},
               "responses": {"201": ok("the new template", ref("Template")), "400": err("malformed JSON, unknown field, invalid name"),
                             "404": err("the named base_image does not exist"),
                             "409": err("a template with that name exists, or its base_image is still being written"), "413": err("body larger than 1 MiB"),
                             "422": err("a missing file, a base disk that is not a readable image, a value out of range"), **unauth}}},
    "/v1/templates/{name}": {
      "get": {"operationId": "getTemplate", "summary": "One template", "parameters": [name_param],
              "responses": {"200": ok("the template", ref("Template")), "404": err("no such template"), **unauth}},
      "delete": {"operationId": "deleteTemplate", "summary": "Delete a template no VM uses", "parameters": [name_param],
                 "responses": {"204": {"description": "deleted"}, "404": err("no such template"), "409": err("VMs use it"), **unauth}}},
    "/v1/networks": {
      "get": {"operationId": "listNetworks", "summary": "All networks, the default one among them", "responses": {"200": ok("the networks, by name", ref("NetworkList")), **unauth}},
      "post": {"operationId": "createNetwork", "summary": "Make a network: a bridge (or a VLAN on the shared VLAN-filtering bridge), with a subnet the host serves DHCP and DNS on and NAT to an uplink",
               "requestBody": {"required": True, "content": {"application/json": {"schema": ref("NetworkCreate")}}},
               "responses": {"201": ok("the new network, up on the host", ref("Network")), "400": err("malformed JSON, unknown field, invalid name"),
                             "409": err("a network with that name, or a vlan network with that VLAN ID, exists; or a host interface of the bridge's name is no bridge"),
                             "413": err("body larger than 1 MiB"),
                             "422": err("invalid-vlan: a VLAN ID out of 1..4094, missing, or given to a bridge network; invalid-subnet / subnet-overlap: a subnet that is no /16-/29 IPv4 CIDR or overlaps another network's or a host route; no-such-uplink, uplink-needs-subnet"),
                             "500": err("network-setup-failed: the host could not make it (no bridge support, nft, dnsmasq...); nothing of it is left on the host"), **unauth}}},
    "/v1/networks/{name}": {
      "get": {"operationId": "getNetwork", "summary": "One network, whether its host side is up, and the VMs on it", "parameters": [name_param],
              "responses": {"200": ok("the network", ref("Network")), "404": err("no such network"), **unauth}},
      "delete": {"operationId": "deleteNetwork", "summary": "Delete a network no VM's NIC uses: its bridge, VLAN interface, NAT table and dnsmasq go", "parameters": [name_param],
                 "responses": {"204": {"description": "deleted"}, "404": err("no such network"), "409": err("VMs' NICs use it (the message names them)"),
                               "500": err("network-teardown-incomplete: deleted, but the host kept something (named)"), **unauth}}},
  },
  "components": {"schemas": {
    "TemplateCreate": {"type": "object", "required": ["name", "kernel"], "additionalProperties": False, "properties": {
        "name": {"type": "string", "pattern": "^[a-z0-9][a-z0-9-]{0,62}$"},
        "kernel": {"type": "string", "pattern": "^/"}, "initrd": {"type": "string", "pattern": "^/"},
        "cmdline": {"type": "string", "maxLength": 2048},
        "base_disk": {"type": "string", "pattern": "^/", "description": "a raw or qcow2 image; each VM from the template gets a qcow2 overlay backed by it"},
        "vcpus": {"type": "integer", "minimum": 1, "maximum": 254}, "memory_mib": {"type": "integer", "minimum": 4, "maximum": 67108864},
        "base_image": {"type": "string", "pattern": "^[a-z0-9][a-z0-9-]{0,62}$", "description": "a store image (GET /v1/images) as the base disk, instead of base_disk"}},
        "not": {"required": ["base_disk", "base_image"]}},
    "Template": {"type": "object", "required": ["name", "kernel", "vcpus", "memory_mib", "created_at"], "properties": {
        "name": {"type": "string"}, "kernel": {"type": "string"}, "initrd": {"type": "string"}, "cmdline": {"type": "string"},
        "base_disk": {"type": "string"}, "base_format": {"type": "string"}, "vcpus": {"type": "integer"},
        "memory_mib": {"type": "integer"}, "created_at": {"type": "string"}, "base_image": {"type": "string"}}},
    "NetworkCreate": {"type": "object", "required": ["name", "type"], "additionalProperties": False, "properties": {
        "name": {"type": "string", "pattern": "^[a-z][a-z0-9-]{0,11}$"},
        "type": {"type": "string", "enum": ["bridge", "vlan"], "description": "bridge: its own bridge vb-NAME; vlan: one VLAN on the shared VLAN-filtering bridge vireo-vlan"},
        "vlan": {"type": "integer", "minimum": 1, "maximum": 4094, "description": "the VLAN ID (vlan networks only, required there)"},
        "subnet": {"type": "string", "description": "IPv4 CIDR, /16 to /29: the host takes the first address and serves DHCP and DNS (dnsmasq)"},
        "uplink": {"type": "string", "description": "a host interface; the subnet's traffic leaving by it is masqueraded (nftables); needs subnet"}}},
    "Network": {"type": "object", "required": ["name", "type", "bridge", "available", "vms", "created_at"], "properties": {
        "name": {"type": "string"}, "type": {"type": "string", "enum": ["bridge", "vlan"]}, "vlan": {"type": "integer"},
        "subnet": {"type": "string"}, "uplink": {"type": "string"}, "bridge": {"type": "string", "description": "the bridge NICs' TAPs join"},
        "gateway": {"type": "string", "description": "the host's address on the network (gateway and DNS server for DHCP clients)"},
        "dhcp_range": {"type": "string", "description": "FIRST-LAST"},
        "available": {"type": "boolean", "description": "whether the host side is up; VMs on an unavailable network do not start"},
        "reason": {"type": "string", "description": "why it is unavailable"},
        "vms": {"type": "array", "items": {"type": "string"}, "description": "VMs with a NIC on it"},
        "created_at": {"type": "string"}}},
    "NetworkList": {"type": "object", "required": ["networks"], "properties": {"networks": {"type": "array", "items": ref("Network")}}},
    "TemplateList": {"type": "object", "required": ["templates"], "properties": {"templates": {"type": "array", "items": ref("Template")}}},
    "Error": {"type": "object", "required": ["code", "message"], "additionalProperties": False,
              "properties": {"code": {"type": "string"}, "message": {"type": "string"}}},
    "SnapshotCreate": {"type": "object", "required": ["name"], "additionalProperties": False,
                       "properties": {"name": {"type": "string", "pattern": "^[a-z0-9][a-z0-9-]{0,62}$"}}},
    "Snapshot": {"type": "object", "required": ["name", "vm", "created_at", "vm_state", "size_bytes", "memory_bytes"], "properties": {
        "name": {"type": "string"}, "vm": {"type": "string"}, "created_at": {"type": "string", "format": "date-time"},
        "vm_state": ref("VMState"), "size_bytes": {"type": "integer", "description": "bytes on disk (state and the guest pages written)"},
        "memory_bytes": {"type": "integer", "description": "the VM's RAM"},
        "disk_snapshot": {"type": "string", "description": "the internal qcow2 snapshot keeping the VM's read-write disks as they were (absent without such disks)"}}},
    "VMClone": {"type": "object", "required": ["name"], "additionalProperties": False, "properties": {
        "name": {"type": "string", "pattern": "^[a-z0-9][a-z0-9-]{0,62}$"},
        "snapshot": {"type": "string", "pattern": "^[a-z0-9][a-z0-9-]{0,62}$", "description": "clone the running state saved in this snapshot"},
        "start": {"type": "boolean", "description": "start the clone once it is made"},
        "taps": {"type": "array", "items": {"type": "string"}, "description": "a TAP per NIC of the source, in order"}}},
    "SnapshotList": {"type": "object", "required": ["snapshots"], "properties": {"snapshots": {"type": "array", "items": ref("Snapshot")}}},
    "VMConfigReport": {"type": "object", "required": ["stored"], "properties": {
        "stored": {"type": "object", "description": "the VM configuration the daemon stored (the VM body's configuration fields, with config_version)"},
        "running": {"type": "object", "description": "the configuration the VMM reports it runs (control command `config`), while it runs"},
        "in_sync": {"type": "boolean", "description": "running equals stored"}}},
    "RateLimit": {"type": "object", "additionalProperties": False,
                  "description": "token-bucket limits of one device; 0 or absent is unlimited; bursts default to one second's worth. For a disk ops are requests, for a NIC frames",
                  "properties": {"bytes_per_second": {"type": "integer", "minimum": 0}, "bytes_burst": {"type": "integer", "minimum": 0},
                                 "ops_per_second": {"type": "integer", "minimum": 0}, "ops_burst": {"type": "integer", "minimum": 0}}},
    "Disk": {"type": "object", "additionalProperties": False,
             "description": "give path (a file on the host) or image (a store image; the daemon fills in path and format with its file's when the VM is created). The daemon records every disk's format at create (a given one is checked against the file's signature, a missing one is detected from it) and gives every disk an id",
             "anyOf": [{"required": ["path"]}, {"required": ["image"]}], "not": {"required": ["path", "image"]},
             "properties": {"path": {"type": "string", "pattern": "^/"}, "readonly": {"type": "boolean"},
                            "image": {"type": "string", "pattern": "^[a-z0-9][a-z0-9-]{0,62}$"},
                            "format": {"type": "string", "enum": ["raw", "qcow2"], "description": "the file's format; a VMM refuses a file whose signature disagrees"},
                            "id": {"type": "string", "pattern": "^[A-Za-z0-9._-]{1,20}$", "description": "stable device id; the guest sees it as the disk's serial (default disk0, disk1, ...)"},
                            "backing": {"type": "string", "enum": ["any", "confined", "forbidden"], "description": "which backing files the image may name: any, only beside it (confined), or none"},
                            "rate_limit": ref("RateLimit")}},
    "NIC": {"type": "object", "additionalProperties": False, "anyOf": [{"required": ["tap"]}, {"required": ["network"]}],
            "description": "a TAP the user made (tap), or a NIC on a daemon network (network: the daemon names, makes and removes its TAP)",
            "properties": {"tap": {"type": "string", "pattern": "^[A-Za-z0-9._-]{1,15}$"},
                           "network": {"type": "string", "pattern": "^[a-z][a-z0-9-]{0,11}$", "description": "a network (GET /v1/networks) the NIC joins"}, "mac": {"type": "string", "pattern": "^[0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2}){5}$"},
                           "id": {"type": "string", "pattern": "^[A-Za-z0-9._-]{1,20}$", "description": "stable device id (default net0, net1, ...)"},
                           "rate_limit": ref("RateLimit")}},
    "RestartPolicy": {"type": "string", "enum": ["never", "on-failure", "always"]},
    "VMState": {"type": "string", "enum": ["stopped", "starting", "running", "paused", "failed"]},
    "VMCreate": {"type": "object", "required": ["name"], "additionalProperties": False,
                 "description": "Give exactly one of kernel (with optional initrd, cmdline), probe, or template (a VM from a template gets a linked clone of its base disk).",
                 "anyOf": [{"required": ["kernel"]}, {"required": ["probe"]}, {"required": ["template"]}], "properties": {
        "name": {"type": "string", "pattern": "^[a-z0-9][a-z0-9-]{0,62}$"},
        "vcpus": {"type": "integer", "minimum": 1, "maximum": 254},
        "memory_mib": {"type": "integer", "minimum": 4, "maximum": 67108864},
        "kernel": {"type": "string", "pattern": "^/", "description": "absolute path of a vmlinux or bzImage on the host"},
        "initrd": {"type": "string", "pattern": "^/"}, "cmdline": {"type": "string", "maxLength": 2048},
        "probe": {"type": "string", "pattern": "^(pio|mmio|dirty|compute)(:[0-9]{1,19})?$", "description": "built-in probe guest workload: pio:N, mmio:N, dirty[:PASSES], compute:N"},
        "template": {"type": "string"},
        "disks": {"type": "array", "items": ref("Disk")}, "nics": {"type": "array", "items": ref("NIC")},
        "balloon_mib": {"type": "integer", "minimum": 0, "maximum": 67108864}, "restart_policy": ref("RestartPolicy"),
        "rng": {"type": "boolean", "description": "virtio-rng (guest entropy from the host's getrandom); kernel VMs only"},
        "vsock_cid": {"type": "integer", "minimum": 3, "maximum": 4294967294, "description": "virtio-vsock with this guest CID; the host end is the VM's vsock_socket (Firecracker's convention); kernel VMs only"},
        **config_extra}},
    "VMUpdate": {"type": "object", "additionalProperties": False, "properties": {
        "vcpus": {"type": "integer", "minimum": 1, "maximum": 254}, "memory_mib": {"type": "integer", "minimum": 4, "maximum": 67108864},
        "cmdline": {"type": "string", "maxLength": 2048}, "balloon_mib": {"type": "integer", "minimum": 0, "maximum": 67108864},
        "restart_policy": ref("RestartPolicy"), **resource_fields(True)}},
    "VM": {"type": "object",
           "required": ["name", "vcpus", "memory_mib", "disks", "nics", "restart_policy", "state", "restart_count", "console_log", "api_socket", "created_at"],
           "properties": {
        "name": {"type": "string"}, "vcpus": {"type": "integer"}, "memory_mib": {"type": "integer"},
        "kernel": {"type": "string"}, "initrd": {"type": "string"}, "cmdline": {"type": "string"}, "probe": {"type": "string"},
        "template": {"type": "string"}, "disks": {"type": "array", "items": ref("Disk")}, "nics": {"type": "array", "items": ref("NIC")},
        "balloon_mib": {"type": "integer"}, "restart_policy": ref("RestartPolicy"), "state": ref("VMState"),
        "rng": {"type": "boolean"}, "vsock_cid": {"type": "integer"}, "config_version": {"type": "integer", "description": "the VM configuration format version the definition is stored in"},
        **config_extra,
        "vsock_socket": {"type": "string", "description": "host end of the VM's vsock: connect and send `CONNECT PORT\\n`; guest connections to PORT arrive on vsock_socket + `_PORT`"},
        "reason": {"type": "string", "description": "why the VM is failed or last stopped"},
        "pid": {"type": "integer", "description": "the VMM's pid while it runs"},
        "exit_status": {"type": "integer"}, "restart_count": {"type": "integer"},
        "console_log": {"type": "string"}, "api_socket": {"type": "string"}, "created_at": {"type": "string", "format": "date-time"}}},
    "BalloonRequest": {"type": "object", "additionalProperties": False, "required": ["target_mib"], "properties": {
        "target_mib": {"type": "integer", "minimum": 0, "maximum": 67108864, "description": "MiB the guest should give back (at most its memory)"}}},
    "BalloonState": {"type": "object", "required": ["target_mib", "actual_mib"], "properties": {
        "target_mib": {"type": "integer"}, "actual_mib": {"type": "integer", "description": "MiB the guest driver holds in the balloon now"}}},
    "VMList": {"type": "object", "required": ["vms"], "properties": {"vms": {"type": "array", "items": ref("VM")}}},
    "HostInfo": {"type": "object",
                 "required": ["hostname", "version", "kvm", "pcpus", "memory_physical_bytes", "memory_provisioned_bytes", "vcpus_provisioned", "vcpu_overcommit_ratio", "vms_total", "vms_running", "data_dir"],
                 "properties": {"hostname": {"type": "string"}, "version": {"type": "string"}, "kvm": {"type": "boolean"},
                                "pcpus": {"type": "integer"}, "memory_physical_bytes": {"type": "integer"}, "memory_provisioned_bytes": {"type": "integer"},
                                "vcpus_provisioned": {"type": "integer"}, "vcpu_overcommit_ratio": {"type": "number"},
                                "vms_total": {"type": "integer"}, "vms_running": {"type": "integer"}, "data_dir": {"type": "string"},
                                "memory_state": ref("HostMemoryState"), "memory_ladder": ref("HostMemoryLadder")}},
    "HostMemoryState": {"type": "string", "enum": ["high", "clear", "soft", "hard", "low"],
                        "description": "the host memory state (docs/memory.md): free memory against the minFree reserve: high from 400%, clear from 100%, soft from 64%, hard from 32%, low below"},
    "HostMemoryLadder": {"type": "object", "required": ["state", "total_bytes", "free_bytes", "min_free_bytes", "source", "state_changes", "ksm_saved_bytes",
                                                        "balloon_bytes", "compressed_bytes", "swapped_bytes", "vms_without_balloon", "vms_without_reclaim"], "properties": {
        "state": ref("HostMemoryState"), "total_bytes": {"type": "integer", "description": "the host's RAM, or the daemon's memory cgroup's limit"},
        "free_bytes": {"type": "integer"}, "min_free_bytes": {"type": "integer"},
        "source": {"type": "string", "description": "host, or the memory cgroup's directory"}, "state_changes": {"type": "integer"},
        "ksm_saved_bytes": {"type": "integer", "description": "KSM pages_sharing x page size"}, "balloon_bytes": {"type": "integer"},
        "compressed_bytes": {"type": "integer"}, "swapped_bytes": {"type": "integer"},
        "ksm_run": {"type": "integer"}, "ksm_pages_to_scan": {"type": "integer"},
        "vms_without_balloon": {"type": "array", "items": {"type": "string"}, "description": "running VMs the balloon policy cannot reclaim from (no balloon device or no guest figures)"},
        "vms_without_reclaim": {"type": "array", "items": {"type": "string"}, "description": "running VMs whose VMM does not know `reclaim`"}}},
    "VMStats": {"type": "object", "required": ["name", "state", "memory", "vcpus", "disks", "nics"], "properties": {
        "name": {"type": "string"}, "state": ref("VMState"), "memory": ref("VMMemoryStats"),
        "vcpus": {"type": "array", "items": ref("VCPUStat")}, "disks": {"type": "array", "items": ref("DiskStat")},
        "nics": {"type": "array", "items": ref("NICStat")}}},
    "VMMemoryStats": {"type": "object", "required": ["provisioned_bytes", "active_status"], "properties": {
        "provisioned_bytes": {"type": "integer", "minimum": 0, "description": "guest RAM configured"},
        "consumed_bytes": {"type": "integer", "minimum": 0, "description": "host memory resident for the VMM process (VmRSS)"},
        "active_bytes": {"type": "integer", "minimum": 0, "description": "bytes of guest pages written in the last full sampling window (KVM dirty logging): the written working set, a lower bound of active memory"},
        "active_window_seconds": {"type": "integer", "minimum": 0, "description": "the sampling window; 0 when the estimate is off"},
        "active_sample_one_in": {"type": "integer", "minimum": 1, "description": "1: every page tracked (exact count of pages written); N: a random 1/N of the pages per window, scaled to all of RAM"},
        "active_status": {"type": "string", "description": "ok, sampling (first window not over), off, unavailable: WHY, or unknown (an older VMM)"},
        "guest_reported": ref("GuestMemoryReport"),
        "balloon_bytes": {"type": "integer", "minimum": 0, "description": "memory the guest gave back through the balloon"},
        "shared_bytes": {"type": "integer", "minimum": 0, "description": "guest pages KSM merged (/proc/PID/ksm_merging_pages); shareable VMs only"},
        "compressed_bytes": {"type": "integer", "minimum": 0, "description": "cold guest pages the VMM holds compressed"},
        "swapped_bytes": {"type": "integer", "minimum": 0, "description": "cold guest pages in the VMM's swap file"},
        "faultin_us_p50": {"type": "number"}, "faultin_us_p99": {"type": "number", "description": "how long bringing a compressed or swapped page back took (µs)"}}},
    "GuestMemoryReport": {"type": "object", "description": "the guest's own figures from the virtio-balloon statistics queue", "properties": {
        "total_bytes": {"type": "integer", "minimum": 0}, "free_bytes": {"type": "integer", "minimum": 0},
        "available_bytes": {"type": "integer", "minimum": 0}, "disk_caches_bytes": {"type": "integer", "minimum": 0}}},
    "VCPUStat": {"type": "object", "required": ["index", "cpu_seconds", "ready_seconds"], "properties": {
        "index": {"type": "integer", "minimum": 0}, "cpu_seconds": {"type": "number", "description": "CPU time of the vCPU thread"},
        "ready_seconds": {"type": "number", "description": "CPU ready: time runnable but waiting for a host CPU"},
        "pio_exits": {"type": "integer", "minimum": 0}, "mmio_exits": {"type": "integer", "minimum": 0}}},
    "DiskStat": {"type": "object", "required": ["name", "path", "read_requests", "write_requests", "flush_requests", "other_requests", "read_bytes", "write_bytes", "errors"],
                 "properties": {"name": {"type": "string"}, "path": {"type": "string"},
        "read_requests": {"type": "integer", "minimum": 0}, "write_requests": {"type": "integer", "minimum": 0},
        "flush_requests": {"type": "integer", "minimum": 0}, "other_requests": {"type": "integer", "minimum": 0, "description": "discard, write-zeroes, get-id"},
        "read_bytes": {"type": "integer", "minimum": 0}, "write_bytes": {"type": "integer", "minimum": 0},
        "errors": {"type": "integer", "minimum": 0, "description": "requests answered with an error status"}}},
    "NICStat": {"type": "object", "required": ["name", "rx_frames", "rx_bytes", "rx_drops", "tx_frames", "tx_bytes", "tx_drops"],
                "properties": {"name": {"type": "string", "description": "the TAP device"},
        "rx_frames": {"type": "integer", "minimum": 0}, "rx_bytes": {"type": "integer", "minimum": 0}, "rx_drops": {"type": "integer", "minimum": 0},
        "tx_frames": {"type": "integer", "minimum": 0}, "tx_bytes": {"type": "integer", "minimum": 0}, "tx_drops": {"type": "integer", "minimum": 0}}},
    "Event": {"type": "object", "required": ["seq", "time", "vm", "type", "message", "subject_kind", "subject"],
              "description": "Something that happened to a VM, template or image. Stored events have a seq; progress lines (an image import's percentages) go to followers only, with seq 0, as do the stream's control lines (stream-dropped, daemon-stopping, whose subject_kind is empty).",
              "properties": {"seq": {"type": "integer", "minimum": 0}, "time": {"type": "string"},
                             "vm": {"type": "string", "description": "the subject's name whatever its kind (the first API's field, kept for its clients): read subject_kind and subject"},
                             "type": {"type": "string"}, "message": {"type": "string"},
                             "subject_kind": {"type": "string", "enum": ["vm", "template", "image", "network", "host", ""]},
                             "subject": {"type": "string", "description": "the name of the VM, template or image"}}},
    "EventList": {"type": "object", "required": ["events"], "properties": {"events": {"type": "array", "items": ref("Event")}}},
  }},
}
# The image store (docs/images.md).
image_name = {"type": "string", "pattern": "^[a-z0-9][a-z0-9-]{0,62}$"}
size_bytes = {"type": "integer", "minimum": 1048576, "maximum": 70368744177664, "multipleOf": 512}
doc["paths"].update({
    "/v1/images": {
      "get": {"operationId": "listImages", "summary": "The image store: every image, with its sizes and what uses it",
              "responses": {"200": ok("the images, by name", ref("ImageList")), **unauth}},
      "post": {"operationId": "createImage", "summary": "Create an empty image (size_bytes), an overlay of a store image (backing), or import a host file (source); answers when it is complete",
               "requestBody": {"required": True, "content": {"application/json": {"schema": ref("ImageCreate")}}},
               "responses": {"201": ok("the new image", ref("Image")), "400": err("malformed JSON, unknown field, invalid name"),
                             "404": err("the backing image does not exist"),
                             "409": err("an image with that name exists, or the backing image is still being written"), "413": err("body larger than 1 MiB"),
                             "422": err("a size out of range, a missing or unreadable source, a source that is not a disk image, conflicting fields, a failed import"),
                             "507": err("a thick image larger than the free space"), **unauth}}},
    "/v1/images/{name}": {
      "get": {"operationId": "getImage", "summary": "One image", "parameters": [name_param],
              "responses": {"200": ok("the image", ref("Image")), "404": err("no such image"), **unauth}},
      "delete": {"operationId": "deleteImage", "summary": "Delete an image nothing uses", "parameters": [name_param],
                 "responses": {"204": {"description": "deleted (the file is removed)"}, "404": err("no such image"),
                               "409": err("a VM, a template or an overlay image uses it, or it is still being written"), **unauth}}},
    "/v1/images/{name}/resize": {"post": {"operationId": "resizeImage", "summary": "Grow an image (not while a running VM uses it)", "parameters": [name_param],
        "requestBody": {"required": True, "content": {"application/json": {"schema": ref("ImageResize")}}},
        "responses": {"200": ok("the image", ref("Image")), "400": err("malformed JSON or unknown field"), "404": err("no such image"),
                      "409": err("a running VM uses it, or it is still being written"), "413": err("body larger than 1 MiB"),
                      "422": err("a size out of range or smaller than the image"), **unauth}}},
})
doc["components"]["schemas"].update({
    "ImageCreate": {"type": "object", "required": ["name"], "additionalProperties": False,
                    "description": "Give one of: size_bytes (an empty image), source (import), backing with an optional size_bytes (an overlay).",
                    "oneOf": [{"required": ["size_bytes"], "not": {"anyOf": [{"required": ["source"]}, {"required": ["backing"]}]}},
                              {"required": ["source"], "not": {"anyOf": [{"required": ["size_bytes"]}, {"required": ["backing"]},
                                                                         {"required": ["provisioning"], "properties": {"provisioning": {"enum": ["thick", "eager-zeroed"]}},
                                                                          "not": {"required": ["format"], "properties": {"format": {"enum": ["raw"]}}}}]}},
                              {"required": ["backing"], "not": {"anyOf": [{"required": ["source"]}, {"required": ["format"], "properties": {"format": {"enum": ["raw"]}}},
                                                                          {"required": ["provisioning"], "properties": {"provisioning": {"enum": ["thick", "eager-zeroed"]}}}]}}],
                    "properties": {
        "name": image_name,
        "format": {"type": "string", "enum": ["qcow2", "raw"], "description": "the store file's format (default qcow2)"},
        "size_bytes": size_bytes,
        "provisioning": {"type": "string", "enum": ["thin", "thick", "eager-zeroed"],
                         "description": "thin (default): allocate on write; thick: reserve every block now (fallocate), lazily zeroed; eager-zeroed: write every byte now. Imports into qcow2 are thin; a thick import needs format raw"},
        "source": {"type": "string", "pattern": "^/", "description": "a regular file on the daemon's host: raw, qcow2, vmdk or vhd (detected); converted into the store"},
        "backing": {**image_name, "description": "make a thin qcow2 overlay of this store image"}}},
    "ImageResize": {"type": "object", "required": ["size_bytes"], "additionalProperties": False, "properties": {"size_bytes": size_bytes}},
    "Image": {"type": "object",
              "required": ["name", "format", "state", "virtual_size_bytes", "actual_size_bytes", "path", "used_by_vms", "used_by_templates", "used_by_images"],
              "properties": {
        "name": {"type": "string"}, "format": {"type": "string", "enum": ["qcow2", "raw"]},
        "state": {"type": "string", "enum": ["ready", "creating", "importing"]},
        "virtual_size_bytes": {"type": "integer"}, "actual_size_bytes": {"type": "integer", "description": "host blocks the file occupies"},
        "backing_image": {"type": "string"}, "path": {"type": "string"},
        "progress_percent": {"type": "integer", "minimum": 0, "maximum": 100},
        "used_by_vms": {"type": "array", "items": {"type": "string"}}, "used_by_templates": {"type": "array", "items": {"type": "string"}},
        "used_by_images": {"type": "array", "items": {"type": "string"}, "description": "overlay images backed by this one"}}},
    "ImageList": {"type": "object", "required": ["images"], "properties": {"images": {"type": "array", "items": ref("Image")}}},
})

# Live migration between daemons (docs/migration.md).
mig_name = {"name": "name", "in": "path", "required": True, "schema": {"type": "string", "pattern": "^[a-z0-9][a-z0-9-]{0,62}$"}}
doc["paths"].update({
    "/v1/vms/{name}/migrate": {"post": {"operationId": "migrateVM",
        "summary": "Move the running VM to another daemon (its TCP listener) while it runs; follow it with GET .../migration",
        "parameters": [mig_name], "requestBody": {"required": True, "content": {"application/json": {"schema": ref("MigrateRequest")}}},
        "responses": {"202": ok("the migration, started", ref("MigrationInfo")), "400": err("malformed body or out-of-range value"),
                      "404": err("no such VM"), "409": err("the VM is not running, has snapshots, is migrating already, or its VMM refused"),
                      "422": err("a disk's size cannot be read (storage copy)"),
                      "502": err("the destination daemon did not take the VM in (unreachable, wrong token, name taken there, no room)"), **unauth}}},
    "/v1/vms/{name}/migration": {
      "get": {"operationId": "getMigration", "summary": "The VM's last live migration by this daemon: phase, round, bytes, rates, pause",
              "parameters": [mig_name], "responses": {"200": ok("the migration", ref("MigrationInfo")), "404": err("no such VM, or no migration of it"), **unauth}},
      "delete": {"operationId": "cancelMigration", "summary": "Cancel the VM's running migration (it runs on here)",
                 "parameters": [mig_name], "responses": {"200": ok("the migration, cancelling", ref("MigrationInfo")), "409": err("the VM is not migrating"),
                                                          "500": err("the VMM did not answer"), **unauth}}},
    "/v1/migrations": {"post": {"operationId": "acceptMigration",
        "summary": "Daemon to daemon: take in a VM that is about to arrive (record it, make its disks for a storage copy, start a VMM waiting for the stream)",
        "requestBody": {"required": True, "content": {"application/json": {"schema": ref("IncomingMigrationRequest")}}},
        "responses": {"201": ok("where the VMM waits and the one-time token it accepts", ref("IncomingMigrationTicket")),
                      "400": err("malformed body"), "409": err("a VM of that name exists here"),
                      "422": err("this daemon has no TCP listener, or the VM does not fit here (memory, files)"), **unauth}}},
    "/v1/migrations/{name}": {"delete": {"operationId": "abandonMigration",
        "summary": "Daemon to daemon: the source gave the migration up; the incoming VM is stopped and removed",
        "parameters": [mig_name], "responses": {"204": {"description": "abandoned"}, "404": err("no such VM"),
                                                "409": err("the VM is not an incoming migration"), **unauth}}},
})
doc["components"]["schemas"].update({
    "MigrationStorage": {"type": "string", "enum": ["copy", "shared"]},
    "MigrateRequest": {"type": "object", "required": ["to", "token"], "additionalProperties": False, "properties": {
        "to": {"type": "string", "description": "the destination daemon's TCP listener, HOST:PORT (its --listen)"},
        "token": {"type": "string", "description": "the destination daemon's bearer token"},
        "storage": {**ref("MigrationStorage"), "description": "copy: send the disks too (the destination gets flattened copies); shared (default): disks both hosts reach at the same paths"},
        "max_downtime_ms": {"type": "integer", "minimum": 1, "maximum": 600000, "description": "longest pause at the switch-over (default 50)"},
        "max_bandwidth_mib": {"type": "integer", "minimum": 1, "maximum": 1048576, "description": "cap on the stream, MiB/s"}}},
    "MigrationInfo": {"type": "object", "required": ["vm", "destination", "storage", "phase", "round", "bytes_sent", "disk_bytes_sent", "remaining_bytes",
                                                     "dirty_bytes_per_s", "bandwidth_bytes_per_s", "expected_downtime_ms", "downtime_target_ms", "total_ms", "started_at"],
                      "properties": {
        "vm": {"type": "string"}, "destination": {"type": "string"}, "storage": ref("MigrationStorage"),
        "phase": {"type": "string", "enum": ["setup", "precopy", "stop-and-copy", "confirming", "completed", "failed", "cancelled", "unknown"]},
        "round": {"type": "integer"}, "bytes_sent": {"type": "integer"}, "disk_bytes_sent": {"type": "integer"},
        "remaining_bytes": {"type": "integer", "description": "RAM and disk bytes dirtied that the next round sends"},
        "dirty_bytes_per_s": {"type": "integer"}, "bandwidth_bytes_per_s": {"type": "integer"},
        "expected_downtime_ms": {"type": "integer", "description": "the pause if the switch-over happened now"},
        "downtime_target_ms": {"type": "integer"}, "downtime_ms": {"type": "integer", "description": "the guest's measured pause (once moved)"},
        "total_ms": {"type": "integer"}, "error": {"type": "string"}, "started_at": {"type": "string", "format": "date-time"}}},
    "IncomingMigrationRequest": {"type": "object", "required": ["vm", "storage"], "additionalProperties": False, "properties": {
        "vm": {"type": "object", "description": "the VM's definition at the source (a VM body's definition fields)"},
        "storage": ref("MigrationStorage"),
        "disk_sizes": {"type": "array", "items": {"type": "integer"}, "description": "each disk's virtual size (storage copy)"},
        "source": {"type": "string", "description": "the source host's name"}}},
    "IncomingMigrationTicket": {"type": "object", "required": ["vm", "port", "token"], "properties": {
        "vm": {"type": "string"}, "port": {"type": "integer", "description": "where the VMM waits for the stream, on the daemon's listen address"},
        "token": {"type": "string", "description": "the one-time token the source VMM must present"}}},
})

# The web console (docs/console-web.md): pages, not API. On the TCP listener, a login with the
# bearer token sets a session cookie that the API also accepts (with X-Vireo-CSRF: 1 on changes).
def html(desc): return {"description": desc, "content": {"text/html": {"schema": {"type": "string"}}}}
def see_other(desc): return {"description": desc, "headers": {"Location": {"schema": {"type": "string"}}}}
def static(op, desc, ctype, missing=None):
    r = {"200": {"description": desc, "content": {ctype: {"schema": {"type": "string"}}}}}
    if missing: r["404"] = {"description": f"Debian's {missing} is not installed (the text says: apt-get install {missing})", "content": {"text/plain": {"schema": {"type": "string"}}}}
    return {"get": {"operationId": op, "summary": desc, "tags": ["web console"], "responses": r}}
doc["paths"].update({
    "/": {"get": {"operationId": "webRoot", "summary": "Redirects to the web console", "tags": ["web console"], "responses": {"303": see_other("to /ui/")}}},
    "/ui/": {"get": {"operationId": "webConsole", "summary": "The web console (its views follow the URL fragment: #/host, #/vms, #/vms/NAME, #/images, #/templates)",
                     "tags": ["web console"], "responses": {"200": html("the console page"), "303": see_other("not logged in: to /ui/login (?reason=expired when the cookie's session has ended)")}}},
    "/ui/login": {
        "get": {"operationId": "webLoginPage", "summary": "The login page", "tags": ["web console"],
                "responses": {"200": html("the login form"), "303": see_other("already logged in, or the unix socket (no login there): to /ui/")}},
        "post": {"operationId": "webLogin", "summary": "Log in with the listener's bearer token; sets the session cookie (HttpOnly, SameSite=Strict, 12 hours)",
                 "tags": ["web console"],
                 "requestBody": {"required": True, "content": {"application/x-www-form-urlencoded": {"schema": {"type": "object", "required": ["token"], "properties": {"token": {"type": "string"}}}}}},
                 "responses": {"303": see_other("logged in: to /ui/, with Set-Cookie"), "400": html("no token given"), "401": html("wrong token: the login page again"),
                               "415": html("not a form body")}}},
    "/ui/logout": {"post": {"operationId": "webLogout", "summary": "Ends the session and clears the cookie", "tags": ["web console"], "responses": {"303": see_other("to /ui/login")}}},
    "/ui/app.js": static("webAppJS", "The console's script", "text/javascript"),
    "/ui/app.css": static("webAppCSS", "The console's style sheet", "text/css"),
    "/ui/vendor/chart.js": static("webChartJS", "Chart.js from Debian's libjs-chart.js", "text/javascript", "libjs-chart.js"),
    "/ui/vendor/xterm.js": static("webXtermJS", "xterm.js from Debian's libjs-xterm", "text/javascript", "libjs-xterm"),
    "/ui/vendor/xterm.css": static("webXtermCSS", "xterm.js's style sheet from Debian's libjs-xterm", "text/css", "libjs-xterm"),
})

here = os.path.dirname(os.path.abspath(__file__))
text = json.dumps(doc, indent=2, sort_keys=False) + "\n"
open(os.path.join(here, "vireo.json"), "w").write(text)
assert '"""' not in text and "\\(" not in text
swift = ("// Generated by openapi/gen.py from the same source as openapi/vireo.json; do not edit.\n"
         "public enum OpenAPIDocument {\n    public static let json = #\"\"\"\n" + text + "\n\"\"\"#\n}\n")
open(os.path.join(here, "..", "Sources", "VireoAPI", "OpenAPIDocument.swift"), "w").write(swift)
