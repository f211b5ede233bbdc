"""The fault suite: faults injected for real, and what the user sees.

Real `harness` processes (each in a session of its own, signalled only by its pids),
real files, real Ray, real training on tiny digits. Points of the issue:

1. Ctrl-C on a sweep: exit 130, one line naming the command that continues it; the
   resume finishes every planned trial exactly once.
2. A resumed copy of a storage (relative --storage, another working folder) writes only
   there: the original is byte-for-byte unchanged.
3. One driver per sweep: a second one is refused at once with one line naming the
   first; a dead holder's lock is taken over; concurrent table writers lose no row.
4. Damaged tables: `harness report` gives a command, and that command rebuilds them.
5. An unreachable `--address` fails in seconds with one line and leaves nothing behind.
6. No non-finite model is kept: lr=1e6 diverges without best.pt; a NaN checkpoint is
   refused by `harness eval`.
7. A trial that cannot run fails once (no retries), with its reason in trials.parquet;
   a sweep whose trials all failed exits 1.
8. No silent no-ops: empty search space, too few --trials, empty config file, a loss
   without positive pairs, a trial budget that does not divide.
9. One line, never a traceback, for bad paths, files and tables.

The slow tests share one interrupted sweep (module fixtures); they assert outcomes,
never durations.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from fixtures.configs import tiny_config
from fixtures.processes import session_pids, wait_until

HARNESS = [sys.executable, "-c", "from harness.cli import main; main()"]
ROOT = Path(__file__).resolve().parents[2]

TINY = {
    "description": "fault suite",
    "base": tiny_config(memory={"kind": "none", "size": 64}),
    "search": {
        "trials": 4,
        "compare": {"key": "memory.kind", "values": ["none", "xbm"]},
        "space": {"optim.lr": {"type": "float", "low": 0.0003, "high": 0.003, "log": True}},
        "reproduction_seeds": [1],
        "resources": {"cpus": 1},
    },
}  # fmt: skip
PLANNED = {"search": 4, "reproduction": 2}


def env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200",
            "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}


def harness(*args, cwd=None, timeout=600) -> subprocess.CompletedProcess:
    return subprocess.run([*HARNESS, *map(str, args)], capture_output=True, text=True, cwd=cwd,
                          env=env(), timeout=timeout, start_new_session=True)


def start(*args, cwd=None, stderr_path: Path) -> subprocess.Popen:
    """A harness process in a new session (its own process group), stderr to a file."""
    return subprocess.Popen([*HARNESS, *map(str, args)], stdout=subprocess.DEVNULL,
                            stderr=open(stderr_path, "w"), cwd=cwd, env=env(),
                            start_new_session=True)


def end_session(proc: subprocess.Popen) -> None:
    """Kill what is left of a session we started (Ray workers have groups of their own)."""
    for pid in session_pids(proc.pid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def lines(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if ln.strip()]


def assert_one_line(proc_or_text, pattern: str, code: int = 2) -> str:
    if isinstance(proc_or_text, subprocess.CompletedProcess):
        assert proc_or_text.returncode == code, proc_or_text.stderr[-3000:]
        text = proc_or_text.stderr
    else:
        text = proc_or_text
    assert "Traceback" not in text, text[-3000:]
    # the error is one line; the pre-flight check's warnings about the tiny data may precede it
    got = [ln for ln in lines(text) if not ln.startswith("warning:")]
    assert len(got) == 1, text[-3000:]
    assert re.search(pattern, got[0]), got[0]
    assert not re.search(r"\b(delete|remove)\b", got[0], re.I), got[0]  # never advised
    return got[0]


def tree(root: Path) -> dict[str, bytes | None]:
    """Every path under ``root`` with the bytes of its files (folders: None)."""
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None)
            for p in sorted(root.rglob("*"))}


def advised_command(message: str) -> list[str]:
    m = re.search(r"`(harness [^`]+)`", message)
    assert m, message
    return m.group(1).split()[1:]


# ---- 1-4: one interrupted sweep, its resumes and its tables (slow) -----------------


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory):
    """A sweep given Ctrl-C (SIGINT to its process group) after its first trial row."""
    base = tmp_path_factory.mktemp("faults")
    exp = base / "tiny.yaml"
    exp.write_text(yaml.safe_dump(TINY))
    storage = base / "a"
    errors = base / "sigint.err"
    proc = start("sweep", exp, "--storage", storage, "--max-concurrent", 1, stderr_path=errors)
    try:
        trials = storage / "tiny" / "trials.parquet"
        wait_until(trials.exists, proc, "the first trial row")
        # With one trial at a time, at least one planned trial cannot have started yet.
        os.killpg(proc.pid, signal.SIGINT)
        rc = proc.wait(timeout=300)
    finally:
        end_session(proc)
    before = pd.read_parquet(storage / "tiny" / "trials.parquet")
    return {"base": base, "storage": storage, "rc": rc, "stderr": errors.read_text(),
            "before": before}


@pytest.mark.slow
def test_ctrl_c_exits_130_with_one_line_that_says_how_to_continue(interrupted):
    assert interrupted["rc"] == 130, interrupted["stderr"][-3000:]
    err = interrupted["stderr"]
    assert "Traceback" not in err and "Tuner.restore" not in err
    last = lines(err)[-1]
    assert re.fullmatch(r"interrupted: SIGINT during the search phase \(\d search trials recorded\); "
                        r"continue with `harness sweep tiny --resume --storage \S+`", last), last
    state = json.loads((interrupted["storage"] / "tiny" / "sweep.json").read_text())
    assert state["search_done"] is False and state["reproduction_done"] is False
    assert not (interrupted["storage"] / "tiny" / "sweep.lock").exists()  # released
    assert "Token authentication" not in err  # Ray's notice does not reach the user
    before = interrupted["before"]
    assert 1 <= len(before) < PLANNED["search"] and set(before.phase) == {"search"}
    # a trial cut short by Ctrl-C is not recorded (as stopped or failed): the resume runs it
    assert set(before.status) == {"completed"}


@pytest.fixture(scope="module")
def resumed_copy(interrupted):
    """The interrupted storage copied, resumed by a relative --storage from another folder."""
    base, original = interrupted["base"], interrupted["storage"]
    copy = base / "b"
    shutil.copytree(original, copy)
    snapshot = tree(original)
    elsewhere = base / "elsewhere"
    elsewhere.mkdir()
    done = harness("sweep", "tiny", "--resume", "--storage", "../b", cwd=elsewhere)
    return {"copy": copy, "done": done, "original_unchanged": tree(original) == snapshot}


@pytest.mark.slow
def test_resumed_copy_finishes_every_trial_and_writes_only_there(interrupted, resumed_copy):
    done = resumed_copy["done"]
    assert done.returncode == 0, done.stderr[-3000:]
    assert resumed_copy["original_unchanged"]  # no file, folder or byte of the original
    trials = pd.read_parquet(resumed_copy["copy"] / "tiny" / "trials.parquet")
    assert trials.trial_id.is_unique and set(trials.status) == {"completed"}
    assert trials.phase.value_counts().to_dict() == PLANNED
    before = interrupted["before"].set_index("trial_id")
    after = trials.set_index("trial_id")
    for tid in before.index:  # finished before Ctrl-C: kept, not rerun
        assert after.loc[tid, "started_at"] == before.loc[tid, "started_at"]
        assert after.loc[tid, "finished_at"] == before.loc[tid, "finished_at"]
    assert "4 search trials, 2 reproductions" in done.stdout
    assert "Traceback" not in done.stderr and "Token authentication" not in done.stderr


@pytest.fixture(scope="module")
def resumed_after_move(interrupted):
    """The interrupted storage moved elsewhere (its old path gone), then resumed there."""
    base, original = interrupted["base"], interrupted["storage"]
    moved = base / "moved"
    shutil.copytree(original, moved)
    away = base / "original-away"
    original.rename(away)  # the old path no longer exists while the moved copy resumes
    try:
        done = harness("sweep", "tiny", "--resume", "--storage", moved)
    finally:
        away.rename(original)
    return {"moved": moved, "old": original, "done": done}


@pytest.mark.slow
def test_moved_storage_resumes_and_keeps_no_old_path_in_its_resume_state(interrupted, resumed_after_move):
    # Before: exit 1 after a 160-line sqlalchemy "unable to open database file": the
    # searcher state in tune/ (tuner.pkl, searcher-state-*.pkl) named the old optuna.db.
    done, moved = resumed_after_move["done"], resumed_after_move["moved"]
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    trials = pd.read_parquet(moved / "tiny" / "trials.parquet")
    assert trials.trial_id.is_unique and trials.phase.value_counts().to_dict() == PLANNED
    old = str(resumed_after_move["old"]).encode()
    holding = sorted(str(p.relative_to(moved)) for p in moved.rglob("*")
                     if p.is_file() and re.search(re.escape(old) + rb"(?![\w.-])", p.read_bytes()))
    # No file of the resumed copy names the old storage: not the searcher's snapshots or
    # the sweep's state (no database path at all), and not Tune's own files either
    # (tuner.pkl's run settings, search_gen_state-*.json's experiment: before, both kept
    # the storage of the first start; the resume re-points them, harness/sweep/tuner.py).
    assert not holding, holding
    assert any(p.name.startswith("searcher-state-") for p in moved.rglob("*.pkl"))


@pytest.mark.slow
def test_second_driver_is_refused_while_the_advised_resume_runs(interrupted, resumed_copy, tmp_path):
    storage = interrupted["storage"]
    resume_args = advised_command(lines(interrupted["stderr"])[-1])  # the advice, verbatim
    first = start(*resume_args, stderr_path=tmp_path / "first.err")
    lock = storage / "tiny" / "sweep.lock"
    try:
        wait_until(lambda: lock.exists() and f'"pid": {first.pid}' in lock.read_text(), first,
                   "the first driver holds the lock")
        second = harness(*resume_args, timeout=120)
        line = assert_one_line(second, rf"another driver is running this sweep \(pid {first.pid} on "
                                       rf"{re.escape(socket.gethostname())}, started .*\).*kill -INT {first.pid}")
        assert "ray" not in second.stderr.lower().replace("array", "")  # refused before Ray
        assert "continue with `harness sweep tiny --resume" in line
        rc = first.wait(timeout=600)
    finally:
        end_session(first)
    assert rc == 0, (tmp_path / "first.err").read_text()[-3000:]
    trials = pd.read_parquet(storage / "tiny" / "trials.parquet")
    assert trials.trial_id.is_unique and trials.phase.value_counts().to_dict() == PLANNED
    assert set(trials.status) == {"completed"}
    assert not lock.exists()


@pytest.mark.slow
def test_damaged_tables_the_report_advice_rebuilds_them(resumed_copy, tmp_path):
    storage = tmp_path / "d"
    shutil.copytree(resumed_copy["copy"], storage)
    root = storage / "tiny"
    good = pd.read_parquet(root / "trials.parquet")
    data = (root / "trials.parquet").read_bytes()
    (root / "trials.parquet").write_bytes(data[: len(data) // 2])  # truncated
    (root / "epochs.parquet").write_bytes(b"PAR1 not really")
    report = harness("report", root, cwd=tmp_path)
    line = assert_one_line(report, r"trials\.parquet: not a readable Parquet file .*`harness sweep "
                                   r"tiny --resume --storage \S+` rebuilds it")
    fixed = harness(*advised_command(line), cwd=tmp_path)
    assert fixed.returncode == 0, fixed.stderr[-3000:]
    warnings = [ln for ln in lines(fixed.stderr) if ln.startswith("warning:")]
    assert any("trials.parquet" in w and "kept as trials.parquet.damaged-" in w for w in warnings)
    assert any(re.search(r"rebuilt 6 trial rows", w) for w in warnings), warnings
    rebuilt = pd.read_parquet(root / "trials.parquet")
    cols = ["trial_id", "phase", "status", "val.recall@1", "started_at", "finished_at"]
    key = "trial_id"
    assert rebuilt[cols].sort_values(key).reset_index(drop=True).equals(
        good[cols].sort_values(key).reset_index(drop=True))
    epochs = pd.read_parquet(root / "epochs.parquet")
    assert len(epochs) == 6 * 2 and not epochs.duplicated(["trial_id", "epoch"]).any()
    assert len(list(root.glob("trials.parquet.damaged-*"))) == 1  # the user's file is kept
    assert harness("report", root, cwd=tmp_path).returncode == 0


# ---- 3: locks and concurrent writers (real processes, no Ray) ------------------------


HOLD_LOCK = """
import sys, time
from harness.sweep.lock import SweepLock
from harness.sweep.results import ResultsStore
SweepLock(ResultsStore(sys.argv[1], "exp")).acquire()
print("held", flush=True)
time.sleep(600)
"""


def test_lock_of_a_killed_driver_is_taken_over_on_the_same_host(tmp_path):
    from harness.sweep.lock import SweepLock, SweepLockedError
    from harness.sweep.results import ResultsStore

    store = ResultsStore(str(tmp_path), "exp")
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(tmp_path)], stdout=subprocess.PIPE,
                              text=True, env=env(), start_new_session=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(SweepLockedError, match=rf"pid {holder.pid} on {re.escape(socket.gethostname())}"):
            SweepLock(store).acquire()
        os.kill(holder.pid, signal.SIGKILL)  # no clean-up: the lock file stays behind
        holder.wait(timeout=30)
    finally:
        end_session(holder)
    assert json.loads((tmp_path / "exp" / "sweep.lock").read_text())["pid"] == holder.pid
    lock = SweepLock(store).acquire()  # dead pid, same host: taken over without asking
    assert json.loads((tmp_path / "exp" / "sweep.lock").read_text())["pid"] == os.getpid()
    lock.release()
    assert not (tmp_path / "exp" / "sweep.lock").exists()


def test_lock_written_on_another_host_needs_take_over(tmp_path):
    from harness.sweep.lock import SweepLock, SweepLockedError
    from harness.sweep.results import ResultsStore

    store = ResultsStore(str(tmp_path), "exp")
    (tmp_path / "exp").mkdir()
    (tmp_path / "exp" / "sweep.lock").write_text(json.dumps(
        {"pid": 4242, "host": "gpu-node-7", "started_at": "2026-01-01T00:00:00+00:00"}))
    with pytest.raises(SweepLockedError, match=r"pid 4242 on gpu-node-7.*add --take-over"):
        SweepLock(store).acquire()
    SweepLock(store, take_over=True).acquire().release()


UPSERT = """
import sys
from harness.sweep.results import ResultsStore
store = ResultsStore(sys.argv[1], "exp")
for i in range(15):
    store.upsert_trials([{"trial_id": f"{sys.argv[2]}-{i}", "value": float(i)}])
