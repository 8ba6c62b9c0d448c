"""What the web app does with connections that send no request (run by hand,
not part of the tests; issue 22: 500 idle sockets were held open for good).

    .venv/bin/python benchmarks/bench_idle_sockets.py [--sockets 500] [--seconds 30]

Starts ``app.py`` on a free loopback port, opens ``--sockets`` connections
that send nothing and one that sends half a request head, and prints when the
server closed them and what it sent (nothing for the silent ones, a 408 for
the half head: see HEADER_TIMEOUT in showtell/webapp.py); then sends a request
with both Content-Length and Transfer-Encoding followed by a smuggled one, and
prints the answer (one 400, then the connection closes); then a normal request.
"""
import argparse
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def read_all(sock: socket.socket) -> bytes:
    out = b""
    while chunk := sock.recv(65536):
        out += chunk
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sockets", type=int, default=500)
    p.add_argument("--seconds", type=float, default=30, help="how long to wait for the server to close them")
    args = p.parse_args()
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    server = subprocess.Popen([sys.executable, str(ROOT / "app.py"), "--port", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                if httpx.get(url + "config", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or server.poll() is not None:
                raise SystemExit("app.py did not start")
            time.sleep(0.5)
        t0 = time.monotonic()
        socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(args.sockets)]
        half = socket.create_connection(("127.0.0.1", port))
        half.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # the head never ends
        socks.append(half)
        opened = time.monotonic() - t0
        for s in socks:
            s.setblocking(False)
        closed: dict[int, float] = {}
        received: dict[int, bytes] = {}
        while len(closed) < len(socks) and time.monotonic() - t0 < args.seconds:
            for i, s in enumerate(socks):
                if i in closed:
                    continue
                try:
                    chunk = s.recv(65536)
                except BlockingIOError:
                    continue
                except ConnectionResetError:
                    chunk = b""
                if chunk:
                    received[i] = received.get(i, b"") + chunk
                else:
                    closed[i] = time.monotonic() - t0
            time.sleep(0.05)
        silent = [closed[i] for i in range(args.sockets) if i in closed]
        print(f"{args.sockets} silent connections opened in {opened:.2f} s; closed by the server: {len(silent)}"
              + (f", from {min(silent):.2f} s to {max(silent):.2f} s after the first opened" if silent else "")
              + f"; bytes they received: {sum(len(received.get(i, b'')) for i in range(args.sockets))}")
        print(f"half a request head: closed at {closed.get(args.sockets, float('nan')):.2f} s, received "
              f"{received.get(args.sockets, b'')!r}")
        for s in socks:
            s.close()
        with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
            s.sendall(b"POST /gradio_api/upload HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 5\r\n"
                      b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /gradio_api/info HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            print(f"Content-Length and Transfer-Encoding, then a smuggled GET: {read_all(s)!r}")
        print(f"then a normal GET /config: {httpx.get(url + 'config', timeout=30).status_code}")
    finally:
        server.terminate()
        server.wait(30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
