#!/usr/bin/env python3
"""Run moto's DynamoDB-compatible server single-threaded (on 127.0.0.1 by default).

Why not `moto_server` / ThreadedMotoServer: both serve requests on several
threads, and moto's in-memory backends are not safe under concurrent writes
(conditional puts from racing lock clients can both "succeed").  A plain
werkzeug BaseWSGIServer handles one request at a time, so every DynamoDB call
is atomic, like the real service.  It also speaks HTTP/1.0 (closes after each
response), so an idle pooled keep-alive connection can't block other clients.

Usage: moto_single_threaded.py PORT_FILE [PORT [HOST]]
PORT defaults to 0: the OS picks a free port while we hold the socket, so there
is no pick-then-bind race.  The bound port is written to PORT_FILE (atomically)
once the socket is listening.  HOST defaults to 127.0.0.1; the container image
(scripts/images/moto) listens on 0.0.0.0 so that its published port answers.
"""
import os
import sys

from moto.server import DomainDispatcherApplication, create_backend_app
from werkzeug.serving import make_server


def main() -> None:
    port_file = sys.argv[1]
    port = int(sys.argv[2]) if len(sys.argv) > 2 else 0
    host = sys.argv[3] if len(sys.argv) > 3 else "127.0.0.1"
    app = DomainDispatcherApplication(create_backend_app)
    server = make_server(host, port, app, threaded=False, processes=1)
    tmp = f"{port_file}.tmp"
    with open(tmp, "w") as f:
        f.write(f"{server.server_port}\n")
    os.replace(tmp, port_file)
    print(f"moto listening on http://{host}:{server.server_port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