"""


def test_concurrent_table_writers_lose_no_row(tmp_path):
    writers = [subprocess.Popen([sys.executable, "-c", UPSERT, str(tmp_path), f"w{n}"], env=env())
               for n in range(4)]
    assert [w.wait(timeout=300) for w in writers] == [0, 0, 0, 0]
    trials = pd.read_parquet(tmp_path / "exp" / "trials.parquet")
    assert sorted(trials.trial_id) == sorted(f"w{n}-{i}" for n in range(4) for i in range(15))


# ---- 5: an unreachable cluster ----------------------------------------------------------


def test_unreachable_address_fails_with_one_line_and_leaves_nothing_behind(results_storage, tmp_path):
    exp = tmp_path / "tiny.yaml"
    exp.write_text(yaml.safe_dump(TINY))
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    storage = results_storage
    for _ in range(2):  # the second try is not refused because of the first
        proc = harness("sweep", exp, "--storage", storage, "--address", f"127.0.0.1:{port}", timeout=120)
        assert_one_line(proc, rf"--address 127\.0\.0\.1:{port}: no Ray cluster answers there .*ray start --head")
        leftovers = [p.name for p in storage.rglob("*")] if storage.exists() else []
        assert not set(leftovers) & {"sweep.json", "sweep.lock", "space.json", "trials.parquet"}


def test_an_address_that_answers_but_is_not_ray_fails_in_seconds_with_one_line(results_storage, tmp_path):
    """A plain HTTP server at --address (it accepts the connection, then speaks HTTP/1):
    one line naming the problem, well before Ray's own minutes of retries."""
    import threading
    from http.server import HTTPServer, SimpleHTTPRequestHandler

    exp = tmp_path / "tiny.yaml"
    exp.write_text(yaml.safe_dump(TINY))
    server = HTTPServer(("127.0.0.2", 0), SimpleHTTPRequestHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    try:
        t0 = time.monotonic()
        proc = harness("sweep", exp, "--storage", results_storage, "--address", f"127.0.0.2:{port}", timeout=180)
        took = time.monotonic() - t0
    finally:
        server.shutdown()
        server.server_close()
    assert_one_line(proc, rf"--address 127\.0\.0\.2:{port}: something answers there but it is not a Ray "
                          r"cluster's GCS \(.+\); give the head node's GCS port")
    # <= 30 s on an idle machine (the probe itself: ~13 s); bounded loosely for a loaded CI
    assert took < 60, took


# ---- 6: non-finite models --------------------------------------------------------------


TRAIN_CFG = tiny_config(train={"epochs": 1})


@pytest.mark.slow
def test_diverging_run_keeps_no_model_and_eval_refuses_a_nan_checkpoint(tmp_path):
    import torch

    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(TRAIN_CFG))
    diverged = harness("train", cfg, "--set", "optim.lr=1e6", "--set", "train.epochs=2",
                       "--set", "train.iters_per_epoch=4", "--out", tmp_path / "div")
    assert diverged.returncode == 1, diverged.stderr[-2000:]
    assert json.loads(lines(diverged.stdout)[-1])["status"] == "diverged"
    assert not (tmp_path / "div" / "checkpoints" / "best.pt").exists()

    ok = harness("train", cfg, "--out", tmp_path / "ok")
    assert ok.returncode == 0, ok.stderr[-2000:]
    state = torch.load(tmp_path / "ok" / "checkpoints" / "best.pt", weights_only=False)
    name = next(k for k in state["model"] if k.endswith("running_var"))
    state["model"][name] = torch.full_like(state["model"][name], float("nan"))
    torch.save(state, tmp_path / "nan.pt")
    assert_one_line(harness("eval", tmp_path / "nan.pt"),
                    rf"nan\.pt holds NaN/inf values \({re.escape(name)}.*its run diverged")


