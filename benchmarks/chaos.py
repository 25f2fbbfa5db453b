"""Exactly-once under chaos: the real tree job (`jobs/generate_trees.py`) on a `ray start --head`
cluster of its own, all four roles on a loopback endpoint with added latency (a benchmark
fixture), its drivers killed, raced and frozen, its growers killed, its S3 disturbed; then each
run is finished and its run root counted.

    python benchmarks/chaos.py                                 # every scenario, local folder and S3
    python benchmarks/chaos.py --storage local --scenarios kill race --trees 64 --kills 4

Scenarios, each on its own run_id at the job's default trees_per_part (4):
- kill: SIGKILL the driver alone at a random moment after one of its commits and start a new one
  at once, `--kills` times; the last one finishes the run.
- race: two drivers released at the same instant (both wait on a FIFO just before the job's
  main): one must be refused with exit 2. The winner is killed after a commit and the next pair
  raced, `--race-rounds` times; the last winner finishes the run.
- growers: SIGKILL grower actors (their pids from Ray's state API) after commits, `--grower-kills`
  times; a driver is rerun until the run is finished.
- s3-faults (S3 only): the job's S3 endpoint is a proxy in front of moto's server that answers
  `--fault-rate` of the requests under nodes/, trees/ and the lease with 503 SlowDown, 500
  InternalError or a reset connection (before forwarding, or after it: written, but the client
  does not know); the first driver runs under faults, reruns without.
- zombie: the widened window. Every commit of the first driver's growers waits
  `--commit-delay-s` between its nodes file and its fence check (ALOE_FAULT_COMMIT_DELAY_S, in
  that driver's Ray job only). A SIGKILLed driver's growers die within a tenth of a second on a
  `ray start` cluster (measured at each kill), and the job cannot run under Ray Client (Ray Data
  refuses it), so the zombie is made by freezing the driver (SIGSTOP) while a commit waits: its
  growers live on. Their requests are held at the endpoint (they reach it under /gated/). New
  drivers are started at once and refused until the lease (`--zombie-ttl-s`) expires; the one
  that takes over finishes the run; then the old growers are let go, grow and commit what they
  hold, and the frozen driver is killed once they are idle.
- zombie-unfenced: the same with ALOE_UNSAFE_NO_FENCE=1 in the drivers and their growers: the
  control, whose duplicates and missing nodes are what the fence prevents.
A probe also measures how long an actor outlives its SIGKILLed driver, joined directly and
through Ray Client (`ray://`, whose server keeps a dropped driver's session for a grace period).

Counted per scenario and storage, in the raw files (every Parquet file under nodes/ and trees/,
as a reader of the folders sees them) and as the committed reader (`RunOutput.committed`) yields
them: unique and ok trees, duplicate tree rows, duplicate nodes, ok trees whose nodes are not
`num_nodes` many, orphan nodes (rows whose tree has no trees row). Work wasted: the endpoint
counts requests by seed, and a request's seed derives from (tree, path, role, attempt), so a
tree whose first request was served more than once was grown (at least partly) more than once;
calls repeated is every request served again. Commit attempts: nodes files written (S3: object
PUTs the proxy forwarded; local: renames into nodes/, seen with inotify).
Exit status 1 when a fenced scenario is not exact; the control is expected not to be.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import yaml

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from chaos_fixtures import (Driver, RayHead, RenameCounter, control, fixture_process, free_port,  # noqa: E402
                            make_barrier, release, wait_for_port)
from chaos_counts import audit, print_table, work_wasted  # noqa: E402

SCENARIOS = ("kill", "race", "growers", "s3-faults", "zombie", "zombie-unfenced")
ROLES = ("simulator", "inducer", "responder", "judge")
NO_FENCE_ENV, DELAY_ENV = "ALOE_UNSAFE_NO_FENCE", "ALOE_FAULT_COMMIT_DELAY_S"


class Rig:
    """The fixtures every scenario shares: endpoint, moto behind the fault proxy, the cluster."""

    def __init__(self, args, work: Path, head: RayHead, endpoint_port: int, moto_url: str, proxy_port: int):
        self.args, self.work, self.head = args, work, head
        self.endpoint_port, self.moto_url, self.proxy_port = endpoint_port, moto_url, proxy_port
        self.bucket = "chaos"
        self.aws = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1"}
        os.environ.update(self.aws)
        import boto3

        self.s3 = boto3.client("s3", endpoint_url=moto_url, region_name="us-east-1")
        self.s3.create_bucket(Bucket=self.bucket)

    def output(self, storage: str) -> str:
        return str(self.work / "local") if storage == "local" else f"s3://{self.bucket}/runs"

    def config(self, storage: str, ttl_s: float, *, gated: bool = False) -> Path:
        """The job's config file. `gated`: its engines reach the endpoint under /gated/ (an
        endpoint URL is no tree setting: the same run may be resumed through another)."""
        from aloe_ray.config import PersonaSourceConfig
        from aloe_ray.personas.loaders import load_personas

        trees = self.args.trees
        base = f"http://127.0.0.1:{self.endpoint_port}" + ("/gated" if gated else "")
        api = {"backend": "openai", "model": "loopback", "base_url": f"{base}/v1",
               "timeout_s": 120, "max_retries": 2}
        cfg = {"num_trees": trees, "samples_per_persona": math.ceil(trees / len(load_personas(PersonaSourceConfig()))),
               "tree": {"max_turns": self.args.turns}, "engines": {"api": api},
               "roles": {r: {"engine": "api"} for r in ROLES},
               "pipeline": {"progress_interval_s": 5, "trees_in_flight": self.args.trees_in_flight,
                            "lease_ttl_s": ttl_s}}
        if storage == "s3":
            cfg["storage"] = {"s3_endpoint_url": f"http://127.0.0.1:{self.proxy_port}", "s3_region": "us-east-1"}
        path = self.work / f"{storage}-ttl{ttl_s:g}{'-gated' if gated else ''}.yaml"
        path.write_text(yaml.safe_dump(cfg))
        return path


class Run:
    """One scenario on one storage: its run_id, its drivers, what happened."""

    def __init__(self, rig: Rig, scenario: str, storage: str, *, ttl_s: float | None = None, fenced: bool = True):
        self.rig, self.scenario, self.storage, self.fenced = rig, scenario, storage, fenced
        self.run_id = f"{scenario}-{storage}"
        self.ttl_s = ttl_s or rig.args.lease_ttl_s
        self.cfg = rig.config(storage, self.ttl_s)
        self.drivers: list[Driver] = []
        self.notes: list[str] = []
        self.started = time.monotonic()
        self.grower_lifetimes: list[float] = []
        self.rng = random.Random(f"{rig.args.seed}-{self.run_id}")
        self.local_root = rig.work / "local" / self.run_id

    def driver(self, *, job_env: dict | None = None, barrier: Path | None = None, gated: bool = False) -> Driver:
        env = {**self.rig.head.env, **self.rig.aws}
        job_env = dict(job_env or {})
        if not self.fenced:
            env[NO_FENCE_ENV] = job_env[NO_FENCE_ENV] = "1"
        if job_env:  # what `ray job submit --runtime-env-json` hands a driver: its job's workers get these
            env["RAY_JOB_CONFIG_JSON_ENV_VAR"] = json.dumps({"runtime_env": {"env_vars": job_env}})
        cfg = self.rig.config(self.storage, self.ttl_s, gated=True) if gated else self.cfg
        args = ["--config", str(cfg), f"--ray.address={self.rig.head.address}",
                f"--output={self.rig.output(self.storage)}", f"--run_id={self.run_id}"]
        log = self.rig.work / "logs" / f"{self.run_id}-{len(self.drivers)}.log"
        d = Driver(args, env, log, barrier=barrier)
        self.drivers.append(d)
        return d

    def parts(self, table: str) -> set[str]:
        """Committed-looking part files of a table right now (the benchmark reads moto directly)."""
        if self.storage == "local":
            folder = self.local_root / table
            return {p.name for p in folder.glob("*.parquet") if not p.name.startswith(".")} if folder.exists() else set()
        prefix = f"runs/{self.run_id}/{table}/"
        names = set()
        for page in self.rig.s3.get_paginator("list_objects_v2").paginate(Bucket=self.rig.bucket, Prefix=prefix):
            names.update(o["Key"][len(prefix):] for o in page.get("Contents", []))
        return {n for n in names if n.endswith(".parquet") and "/" not in n and not n.startswith(".")}

    def wait_new_commit(self, d: Driver, before: set[str], timeout: float = 300) -> bool:
        """Until a trees part not in `before` appears (True) or the driver ends (False)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.parts("trees") - before:
                return True
            if d.poll() is not None:
                return False
            time.sleep(0.2)
        raise TimeoutError(f"{self.run_id}: no commit in {timeout}s; log {d.log}")

    def kill_after_commit(self, d: Driver, before: set[str]) -> bool:
        """SIGKILL `d` at a random moment after its next commit; False if it finished first. The
        growers it had are watched until their processes are gone."""
        if not self.wait_new_commit(d, before):
            return False
        time.sleep(self.rng.uniform(0, self.rig.args.kill_jitter_s))
        if d.poll() is not None:
            return False
        growers = self.rig.head.growers()
        d.kill()
        self.notes.append(f"killed driver {len(self.drivers) - 1} after {time.monotonic() - d.started:.0f}s")
        watch_exit(growers, d.killed_at, self.grower_lifetimes)
        return True

    def finish(self, d: Driver | None, attempts: int = 3) -> int:
        """Wait for `d`, then rerun drivers until one exits 0 (at most `attempts` reruns)."""
        rc = d.wait(timeout=self.rig.args.driver_timeout_s) if d is not None else None
        while rc != 0 and attempts > 0:
            if rc is not None:
                self.notes.append(f"driver {len(self.drivers) - 1} exit {rc}: {last_error(d)}")
            d = self.driver()
            rc = d.wait(timeout=self.rig.args.driver_timeout_s)
            attempts -= 1
        if rc != 0:
            self.notes.append(f"run not finished: last driver exit {rc} ({d.log})")
        return rc


