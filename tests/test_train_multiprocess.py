"""Training under torchrun-like conditions, including the unhappy paths (multi-process: each test starts
gloo processes with torchrun's environment and fails fast, killing them, when they hang).

The rule under test (docs/train.md, "Multi-GPU and multi-node"): every decision that leads into a collective
is taken once and shared by all ranks. Each test below failed (hung or crashed) before that rule was kept:
a slow checkpoint write on rank 0 with epochs shorter than ``ckpt_min_seconds``, a callback's StopTraining
seen by rank 0 only, an FSDP run ending with an evaluation, resuming on another number of processes.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import free_port, run_ranks

from jitkit.checkpoint import load_checkpoint
from jitkit.train import train
from jitkit.train.run_folder import read_log

# one rank of a training job; argv[1] is a JSON job: config, run_dir, resume, and the faults to inject
_WORKER = textwrap.dedent(
    """
    import json, sys, time, torch
    torch.set_num_threads(1)
    from jitkit.config import resolve_run_config
    from jitkit.runtime import dist
    from jitkit.train import StopTraining, train
    import jitkit.train.engine as engine

    job = json.loads(sys.argv[1])
    rank = dist.env_world()[0]
    if job.get("slow_write_s") and rank == 0:  # rank 0's checkpoint write takes this long
        real = engine.write_checkpoint
        def slow(*a, **kw):
            time.sleep(job["slow_write_s"])
            return real(*a, **kw)
        engine.write_checkpoint = slow
    saves = []
    real_save = engine.Trainer.save
    def counting(self, reason):
        saves.append((self.step, reason))
        return real_save(self, reason)
    engine.Trainer.save = counting
    callbacks = []
    if job.get("step_sleep_s"):  # slower steps on every rank: epochs of a predictable length
        def slow_step(event, info):
            if event == "step":
                time.sleep(job["step_sleep_s"])
        callbacks.append(slow_step)
    if job.get("die_at"):  # rank 1 dies without a word at this step (a crash, an OOM kill)
        import os
        def die(event, info):
            if event == "step" and info["step"] == job["die_at"] and info["rank"] == 1:
                os._exit(17)
        callbacks.append(die)
    if job.get("stop_at"):  # a callback that stops the run on rank 0 only
        def stop_on_rank0(event, info):
            if event == "step" and info["step"] == job["stop_at"] and info["rank"] == 0:
                raise StopTraining("rank 0 wants to stop")
        callbacks.append(stop_on_rank0)
    cfg = resolve_run_config(job["config"])
    train(cfg, progress=False, run_dir=job["run_dir"], resume="auto" if job.get("resume") else None,
          callbacks=callbacks)
    print("SAVES " + json.dumps(saves))
    """
)


def _job(d: dict, run_dir: Path, **faults) -> list[str]:
    return [sys.executable, "-c", _WORKER, json.dumps({"config": d, "run_dir": str(run_dir), **faults})]


def _train_ranks(d: dict, run_dir: Path, world: int = 2, timeout: float = 120, **faults) -> list[dict]:
    """Train ``d`` in ``world`` processes; per rank: the checkpoints it saved (step, reason) and its output."""
    logs = run_dir.parent / f"{run_dir.name}-logs-{free_port()}"
    logs.mkdir(parents=True)
    results = run_ranks(lambda r: _job(d, run_dir, **faults), world, logs, timeout=timeout)
    out = []
    for r, (rc, stdout, stderr) in enumerate(results):
        assert rc == 0, f"rank {r} failed:\n{stderr[-3000:]}"
        saves = next(line for line in stdout.splitlines() if line.startswith("SAVES "))
        out.append({"saves": json.loads(saves[6:]), "stdout": stdout})
    return out


def losses(run: Path) -> list[float]:
    return [r["loss"] for r in read_log(run / "log.jsonl")]


def test_slow_checkpoint_write_on_rank_0_keeps_the_ranks_together(tmp_path, tiny):
    """Epoch checkpoints are due by time (``ckpt_min_seconds``); rank 0's write is slow. Every rank must save
    at the same steps (rank 0's clock decides, shared through the step's all-reduce); before, rank 1 (whose
    clock ran on while rank 0 wrote) saved at epochs rank 0 skipped and the collectives crossed."""
    # epochs of 4 steps × ≥ 0.12 s; a save is due 0.6 s after the last: at epoch 2, then rank 0 writes for 1 s
    # (rank 1 waits in the save's barrier), so epoch 3 is not due for rank 0 — before the fix rank 1's clock,
    # reset before that wait, said it was
    d = tiny.run_dict(tmp_path / "run", accum_steps=1, epochs=6, ckpt_min_seconds=0.6, keep_ckpts=0)
    ranks = _train_ranks(d, tmp_path / "run", slow_write_s=1.0, step_sleep_s=0.12)
    assert ranks[0]["saves"] == ranks[1]["saves"]
    reasons = [reason for _, reason in ranks[0]["saves"]]
    assert reasons.count("epoch") >= 1 and reasons[-1] == "end"  # some epoch saves were due …
    assert len(reasons) < 6  # … not all: the time rule decided, the same way on both ranks
    assert load_checkpoint(tmp_path / "run").step == 24


def test_stop_training_on_rank_0_only_stops_every_rank(tmp_path, tiny):
    """A callback raises StopTraining on rank 0 alone (e.g. its metric reached a target): all ranks stop after
    the same step with one checkpoint; before, rank 0 went to save while rank 1 started the next step."""
    d = tiny.run_dict(tmp_path / "run", accum_steps=1, epochs=3)
    ranks = _train_ranks(d, tmp_path / "run", stop_at=5)
    assert ranks[0]["saves"] == ranks[1]["saves"] == [[5, "interrupted"]]
    assert "stopped by a callback: rank 0 wants to stop at step 5" in ranks[0]["stdout"]
    assert load_checkpoint(tmp_path / "run").step == 5


def test_a_rank_that_dies_fails_the_others_instead_of_hanging_them(tmp_path, tiny):
    """Rank 1 exits abruptly at step 3: rank 0 must not wait forever in the next collective — it fails (the
    peer's connection closes, or the process group's timeout, here 20 s, expires) and the job ends."""
    d = tiny.run_dict(tmp_path / "run", accum_steps=1, epochs=3, dist_timeout=20)
    logs = tmp_path / "logs"
    logs.mkdir()
    results = run_ranks(lambda r: _job(d, tmp_path / "run", die_at=3), 2, logs, timeout=90)
    (rc0, _, err0), (rc1, _, _) = results
    assert rc1 == 17 and rc0 != 0
    assert "Error" in err0  # an error that says what happened, not a hang


@pytest.mark.parametrize("first,then", [(2, 1), (1, 2)])
def test_resume_on_another_number_of_processes(tmp_path, tiny, first, then):
    """A run saved by ``first`` processes continues on ``then`` processes with the same global batch (the
    accumulation adapts) and repeats the uninterrupted single-process losses."""
    d = tiny.run_dict(tmp_path / "run", epochs=1, global_batch=8, accum_steps=1)
    d["train"].pop("accum_steps")

    def run(world: int, resume: bool) -> None:
        if world == 1:
            from jitkit.config import resolve_run_config

            train(
                resolve_run_config(d),
                progress=False,
                run_dir=tmp_path / "run",
                resume="auto" if resume else None,
            )
        else:
            _train_ranks(d, tmp_path / "run", world=world, resume=resume)

    run(first, resume=False)
    assert load_checkpoint(tmp_path / "run").step == 4
    d["train"]["epochs"] = 2
    run(then, resume=True)
    ref = dict(d, train=dict(d["train"], out=str(tmp_path / "ref")))
    from jitkit.config import resolve_run_config

    single = train(resolve_run_config(ref), progress=False)
    l_run, l_ref = losses(tmp_path / "run"), losses(single)
    assert len(l_run) == len(l_ref) == 8
    torch.testing.assert_close(torch.tensor(l_run), torch.tensor(l_ref), rtol=1e-4, atol=1e-5)
    a = load_checkpoint(tmp_path / "run")
    assert a.step == 8 and a.state["world_size"] == then


def _torchrun(args: list[str], node_rank: int, port: int, log: Path) -> subprocess.Popen:
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nnodes=2",
        "--nproc_per_node=1",
        f"--node_rank={node_rank}",
        "--master_addr=127.0.0.1",
        f"--master_port={port}",
        "-m",
        "jitkit",
        *args,
    ]
    return subprocess.Popen(cmd, stdout=open(log, "w"), stderr=subprocess.STDOUT, text=True)  # noqa: SIM115


def _two_nodes(args: list[str], tmp_path: Path, tag: str, timeout: float = 180) -> list[str]:
    """The same command launched as two torchrun "nodes" of one process each (two launches, as on two hosts)."""
    port = free_port()
    logs = [tmp_path / f"{tag}-node{n}.log" for n in range(2)]
    procs = [_torchrun(args, n, port, logs[n]) for n in range(2)]
    try:
        for p in procs:
            p.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        for p in procs:
            p.kill()
        pytest.fail(f"two-node run still going after {timeout} s (a hang):\n{logs[0].read_text()[-2000:]}")
    texts = [log.read_text() for log in logs]
    for p, t in zip(procs, texts):
        assert p.returncode == 0, t[-3000:]
    return texts


@pytest.mark.slow
def test_two_nodes_train_checkpoint_and_resume(tmp_path, tiny):
    """``torchrun --nnodes=2 --nproc_per_node=1`` twice on this machine (node_rank 0 and 1): trains, saves,
    and resumes; each rank sees WORLD_SIZE 2 but LOCAL_WORLD_SIZE 1 (one process per host)."""
    sets = [f"--set=model.{k}={v}" for k, v in tiny.RUN_MODEL.items() if k != "name"]
    common = ["train", "--out", str(tmp_path / "run"), "--no-progress", "--no-eval", "--threads", "1"]
    common += [
        "--set=data.per_class=2",
        "--set=train.batch_size=4",
        "--set=sampler.steps=2",
        "--log-every",
        "1",
        *sets,
    ]
    first = _two_nodes([*common, "--epochs", "1"], tmp_path, "a")
    assert "world size 2" in first[0] and "micro 4 × accum 1 × world 2" in first[0]
    assert load_checkpoint(tmp_path / "run").step == 4
    _two_nodes([*common, "--epochs", "2", "--resume", "auto"], tmp_path, "b")
    ck = load_checkpoint(tmp_path / "run")
    assert ck.step == 8 and ck.state["world_size"] == 2
    assert [r["step"] for r in read_log(tmp_path / "run" / "log.jsonl")] == list(range(1, 9))


@pytest.mark.slow
def test_the_fsdp_command_of_the_issue_finishes(tmp_path):
    """``torchrun --nproc_per_node=2 -m jitkit train --fsdp --max-steps 20`` (the shapes preset, its end-of-run
    evaluation included) ends instead of hanging after "finished 20 steps" (issue #15)."""
    argv = [sys.executable, "-m", "jitkit", "train", "--fsdp", "--max-steps", "20", "--no-progress"]
    argv += ["--out", str(tmp_path / "run"), "--threads", "1"]
    results = run_ranks(lambda r: argv, 2, tmp_path, timeout=240)
    for r, (rc, _out, err) in enumerate(results):
        assert rc == 0, f"rank {r}:\n{err[-3000:]}"
    assert "finished 20 steps" in results[0][1]
    rec = [json.loads(line) for line in (tmp_path / "run" / "eval.jsonl").read_text().splitlines()]
    assert rec[-1]["metric"] == "shapes" and rec[-1]["step"] == 20


_EXIT_WORKER = textwrap.dedent(
    """
    import atexit, sys, torch
    torch.set_num_threads(1)
    # registered first, so it runs last: after jitkit's own exit hook
    atexit.register(lambda: print("group at exit:", torch.distributed.is_initialized(), flush=True))
    from jitkit.runtime import dist
    info = dist.init(torch.device("cpu"), timeout_s=60)
    x = torch.tensor([float(info.rank + 1)])
    torch.distributed.all_reduce(x)
    print("sum", x.item(), flush=True)
    # no dist.cleanup(): a library caller that just returns
    """
)


def test_a_group_that_jitkit_created_is_left_at_exit(tmp_path):
    """dist.init() under torchrun registers an exit hook: a process that never calls cleanup() still leaves the
    group before the interpreter's teardown (left to the teardown, gloo's threads could abort the process)."""
    res = run_ranks(lambda r: [sys.executable, "-c", _EXIT_WORKER], 2, tmp_path, timeout=120)
    for rc, out, err in res:
        assert rc == 0, err[-2000:]
        assert "sum 3.0" in out
        assert "group at exit: False" in out, out


_LOW_MEMORY_ON_ONE_RANK = textwrap.dedent(
    """
    import os, sys
    from jitkit.cli import main
    from jitkit.runtime import dist
    import jitkit.runtime.memory as memory
    low = dist.env_world()[0] == int(os.environ["LOW_RANK"])  # this rank measures little free memory
    memory.host_available_memory = (lambda: 64 << 20) if low else (lambda: 1 << 40)
    sys.exit(main(sys.argv[1:]))
    """
)


@pytest.mark.parametrize("low_rank", [0, 1])
def test_a_memory_refusal_stops_every_rank_alike(tmp_path, tiny, low_rank):
    """The memory check is decided once, by rank 0, with the least free memory any rank measured (on several
    hosts the fullest decides), and shared: when one rank — rank 0, or only rank 1 — finds too little, both ranks
    exit with the refusal (exit 2) instead of one going on into a collective alone and hanging."""
    logs = tmp_path / "logs"
    logs.mkdir()
    argv = [
        "train",
        "--out",
        str(tmp_path / "run"),
        "--max-steps",
        "2",
        "--batch-size",
        "512",
        "--no-progress",
    ]
    results = run_ranks(
        lambda r: [sys.executable, "-c", _LOW_MEMORY_ON_ONE_RANK, *argv],
        2,
        logs,
        timeout=120,
        env={"LOW_RANK": str(low_rank)},
    )
    for rc, _, err in results:
        assert rc == 2, err[-2000:]
        assert "training at micro-batch 512" in err and "free on this host" in err
        assert "2 processes on this host" in err
    assert not (tmp_path / "run").exists()
