"""Jittor side of training: the official recipe with torch's Adam arithmetic, checkpoints as jt.save writes them."""

from __future__ import annotations

import functools
import math
import sys

import numpy as np

from film.backends.jittor import ops
from film.backends.jittor.configured import jt
from film.backends.jittor.core import build_model, resolve_device, resolve_recompute, set_fast
from film.common import loss as L
from film.common.recompute import set_recompute
from film.common.safeio import read_jittor_pkl, write_jittor_pkl
from film.common.spec import OFFICIAL, OFFICIAL_RECIPE, param_schema
from film.common.training import (
    TrainerBase,
    resume_checkpoint,
    resume_position,
    resume_state_errors,
    steplr_state,
)
from film.errors import FilmError

compute_loss = functools.partial(L.compute_loss, ops)  # (a, b, f, cfg) -> (loss, parts)


class TorchAdam(jt.optim.Adam):
    """torch.optim.Adam's update (eps added after the bias-corrected sqrt), which jt.optim.Adam differs from."""

    adam_steps = 0  # updates made (Jittor's n_step counts backward calls, several per step with micro-batches)

    def step(self, loss=None, retain_graph=False):
        self.pre_step(loss, retain_graph)
        self.adam_steps += 1
        n = float(self.adam_steps)
        for pg in self.param_groups:
            lr = pg.get("lr", self.lr)
            eps = pg.get("eps", self.eps)
            wd = pg.get("weight_decay", self.weight_decay)
            b0, b1 = pg.get("betas", self.betas)
            bc1, bc2 = 1 - b0**n, 1 - b1**n
            for p, g, v, m in zip(pg["params"], pg["grads"], pg["values"], pg["m"]):
                if p.is_stop_grad():
                    continue
                if wd:
                    g = g + p * wd
                m.update(b0 * m + (1 - b0) * g)
                v.update(b1 * v + (1 - b1) * g * g)
                p.update(p - (lr / bc1) * m / (jt.sqrt(v) / math.sqrt(bc2) + eps))
        self.post_step()