def watch_exit(growers: list[dict], since: float, into: list[float]) -> None:
    """In the background: seconds until every grower process is gone (appended to `into`)."""
    import psutil

    pids = [g["pid"] for g in growers if g.get("pid")]

    def run() -> None:
        deadline = since + 120
        while time.monotonic() < deadline and any(psutil.pid_exists(p) for p in pids):
            time.sleep(0.02)
        into.append(time.monotonic() - since)

    if pids:
        threading.Thread(target=run, daemon=True).start()


def last_error(d: Driver) -> str:
    lines = [ln for ln in d.text().splitlines() if ln.startswith(("error:", "[aloe-ray] exit", "RuntimeError"))]
    lines = lines or d.text().strip().splitlines() or ["(no output)"]
    return lines[-1][:300]


# The scenarios. Each leaves its run finished (or says why not) and its notes.

def scenario_kill(run: Run) -> None:
    d = run.driver()
    for _ in range(run.rig.args.kills):
        before = run.parts("trees")
        if not run.kill_after_commit(d, before):
            run.notes.append("the run finished before every kill")
            break
        d = run.driver()  # at once
    run.finish(d)


def scenario_race(run: Run) -> None:
    rounds, refused = run.rig.args.race_rounds, 0
    winner = None
    for r in range(rounds):
        barrier = make_barrier(run.rig.work, f"{run.run_id}-{r}.fifo")
        before = run.parts("trees")
        pair = [run.driver(barrier=barrier), run.driver(barrier=barrier)]
        release(barrier, 2)
        deadline = time.monotonic() + run.rig.args.driver_timeout_s
        while all(d.poll() is None for d in pair) and time.monotonic() < deadline:
            time.sleep(0.1)
        ended = [d for d in pair if d.poll() is not None]
        running = [d for d in pair if d.poll() is None]
        losers = [d for d in ended if d.poll() == 2]
        refused += len(losers) == 1 and len(running) + len(ended) - len(losers) == 1
        why = "; ".join(last_error(d)[:120] for d in losers)
        run.notes.append(f"round {r + 1}: exit codes {[d.poll() for d in pair]} ({why})")
        winner = running[0] if running else next((d for d in ended if d.poll() == 0), None)
        if r < rounds - 1 and winner is not None and winner.poll() is None:
            if not run.kill_after_commit(winner, before):
                run.notes.append("the run finished before every round")
                break
            winner = None
    run.notes.append(f"{refused} of {rounds} races: exactly one driver refused (exit 2)")
    run.race_ok = refused == rounds
    run.finish(winner if winner is not None and winner.poll() in (None, 0) else None)