def test_nonfinite_embeddings_are_refused():
    import torch

    from harness.core.finite import NonFiniteError, check_embeddings

    check_embeddings(torch.ones(3, 4))
    bad = torch.ones(3, 4)
    bad[1, 2] = float("inf")
    with pytest.raises(NonFiniteError, match="1 of 3 embeddings are NaN or inf"):
        check_embeddings(bad)


# ---- 7: failures that say why ------------------------------------------------------------


@pytest.mark.slow
def test_trial_that_cannot_run_fails_once_with_its_reason(tmp_path):
    doc = json.loads(json.dumps(TINY))
    doc["base"]["loss"] = {"name": "SupConLoss", "params": {"temperature": 0.1, "bogus": 3}}
    doc["search"].update(trials=2, reproduction_seeds=[1], max_failures=3)
    exp = tmp_path / "bad.yaml"
    exp.write_text(yaml.safe_dump(doc))
    proc = harness("sweep", exp, "--storage", tmp_path / "r")
    line = lines(proc.stderr)[-1]
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert re.fullmatch(r"error: all 2 search trials of 'bad' failed: ConfigError: loss SupConLoss: "
                        r"bad params .*bogus.* \(every reason: the error column of \S+trials\.parquet\)", line), line
    trials = pd.read_parquet(tmp_path / "r" / "bad" / "trials.parquet")
    assert set(trials.status) == {"failed"} and trials.error.str.contains("bogus").all()
    for trial_dir in (tmp_path / "r" / "bad" / "tune" / "search").glob("search-*"):
        assert len(lines((trial_dir / "result.json").read_text())) == 1  # ran once, no retry
        assert not list(trial_dir.glob("error*"))  # not a Tune error: nothing to retry