class Trainer(TrainerBase):
    ext = ".pkl"

    def __init__(self, device: str = "auto", model_cfg=OFFICIAL):
        self.device = resolve_device(device)  # "cpu" or "cuda"
        self.model_cfg = model_cfg
        self.model = self.forward = None  # set by build
        # Under mpirun (Jittor's distributed engine) every rank runs the shared loop on its contiguous share
        # of each global batch; TorchAdam's pre_step all-reduces the gradients (mean), which equals the
        # single-process mean-loss gradient because the shares are equal. Rank 0 alone writes.
        self.rank, self.world = (int(jt.rank), int(jt.world_size)) if jt.in_mpi else (0, 1)

    @property
    def device_type(self) -> str:
        return self.device

    def share(self, obj: str) -> str:
        """Rank 0's string on every rank (the run folder name holds a timestamp)."""
        if self.world == 1:
            return obj
        buf = np.zeros(4096, np.int32)
        data = np.frombuffer(obj.encode("utf-8"), np.uint8)
        if len(data) > len(buf):
            raise FilmError(f"{obj[:80]}...: path too long to share between MPI ranks")
        buf[: len(data)] = data
        got = jt.array(buf).mpi_broadcast(0).numpy().astype(np.uint8)
        return bytes(got).rstrip(b"\0").decode("utf-8")

    def barrier(self) -> None:
        if self.world > 1:
            jt.array([1.0]).mpi_all_reduce("sum").sync()

    @staticmethod
    def scalar_writer(run_dir: str):
        """No TensorBoard writer without torch: the scalars are in log.txt."""
        return None

    def close(self) -> None:
        """glibc's heap settings back (MPI is finalised by Jittor at exit)."""
        self.release_heap()

    def _params(self):
        own = self.model.state_dict()
        return [own[k] for k in param_schema(self.model_cfg)]

    def build(self, cfg, init_sd=None):
        # the same seed on every rank (Jittor would add 2591 * rank), and rank 0's weights broadcast: the
        # first gradient must already be taken at identical parameters (Jittor's own sync comes after it)
        jt.set_global_seed(cfg.seed, different_seed_for_mpi=False)
        self.model = build_model(self.model_cfg, init_sd, self.device)
        self.model.train()
        self.forward = self.model
        # NHWC on oneDNN (3-4x an NCHW step), activation recomputation (film.common.recompute) and heap reuse,
        # each as cfg asks (film train's defaults; docs/training.md)
        set_fast(self.model, cfg.fast)
        set_recompute(self.model, resolve_recompute(cfg.recompute, self.device))
        self.hold_heap(cfg, self.device == "cpu")
        if self.world == 1:  # (several processes: precompile_training says it, once)
            print(COMPILE_NOTE, file=sys.stderr, flush=True)
        if self.world > 1:
            # every operator of a training step compiled by one process before the ranks compile at once
            if self.rank == 0:
                precompile_training(self.model_cfg, cfg, self.device)
            self.barrier()
            for p in self._params():
                p.assign(p.mpi_broadcast(0))
            jt.sync_all()
        self.opt = TorchAdam(
            self._params(),
            lr=cfg.lr,
            eps=OFFICIAL_RECIPE.adam_eps,
            betas=OFFICIAL_RECIPE.adam_betas,
            weight_decay=OFFICIAL_RECIPE.weight_decay,
        )
        self.recipe = cfg  # lr, step_size, gamma: the shared schedule (training.lr_at) and its saved state

    def set_lr(self, lr: float) -> None:
        self.opt.lr = lr
        for g in self.opt.param_groups:
            g["lr"] = lr

    def _chunk(self, a, b, t, share: float, first: bool, last: bool, cfg, target=None):
        a_, b_ = jt.array(a), jt.array(b)
        fused = self.forward(a_, b_, jt.array(t))
        loss, parts = compute_loss(a_, b_, fused, cfg, None if target is None else jt.array(target))
        # the forward runs on its own first: left to schedule forward and backward as one lazy graph,
        # Jittor keeps more maps alive at once (measured: ~10 % more at batch 2)
        jt.sync([loss, fused, *parts.values()])
        self.opt.backward(loss if share == 1 else loss * share)  # adds to the gradients (mean over MPI ranks)
        jt.sync(self.opt.param_groups[0]["grads"])  # this chunk's backward now, before the next forward
        rep = jt.concat([loss.detach().reshape(1)] + [v.detach().reshape(1) for v in parts.values()]) * share
        return rep, tuple(parts), fused.numpy()

    def _update(self, total) -> list[float]:
        self.opt.step()
        jt.sync_all()  # the update now, not inside the next step
        if self.world > 1:  # log the global batch's loss, identical on every rank (the NaN stop agrees too)
            total = total.mpi_all_reduce("mean")
        return total.numpy().tolist()

    def gradients(self, a, b, t, cfg) -> tuple[float, dict]:
        """Loss and every parameter's gradient for one batch (no optimizer step)."""
        fused = self.model(jt.array(a), jt.array(b), jt.array(t))
        loss, _ = compute_loss(jt.array(a), jt.array(b), fused, cfg)
        grads = jt.grad(loss, self._params())
        return float(loss.item()), {k: g.numpy() for k, g in zip(param_schema(self.model_cfg), grads)}

    def params_numpy(self) -> dict:
        return {k: p.numpy().copy() for k, p in zip(param_schema(self.model_cfg), self._params())}

    def optimizer_state(self) -> dict:
        """Adam state in torch's optimizer.state_dict() layout (indices in schema order)."""
        pg = self.opt.param_groups[0]
        n = float(self.opt.adam_steps)
        state = {
            i: {
                "step": np.array(n, dtype=np.float32),
                "exp_avg": m.numpy().copy(),
                "exp_avg_sq": v.numpy().copy(),
            }
            for i, (m, v) in enumerate(zip(pg["m"], pg["values"]))
        }
        group = {
            "lr": float(pg.get("lr", self.opt.lr)),
            "betas": tuple(self.opt.betas),
            "eps": self.opt.eps,
            "weight_decay": self.opt.weight_decay,
            "amsgrad": False,
            "initial_lr": self.recipe.lr,
            "params": list(range(len(pg["m"]))),
        }
        return {"state": state, "param_groups": [group]}

    def save(self, path: str, epoch: int, step: int, batch: int | None = None) -> None:
        """{'model': state_dict, 'optimizer1', 'lr_schedule1', 'epoch', 'step'} (+ 'batch' mid-epoch) as jt.save
        writes it (atomic)."""
        if self.rank == 0:  # the other ranks hold the same weights and only wait
            write_jittor_pkl(
                path,
                {
                    "model": self.params_numpy(),
                    "optimizer1": self.optimizer_state(),
                    "lr_schedule1": steplr_state(self.recipe, epoch if batch is None else epoch - 1),
                    "epoch": epoch,
                    "step": step,
                    **({} if batch is None else {"batch": batch}),
                },
            )
        self.barrier()

    def load_resume(self, path: str, cfg) -> dict:
        ck = read_jittor_pkl(path)
        sd, recipe = resume_checkpoint(ck, path, self.model_cfg, cfg)
        with resume_state_errors(path):
            self.build(recipe, sd)
            opt = ck["optimizer1"]
            pg = self.opt.param_groups[0]
            for i, (m, v) in enumerate(zip(pg["m"], pg["values"])):
                for var, key in ((m, "exp_avg"), (v, "exp_avg_sq")):
                    arr = np.asarray(opt["state"][i][key], dtype=np.float32)
                    if arr.shape != tuple(var.shape):  # Jittor's update would not complain
                        raise ValueError(f"state {i} {key} has shape {arr.shape}, expected {tuple(var.shape)}")
                    var.update(jt.array(arr))
            self.opt.adam_steps = self.opt.n_step = int(float(opt["state"][0]["step"]))
        return resume_position(ck, path)


