"""leasehold stand-in for DynamoDB Local: moto's server on 0.0.0.0:8000.

Accepts DynamoDB Local's java-style arguments (`-jar DynamoDBLocal.jar
-inMemory -sharedDb -port 8000 ...`); only `-port` is used. The listening
socket is bound and the DynamoDB backend answered one ListTables in-process
before the ready lines are printed, so a log-line wait is a real readiness
signal. Env: MOTO_HOST (default 0.0.0.0), AWS_DEFAULT_REGION (the region
unsigned requests are filed under, default us-east-1).
"""

import json
import os
import signal
import threading
import sys

from werkzeug.serving import make_server
from werkzeug.test import Client

import moto
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app


def sign_unsigned_dynamodb_requests(app, region):
    """moto picks a service from the request's SigV4 scope; an unsigned request
    (curl, a health check) would go to its S3 default. Give unsigned requests
    that carry a DynamoDB X-Amz-Target a DynamoDB scope. Signed requests, as
    every AWS SDK sends, pass untouched (moto does not check signatures)."""

    def wrapped(environ, start_response):
        target = environ.get("HTTP_X_AMZ_TARGET", "")
        if "HTTP_AUTHORIZATION" not in environ and target.startswith("DynamoDB"):
            environ["HTTP_AUTHORIZATION"] = (
                "AWS4-HMAC-SHA256 Credential=leasehold/20000101/"
                f"{region}/dynamodb/aws4_request, SignedHeaders=host, Signature=0"
            )
        return app(environ, start_response)

    return wrapped


def serialized(app):
    """Runs the WSGI app under one lock, so each request is atomic."""
    lock = threading.Lock()

    def wrapped(environ, start_response):
        with lock:
            return list(app(environ, start_response))

    return wrapped


def main(argv):
    port = 8000
    ignored = []
    i = 0
    while i < len(argv):
        if argv[i] == "-port" and i + 1 < len(argv):
            port = int(argv[i + 1])
            i += 2
            continue
        ignored.append(argv[i])
        i += 1
    host = os.environ.get("MOTO_HOST", "0.0.0.0")
    os.environ["MOTO_PORT"] = str(port)

    region = os.environ.get("AWS_DEFAULT_REGION") or os.environ.get("AWS_REGION") or "us-east-1"
    app = sign_unsigned_dynamodb_requests(DomainDispatcherApplication(create_backend_app), region)
    # Warm up (and check) the DynamoDB backend before saying we are ready.
    resp = Client(app).post(
        "/",
        data="{}",
        headers={
            "X-Amz-Target": "DynamoDB_20120810.ListTables",
            "Content-Type": "application/x-amz-json-1.0",
        },
    )
    body = resp.get_data(as_text=True)
    if resp.status_code != 200 or "TableNames" not in json.loads(body):
        print(f"moto DynamoDB self-check failed: {resp.status_code} {body}", file=sys.stderr)
        return 1

    # moto does not make a conditional write atomic across threads: two
    # concurrent conditional UpdateItems on one item could both succeed, where
    # DynamoDB guarantees per-item atomicity. Serve one request at a time.
    server = make_server(host, port, serialized(app), threaded=True)

    def stop(signum, frame):
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)

    # DynamoDB Local's own banner, for waits written against the real image.
    print("Initializing DynamoDB Local with the following configuration:")
    print(f"Port:\t{port}")
    print("InMemory:\ttrue")
    print("DbPath:\tnull")
    print("SharedDb:\tfalse")
    print("shouldDelayTransientStatuses:\tfalse")
    print("CorsParams:\tnull")
    print()
    if ignored:
        print(f"(stand-in ignores: {' '.join(ignored)})")
    print(
        f"leasehold stand-in: moto {moto.__version__} DynamoDB API ready on http://{host}:{port}",
        flush=True,
    )
    try:
        server.serve_forever()
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
