#!/usr/bin/env python3
"""Attestation costs for scripts/evaluate (tuk only; the Linux baseline has no equivalent).

Boots one tuk instance (TCG, signed hello, its own vTPM), then measures in one run:
- `tuk attest URL` one-shot (identity, EK chain, credential activation, quote, appraisal):
  the CLI's own round trip, N times after one warm-up;
- the verifier service's round trip for a registered instance
  (`POST /v1/instances/ID/attest`: quote for a fresh nonce, appraisal, signed EAR, stored).

Usage: evaluate_attest.py OUT.json TUK KERNEL COMPONENTS_DIR [N]
Writes {"cli_ms": [...], "verifier_ms": [...], "statuses": [...]} to OUT.json.
"""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_ready(path, proc, what, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        with open(path) as f:
            for line in f:
                if '"event":"ready"' in line:
                    return json.loads(line)
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    sys.exit(f"{what} did not become ready (see {path})")


def stop(proc):
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def main():
    out, tuk, kernel, components = sys.argv[1:5]
    n = int(sys.argv[5]) if len(sys.argv) > 5 else 20
    work = tempfile.mkdtemp(prefix="tuk-eval-attest-")
    env = dict(os.environ, TUK_VTPM_CA_DIR=os.path.join(work, "ca"))
    run = lambda *a: subprocess.run(a, check=True, capture_output=True, text=True, env=env)
    procs = []
    try:
        run(tuk, "keygen", "--out", work, "--name", "eval")
        key_pub = os.path.join(work, "eval.pub")
        run(tuk, "sign", os.path.join(components, "hello.wasm"), "--key", os.path.join(work, "eval.key"),
            "--name", "hello", "--version", "1.0.0", "-o", os.path.join(work, "hello.bundle"))
        port, admin_port = free_port(), free_port()
        vm_events = os.path.join(work, "vm.events")
        vm = subprocess.Popen([tuk, "run", "--kernel", kernel, "--listen", f"127.0.0.1:{port}", "--accel", "tcg",
                               "--admin-listen", f"127.0.0.1:{admin_port}",
                               "--memory", "96", "--state-dir", os.path.join(work, "vm"), "--trust", key_pub,
                               "--component", f"hello={os.path.join(work, 'hello.bundle')}"],
                              stdout=open(vm_events, "w"), stderr=open(os.path.join(work, "vm.err"), "w"), env=env)
        procs.append(vm)
        wait_ready(vm_events, vm, "tuk run")
        # Attestation is served on the admin listener.
        url = f"http://127.0.0.1:{admin_port}"
        refs = ["--kernel", kernel, "--trust", key_pub]
        cli, statuses = [], []
        for i in range(n + 1):
            p = subprocess.run([tuk, "attest", url, *refs], capture_output=True, text=True, env=env)
            m = re.search(r": (\w+) \((\d+) ms\)", p.stdout.splitlines()[0] if p.stdout else "")
            if not m:
                sys.exit(f"tuk attest failed ({p.returncode}): {p.stdout}{p.stderr}")
            if i:  # the first quote after boot also pays swtpm's first TPM_RC_RETRY
                cli.append(float(m.group(2)))
                statuses.append(m.group(1).lower())
        v_events = os.path.join(work, "verifier.events")
        verifier = subprocess.Popen([tuk, "verifier", "serve", "--listen", "127.0.0.1:0", "--state-dir",
                                     os.path.join(work, "verifier"), "--interval", "600000", *refs],
                                    stdout=open(v_events, "w"), stderr=open(os.path.join(work, "verifier.err"), "w"),
                                    env=env)
        procs.append(verifier)
        ready = wait_ready(v_events, verifier, "tuk verifier serve")
        vurl = "http://" + ready["listen"]
        # The verifier's API wants a bearer token: the admin token it made on first start.
        with open(ready["admin_token_file"]) as f:
            token = f.read().strip()

        def post(path, body=None):
            data = json.dumps(body).encode() if body is not None else b""
            r = urllib.request.Request(vurl + path, data=data, method="POST",
                                       headers={"Content-Type": "application/json",
                                                "Authorization": "Bearer " + token})
            with urllib.request.urlopen(r, timeout=60) as resp:
                return json.loads(resp.read())

        post("/v1/instances", {"url": url, "id": "eval"})
        time.sleep(1)  # the first, scheduled attestation
        ver = []
        for _ in range(n):
            t = time.monotonic()
            doc = post("/v1/instances/eval/attest")
            ver.append((time.monotonic() - t) * 1000)
            statuses.append(doc["status"])
        with open(out, "w") as f:
            json.dump({"cli_ms": cli, "verifier_ms": ver, "statuses": statuses}, f)
    finally:
        for p in reversed(procs):
            stop(p)
        subprocess.run(["rm", "-rf", work])


if __name__ == "__main__":
    main()