def scenario_growers(run: Run) -> None:
    d = run.driver()
    killed = 0
    for _ in range(run.rig.args.grower_kills):
        if not run.wait_new_commit(d, run.parts("trees")):
            break
        time.sleep(run.rng.uniform(0, run.rig.args.kill_jitter_s))
        growers = run.rig.head.growers()
        if not growers or d.poll() is not None:
            break
        victim = run.rng.choice(growers)
        with contextlib.suppress(ProcessLookupError):
            os.kill(victim["pid"], signal.SIGKILL)
        killed += 1
    run.notes.append(f"killed {killed} grower actor(s)")
    run.finish(d)


def scenario_s3_faults(run: Run) -> None:
    a = run.rig.args
    control(run.rig.proxy_port, f"faults?rate={a.fault_rate}&kinds={a.fault_kinds}")
    before = control(run.rig.proxy_port, "stats")["faults"]
    d = run.driver()
    try:
        rc = d.wait(timeout=a.driver_timeout_s)
    finally:
        after = control(run.rig.proxy_port, "faults?rate=0")["faults"]
    injected = {k: v - before.get(k, 0) for k, v in after.items() if v - before.get(k, 0)}
    run.notes.append(f"faults injected under the first driver: {injected or 'none'}; its exit {rc}"
                     + ("" if rc == 0 else f" ({last_error(d)})"))
    run.finish(d if rc == 0 else None)


