# schemathesis hooks for scripts/fuzz-host-api.sh (SCHEMATHESIS_HOOKS=fuzz_hooks, PYTHONPATH=scripts).
import schemathesis


@schemathesis.hook
def filter_query(ctx, query):
    # GET /v1/events?follow=true streams until the client leaves: a fuzzer request would hang
    # until its timeout. The stream is tested in Tests/HostTests/HostEventStreamTests.swift.
    return not (isinstance(query, dict) and query.get("follow") in (True, "true", "1", 1))


@schemathesis.hook
def filter_body(ctx, body):
    # Thick and eager-zeroed images reserve or write their whole size (up to the free space):
    # a fuzzer making many would fill the disk of a shared machine. HostImageTests covers them.
    return not (isinstance(body, dict) and body.get("provisioning") in ("thick", "eager-zeroed"))
