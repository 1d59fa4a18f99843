#!/usr/bin/env python3
"""An independent write probe, for checking pgha's own drill numbers from outside pgha.

It shares no code with pgha: every 100 ms it starts `psql` (libpq) on a new connection to
HOST:PORT with one INSERT, without waiting for the earlier ones, and records when each
acknowledgement arrived. At the end (SECONDS elapsed, or Ctrl-C) it prints every gap between
consecutive acknowledgements longer than MIN_GAP seconds, and the longest one, in seconds.
SECONDS 0 runs until SIGTERM or SIGINT.

Usage: PGPASSWORD=... scripts/independent-probe.py HOST PORT SECONDS [MIN_GAP]
The password comes from the environment only (never argv). Needs `psql` (postgresql-client).
"""
import glob
import os
import signal
import subprocess
import sys
import threading
import time

# Debian's /usr/bin/psql is a Perl wrapper (pg_wrapper) that picks a version and then runs the
# real client: ten Perl starts a second loaded the 2-core lab host into saturation (load 80,
# each psql 3 s) and the probe measured its own queue. The newest real client is called
# directly; `psql` from PATH where there is none.
clients = sorted(glob.glob("/usr/lib/postgresql/*/bin/psql"), key=lambda path: int(path.split("/")[4]))
psql = clients[-1] if clients else "psql"
host, port, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
min_gap = float(sys.argv[4]) if len(sys.argv) > 4 else 0.5
env = dict(os.environ, PGHOST=host, PGPORT=port, PGUSER="postgres", PGDATABASE="postgres",
           PGCONNECT_TIMEOUT="2", PGAPPNAME="independent-probe")
tag = f"independent-{int(time.time())}"
subprocess.run([psql, "-X", "-q", "-c",
                "create table if not exists pgha_independent (tag text, id bigint, at timestamptz default now())"],
               env=env, check=True)

acks, failures, lock = [], [0], threading.Lock()


def attempt(number):
    try:
        done = subprocess.run(
            [psql, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-c",
             f"insert into pgha_independent (tag, id) values ('{tag}', {number})"],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=10)
        ok = done.returncode == 0
    except subprocess.TimeoutExpired:
        ok = False
    with lock:
        if ok:
            acks.append(time.monotonic())
        else:
            failures[0] += 1


def stop(*_):
    raise KeyboardInterrupt


signal.signal(signal.SIGTERM, stop)
start = time.monotonic()
threads, number = [], 0
try:
    while seconds == 0 or time.monotonic() - start < seconds:
        number += 1
        thread = threading.Thread(target=attempt, args=(number,), daemon=True)
        thread.start()
        threads.append(thread)
        time.sleep(max(0.0, start + number * 0.1 - time.monotonic()))
except KeyboardInterrupt:
    pass
for thread in threads:
    thread.join(timeout=12)
acks.sort()
gaps = [(b - a, a - start) for a, b in zip(acks, acks[1:])]
print(f"attempts {number}, acknowledged {len(acks)}, failed {failures[0]}")
for gap, at in gaps:
    if gap > min_gap:
        print(f"gap {gap:.2f} s at +{at:.1f} s")
print(f"longest {max(gaps)[0]:.2f} s" if gaps else "no acknowledgements")
