"""The life of a training run, shared by the LM stages (``rlhf_env.training.trainer``) and the RL agents.

A ``Run`` owns an output directory: it refuses to redo a finished run, resumes from ``OUT/checkpoint`` only
if the checkpoint was written by the same run (its *fingerprint*: the settings that must agree), keeps the
TensorBoard and CSV logs (dropping rows logged after the checkpoint it resumes from), shows a progress bar,
and writes crash-safe checkpoints (``rlhf_env.training.checkpoint``)::

    run = Run(out, fingerprint, total=iterations, desc="ppo", finished="result.json")
    state, tensors = run.restore(model, optimizer, scheduler)   # (None, {}) on a fresh start
    run.start(step)                  # logs, bar, and a first Ctrl-C only sets run.interrupted
    ...  run.log(step, metrics); run.save(model, tokenizer, optimizer, scheduler, state, tensors)
    ...  if run.interrupted: (save, then) run.stop(step)
    run.close()
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import sys
import threading
import warnings

from safetensors import SafetensorError
from tqdm.auto import tqdm

from rlhf_env.paths import check_out
from rlhf_env.training import distributed
from rlhf_env.training.checkpoint import checkpoints, load_checkpoint, save_checkpoint
from rlhf_env.training.logger import RunLogger


def prepare(config) -> None:
    """What a run does before it loads anything: under a launcher, join the process group and take the rank's
    device (``config.device``); for a resumed run, take back the kernels it started with (``config.out``'s
    ``kernels.json``, ``rlhf_env.accel.kernels.restore``)."""
    from rlhf_env.accel import kernels

    config.device = distributed.init(config.device)
    kernels.restore(config.out)


def resident_mb() -> float:
    """The resident memory of this process now, in MiB (Linux's /proc; elsewhere the peak so far)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
        return peak / (2**20 if sys.platform == "darwin" else 2**10)


class Interrupted(KeyboardInterrupt):
    """A run stopped by Ctrl-C at a step boundary, after saving a checkpoint; its message says how to resume."""


class Run:
    def __init__(self, out: str | os.PathLike, fingerprint: dict, total: int, desc: str, resume: bool = True,
                 finished: str | None = None, main: bool = True):
        """``finished``: the file (JSON, written by ``finish``) whose presence in ``out`` means the run is done:
        refused, not redone, unless ``total`` is larger (the run is then extended from its last checkpoint).
        ``main``: False on the other ranks of a data-parallel run, which read the run (its finished file and
        checkpoint) but neither take the lock nor write: no logs, bar, checkpoint or finished file."""
        self.out, self.fingerprint, self.total, self.desc = check_out(out), fingerprint, total, desc
        self.resume, self.finished, self.main = resume, finished, main
        self.check_not_finished()
        self.lock = self.out / "run.lock"
        if main:  # another rank's check could see this run's own lock, taken by rank 0's start
            self._check_no_other_process()  # before anything loads
        self.checkpoint = self.out / "checkpoint"
        self.logger: RunLogger | None = None
        self.bar = None
        self.interrupted = False  # a Ctrl-C came while the run was going (see start)
        self._previous_handler = None

    def check_not_finished(self) -> None:
        """Refuse a finished run, unless this one asks for more steps than it made: then it extends it."""
        if not self.finished or not (self.out / self.finished).exists():
            return
        done = json.loads((self.out / self.finished).read_text()).get("total_steps")
        if done is None or self.total <= done:
            more = f"; ask for more than its {done} steps to extend it" if done is not None else ""
            raise ValueError(f"{self.out} holds a finished run ({self.finished}){more}; or pass another --out, or "
                             "delete it to rerun")
        if not checkpoints(self.out / "checkpoint"):
            raise ValueError(f"{self.out} holds a finished run that kept no checkpoint to extend from (it ran with "
                             "save_every=0); pass another --out")

    def _check_no_other_process(self) -> None:
        """Refuse a directory that another live process is running in (its ``run.lock``)."""
        try:
            text = self.lock.read_text()
        except OSError:
            return  # no lock
        pid = int(text) if text.strip().isdigit() else -1  # -1: another process is writing it right now
        if pid == os.getpid():
            return
        try:
            if pid > 0:
                os.kill(pid, 0)
        except ProcessLookupError:
            return  # a stale lock: that process died
        except PermissionError:
            pass  # alive, another user's
        raise ValueError(f"another process (pid {pid}) is running in {self.out}; wait for it to end, or pass "
                         f"another --out (if it is gone, delete {self.lock})")

    def finish(self, result: dict) -> None:
        """Write the ``finished`` file: ``result`` and the steps the run made."""
        if self.main:
            (self.out / self.finished).write_text(json.dumps({**result, "total_steps": self.total}, indent=1))

    def restore(self, model, optimizer, scheduler, older_defaults: dict | None = None) -> tuple[dict | None, dict]:
        """Load ``OUT/checkpoint`` (or the one a crash left) into the model, optimizer and scheduler; return its
        ``(state, tensors)``, or ``(None, {})`` if there is none or ``resume`` is off. ``older_defaults`` fill
        fingerprint keys that older checkpoints lack."""
        candidates = checkpoints(self.checkpoint) if self.resume else []
        if not candidates:
            return None, {}
        for found in candidates:  # newest first: an unreadable one falls back to the one before it
            try:
                state, tensors = load_checkpoint(found, model, optimizer, scheduler)
                break
            except (OSError, ValueError, KeyError, RuntimeError, SafetensorError) as e:
                warnings.warn(f"checkpoint {found} is unreadable ({type(e).__name__}: {e}); trying the one before it",
                              RuntimeWarning, stacklevel=2)
        else:
            raise ValueError(f"no readable checkpoint in {self.checkpoint} ({', '.join(map(str, candidates))}); "
                             "delete them to start over")
        saved = {**(older_defaults or {}), **state.get("run", {})}
        saved = {k: v for k, v in saved.items() if k in self.fingerprint}  # settings it no longer fixes
        if saved != self.fingerprint:
            changed = sorted(k for k in {*saved, *self.fingerprint} if saved.get(k) != self.fingerprint.get(k))
            raise ValueError(f"{found} was written by a different run (it differs in {', '.join(changed)}); pass "
                             "the settings it was written with (a newer version's defaults may differ), use another "
                             "--out, or delete the checkpoint to start over")
        return state, tensors

    def start(self, step: int) -> None:
        """Open the logs (rows after ``step`` are dropped: they belong to the run that crashed) and the bar."""
        if step and self.main:
            print(f"{self.desc}: resuming {self.out} from step {step} of {self.total}", file=sys.stderr, flush=True)
        self.out.mkdir(parents=True, exist_ok=True)
        while self.main:  # until close(), a second process into this --out refuses
            try:
                fd = os.open(self.lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)  # atomic: one process wins
            except FileExistsError:
                self._check_no_other_process()  # raises if its process is alive
                self.lock.unlink(missing_ok=True)  # a stale lock (or this process's own): take it over
                continue
            os.write(fd, str(os.getpid()).encode())
            os.close(fd)
            break
        self.logger = RunLogger(self.out, resume_step=step) if self.main else None
        if self.main:
            self._report_kernels()
        self.bar = tqdm(total=self.total, initial=step, desc=self.desc, dynamic_ncols=True, disable=not self.main)
        self._catch_ctrl_c()

    def _report_kernels(self) -> None:
        """Say which linear kernels this process chose for its models (``rlhf_env.accel.kernels``), on stderr
        and in ``OUT/kernels.json``."""
        from rlhf_env.accel import kernels

        choices = kernels.chosen()
        if not choices:
            return
        for choice in choices:
            print(f"{self.desc}: kernels for {choice.describe()}", file=sys.stderr, flush=True)
        report = {"machine": kernels.machine(), "choices": [dataclasses.asdict(c) for c in choices]}
        (self.out / "kernels.json").write_text(json.dumps(report, indent=1))

    def _catch_ctrl_c(self) -> None:
        """From ``start`` to ``close``, a first Ctrl-C only sets ``self.interrupted``: the loop finishes its step,
        saves and calls ``stop``. A second Ctrl-C interrupts at once."""
        if threading.current_thread() is not threading.main_thread():  # signals reach the main thread only
            return
        self._previous_handler = previous = signal.getsignal(signal.SIGINT)

        def first(signum, frame):
            self.interrupted = True
            signal.signal(signal.SIGINT, previous)
            print(f"\n{self.desc}: stopping after this step to save a checkpoint (Ctrl-C again to stop now)",
                  file=sys.stderr, flush=True)

        signal.signal(signal.SIGINT, first)

    def stop(self, step: int) -> None:
        """Raise ``Interrupted`` after a Ctrl-C (the caller has saved ``step``)."""
        raise Interrupted(f"interrupted at step {step}; saved in {self.checkpoint}. Rerun the same command to resume")

    def log(self, step: int, metrics: dict[str, float], kind: str = "train") -> None:
        """A row of ``OUT/{kind}.csv`` and TensorBoard; a training row also gets the process's resident memory
        (``rss_mb``), so that a long run's memory can be watched."""
        if self.logger is None:  # not the main rank
            return
        if kind == "train":
            metrics = {**metrics, "rss_mb": resident_mb()}
        self.logger.log(step, metrics, kind=kind)

    def save(self, model, tokenizer, optimizer, scheduler, state: dict, tensors: dict | None = None) -> None:
        """A crash-safe checkpoint; ``state`` (JSON) gets the run's fingerprint, ``tensors`` go with it."""
        if self.main:
            save_checkpoint(self.checkpoint, model, tokenizer, optimizer, scheduler,
                            {**state, "run": self.fingerprint}, tensors)

    def close(self) -> None:
        if self.main and self.lock.exists() and self.lock.read_text() == str(os.getpid()):
            self.lock.unlink()
        if self._previous_handler is not None:
            signal.signal(signal.SIGINT, self._previous_handler)
            self._previous_handler = None
        if self.bar is not None:
            self.bar.close()
        if self.logger is not None:
            self.logger.close()
