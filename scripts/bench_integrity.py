#!/usr/bin/env python3
"""Benchmark of run-time integrity measurement (issue 5), driven by scripts/bench-integrity.

Measures, in one run on one machine:
- throughput and latency of GET /hello/ with the in-kernel monitor off and at 1000, 100 and
  10 ms intervals (same VM configuration otherwise, two interleaved rounds);
- the monitor's own cost: CPU share (total round time / uptime), time per round and per MiB;
- detection latency (tamper → violation visible in /_tuk/status) at several intervals;
- the out-of-guest monitor's time per check, when the launcher reports it.

Writes a Markdown section to the path given as argv[1], and (for scripts/evaluate) the raw
numbers as JSON to argv[2] if given. Every number comes from this run.
"""

import json
import os
import random
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TUK = os.path.join(ROOT, "target", "release", "tuk")
COMPONENTS = os.path.join(ROOT, "target", "components")
WORK = tempfile.mkdtemp(prefix="tuk-bench-integrity-")
VMS = []
# The raw numbers, for argv[2]: throughput per configuration, CPU share and µs/MiB per
# interval, detection latencies per interval (ms).
RAW = {"throughput": {}, "cpu_share_pct": {}, "us_per_mib": {}, "detection_ms": {}}


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def run(*args):
    return subprocess.run(args, check=True, capture_output=True, text=True).stdout


def http_json(url):
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())


class Vm:
    def __init__(self, name, interval_ms, policy="reinstantiate", extra=()):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        # /_tuk/status is served on the admin listener.
        self.admin_port = free_port()
        self.admin = f"http://127.0.0.1:{self.admin_port}"
        self.state = os.path.join(WORK, f"state-{name}")
        self.events = open(os.path.join(WORK, f"{name}.events"), "w+")
        args = [TUK, "run", "--listen", f"127.0.0.1:{self.port}", "--accel", "tcg",
                "--admin-listen", f"127.0.0.1:{self.admin_port}",
                "--memory", "96", "--state-dir", self.state,
                "--trust", os.path.join(WORK, "bench.pub"),
                "--kernel-arg", f"integrity.interval_ms={interval_ms}",
                "--kernel-arg", f"integrity.policy={policy}"]
        for c in ("hello", "kv", "notes"):
            args += ["--component", f"{c}={os.path.join(WORK, c + '.bundle')}"]
        args += list(extra)
        self.proc = subprocess.Popen(args, stdout=self.events,
                                     stderr=open(os.path.join(WORK, f"{name}.err"), "w"))
        VMS.append(self)
        deadline = time.time() + 60
        while time.time() < deadline:
            self.events.seek(0)
            if '"event":"ready"' in self.events.read():
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        sys.exit(f"{name}: tuk run did not become ready; see {WORK}/{name}.err")

    def status(self):
        return http_json(self.admin + "/_tuk/status")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def wrk(url, conns, threads, secs=8):
    out = run("wrk", f"-t{threads}", f"-c{conns}", f"-d{secs}s", "--latency", url)
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    lat = dict(re.findall(r"\s+(50|99)%\s+(\S+)", out))
    return rps, lat.get("50", "?"), lat.get("99", "?")


def instance(status, name):
    return next(i for i in status["instances"] if i["name"] == name)