PRECOMPILED = "FILM_JITTOR_PRECOMPILED"  # set for the ranks by film train --nproc, which precompiles first
# said before the first training step: Jittor compiles each operator it has not met on this machine, silently
COMPILE_NOTE = ("film train: Jittor compiles the training step's operators it has not compiled on this machine "
                "before (the first run: several minutes, cached afterwards)")


def precompile_training(model_cfg, cfg, device: str) -> None:
    """Compile (and load) every Jittor operator of a training step in one child process: a step of the real
    configuration on a tiny random batch. Ranks that start compiling the same operators at once into one cache
    were seen to load an operator's library while another process was still writing it ("Loading symbol
    ...jit_run... failed: undefined symbol", issue 20); after this they only load finished files. (Within one
    process Jittor's parallel compiler is off for the same reason: runtime.configure_env.) A failure to
    load a freshly compiled operator is retried once in a fresh process. No-op where the launcher already did it."""
    import json
    import os
    import subprocess

    if os.environ.get(PRECOMPILED) == "1":
        return
    print(COMPILE_NOTE, file=sys.stderr, flush=True)
    spec = json.dumps({"model": model_cfg.to_dict(), "device": device,
                       "step": {"recompute": cfg.recompute, "fast": cfg.fast, "ssim_weight": cfg.ssim_weight,
                                "grad_weight": cfg.grad_weight}})
    code = f"from film.backends.jittor.train import _precompile_child; _precompile_child({spec!r})"
    # a plain process even under mpirun: OpenMPI's variables would make it an unexpected extra rank
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OMPI_", "PMIX_", "PMI_"))}
    last = ""
    for _ in range(2):
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
        if r.returncode == 0:
            return
        last = (r.stdout + r.stderr).strip()
        if "Loading symbol" not in last and "Compile operator" not in last and "Compile fused operator" not in last:
            break
    lines = [ln for ln in last.splitlines() if ln.strip()]
    raise FilmError("compiling Jittor's training operators failed: " + (lines[-1][:300] if lines else "no output"))


def _precompile_child(spec: str) -> None:
    import json

    from film.common.spec import FilmConfig
    from film.common.training import StepConfig

    d = json.loads(spec)
    model_cfg = FilmConfig.from_dict(d["model"])
    cfg = StepConfig(heap_reuse=False, micro_batch=None, **d["step"])
    trainer = Trainer(d["device"], model_cfg)
    trainer.build(cfg, None)
    rng = np.random.default_rng(0)
    a, b = (rng.random((2, 1, 32, 40), dtype=np.float32) for _ in range(2))
    t = rng.standard_normal((2, 7, model_cfg.text_dim)).astype(np.float32)
    trainer.step(a, b, t, cfg)
