"""schemathesis hooks for scripts/schemathesis.

Every generated request gets an Idempotency-Key of its own. The stateful phase reuses header
values across requests, and a key reused with the same request is answered with the first
response again (draft-ietf-httpapi-idempotency-key-header-07): a create replayed after the
record was deleted answers 201 for a record that is gone, which schemathesis reports as
"created resource not found" (seen once in CI). Replays and reused keys are tested by
gateway/tests/router.rs and integration-tests/tests/idempotency.rs.
"""

import uuid

import schemathesis


@schemathesis.hook
def map_headers(ctx, headers):
    if headers and "Idempotency-Key" in headers:
        headers["Idempotency-Key"] = uuid.uuid4().hex
    return headers
