"""Benchmark the web app as users see it (run by hand, not part of the tests).

    .venv/bin/python benchmarks/bench_app.py [--concurrency 2] [--threads 1] [--checkpoint PATH]

Starts ``app.py`` as a subprocess on a free loopback port and measures, with
gradio_client:
  * the time from launching the process to the first served caption;
  * the latency of ``/caption`` at beam 3 for a 224x224 photo: one client
    (``--requests`` calls in a row), then ``--clients`` concurrent clients
    (threads, each with its own Client, ``--per-client`` calls each).
Prints a table with the median and 95th percentile, the errors (a failed or
empty answer), the server's CPU time per request (from /proc: what one core
can serve, whatever else shares the machine) and the load average.

    .venv/bin/python benchmarks/bench_app.py --rounds 3 --clients 16 --seconds 60 [--delete-after 60]

instead runs ``--rounds`` rounds of ``--clients`` clients captioning (each call
uploads the photo) for ``--seconds``, and prints after each round the server's
resident memory and the bytes in its Gradio temp folder (issue 22: they grew
1,082 -> 1,329 MB and by every upload, and never came down).
"""
import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import argparse  # noqa: E402
import platform  # noqa: E402
import socket  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

from gradio_client import Client, handle_file  # noqa: E402
from PIL import Image  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def percentile(xs, q):
    xs = sorted(xs)
    k = (len(xs) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--requests", type=int, default=30, help="calls for the one-client run")
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--per-client", type=int, default=10)
    p.add_argument("--beam", type=int, default=3)
    p.add_argument("--concurrency", type=int, default=None, help="passed to app.py")
    p.add_argument("--threads", type=int, default=None, help="passed to app.py")
    p.add_argument("--checkpoint", default=None, help="passed to app.py")
    p.add_argument("--startup-timeout", type=float, default=120)
    p.add_argument("--rounds", type=int, default=0, help="rounds of load (memory and temp disk after each)")
    p.add_argument("--seconds", type=float, default=60, help="length of a round")
    p.add_argument("--delete-after", type=int, default=None, help="SHOWTELL_DELETE_AFTER for the server")
    args = p.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="bench_app_"))
    photo = tmp / "photo224.jpg"
    Image.open(ROOT / "examples" / "cat.jpg").convert("RGB").resize((224, 224), Image.LANCZOS).save(photo, quality=90)

    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    cmd = [sys.executable, str(ROOT / "app.py"), "--host", "127.0.0.1", "--port", str(port)]
    for flag, value in (("--concurrency", args.concurrency), ("--threads", args.threads),
                        ("--checkpoint", args.checkpoint)):
        if value is not None:
            cmd += [flag, str(value)]
    log = open(tmp / "server.log", "w")
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    env = {**os.environ, "GRADIO_TEMP_DIR": str(tmp / "gradio")}
    if args.delete_after is not None:
        env["SHOWTELL_DELETE_AFTER"] = str(args.delete_after)
    server = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        first = None
        while first is None:
            if server.poll() is not None:
                log.flush()
                print((tmp / "server.log").read_text(), file=sys.stderr)
                raise SystemExit(f"app.py exited with code {server.returncode}")
            if time.perf_counter() - t0 > args.startup_timeout:
                raise SystemExit(f"no caption within {args.startup_timeout}s; log in {tmp / 'server.log'}")
            try:
                client = Client(url, verbose=False)
                first = client.predict(handle_file(str(photo)), args.beam, 1, api_name="/caption")[0]
            except Exception:  # not listening yet
                time.sleep(0.1)
        startup = time.perf_counter() - t0

        errors = []

        data, count = photo.read_bytes(), iter(range(10**9))

        def timed(c):
            image = photo
            if args.rounds:  # a new file each call (bytes after the JPEG's end), as new users upload
                image = tmp / f"upload-{next(count)}.jpg"
                image.write_bytes(data + os.urandom(16))
            t = time.perf_counter()
            try:
                best = c.predict(handle_file(str(image)), args.beam, 1, api_name="/caption")[0]
                if not best:
                    errors.append("empty caption")
            except Exception as e:  # counted and reported, never hidden
                errors.append(f"{type(e).__name__}: {e}")
            finally:
                if image != photo:
                    image.unlink()
            return time.perf_counter() - t

        for _ in range(3):  # warm the connection
            timed(client)
        if args.rounds:
            return load_rounds(args, url, timed, server.pid, tmp / "gradio", errors)
        cpu0 = server_cpu_seconds(server.pid)
        single = [timed(client) for _ in range(args.requests)]
        cpu_single = server_cpu_seconds(server.pid) - cpu0

        clients = [Client(url, verbose=False) for _ in range(args.clients)]
        latencies, lock = [], threading.Lock()
        barrier = threading.Barrier(args.clients)

        def worker(c):
            barrier.wait()
            mine = [timed(c) for _ in range(args.per_client)]
            with lock:
                latencies.extend(mine)

        threads = [threading.Thread(target=worker, args=(c,)) for c in clients]
        t, cpu0 = time.perf_counter(), server_cpu_seconds(server.pid)
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        wall = time.perf_counter() - t
        cpu_concurrent = server_cpu_seconds(server.pid) - cpu0
        config = [line.strip() for line in (tmp / "server.log").read_text().splitlines() if "ready in" in line]
    finally:
        server.terminate()
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()

    ms = lambda s: f"{1000 * s:8.0f}"  # noqa: E731
    print(f"showtell web app benchmark: beam {args.beam}, one 224x224 JPEG, /caption via gradio_client")
    print(f"hardware: {os.cpu_count()} CPUs (nproc {len(os.sched_getaffinity(0))}), {cpu_model()}, "
          f"Python {platform.python_version()}")
    print(f"load average before the run: {load_before[0]:.2f} {load_before[1]:.2f} {load_before[2]:.2f}, "
          f"after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    if config:
        print("server:", config[0])
    print(f"first caption: {first!r}")
    print()
    print(f"{'measure':<30}{'requests':>9}{'median ms':>11}{'p95 ms':>9}{'req/s':>8}{'CPU ms/req':>12}"
          f"{'cores used':>11}")
    print(f"{'launch -> first caption':<30}{1:>9}{ms(startup):>11}")
    print(f"{'1 client':<30}{len(single):>9}{ms(statistics.median(single)):>11}{ms(percentile(single, .95)):>9}"
          f"{len(single) / sum(single):>8.1f}{ms(cpu_single / len(single)):>12}{cpu_single / sum(single):>11.2f}")
    print(f"{f'{args.clients} concurrent clients':<30}{len(latencies):>9}{ms(statistics.median(latencies)):>11}"
          f"{ms(percentile(latencies, .95)):>9}{len(latencies) / wall:>8.1f}"
          f"{ms(cpu_concurrent / len(latencies)):>12}{cpu_concurrent / wall:>11.2f}")
    print(f"errors: {len(errors)} of {len(single) + len(latencies)} requests"
          + (f"; first: {errors[0]}" if errors else ""))
    print(f"one core serves about {len(latencies) / cpu_concurrent:.1f} requests/s at full load "
          f"(server CPU time per request under {args.clients} clients)")
    return 1 if errors else 0


def load_rounds(args, url, timed, pid, temp_dir, errors) -> int:
    """Rounds of ``args.clients`` clients calling /caption for ``args.seconds``;
    the server's memory and temp disk after each (and after a pause of
    DELETE_EVERY + 5 s that lets the cleanup run, after the last)."""
    def rss_mb():
        with open(f"/proc/{pid}/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024

    def disk():
        files = [p for p in temp_dir.rglob("*") if p.is_file()]
        return len(files), sum(p.stat().st_size for p in files) / 1e6

    print(f"load rounds: {args.clients} clients x {args.seconds:.0f} s, beam {args.beam}, each call uploads "
          f"a 224x224 JPEG; SHOWTELL_DELETE_AFTER={args.delete_after or 'default'}")
    print(f"{'after':<18}{'requests':>9}{'errors':>8}{'server RSS MB':>15}{'temp files':>12}{'temp MB':>9}")
    n, size = disk()
    print(f"{'start':<18}{'':>9}{'':>8}{rss_mb():>15.0f}{n:>12}{size:>9.1f}")
    for r in range(1, args.rounds + 1):
        done, stop = [0], time.monotonic() + args.seconds
        before = len(errors)

        def worker():
            c = Client(url, verbose=False)
            while time.monotonic() < stop:
                timed(c)
                done[0] += 1

        threads = [threading.Thread(target=worker) for _ in range(args.clients)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        n, size = disk()
        print(f"{f'round {r}':<18}{done[0]:>9}{len(errors) - before:>8}{rss_mb():>15.0f}{n:>12}{size:>9.1f}",
              flush=True)
    time.sleep(65)
    n, size = disk()
    print(f"{'65 s idle':<18}{'':>9}{'':>8}{rss_mb():>15.0f}{n:>12}{size:>9.1f}")
    if errors:
        print(f"first error: {errors[0]}")
    return 1 if errors else 0


def server_cpu_seconds(pid: int) -> float:
    """User + system CPU time of the server process so far (Linux /proc)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


if __name__ == "__main__":
    sys.exit(main())