# ---- 8: no silent no-ops -----------------------------------------------------------------


def experiment_file(tmp_path, name: str = "exp", **search) -> Path:
    doc = json.loads(json.dumps(TINY))
    doc["search"].update(search)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def test_no_silent_no_ops(tmp_path, harness_cli):
    storage = tmp_path / "r"
    cases = [
        (["sweep", experiment_file(tmp_path, "nospace", space={}), "--storage", storage],
         r"search\.space is empty, so the 2 search trials of each compared value would all run the same config"),
        (["sweep", experiment_file(tmp_path), "--trials", "1", "--storage", storage],
         r"--trials 1 is fewer than the 2 compared values .* give --trials 2 or more"),
        (["sweep", experiment_file(tmp_path, "onetrial", trials=1), "--storage", storage],
         r"search\.trials \(1\) is fewer than the 2 compared values"),
    ]
    for args, pattern in cases:
        code, _, err = harness_cli([str(a) for a in args])
        assert code == 2
        assert_one_line(err, pattern)
    assert not storage.exists()
    empty = tmp_path / "empty.yaml"
    empty.write_text("# nothing yet\n")
    code, _, err = harness_cli(["train", str(empty)])
    assert code == 2 and assert_one_line(err, r"empty\.yaml is empty \(it would silently mean all defaults\)")
    doc = json.loads(json.dumps(TINY))
    doc["base"]["train"]["samples_per_class"] = 1
    (tmp_path / "spc1.yaml").write_text(yaml.safe_dump(doc))
    code, _, err = harness_cli(["sweep", str(tmp_path / "spc1.yaml"), "--storage", str(storage)])
    assert code == 2 and assert_one_line(err, r"compare=none.*train\.samples_per_class: 1 gives SupConLoss no positive pair")


