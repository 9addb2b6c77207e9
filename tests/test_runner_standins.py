"""The headless runner (scripts/txt2vid.py) killed while it writes its random-weight stand-ins: the next run in the
same base directory writes what is missing, records it and runs (no "is a real file" refusal)."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import REPO_DIR

RUNNER = os.path.join(REPO_DIR, "scripts", "txt2vid.py")
CHECKPOINT = "models/checkpoints/v1-5-pruned-emaonly.safetensors"     # workflows/txt2vid.json's files, in the
MOTION_MODULE = "models/animatediff_models/mm_sd_v15_v2.ckpt"        # order the runner writes their stand-ins


def record(base):
    try:
        with open(os.path.join(base, "random-weights.json"), encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def recorded_in_place(base):
    """The recorded stand-ins that are in place with the size and time recorded."""
    return sorted(p for p, stamp in record(base).items() if os.path.exists(os.path.join(base, p))
                  and stamp == {"size": os.path.getsize(os.path.join(base, p)),
                                "mtime_ns": os.stat(os.path.join(base, p)).st_mtime_ns})


@pytest.mark.slow
def test_runner_killed_while_writing_stand_ins_leaves_a_base_the_next_run_uses(tmp_path):
    base = str(tmp_path / "base")
    staging = os.path.join(base, ".stand-ins-partial")
    command = [sys.executable, RUNNER, "--base-directory", base, "--frames", "2", "--steps", "1"]
    with open(tmp_path / "killed.log", "w") as log:
        # its own process group: kill -9 takes the runner and the ComfyUI it started
        runner = subprocess.Popen(command + ["--output", str(tmp_path / "killed")], stdout=log,
                                  stderr=subprocess.STDOUT, start_new_session=True)
        try:
            deadline = time.monotonic() + 300
            while runner.poll() is None and time.monotonic() < deadline:
                # the checkpoint complete, the motion module being written
                if recorded_in_place(base) == [CHECKPOINT] and os.listdir(staging):
                    os.killpg(runner.pid, signal.SIGKILL)
                    break
                time.sleep(0.01)
        finally:
            if runner.poll() is None:
                os.killpg(runner.pid, signal.SIGKILL)
            runner.wait()
    assert runner.returncode == -signal.SIGKILL, (tmp_path / "killed.log").read_text()
    assert recorded_in_place(base) == [CHECKPOINT] and not os.path.exists(os.path.join(base, MOTION_MODULE))

    rerun = subprocess.run(command + ["--output", str(tmp_path / "out")], capture_output=True, text=True,
                           timeout=600)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert "is a real file" not in rerun.stdout
    written = [line for line in rerun.stdout.splitlines() if line.startswith("Writing random-weight stand-in")]
    assert len(written) == 1 and written[0].endswith("mm_sd_v15_v2.ckpt ..."), rerun.stdout  # the checkpoint kept
    assert recorded_in_place(base) == sorted([CHECKPOINT, MOTION_MODULE]) and not os.path.exists(staging)
    assert [f for f in os.listdir(tmp_path / "out") if f.endswith(".webp")], rerun.stdout