def scenario_zombie(run: Run) -> None:
    """Freeze the first driver while a commit of its growers waits in its window, and hold those
    growers (the endpoint's gate) until the driver that took over has finished the run; then let
    them grow and commit what they hold: the latest a zombie's commit can land."""
    a, port = run.rig.args, run.rig.endpoint_port
    d1 = run.driver(job_env={DELAY_ENV: str(a.commit_delay_s)}, gated=True)
    deadline = time.monotonic() + a.driver_timeout_s
    while not run.parts("nodes") - run.parts("trees"):
        if d1.poll() is not None or time.monotonic() > deadline:
            run.notes.append(f"first driver ended before it could be frozen (exit {d1.poll()})")
            return run.finish(None)
        time.sleep(0.1)
    control(port, "gate?open=0")
    os.kill(d1.pid, signal.SIGSTOP)
    stopped, growers = time.monotonic(), run.rig.head.growers()
    in_window = len(run.parts("nodes") - run.parts("trees"))
    refused = 0
    try:
        while True:  # new drivers at once, refused while the frozen one's lease is live
            d2 = run.driver()
            while d2.poll() is None and " to grow -> " not in d2.text():
                time.sleep(0.1)
            if d2.poll() != 2:
                break
            refused += 1
            time.sleep(0.3)
        listed = time.monotonic() - stopped
        run.finish(d2)
        held = control(port, "gate?open=1")["gated_waiting"]
        run.notes.append(f"froze driver 0 ({len(growers)} growers, {in_window} commit(s) in their window); "
                         f"{refused} driver(s) refused; the new driver listed the run {listed:.0f}s after the "
                         f"freeze and finished it; then {held} request(s) of the old growers were let go")
        quiet, served = time.monotonic(), -1  # until the old growers have been idle past a commit's delay
        while time.monotonic() - quiet < a.commit_delay_s + 3 and time.monotonic() - stopped < a.driver_timeout_s:
            now = control(port, "stats")
            if now["gated_waiting"] or now["gated_served"] != served:
                served, quiet = now["gated_served"], time.monotonic()
            time.sleep(0.5)
    finally:
        control(port, "gate?open=1")
        os.kill(d1.pid, signal.SIGKILL)
        d1.proc.wait()
        lifetimes: list[float] = []
        watch_exit(growers, time.monotonic(), lifetimes)
        end = time.monotonic() + 60
        while growers and not lifetimes and time.monotonic() < end:
            time.sleep(0.1)
        if lifetimes:
            run.notes.append(f"the frozen driver's growers, done, were gone {lifetimes[0]:.2f}s after it was killed")