def test_trial_budget_that_does_not_divide_is_announced(tmp_path):
    from harness.sweep.runner import prepare_sweep

    plan = prepare_sweep(str(experiment_file(tmp_path, trials=5)), storage=str(tmp_path / "r"))
    # (the pre-flight check adds its own line for this tiny data: digits' 3 training classes)
    assert [w for w in plan.warnings if w.startswith("search.trials")] == [
        "search.trials 5 is not a multiple of the 2 compared values: 2 trials each, 4 in all"]


def test_positive_pairs_checked_by_training_too(tmp_path):
    from harness.config import build_config
    from harness.core.components import build_losses
    from harness.errors import ConfigError

    cfg = build_config(TRAIN_CFG, {"train.samples_per_class": 1})
    with pytest.raises(ConfigError, match="no positive pair"):
        build_losses(cfg, 100, 10)
    build_losses(build_config(TRAIN_CFG, {"train.samples_per_class": 1, "memory.kind": "xbm"}), 100, 10)


# ---- 9: one line for every bad path, file and table --------------------------------------


def test_bad_paths_files_and_tables_are_one_line(tmp_path, harness_cli):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(TRAIN_CFG))
    latin1 = tmp_path / "latin1.yaml"
    latin1.write_bytes("data: {name: digits}\n# caf\xe9\n".encode("latin-1"))
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    wrong_type = tmp_path / "wrong.yaml"
    wrong_type.write_text("train: {epochs: many}\n")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    exp_latin1 = tmp_path / "exp_latin1.yaml"
    exp_latin1.write_bytes(yaml.safe_dump(TINY).encode() + "# \xe9\n".encode("latin-1"))
    tables = tmp_path / "copied" / "tiny"  # tables without the sweep they came from
    tables.mkdir(parents=True)
    (tables / "trials.parquet").write_bytes(b"PAR1 cut")
    broken_state = tmp_path / "state" / "tiny"
    broken_state.mkdir(parents=True)
    (broken_state / "sweep.json").write_text("{ not json")
    cases = [
        (["train", latin1], r"latin1\.yaml:2: not UTF-8 text \(byte 0xe9\); save the file as UTF-8"),
        (["sweep", exp_latin1, "--storage", tmp_path / "r"], r"exp_latin1\.yaml:\d+: not UTF-8 text"),
        (["train", tmp_path], r"is a folder; give a YAML file"),
        (["sweep", tmp_path, "--storage", tmp_path / "r"], r"is a folder; give an experiment YAML file"),
        (["sweep", experiment_file(tmp_path), "--storage", a_file], r"--storage .*a_file: .* is a file, not a folder"),
        (["train", cfg, "--out", a_file], r"--out .*a_file: is a file, not a folder"),
        (["train", cfg, "--out", "/proc/harness-run"], r"--out /proc/harness-run: /proc is not writable"),
        (["train", cfg, "--set", "train.epochs=abc"], r"^error: --set: train\.epochs: "),
        (["train", cfg, "--set", "train.epochs.x=1"], r"^error: --set: config key 'train\.epochs\.x'"),
        (["train", wrong_type], r"wrong\.yaml: train\.epochs: "),
        (["sweep", experiment_file(tmp_path), "--set", "train.epochs=0", "--storage", tmp_path / "r"],
         r"^error: --set: train\.epochs: "),
        (["eval", tmp_path], r"checkpoint .*: is a folder, not a file"),
        (["eval", tmp_path / "missing.pt"], r"checkpoint not found: .*missing\.pt"),
        (["eval", garbage], r"checkpoint .*garbage\.pt is unreadable .*point to another checkpoint"),
        (["eval", garbage, "--root", a_file], r"--root .*a_file: is a file, not a folder"),
        (["report", a_file], r"experiment directory not found"),
        (["report", tables], r"trials\.parquet: not a readable Parquet file .*no sweep state to rebuild it from"),
        (["sweep", "tiny", "--resume", "--storage", tmp_path / "state"],
         r"sweep\.json is not valid JSON .*the sweep's state is lost; its tables still render with `harness report"),
    ]  # fmt: skip
    for args, pattern in cases:
        code, out, err = harness_cli([str(a) for a in args])
        assert code == 2, (args, err)
        assert_one_line(err, pattern)
    (tmp_path / "emb_dir.npz").mkdir()
    code, _, err = harness_cli(["eval", str(garbage), "--save-embeddings", str(tmp_path / "emb_dir.npz")])
    assert code == 2 and assert_one_line(err, r"--save-embeddings .*emb_dir\.npz: is a folder; give a file name")