def throughput(rows, overhead):
    configs = [("off", 0), ("1000 ms", 1000), ("100 ms", 100), ("10 ms", 10)]
    results = {label: [] for label, _ in configs}
    for rnd in (1, 2):
        order = configs if rnd == 1 else list(reversed(configs))
        for label, interval in order:
            vm = Vm(f"tp-{interval}-{rnd}", interval)
            time.sleep(1)
            wrk(vm.url + "/hello/", 1, 1, 2)  # warm-up
            rps1, p50, p99 = wrk(vm.url + "/hello/", 1, 1)
            rps16, p50_16, p99_16 = wrk(vm.url + "/hello/", 16, 2)
            s = vm.status()
            health = http_json(vm.url + "/_tuk/health")
            uptime_us = health["uptime_ms"] * 1000
            results[label].append((rps1, rps16))
            RAW["throughput"].setdefault(str(interval), []).append([rps1, rps16])
            load = os.getloadavg()[0]
            rows.append(f"| {label} | {rnd} | {rps1:.0f} | {p50} | {p99} | {rps16:.0f} | {p50_16} | {p99_16} | {s['rounds']} | {load:.1f} |")
            if interval:
                share = 100.0 * s["total_round_us"] / uptime_us
                per_mib = s["last_round_us"] / (s["last_round_bytes"] / 1048576)
                RAW["cpu_share_pct"].setdefault(str(interval), []).append(share)
                RAW["us_per_mib"].setdefault(str(interval), []).append(per_mib)
                RAW.setdefault("round_parts_us", {}).setdefault(str(interval), []).append(
                    s.get("last_round_parts_us", {}))
                overhead.append(
                    f"| {label} | {rnd} | {s['rounds']} | {s['total_round_us'] / max(s['rounds'], 1):.0f} | "
                    f"{s['max_round_us']} | {s['last_round_bytes']} | {per_mib:.0f} | {share:.2f} % |")
            vm.stop()
    base1 = statistics.mean(r[0] for r in results["off"])
    base16 = statistics.mean(r[1] for r in results["off"])
    summary = []
    for label, _ in configs[1:]:
        m1 = statistics.mean(r[0] for r in results[label])
        m16 = statistics.mean(r[1] for r in results[label])
        summary.append(f"| {label} | {100 * (base1 - m1) / base1:+.1f} % | {100 * (base16 - m16) / base16:+.1f} % |")
    return summary


def tamper(vm, target, offset):
    out = run(TUK, "tamper", "--instance", vm.state, "--target", target, "--offset", str(offset))
    return json.loads(out.strip().splitlines()[-1])


def detection(rows):
    for interval, samples in ((10, 20), (100, 20), (1000, 10)):
        vm = Vm(f"det-{interval}", interval)
        lat = []
        for i in range(samples):
            # A random phase against the monitor's rounds: otherwise each tamper lands right
            # after the round that caught the previous one and every sample is a worst case.
            time.sleep(random.uniform(0, interval / 1000))
            before = instance(vm.status(), "hello")["violations"]
            t0 = time.monotonic()
            tamper(vm, "component:hello:code", 4096 + 64 * i)
            while True:
                h = instance(vm.status(), "hello")
                if h["violations"] > before and h["state"] == "trusted":
                    break
                if time.monotonic() - t0 > 10 + interval / 100:
                    sys.exit(f"interval {interval}: tamper {i} not detected")
                time.sleep(0.002)
            lat.append((time.monotonic() - t0) * 1000)
        lat.sort()
        RAW["detection_ms"][str(interval)] = lat
        p50 = statistics.median(lat)
        p99 = lat[min(len(lat) - 1, int(round(0.99 * (len(lat) - 1))))]
        rows.append(f"| {interval} ms | {samples} | {p50:.0f} | {p99:.0f} | {lat[0]:.0f} | {lat[-1]:.0f} |")
        vm.stop()