RUNNERS = {"kill": scenario_kill, "race": scenario_race, "growers": scenario_growers,
           "s3-faults": scenario_s3_faults, "zombie": scenario_zombie, "zombie-unfenced": scenario_zombie}


def run_scenario(rig: Rig, scenario: str, storage: str) -> dict:
    fenced = scenario != "zombie-unfenced"
    ttl = rig.args.zombie_ttl_s if scenario.startswith("zombie") else None
    run = Run(rig, scenario, storage, ttl_s=ttl, fenced=fenced)
    control(rig.endpoint_port, "reset")
    renames = RenameCounter(run.local_root / "nodes") if storage == "local" else None
    writes_before = control(rig.proxy_port, "stats")["writes"]
    try:
        RUNNERS[scenario](run)
    finally:
        for d in run.drivers:
            if d.poll() is None:
                d.kill()
    time.sleep(1.0)  # a grower's last rename
    if renames is not None:
        names = renames.close()
    else:
        folder = f"{rig.bucket}/runs/{run.run_id}/nodes"
        after = control(rig.proxy_port, "stats")["writes"]
        names = {"(all)": after.get(folder, 0) - writes_before.get(folder, 0)}
    from aloe_ray.pipeline.run_output import RunOutput
    from aloe_ray.storage import S3Options

    out = RunOutput(rig.output(storage), run.run_id, None if storage == "local" else S3Options(rig.moto_url))
    row = {"scenario": scenario, "storage": storage, "fenced": fenced, "wall_s": time.monotonic() - run.started,
           "drivers": len(run.drivers), "notes": run.notes, "grower_lifetimes": run.grower_lifetimes,
           "race_ok": getattr(run, "race_ok", True)}
    row.update(audit(out, rig.args.trees))
    row.update(work_wasted(run.cfg, run.run_id, control(rig.endpoint_port, "stats")["seeds"]))
    row["nodes_writes"] = sum(v for k, v in names.items() if not k.startswith("compact-"))
    return row