def main():
    out_path = sys.argv[1]
    run(TUK, "keygen", "--out", WORK, "--name", "bench")
    for c in ("hello", "kv", "notes"):
        run(TUK, "sign", os.path.join(COMPONENTS, c + ".wasm"), "--key", os.path.join(WORK, "bench.key"),
            "--name", c, "--version", "1.0.0", "-o", os.path.join(WORK, c + ".bundle"))
    rates_vm = Vm("rates", 1000)
    s = rates_vm.status()
    rates = s["hash_rates"]
    RAW["hash_rates"] = rates
    rates_vm.stop()

    tp_rows, overhead_rows = [], []
    summary = throughput(tp_rows, overhead_rows)
    det_rows = []
    detection(det_rows)

    with open(out_path, "w") as f:
        w = lambda line="": f.write(line + "\n")
        w("## Run-time integrity measurement (issue 5)")
        w()
        w(f"Produced by `scripts/bench-integrity` on {time.strftime('%Y-%m-%d', time.gmtime())}, TCG, "
          "hello + kv + notes signed and deployed (96 MiB guest). Under TCG only the ratios within this run mean much.")
        w()
        w(f"Digest speed inside the kernel (kernel text, measured at boot): SHA-256 {rates['sha256_mb_s']} MB/s, "
          f"the keyed XXH3-128 fingerprint used for periodic comparison {rates['fingerprint_mb_s']} MB/s "
          "(docs/measurement.md, \"Two digests\").")
        w()
        w("Throughput of `GET /hello/` (`wrk`, 8 s, keep-alive) with the monitor off and at three intervals; "
          "two rounds, the second in reverse order.")
        w()
        w("| monitor | round | req/s @1 | p50 | p99 | req/s @16 | p50 | p99 | monitor rounds | host load (1 min) |")
        w("|---|---|---|---|---|---|---|---|---|---|")
        for r in tp_rows:
            w(r)
        w()
        w("Throughput loss against `off` (mean of both rounds; negative = faster, i.e. noise; compare with the "
          "host load column: on a 2-core host a load above ~1.5 means other work competed with QEMU):")
        w()
        w("| interval | loss @1 connection | loss @16 connections |")
        w("|---|---|---|")
        for r in summary:
            w(r)
        w()
        w("The monitor's own cost, from `/_tuk/status` at the end of each run above (one round = kernel text + "
          "rodata + page-table walk + three code images + their `.rodata`):")
        w()
        w("| interval | round | rounds | mean µs/round | max µs/round | bytes/round | µs per MiB | CPU share |")
        w("|---|---|---|---|---|---|---|---|")
        for r in overhead_rows:
            w(r)
        w()
        shares = RAW["cpu_share_pct"].get("100", [])
        losses = [r for r in summary if r.startswith("| 100 ms |")]
        if shares:
            w(f"**The target, at most 2 % loss at 100 ms:** the monitor's CPU share at 100 ms is "
              f"{min(shares):.2f}–{max(shares):.2f} % in this run ({'within' if max(shares) <= 2.0 else 'above'} "
              f"the target). The throughput loss row above ({losses[0] if losses else 'n/a'}) is not resolvable "
              "here: TCG on a shared 2-core host moves throughput by more between rounds than the monitor costs. "
              "With the vCPU saturated, the monitor's share of guest time is what it takes from requests, so the "
              "share is the number to judge (under KVM the digests run natively and the share is far smaller; "
              "not measurable on this host).")
            w()
        parts = RAW.get("round_parts_us", {}).get("100", [])
        if parts and all(parts):
            last = parts[-1]
            w(f"Where a round's time goes (the last 100 ms run, `/_tuk/status` `last_round_parts_us`): kernel text + "
              f"rodata {last.get('kernel')} µs, page-table audit {last.get('wx_audit')} µs, components "
              f"{last.get('components')} µs.")
            w()
        w("Detection latency: after a random delay (uniform over one interval, so tampering lands at a random "
          "phase of the monitor's rounds), `tuk tamper` flips one byte of hello's code image, then `/_tuk/status` "
          "is polled every 2 ms until the violation is recorded and hello is re-instantiated. It includes the "
          "tamper tool's own run time (process start and one status request, ~10-30 ms) and the poll period; "
          "the expected value is about half an interval plus that, the worst case one interval plus a round.")
        w()
        w("| interval | samples | p50 (ms) | p99 (ms) | min (ms) | max (ms) |")
        w("|---|---|---|---|---|---|")
        for r in det_rows:
            w(r)
        w()
    if len(sys.argv) > 2:
        with open(sys.argv[2], "w") as f:
            json.dump(RAW, f)


if __name__ == "__main__":
    try:
        main()
    finally:
        for vm in VMS:
            vm.stop()
        subprocess.run(["rm", "-rf", WORK])