def ray_client_probe(head: RayHead, work: Path) -> dict:
    """Seconds an actor outlives its SIGKILLed driver: joined directly and through Ray Client."""
    import psutil

    script = ("import os, sys, time, ray\nray.init(sys.argv[1], log_to_driver=False)\n"
              "@ray.remote(num_cpus=0)\nclass Zombie:\n    def pid(self):\n        return os.getpid()\n"
              "a = Zombie.remote()\nprint('pid', ray.get(a.pid.remote()), flush=True)\ntime.sleep(600)\n")
    found = {}
    for how, address in (("direct", head.address), ("ray-client", head.client_address)):
        log = work / "logs" / f"probe-{how}.log"
        with open(log, "w") as f:
            proc = subprocess.Popen([sys.executable, "-c", script, address], env=head.env, stdout=f,
                                    stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 120
        while "pid " not in log.read_text() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        text = log.read_text()
        if "pid " not in text:
            proc.kill()
            found[how] = f"no actor ({text.strip().splitlines()[-1:] or ['no output']})"
            continue
        pid = int(text.split("pid ", 1)[1].split()[0])
        proc.kill()
        proc.wait()
        killed = time.monotonic()
        while psutil.pid_exists(pid) and time.monotonic() - killed < 120:
            time.sleep(0.05)
        found[how] = f"{time.monotonic() - killed:.2f}s" + ("" if not psutil.pid_exists(pid) else " (still alive)")
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenarios", nargs="+", choices=SCENARIOS, default=list(SCENARIOS))
    parser.add_argument("--storage", nargs="+", choices=("local", "s3"), default=["local", "s3"])
    parser.add_argument("--trees", type=int, default=48, help="trees requested per scenario")
    parser.add_argument("--turns", type=int, default=3, help="turns per tree")
    parser.add_argument("--trees-in-flight", type=int, default=24,
                        help="over the growers: 24 on 2 growers makes batches of 8 trees (2 parts), so a rerun's "
                             "batches group the trees left into other parts than the first run's")
    parser.add_argument("--latency-ms", type=float, default=300,
                        help="mean delay of an endpoint reply (each is 0.5-1.5x this, by its seed)")
    parser.add_argument("--kills", type=int, default=3, help="kill: drivers SIGKILLed")
    parser.add_argument("--kill-jitter-s", type=float, default=1.5, help="a kill comes up to this long after a commit")
    parser.add_argument("--race-rounds", type=int, default=2, help="race: pairs of drivers released together")
    parser.add_argument("--grower-kills", type=int, default=2, help="growers: grower actors SIGKILLed")
    parser.add_argument("--fault-rate", type=float, default=0.08, help="s3-faults: share of requests answered by a fault")
    parser.add_argument("--fault-kinds", default="503,500,reset,reset-after")
    parser.add_argument("--commit-delay-s", type=float, default=12, help="zombie: the first driver's commit delay")
    parser.add_argument("--zombie-ttl-s", type=float, default=4, help="zombie: the run's lease ttl")
    parser.add_argument("--lease-ttl-s", type=float, default=15,
                        help="lease ttl of the other scenarios (a takeover waits for the old growers at most this long)")
    parser.add_argument("--cluster-cpus", type=int, default=2)
    parser.add_argument("--driver-timeout-s", type=float, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", action="store_true", help="keep the work folder (logs, run roots)")
    args = parser.parse_args()
    os.environ["RAY_AUTH_MODE"] = "token"  # the state API's client reads it once
    work = Path(tempfile.mkdtemp(prefix="aloe-chaos-"))
    (work / "logs").mkdir()
    started = time.monotonic()
    rows, probe = [], {}
    endpoint_port, moto_port, proxy_port = free_port(), free_port(), free_port()
    moto = shutil.which("moto_server", path=str(Path(sys.executable).parent)) or "moto_server"
    try:
        with contextlib.ExitStack() as stack:
            stack.enter_context(fixture_process("endpoint", endpoint_port, "--latency-ms", str(args.latency_ms)))
            moto_proc = subprocess.Popen([moto, "-H", "127.0.0.1", "-p", str(moto_port)],
                                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            stack.callback(lambda: (moto_proc.terminate(), moto_proc.wait(timeout=10)))
            wait_for_port(moto_port)
            moto_url = f"http://127.0.0.1:{moto_port}"
            stack.enter_context(fixture_process("s3-proxy", proxy_port, "--upstream", moto_url))
            head = stack.enter_context(RayHead(args.cluster_cpus))
            print(f"[chaos] cluster {head.address} ({args.cluster_cpus} CPUs), endpoint +{args.latency_ms:g} ms, "
                  f"work folder {work}", flush=True)
            rig = Rig(args, work, head, endpoint_port, moto_url, proxy_port)
            for storage in args.storage:
                for scenario in args.scenarios:
                    if scenario == "s3-faults" and storage != "s3":
                        continue
                    rows.append(run_scenario(rig, scenario, storage))
                    r = rows[-1]
                    print(f"[chaos] {scenario} on {storage}: {'exact' if r['exact'] else 'NOT EXACT'} "
                          f"({r['wall_s']:.0f}s, {r['drivers']} drivers); " + "; ".join(r["notes"]), flush=True)
            probe = ray_client_probe(head, work)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print_table(rows, args, probe, time.monotonic() - started)
    bad = [r for r in rows if r["fenced"] and not (r["exact"] and r["race_ok"])]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
